"""Gene matching exactly as projectR's geneMatchR (merge = FALSE) does it.

Matched ids are the target's gene ids that also appear in the loadings, duplicates
removed, in the order of first appearance in the target; for each, the first row with
that id is used on both sides (later duplicates are ignored whatever they hold).
Comparison is exact: case-sensitive, untrimmed, no version stripping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import PermanentJobError


@dataclass(frozen=True)
class GeneMatch:
    gene_ids: list[str]
    #: Row of each matched gene in the target and in the loadings (first occurrences).
    target_rows: np.ndarray
    loading_rows: np.ndarray

    def __len__(self) -> int:
        return len(self.gene_ids)


def match_genes(target_ids: list[str], loading_ids: list[str]) -> GeneMatch:
    first_loading: dict[str, int] = {}
    for row, gene in enumerate(loading_ids):
        first_loading.setdefault(gene, row)
    genes: list[str] = []
    target_rows: list[int] = []
    loading_rows: list[int] = []
    seen: set[str] = set()
    for row, gene in enumerate(target_ids):
        if gene in first_loading and gene not in seen:
            seen.add(gene)
            genes.append(gene)
            target_rows.append(row)
            loading_rows.append(first_loading[gene])
    return GeneMatch(gene_ids=genes, target_rows=np.array(target_rows, dtype=np.int64),
                     loading_rows=np.array(loading_rows, dtype=np.int64))


def check_matched_loadings(values: np.ndarray, match: GeneMatch,
                           pattern_names: list[str]) -> None:
    """Missing or infinite weights in a matched gene: name the first one.

    projectR rejects them too (model.matrix drops the row and lmFit fails); unmatched
    genes never enter the fit, so their weights are not checked.
    """
    bad = ~np.isfinite(values)
    if bad.any():
        row, column = (int(index[0]) for index in np.nonzero(bad))
        value = values[row, column]
        shown = "missing (NA)" if math.isnan(value) else repr(float(value))
        raise PermanentJobError(
            f"gene cart: the weight of gene {match.gene_ids[row]!r} for pattern "
            f"{pattern_names[column]!r} is {shown}; every matched gene needs finite weights")
