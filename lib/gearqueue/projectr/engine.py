"""What a projection engine is, and which one runs.

An engine does the arithmetic on one chunk of samples at a time; everything else
(reading, matching, z-scores, missing-value policy, centring, writing) is shared, so two
engines can only differ in the numbers they compute, and the tests hold them to 1e-8.

- "r" (default, `r_engine`): our R code on Debian's R through rpy2. It is the reference:
  the same LINPACK QR as lm.fit/limma::lmFit, nnls::nnls for fixednmf, pnorm for
  p-values. The chunk is written straight into R's memory (one copy) and solved with one
  QR of the loadings and BLAS-3 products, which measured within ~1.1x of plain NumPy
  (bench/bench_projectr.py), so there is no speed reason to leave R.
- "numpy" (`numpy_engine`): the same semantics without R, for hosts without R and as a
  cross-check; its rank decisions use a port of R's dqrdc2 pivoting (`linpack`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError

#: engine name -> "module:class"
ENGINES: dict[str, str] = {
    "r": "gearqueue.projectr.r_engine:REngine",
    "numpy": "gearqueue.projectr.numpy_engine:NumpyEngine",
}
DEFAULT_ENGINE = "r"


@dataclass(frozen=True)
class Fit:
    """What an engine prepared once per job from the matched loadings."""

    algorithm: str
    full_output: bool
    num_patterns: int
    #: Patterns (0-based columns) that least squares cannot estimate: collinear with
    #: earlier patterns, or all zero, over the matched genes. Their results are NA.
    not_estimable: tuple[int, ...]
    state: Any


@dataclass(frozen=True)
class ChunkResult:
    coef: np.ndarray  # patterns x samples of the chunk
    pval: np.ndarray | None  # same shape, nmf with full_output only
    #: Samples of the chunk holding a NaN or an infinity. nmf/fixednmf fitted them on
    #: their finite genes only (as limma::lmFit does); pca and binary counted NaN as 0.
    flagged: int = 0


class Engine(Protocol):
    name: str

    def start(self) -> None:
        """Load what the engine needs (R, its packages); once per executor child."""
        ...

    def fit(self, loadings: np.ndarray, algorithm: str, full_output: bool) -> Fit:
        """Prepare for `loadings` (matched genes x patterns); once per job."""
        ...

    def buffer(self, samples: int, genes: int) -> np.ndarray:
        """A writable samples x genes float64 C-order array the next `project` reads.

        It stays valid until `release`; the target writes each chunk straight into it.
        """
        ...

    def project(self, fit: Fit, data: np.ndarray) -> ChunkResult:
        """Project `data` (a buffer from `buffer`), which may hold NaN and infinities.

        They are found from the small products (a non-finite value reaches its sample's
        column of L'D), not by scanning the data.
        """
        ...

    def release(self) -> None:
        """Drop the buffers and give memory back after a job."""
        ...


def make_engine(name: str | None = None) -> Engine:
    """The engine called `name` (default DEFAULT_ENGINE), not yet started."""
    name = name or DEFAULT_ENGINE
    try:
        target = ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown ProjectR engine '{name}' (known: "
                          f"{', '.join(ENGINES)})") from None
    module_name, _, attribute = target.partition(":")
    engine: Engine = getattr(importlib.import_module(module_name), attribute)()
    return engine
