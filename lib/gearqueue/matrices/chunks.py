"""Walk a ProjectR `Target` (h5ad or in-memory) in bounded pieces.

Targets (gearqueue.matrices.targets, what ProjectR reads) are read by chunks of samples, the way
AnnData stores X. An export writes one line per gene with every sample on it, so it
needs blocks of genes: each block is filled sample chunk by sample chunk, which costs
one pass over X per block, and keeps memory at about `budget` bytes whatever the size
of the file. A dataset that fits the budget is read in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import BLOCK_VALUES, GeneBlock, genes_per_block
from .targets import Target

_FLOAT = np.dtype(np.float64).itemsize


def sample_chunks(target: Target, genes: np.ndarray,
                  budget: int = BLOCK_VALUES * _FLOAT) -> Iterator[tuple[int, np.ndarray]]:
    """(first sample, samples x genes values) for consecutive chunks of samples."""
    samples = len(target.sample_ids)
    size = _samples_per_chunk(target, genes, budget)
    for start in range(0, samples, size):
        stop = min(samples, start + size)
        out = np.empty((stop - start, len(genes)), dtype=np.float64)
        target.read(start, stop, genes, out)
        yield start, out


def gene_blocks(target: Target, budget: int = BLOCK_VALUES * _FLOAT) -> Iterator[GeneBlock]:
    """Blocks of consecutive genes with all their samples, each about `budget` bytes."""
    samples = len(target.sample_ids)
    total = len(target.gene_ids)
    size = genes_per_block(samples, budget // _FLOAT)
    for first in range(0, total, size):
        genes = np.arange(first, min(total, first + size))
        values = np.empty((samples, len(genes)), dtype=np.float64)
        step = _samples_per_chunk(target, genes, budget)
        for start in range(0, samples, step):
            stop = min(samples, start + step)
            target.read(start, stop, genes, values[start:stop])  # rows: C-contiguous
        yield GeneBlock(target.gene_ids[first:first + len(genes)], values.T)


def _samples_per_chunk(target: Target, genes: np.ndarray, budget: int) -> int:
    """Samples per read: the target's own working memory per sample counts too."""
    per_sample = _FLOAT * len(genes) + target.bytes_per_sample(genes)
    return max(1, budget // max(1, per_sample))
