"""Check an uploaded matrix and make a dataset of it, in bounded memory.

A text upload (CSV/TSV) is parsed block by block into a new .h5ad. An .h5ad upload is
opened with ProjectR's own reader, so whatever is accepted here is what ProjectR can
read; it is scanned chunk by chunk and then copied byte for byte, which keeps sparse X,
annotations and layers as the uploader made them.

Rules for both: at least one gene and one sample, unique sample ids, numbers only
(missing values allowed and counted; infinities refused), duplicate gene ids allowed
and reported (ProjectR uses the first row of each).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import MatrixFormatError, PermanentJobError
from . import BLOCK_VALUES, NO_REPORT, Report
from .chunks import sample_chunks
from .delimited import DelimitedReader
from .h5ad import H5adTarget
from .h5ad_writer import H5adWriter, write_provenance

#: How many repeated gene ids a reply lists (all are counted).
DUPLICATE_EXAMPLES = 10


@dataclass
class MatrixSummary:
    num_genes: int = 0
    num_samples: int = 0
    num_missing_values: int = 0
    num_duplicate_genes: int = 0
    duplicate_genes: list[str] = field(default_factory=list)

    def as_reply(self) -> dict[str, Any]:
        return {"num_genes": self.num_genes, "num_samples": self.num_samples,
                "num_missing_values": self.num_missing_values,
                "num_duplicate_genes": self.num_duplicate_genes,
                "duplicate_genes": self.duplicate_genes}


class DuplicateGenes:
    """Gene ids seen more than once, in order of their first repetition."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._repeated: dict[str, None] = {}

    def add(self, gene_ids: list[str]) -> None:
        for gene in gene_ids:
            if gene in self._seen:
                self._repeated[gene] = None
            else:
                self._seen.add(gene)

    def fill(self, summary: MatrixSummary) -> None:
        summary.num_duplicate_genes = len(self._repeated)
        summary.duplicate_genes = list(self._repeated)[:DUPLICATE_EXAMPLES]


def text_to_h5ad(source: Path, delimiter: str, destination: Path, *, label: str,
                 block_values: int = BLOCK_VALUES,
                 progress: Report = NO_REPORT) -> MatrixSummary:
    """Parse a genes x samples text upload into an AnnData .h5ad at `destination`;
    `progress` is told the rows read after each block (their total is not known)."""
    summary = MatrixSummary()
    duplicates = DuplicateGenes()
    with DelimitedReader(source, delimiter, label=label, block_values=block_values) as reader:
        with H5adWriter(destination, reader.sample_ids) as writer:
            for block in reader.blocks():
                duplicates.add(block.gene_ids)
                writer.write(block)
                progress(len(writer.gene_ids), None, "rows read")
            writer.finish()
        summary.num_genes = len(writer.gene_ids)
        summary.num_samples = reader.num_samples
        summary.num_missing_values = reader.num_missing
    duplicates.fill(summary)
    return summary


def check_h5ad(source: Path, *, label: str, block_values: int = BLOCK_VALUES,
               progress: Report = NO_REPORT) -> MatrixSummary:
    """Validate an .h5ad upload with ProjectR's reader, reading X one chunk at a time
    (`progress`: the samples read)."""
    try:
        target = H5adTarget(source)
    except PermanentJobError as error:
        raise MatrixFormatError(f"{label}: {error.message}") from None
    try:
        samples, genes = target.sample_ids, target.gene_ids
        repeated = sorted(name for name, count in Counter(samples).items() if count > 1)
        if repeated:
            raise MatrixFormatError(
                f"{label}: sample ids (obs_names) must be unique; repeated: "
                f"{', '.join(map(repr, repeated[:5]))}"
                + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""))
        summary = MatrixSummary(num_genes=len(genes), num_samples=len(samples))
        duplicates = DuplicateGenes()
        duplicates.add(genes)
        duplicates.fill(summary)
        everything = np.arange(len(genes))
        for start, values in sample_chunks(target, everything, block_values * 8):
            infinite = np.argwhere(np.isinf(values))
            if len(infinite):
                row, column = (int(i) for i in infinite[0])
                raise MatrixFormatError(
                    f"{label}: X has {len(infinite)} infinite value(s) in samples "
                    f"{start + 1}-{start + len(values)}, the first at sample "
                    f"{samples[start + row]!r}, gene {genes[column]!r}")
            summary.num_missing_values += int(np.count_nonzero(np.isnan(values)))
            progress(start + len(values), len(samples), "samples read")
    finally:
        target.close()
    return summary


def copy_h5ad(source: Path, destination: Path) -> None:
    """The upload as it is (sparse X, annotations, layers kept)."""
    shutil.copyfile(source, destination)


def stamp(path: Path, provenance: dict[str, Any]) -> None:
    """Record the import in the finished file (read back by a repeated import)."""
    with h5py.File(path, "r+") as file:
        write_provenance(file, provenance)
