"""Streaming matrix files: genes x samples text, and AnnData-compatible .h5ad.

dataset_import and export move whole datasets, which can be far larger than the
executor's memory budget, so everything here works in blocks of genes (`GeneBlock`)
of bounded size: a text file is a sequence of gene rows, and an export writes one line
per gene. Reading .h5ad is ProjectR's (gearqueue.projectr.h5ad, by chunks of samples);
`chunks` turns its sample chunks into gene blocks, and `convert` checks uploads with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PermanentJobError

#: A block holds about this many values (8 bytes each as float64): 32 MiB.
BLOCK_VALUES = 4 * 1024 * 1024


class MatrixFormatError(PermanentJobError):
    """A matrix file is not what it should be: the message names the file and the place."""


@dataclass(frozen=True)
class GeneBlock:
    """Consecutive genes with their values: `values[i, j]` is gene i in sample j."""

    gene_ids: list[str]
    values: np.ndarray  # float64, shape (len(gene_ids), num_samples)


def genes_per_block(num_samples: int, block_values: int = BLOCK_VALUES) -> int:
    """How many genes make one block: at least one, even for a huge number of samples."""
    return max(1, block_values // max(1, num_samples))
