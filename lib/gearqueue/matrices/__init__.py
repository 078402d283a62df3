"""Matrix files shared by every job: genes x samples text, and AnnData-compatible .h5ad.

ProjectR reads its targets and carts here, dataset_import checks and converts uploads,
export writes datasets back out; none of this knows about any one job.

- `tables`      strict parsing of delimited text into one matrix (carts, small targets)
- `targets`     a target dataset (genes x samples) read in chunks of samples;
  `h5ad` reads AnnData files with h5py, dense or sparse, without loading them whole
- `chunks`      turns those sample chunks into blocks of genes
- `delimited`   genes x samples CSV/TSV read and written in blocks of genes
- `h5ad_writer` writes a new .h5ad block by block; `convert` checks uploads with it
- `mtx`, `annotations`, `sparse_h5ad`, `tenx`: a 10x-style MTX folder (matrix.mtx,
  features/genes.tsv, barcodes.tsv, obs.tsv, var.tsv) into a CSR .h5ad, by cells
- `obs_column`  one obs column of an .h5ad (what an export groups samples by)

dataset_import and export move whole datasets, which can be far larger than the
executor's memory budget, so the streaming modules work in blocks of genes
(`GeneBlock`) of bounded size: a text file is a sequence of gene rows, and an export
writes one line per gene.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

#: A block holds about this many values (8 bytes each as float64): 32 MiB.
BLOCK_VALUES = 4 * 1024 * 1024


#: How a streaming step tells its job how far it is: (done, total or None, phase), as
#: JobContext.progress takes it (the job passes that; these modules never import jobs).
Report = Callable[[int, "int | None", str], None]


def _ignore(done: int, total: int | None, phase: str) -> None:
    """No one asked for progress."""


NO_REPORT: Report = _ignore


@dataclass(frozen=True)
class GeneBlock:
    """Consecutive genes with their values: `values[i, j]` is gene i in sample j."""

    gene_ids: list[str]
    values: np.ndarray  # float64, shape (len(gene_ids), num_samples)


def genes_per_block(num_samples: int, block_values: int = BLOCK_VALUES) -> int:
    """How many genes make one block: at least one, even for a huge number of samples."""
    return max(1, block_values // max(1, num_samples))


def reporting(blocks: Iterator[GeneBlock], report: Report, total: int | None,
              phase: str) -> Iterator[GeneBlock]:
    """`blocks`, reporting the rows done once the consumer has taken each block and
    asks for the next (so "rows written" counts rows the writer finished)."""
    done = 0
    for block in blocks:
        yield block
        done += len(block.gene_ids)
        report(done, total, phase)
