"""Helpers for the ProjectR tests: input files, running the job, reading its output, and
an R oracle that computes what projectR itself computes.

The oracle is independent of the engine under test: it calls limma::lmFit on
model.matrix(~0 + loadings), nnls::nnls on the full genes x patterns problem, and
centres genes before the product for the prcomp method, as projectR's source does. It
runs in the same embedded R as the R engine (rpy2 allows one R per process).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gearqueue.config import Settings
from gearqueue.errors import JobError
from gearqueue.jobs.base import JobContext
from gearqueue.jobs.projectr import ProjectRJob
from gearqueue.worker.outcome import failure_reply

ORACLE_R = r"""
oracle_match <- function(D, L) {
  ids <- unique(rownames(D)[rownames(D) %in% rownames(L)])
  list(D = D[match(ids, rownames(D)), , drop = FALSE],
       L = L[match(ids, rownames(L)), , drop = FALSE])
}
oracle_nmf <- function(D, L) {
  m <- oracle_match(D, L)
  design <- model.matrix(~0 + m$L)
  colnames(design) <- colnames(m$L)
  fit <- suppressWarnings(suppressMessages(limma::lmFit(t(m$D), design)))
  list(coef = unname(t(fit$coefficients)),
       pval = unname(2 * pnorm(-abs(t(fit$coefficients / fit$stdev.unscaled / fit$sigma)))))
}
oracle_nnls <- function(D, L) {
  m <- oracle_match(D, L)
  list(coef = vapply(seq_len(ncol(m$D)), function(s) nnls::nnls(m$L, m$D[, s])$x,
                     numeric(ncol(m$L))))
}
oracle_prcomp <- function(D, L) {
  m <- oracle_match(D, L)
  centred <- t(apply(m$D, 1, function(x) x - mean(x)))
  if (ncol(m$D) == 1) centred <- t(centred)
  list(coef = unname(crossprod(m$L, centred)))
}
oracle_rank <- function(X) {
  q <- qr(X, tol = 1e-7)
  list(pivot = q$pivot, rank = q$rank)
}
"""


class ROracle:
    """projectR's answers, computed in R by upstream's own recipe."""

    def __init__(self) -> None:
        import rpy2.rinterface as ri

        ri.initr_simple()
        self.ri = ri
        self.env = ri.baseenv["new.env"]()
        ri.baseenv["eval"](ri.parse(ORACLE_R), envir=self.env)

    def matrix(self, values: np.ndarray, rownames: Sequence[str],
               colnames: Sequence[str]) -> Any:
        ri = self.ri
        rows, columns = values.shape
        vector = ri.FloatSexpVector.from_memoryview(
            memoryview(np.ascontiguousarray(values.T, dtype=np.float64).reshape(-1)))
        names = ri.ListSexpVector([ri.StrSexpVector(list(rownames)),
                                   ri.StrSexpVector(list(colnames))])
        return ri.baseenv["matrix"](vector, nrow=ri.IntSexpVector([rows]),
                                    ncol=ri.IntSexpVector([columns]), dimnames=names)

    def call(self, function: str, *args: Any) -> dict[str, np.ndarray]:
        result = self.env.find(function)(*args)
        return {name: self._array(value) for name, value in zip(result.names, result,
                                                                 strict=True)}

    def _array(self, value: Any) -> np.ndarray:
        if value.typeof == self.ri.RTYPES.REALSXP:
            return np.array(value.memoryview())  # keeps a matrix's shape
        return np.array(list(value))

    def project(self, function: str, genes_by_samples: np.ndarray, genes: Sequence[str],
                loadings: np.ndarray, loading_genes: Sequence[str]) -> dict[str, np.ndarray]:
        """patterns x samples results of `function` (oracle_nmf, oracle_nnls, ...)."""
        samples = [f"s{index}" for index in range(genes_by_samples.shape[1])]
        patterns = [f"P{index}" for index in range(loadings.shape[1])]
        return self.call(function, self.matrix(genes_by_samples, genes, samples),
                         self.matrix(loadings, loading_genes, patterns))

    def rank(self, x: np.ndarray) -> tuple[list[int], int]:
        result = self.call("oracle_rank", self.matrix(
            x, [str(i) for i in range(x.shape[0])], [str(j) for j in range(x.shape[1])]))
        return [int(v) - 1 for v in result["pivot"]], int(result["rank"][0])


# --- input files ----------------------------------------------------------------------


def write_text_target(path: Path, genes: Sequence[str], samples: Sequence[str],
                      genes_by_samples: np.ndarray, *, corner: str = "gene") -> Path:
    """genes x samples as CSV (or TSV if `path` ends in .tsv), values in repr form."""
    path.parent.mkdir(parents=True, exist_ok=True)
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, delimiter=delimiter, lineterminator="\n")
        writer.writerow([corner, *samples])
        for gene, row in zip(genes, genes_by_samples.tolist(), strict=True):
            writer.writerow([gene, *("NA" if v != v else repr(v) for v in row)])
    return path


def write_h5ad_target(path: Path, genes: Sequence[str], samples: Sequence[str],
                      genes_by_samples: np.ndarray, *, layout: str = "dense",
                      dtype: type = np.float64) -> Path:
    """An AnnData file (X = samples x genes) written by anndata itself."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.ascontiguousarray(genes_by_samples.T, dtype=dtype)
    if layout == "csr":
        x = sp.csr_matrix(x)
    elif layout == "csc":
        x = sp.csc_matrix(x)
    adata = anndata.AnnData(x, obs=pd.DataFrame(index=pd.Index(list(samples), dtype=object)),
                            var=pd.DataFrame(index=pd.Index(list(genes), dtype=object)))
    adata.write_h5ad(path)
    return path


