"""The R engine: projectr.R on Debian's R, called through rpy2's low-level interface.

Only `rpy2.rinterface` is used: no pandas2ri (data.frames overflow R's protect stack
near 50,000 samples and mangle names), no numpy2ri (two copies of every matrix). Each
chunk is written by the target straight into an R matrix allocated once per chunk size,
through a NumPy view of R's memory, so the data is copied exactly once on its way in.

R is started in `start()`, in the executor child, never at import: an R fatal error then
kills that child only.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from typing import Any

import numpy as np

from ..errors import ConfigError, PermanentJobError, TransientJobError
from .engine import ChunkResult, Fit

log = logging.getLogger(__name__)

R_SOURCE = "projectr.R"
R_PACKAGES = ("nnls",)
LEAST_SQUARES = ("nmf", "fixednmf")


class REngine:
    name = "r"

    def __init__(self) -> None:
        self._ri: Any = None
        self._env: Any = None
        self._buffers: dict[tuple[int, int], tuple[Any, np.ndarray]] = {}

    def start(self) -> None:
        if self._env is not None:
            return
        try:
            import rpy2.rinterface as ri
            from rpy2.rinterface_lib import callbacks

            # rpy2 points LD_LIBRARY_PATH at R's library folders for good; this process
            # has loaded R by then, and what it starts later must not inherit that.
            library_path = os.environ.get("LD_LIBRARY_PATH")
            try:
                ri.initr_simple()
            finally:
                if library_path is None:
                    os.environ.pop("LD_LIBRARY_PATH", None)
                else:
                    os.environ["LD_LIBRARY_PATH"] = library_path
        except (ImportError, OSError, RuntimeError) as error:
            raise ConfigError(f"cannot start R through rpy2 ({error}); install R and rpy2 "
                              f"(see docs/projectr.md) and set R_HOME, or choose the "
                              f"'numpy' ProjectR engine") from None
        # R's console output goes to our log, not to stdout.
        callbacks.consolewrite_print = lambda text: log.info("R: %s", text.rstrip())
        callbacks.consolewrite_warnerror = lambda text: log.warning("R: %s", text.rstrip())
        self._ri = ri
        for package in R_PACKAGES:
            loaded = ri.baseenv["requireNamespace"](ri.StrSexpVector([package]),
                                                   quietly=ri.BoolSexpVector([True]))
            if not loaded[0]:
                raise ConfigError(f"R package '{package}' is not installed "
                                  f"(Debian: apt-get install r-cran-{package})")
        env = ri.baseenv["new.env"]()
        with resources.as_file(resources.files(__package__) / R_SOURCE) as path:
            ri.baseenv["sys.source"](ri.StrSexpVector([str(path)]), envir=env)
        self._env = env
        version = ri.baseenv["R.version.string"]
        log.info("R engine ready: %s, R_HOME=%s", version[0], os.environ.get("R_HOME"))

    def fit(self, loadings: np.ndarray, algorithm: str, full_output: bool) -> Fit:
        matrix = self._matrix(loadings)
        if algorithm not in LEAST_SQUARES:
            return Fit(algorithm, full_output, loadings.shape[1], (), matrix)
        prepared = self._call("gq_ls_prepare", matrix)
        not_estimable = tuple(int(index) - 1 for index in _element(prepared, "not_estimable"))
        return Fit(algorithm, full_output, loadings.shape[1], not_estimable, prepared)

    def buffer(self, samples: int, genes: int) -> np.ndarray:
        key = (samples, genes)
        if key not in self._buffers:
            matrix = _uninitialised_matrix(genes, samples)
            view = np.asarray(matrix.memoryview()).T  # genes x samples F = samples x genes C
            if view.shape != key or not view.flags.c_contiguous or not view.flags.writeable:
                raise RuntimeError(f"R buffer view has shape {view.shape}, flags {view.flags}")
            # The view does not keep the R object alive: hold both.
            self._buffers[key] = (matrix, view)
        return self._buffers[key][1]

    def project(self, fit: Fit, data: np.ndarray) -> ChunkResult:
        matrix = self._buffers[data.shape][0]
        ri = self._ri
        if fit.algorithm == "nmf":
            # ||d||^2 per sample for the residuals, while the chunk is in cache (one pass,
            # no temporary); only p-values need it.
            sumsq = np.einsum("ij,ij->i", data, data) if fit.full_output else np.empty(0)
            result = self._call("gq_nmf_chunk", fit.state, matrix,
                                ri.BoolSexpVector([fit.full_output]),
                                ri.FloatSexpVector.from_memoryview(sumsq.data))
        elif fit.algorithm == "fixednmf":
            result = self._call("gq_nnls_chunk", fit.state, matrix)
        elif fit.algorithm == "binary":
            result = self._call("gq_binary_chunk", fit.state, matrix)
        else:
            result = self._call("gq_dot_chunk", fit.state, matrix,
                                ri.BoolSexpVector([fit.algorithm == "pca"]))
        pval = _element(result, "pval") if "pval" in _names(result) else None
        return ChunkResult(coef=_array(_element(result, "coef")),
                           pval=None if pval is None else _array(pval),
                           flagged=int(_element(result, "flagged")[0]))

    def release(self) -> None:
        self._buffers.clear()
        if self._ri is not None:
            self._ri.baseenv["gc"]()

    def _matrix(self, array: np.ndarray) -> Any:
        """A numeric R matrix holding `array` (one copy)."""
        ri = self._ri
        rows, columns = array.shape
        vector = ri.FloatSexpVector.from_memoryview(
            np.ascontiguousarray(array.T, dtype=np.float64).reshape(-1).data)
        return ri.baseenv["matrix"](vector, nrow=ri.IntSexpVector([rows]),
                                    ncol=ri.IntSexpVector([columns]))

    def _call(self, function: str, *args: Any) -> Any:
        from rpy2.rinterface_lib.embedded import RRuntimeError

        try:
            return self._env.find(function)(*args)
        except RRuntimeError as error:
            message = str(error).strip()
            if "cannot allocate" in message:
                raise TransientJobError(f"R ran out of memory in {function}: {message}") \
                    from None
            raise PermanentJobError(f"R failed in {function}: {message}") from None


def _uninitialised_matrix(rows: int, columns: int) -> Any:
    """A rows x columns R double matrix whose values are not set (the caller fills it):
    R's matrix(0, ...) would write every value once more, for nothing."""
    from rpy2.rinterface_lib import conversion, memorymanagement, openrlib

    rlib = openrlib.rlib
    with memorymanagement.rmemory() as rmemory:
        vector = rmemory.protect(rlib.Rf_allocVector(rlib.REALSXP, rows * columns))
        dims = rmemory.protect(rlib.Rf_allocVector(rlib.INTSXP, 2))
        openrlib.INTEGER(dims)[0] = rows
        openrlib.INTEGER(dims)[1] = columns
        rlib.Rf_setAttrib(vector, rlib.R_DimSymbol, dims)
        return conversion._cdata_to_rinterface(vector)  # preserved from here on


def _names(value: Any) -> list[str]:
    from rpy2.rinterface import StrSexpVector

    names = value.names
    return list(names) if isinstance(names, StrSexpVector) else []


def _element(value: Any, name: str) -> Any:
    return value[_names(value).index(name)]


def _array(value: Any) -> np.ndarray:
    """A NumPy copy of an R numeric matrix."""
    return np.array(value.memoryview(), dtype=np.float64)
