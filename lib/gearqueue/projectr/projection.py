"""The projection loop: stream the target through an engine, chunk of samples by chunk.

Samples are independent in every algorithm except through two statistics taken over
ALL samples: the z-score of each gene (`zscore`) and pca_centered's centring. The first
is computed in a first pass before projecting; the second uses the exact identity
centred = L'D - rowMeans(L'D), applied once every chunk is projected. So the result does
not depend on the chunk size (gEAR's chunked centring did, which is why it gave up on it).

Missing values are left in the chunk and handled by the engine: nmf and fixednmf drop
them per sample (as limma::lmFit does); pca and binary count NaN as 0 (as gEAR does);
pca_centered keeps projectR's behaviour (any non-finite value in a matched gene makes the
projection NA). With zscore, non-finite values count as missing in the statistics and
become 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..matrices import NO_REPORT, Report
from ..matrices.targets import Target
from .engine import Engine

log = logging.getLogger(__name__)

#: Memory for one chunk of samples (engine buffer + the target's read buffer).
CHUNK_BYTES = 64 << 20
KEEP_MISSING = ("nmf", "fixednmf")


@dataclass(frozen=True)
class ProjectionResult:
    coef: np.ndarray  # patterns x samples
    pval: np.ndarray | None  # patterns x samples, nmf with full_output only
    not_estimable: tuple[int, ...]
    #: Samples fitted on fewer genes because some values were missing (nmf, fixednmf).
    incomplete_samples: int
    #: Samples with an NA result in an estimable pattern (all genes missing, or a pattern
    #: not estimable from that sample's remaining genes).
    na_samples: int
    #: pca_centered met a non-finite value: the whole projection is NA, as in projectR.
    centred_na: bool


def chunk_size(num_samples: int, num_genes: int, target_bytes: int,
               budget: int = CHUNK_BYTES) -> int:
    per_sample = max(1, num_genes * 8 + target_bytes)
    return max(1, min(num_samples, budget // per_sample))


def project(target: Target, genes: np.ndarray, loadings: np.ndarray, algorithm: str, *,
            zscore: bool, full_output: bool, engine: Engine,
            chunk_bytes: int = CHUNK_BYTES,
            prepare: Callable[[np.ndarray, int, int], None] | None = None,
            progress: Report = NO_REPORT) -> ProjectionResult:
    """Project the target's `genes` (rows, matched order) onto `loadings` (same genes).

    `prepare(chunk, start, stop)`, if given, changes each chunk (samples start..stop x
    genes) in place after the z-scores: a contract's own preprocessing (gEAR's).
    `progress` is told the samples done after each chunk (and, with zscore, of the
    first pass that takes the genes' statistics).
    """
    num_samples, num_genes = len(target.sample_ids), len(genes)
    step = chunk_size(num_samples, num_genes, target.bytes_per_sample(genes), chunk_bytes)
    scaling = gene_scaling(target, genes, step, progress) if zscore else None
    fit = engine.fit(loadings, algorithm, full_output and algorithm == "nmf")
    coef = np.empty((fit.num_patterns, num_samples))
    pval = np.empty_like(coef) if fit.full_output else None
    incomplete_samples = 0
    centred_na = False
    log.info("projecting %d samples x %d genes onto %d patterns (%s, %s engine, "
             "%d samples per chunk)", num_samples, num_genes, fit.num_patterns, algorithm,
             engine.name, step)
    try:
        for start in range(0, num_samples, step):
            stop = min(start + step, num_samples)
            data = engine.buffer(stop - start, num_genes)
            target.read(start, stop, genes, data)
            if scaling is not None:
                standardise(data, *scaling)
            if prepare is not None:
                prepare(data, start, stop)
            result = engine.project(fit, data)
            if algorithm == "pca_centered":
                centred_na = centred_na or result.flagged > 0
            elif algorithm in KEEP_MISSING:
                incomplete_samples += result.flagged
            coef[:, start:stop] = result.coef
            if pval is not None and result.pval is not None:
                pval[:, start:stop] = result.pval
            log.debug("projected samples %d-%d of %d", start, stop, num_samples)
            progress(stop, num_samples, "samples projected")
    finally:
        engine.release()
    if algorithm == "pca_centered":
        coef -= coef.mean(axis=1, keepdims=True)
        if centred_na:
            coef[:] = np.nan
    estimable = np.setdiff1d(np.arange(fit.num_patterns), fit.not_estimable)
    na_samples = int(np.isnan(coef[estimable]).any(axis=0).sum()) if not centred_na else 0
    return ProjectionResult(coef=coef, pval=pval, not_estimable=fit.not_estimable,
                            incomplete_samples=incomplete_samples, na_samples=na_samples,
                            centred_na=centred_na)


def gene_scaling(target: Target, genes: np.ndarray, step: int,
                 progress: Report = NO_REPORT) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's mean and standard deviation (ddof 1) over all samples' finite values.

    One streaming pass; chunks are merged with Chan et al.'s pairwise update, so the
    result does not depend on the chunk size beyond rounding. A gene whose finite values
    are all equal gets sd 0 (not a rounding residue), so its z-scores become 0.
    """
    num_samples, num_genes = len(target.sample_ids), len(genes)
    count = np.zeros(num_genes)
    mean = np.zeros(num_genes)
    m2 = np.zeros(num_genes)
    low = np.full(num_genes, np.inf)
    high = np.full(num_genes, -np.inf)
    chunk = np.empty((step, num_genes))
    for start in range(0, num_samples, step):
        stop = min(start + step, num_samples)
        data = chunk[:stop - start]
        target.read(start, stop, genes, data)
        finite = np.isfinite(data)
        n = finite.sum(axis=0).astype(np.float64)
        values = np.where(finite, data, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            chunk_mean = np.where(n > 0, values.sum(axis=0) / n, 0.0)
        deviation = np.where(finite, data - chunk_mean, 0.0)
        chunk_m2 = np.einsum("ij,ij->j", deviation, deviation)
        total = count + n
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = chunk_mean - mean
            share = np.where(total > 0, n / total, 0.0)
            mean = mean + delta * share
            m2 = m2 + chunk_m2 + delta * delta * count * share
        count = total
        low = np.minimum(low, np.where(finite, data, np.inf).min(axis=0))
        high = np.maximum(high, np.where(finite, data, -np.inf).max(axis=0))
        progress(stop, num_samples, "samples z-scored")
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.where(count > 1, np.sqrt(m2 / (count - 1)), np.nan)
    sd[low == high] = 0.0
    return mean, sd


def standardise(data: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> None:
    """z-scores in place; missing, infinite and undefined (sd 0 or NaN) become 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        data -= mean
        data /= sd
    np.copyto(data, 0.0, where=~np.isfinite(data))
