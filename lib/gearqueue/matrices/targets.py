"""The target dataset: genes x samples, read in chunks of samples.

A target is never handed over as one matrix. The projection asks for samples
[start, stop) of the matched genes and the target writes them into a buffer the engine
owns (for the R engine, R's own memory), so a dataset larger than memory streams
through in bounded memory, and the values are copied once on their way into R.

The buffer layout is samples x genes, C order: for R that is a genes x samples matrix in
column-major order, the layout an h5ad's X already has on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import PermanentJobError
from .tables import read_text_matrix

log = logging.getLogger(__name__)

#: Looked for in this order; the first that exists is the target.
TARGET_SUFFIXES = (".h5ad", ".csv", ".tsv")


class Target(Protocol):
    @property
    def path(self) -> Path | None:
        """The file read, if any (a target given in memory has none); only ever read."""
        ...

    gene_ids: list[str]
    sample_ids: list[str]

    def bytes_per_sample(self, genes: np.ndarray) -> int:
        """Working memory `read` needs per sample, beyond the output buffer."""
        ...

    def read(self, start: int, stop: int, genes: np.ndarray, out: np.ndarray) -> None:
        """Fill `out` (stop-start x len(genes), float64, C order) with those samples'
        values of the genes at positions `genes` (missing values as NaN)."""
        ...

    def close(self) -> None:
        ...


class MatrixTarget:
    """A target held in memory: from a CSV/TSV file, or given directly (tests, bench)."""

    def __init__(self, gene_ids: list[str], sample_ids: list[str],
                 samples_by_genes: np.ndarray, path: Path | None = None) -> None:
        if samples_by_genes.shape != (len(sample_ids), len(gene_ids)):
            raise ValueError(f"matrix shape {samples_by_genes.shape} does not match "
                             f"{len(sample_ids)} samples x {len(gene_ids)} genes")
        self.path = path
        self.gene_ids = gene_ids
        self.sample_ids = sample_ids
        self.values = np.ascontiguousarray(samples_by_genes, dtype=np.float64)
        self._all = np.arange(len(gene_ids))

    def bytes_per_sample(self, genes: np.ndarray) -> int:
        return 0

    def read(self, start: int, stop: int, genes: np.ndarray, out: np.ndarray) -> None:
        if len(genes) == self.values.shape[1] and np.array_equal(genes, self._all):
            np.copyto(out, self.values[start:stop])  # every gene, in order: a plain copy
        else:
            np.take(self.values[start:stop], genes, axis=1, out=out)

    def close(self) -> None:
        pass


def find_target(datasets_dir: Path, dataset_id: str) -> Path:
    for suffix in TARGET_SUFFIXES:
        path = datasets_dir / f"{dataset_id}{suffix}"
        if path.is_file():
            return path
    names = ", ".join(f"{dataset_id}{suffix}" for suffix in TARGET_SUFFIXES)
    raise PermanentJobError(f"dataset '{dataset_id}' not found (looked for {names})")


def open_target(datasets_dir: Path, dataset_id: str) -> Target:
    """Open the dataset's file; raise PermanentJobError if it is missing or malformed."""
    path = find_target(datasets_dir, dataset_id)
    log.info("reading target %s", path)
    if path.suffix == ".h5ad":
        from .h5ad import H5adTarget  # h5py is only needed for h5ad targets

        return H5adTarget(path)
    delimiter = "\t" if path.suffix == ".tsv" else ","
    table = read_text_matrix(path, delimiter, what="dataset", text_columns=1,
                             header_may_skip_ids=True)
    return MatrixTarget(table.row_ids, table.labels, table.values.T, path=path)
