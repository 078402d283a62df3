"""Pattern loadings from a gene cart file, `<carts_dir>/cart.<genecart_id>.tab`.

Tab-separated, one header line: column 1 the gene id, column 2 the gene symbol (not
used), then one column per pattern whose header is the pattern name. In an
`unweighted-list` every listed gene weighs 1 in a single pattern named "unweighted"
(gEAR's name for it); weight columns, if present, are not read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PermanentJobError
from ..matrices.tables import read_text_matrix

UNWEIGHTED_PATTERN = "unweighted"


@dataclass(frozen=True)
class Loadings:
    """genes x patterns weights; `gene_ids` may repeat (the first row of an id wins)."""

    gene_ids: list[str]
    pattern_names: list[str]
    values: np.ndarray

    @property
    def num_unique_genes(self) -> int:
        return len(set(self.gene_ids))


def cart_path(carts_dir: Path, genecart_id: str) -> Path:
    return carts_dir / f"cart.{genecart_id}.tab"


def read_cart(carts_dir: Path, genecart_id: str, scope: str) -> Loadings:
    path = cart_path(carts_dir, genecart_id)
    if not path.is_file():
        raise PermanentJobError(f"gene cart '{genecart_id}' not found (no {path.name})")
    if scope == "unweighted-list":
        table = read_text_matrix(path, "\t", what="gene cart", numeric=False)
        return Loadings(gene_ids=table.row_ids, pattern_names=[UNWEIGHTED_PATTERN],
                        values=np.ones((len(table.row_ids), 1)))
    table = read_text_matrix(path, "\t", what="gene cart", text_columns=2)
    _check_pattern_names(table.labels, path)
    return Loadings(gene_ids=table.row_ids, pattern_names=table.labels, values=table.values)


def _check_pattern_names(names: list[str], path: Path) -> None:
    """Pattern names label the output columns, so each must be present and unique."""
    if any(not name.strip() for name in names):
        raise PermanentJobError(f"gene cart {path.name}: a pattern column has an empty name")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise PermanentJobError(f"gene cart {path.name}: duplicate pattern name(s) "
                                f"{', '.join(map(repr, repeated))}")
