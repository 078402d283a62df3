"""The NumPy engine: projectr.R's semantics without R, held to R's numbers in the tests.

Which patterns are estimable is decided by `linpack` (R's own rule); the estimable ones
are then solved with LAPACK's QR, which gives the same least-squares solution. NNLS uses
SciPy's Lawson-Hanson, p-values SciPy's normal tail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular
from scipy.optimize import nnls
from scipy.special import ndtr

from .engine import ChunkResult, Fit
from .linpack import estimable_columns

log = logging.getLogger(__name__)

LEAST_SQUARES = ("nmf", "fixednmf")


@dataclass(frozen=True)
class _LeastSquares:
    """One QR of the estimable loadings columns, reused by every chunk."""

    loadings: np.ndarray
    estimable: np.ndarray
    q: np.ndarray  # genes x rank
    r: np.ndarray  # rank x rank
    stdev_unscaled: np.ndarray  # per pattern, NaN where not estimable


def _least_squares(loadings: np.ndarray) -> _LeastSquares:
    estimable, _ = estimable_columns(loadings)
    q, r = np.linalg.qr(loadings[:, estimable])
    unscaled = np.full(loadings.shape[1], np.nan)
    if len(estimable):
        inverse = solve_triangular(r, np.eye(len(estimable)))
        unscaled[estimable] = np.sqrt(np.sum(inverse * inverse, axis=1))
    return _LeastSquares(loadings, estimable, q, r, unscaled)


class NumpyEngine:
    name = "numpy"

    def __init__(self) -> None:
        self._buffer: np.ndarray | None = None

    def start(self) -> None:
        pass

    def fit(self, loadings: np.ndarray, algorithm: str, full_output: bool) -> Fit:
        loadings = np.asarray(loadings, dtype=np.float64)
        if algorithm not in LEAST_SQUARES:
            return Fit(algorithm, full_output, loadings.shape[1], (), loadings)
        state = _least_squares(loadings)
        not_estimable = tuple(sorted(set(range(loadings.shape[1])) - set(state.estimable)))
        return Fit(algorithm, full_output, loadings.shape[1], not_estimable, state)

    def buffer(self, samples: int, genes: int) -> np.ndarray:
        # Reused across chunks: fresh memory per chunk costs a page fault per 4 KiB.
        if self._buffer is None or self._buffer.shape != (samples, genes):
            self._buffer = np.empty((samples, genes))
        return self._buffer

    def project(self, fit: Fit, data: np.ndarray) -> ChunkResult:
        if fit.algorithm == "nmf":
            return self._nmf(fit.state, data, fit.full_output)
        if fit.algorithm == "fixednmf":
            return self._nnls(fit.state, data)
        if fit.algorithm == "binary":
            missing = np.isnan(data)
            present = (data != 0) & ~missing  # NaN counts as 0 (NaN != 0 is true)
            coef = (present.astype(np.float64) @ (fit.state != 0)).T
            return ChunkResult(coef=coef, pval=None, flagged=int(missing.any(axis=1).sum()))
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and Inf are expected
            coef = (data @ fit.state).T
            flagged = _flagged(coef, data)
            if fit.algorithm == "pca" and len(flagged):
                coef[:, flagged] = (np.where(np.isnan(data[flagged]), 0.0, data[flagged])
                                    @ fit.state).T
        return ChunkResult(coef=coef, pval=None, flagged=_count_missing(data, flagged))

    def release(self) -> None:
        self._buffer = None

    def _nmf(self, ls: _LeastSquares, data: np.ndarray, full: bool) -> ChunkResult:
        patterns, samples = ls.loadings.shape[1], data.shape[0]
        coef = np.full((patterns, samples), np.nan)
        unscaled = np.repeat(ls.stdev_unscaled[:, None], samples, axis=1)
        sigma = np.full(samples, np.nan)
        rank = len(ls.estimable)
        with np.errstate(invalid="ignore", over="ignore"):
            effects = (data @ ls.q).T  # this operand order is NumPy's fast GEMM layout
        flagged = _flagged(effects if rank else data.T, data)
        if rank:
            coef[ls.estimable] = solve_triangular(ls.r, effects, check_finite=False)
            genes = data.shape[1]
            if full and genes > rank:
                with np.errstate(invalid="ignore"):
                    sigma = np.sqrt(_residual_ss(data, ls.q, effects, flagged) / (genes - rank))
        for group in _groups_by_missing(data, flagged):
            self._refit(ls.loadings, data, group, coef, unscaled, sigma)
        result = ChunkResult(coef=coef, pval=None, flagged=_count_missing(data, flagged))
        if not full:
            return result
        with np.errstate(divide="ignore", invalid="ignore"):
            t = coef / unscaled / sigma[None, :]
        return ChunkResult(coef=coef, pval=2 * ndtr(-np.abs(t)), flagged=result.flagged)

    @staticmethod
    def _refit(loadings: np.ndarray, data: np.ndarray, group: np.ndarray, coef: np.ndarray,
               unscaled: np.ndarray, sigma: np.ndarray) -> None:
        """limma's per-sample path: least squares on that sample's finite genes."""
        observed = np.isfinite(data[group[0]])
        unscaled[:, group] = np.nan
        if not observed.any():
            return
        ls = _least_squares(loadings[observed])
        rank = len(ls.estimable)
        if not rank:
            return
        block = data[np.ix_(group, observed)]
        effects = (block @ ls.q).T
        coef[np.ix_(ls.estimable, group)] = solve_triangular(ls.r, effects)
        unscaled[:, group] = ls.stdev_unscaled[:, None]
        genes = int(observed.sum())
        if genes > rank:
            residual = block - (ls.q @ effects).T
            sigma[group] = np.sqrt(np.einsum("ij,ij->i", residual, residual) / (genes - rank))

    @staticmethod
    def _nnls(ls: _LeastSquares, data: np.ndarray) -> ChunkResult:
        """NNLS on the estimable patterns (the others NA, as in nmf), per sample."""
        patterns, samples = ls.loadings.shape[1], data.shape[0]
        coef = np.full((patterns, samples), np.nan)
        rank = len(ls.estimable)
        with np.errstate(invalid="ignore", over="ignore"):
            effects = (data @ ls.q).T
        flagged = _flagged(effects if rank else data.T, data)
        missing = set(flagged.tolist())
        for sample in range(samples):
            if sample in missing:
                values = data[sample]
                observed = np.isfinite(values)
                if observed.any():
                    subset = ls.loadings[observed]
                    estimable, _ = estimable_columns(subset)
                    if len(estimable):
                        coef[estimable, sample] = nnls(subset[:, estimable],
                                                       values[observed])[0]
            elif rank:
                # same minimiser as on the genes: ||d - Lb||^2 = ||Q'd - Rb||^2 + c
                coef[ls.estimable, sample] = nnls(ls.r, effects[:, sample])[0]
        return ChunkResult(coef=coef, pval=None, flagged=_count_missing(data, flagged))


def _flagged(product: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Samples whose column of the product is not finite: a NaN/Inf anywhere in a sample
    reaches it (or a finite overflow, refitted too, which is exact anyway)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.flatnonzero(~np.isfinite(product.sum(axis=0)))


def _count_missing(data: np.ndarray, flagged: np.ndarray) -> int:
    return int((~np.isfinite(data[flagged])).any(axis=1).sum()) if len(flagged) else 0


def _residual_ss(block: np.ndarray, q: np.ndarray, effects: np.ndarray,
                 flagged: np.ndarray) -> np.ndarray:
    """Per sample ||d||^2 - ||Q'd||^2, exact residuals where that loses digits (as R)."""
    total = np.einsum("ij,ij->i", block, block)
    rss = total - np.einsum("ij,ij->j", effects, effects)
    close = np.setdiff1d(np.flatnonzero(~(rss > 1e-6 * total)), flagged)
    if len(close):
        residual = block[close] - (q @ effects[:, close]).T
        rss[close] = np.einsum("ij,ij->i", residual, residual)
    return rss


def _groups_by_missing(data: np.ndarray, incomplete: np.ndarray) -> list[np.ndarray]:
    """The incomplete samples grouped by which genes they miss (one fit per group)."""
    groups: dict[bytes, list[int]] = {}
    for sample in incomplete.tolist():
        groups.setdefault(np.packbits(~np.isfinite(data[sample])).tobytes(), []).append(sample)
    return [np.array(group) for group in groups.values()]