def write_cart(path: Path, genes: Sequence[str], patterns: Sequence[str],
               loadings: np.ndarray | None) -> Path:
    """cart.<id>.tab: gene id, gene symbol, one column per pattern (none if loadings is None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
        writer.writerow(["gene_id", "gene_symbol", *patterns])
        for index, gene in enumerate(genes):
            weights = [] if loadings is None else [
                "NA" if v != v else repr(v) for v in loadings[index].tolist()]
            writer.writerow([gene, f"SYM{index}", *weights])
    return path


# --- running the job --------------------------------------------------------------------


def context(settings: Settings, job_id: str = "test-job") -> JobContext:
    return JobContext(job_id=job_id, job_type="projectr", attempt=1, settings=settings,
                      isolated=False, log=logging.LoggerAdapter(logging.getLogger("test"), {}))


def run_job(job: ProjectRJob, payload: dict[str, Any]) -> dict[str, Any]:
    """The reply the runtime would send: validate, run, or the failure reply."""
    try:
        return job.run(job.validate(payload), context(job.settings))
    except JobError as error:
        return failure_reply(error)


def payload(algorithm: str = "nmf", **fields: Any) -> dict[str, Any]:
    return {"dataset_id": "ds", "genecart_id": "cart", "scope": "weighted-list",
            "algorithm": algorithm, "zscore": False, "full_output": False, **fields}


def read_projection(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(sample ids, pattern names, samples x patterns values) of an output CSV."""
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    header, body = rows[0], rows[1:]
    values = np.array([[np.nan if cell == "NA" else float(cell) for cell in row[1:]]
                       for row in body]).reshape(len(body), len(header) - 1)
    return [row[0] for row in body], header[1:], values


def output_path(settings: Settings, reply: dict[str, Any], dataset_id: str = "ds",
                suffix: str = ".csv") -> Path:
    return (settings.paths.projections_dir / "by_dataset" / dataset_id
            / f"{reply['projection_id']}{suffix}")


def generated(rng: np.random.Generator, genes: int, samples: int, patterns: int,
              noise: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loadings L, true weights P, target D = L P + noise) with non-negative L and P."""
    loadings = rng.gamma(2.0, 1.0, size=(genes, patterns))
    truth = rng.uniform(0.0, 5.0, size=(patterns, samples))
    target = loadings @ truth + rng.normal(0.0, noise, size=(genes, samples))
    return loadings, truth, target


def child_main() -> None:
    """`python -c` entry for tests that need separate processes (own R, own locks):
    argv = [config path, payload JSON]; prints the reply as JSON on stdout."""
    import json
    import sys

    from gearqueue.config import load_settings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    job = ProjectRJob(load_settings(sys.argv[1]))
    job.warm_up()
    print(json.dumps(run_job(job, json.loads(sys.argv[2]))), flush=True)
