"""ProjectR nmf, side by side: seconds and peak RSS of each way to compute it.

    python bench/bench_projectr.py [--quick] [--sizes 1000,10000] [--threads 1]

Methods (each measured in a fresh subprocess, so its peak RSS is its own):

- r          the job's path: R engine (projectr.R through rpy2), chunks written straight
             into R's memory, one QR of L, BLAS-3 products
- r_full     the same with full_output (residuals, sigma, p-values)
- numpy      the job's path with the NumPy engine
- numpy_qr   the floor: plain NumPy, Q, R = qr(L); solve(R, Q' D) on the whole matrix
- limma      limma::lmFit on the whole matrix (moved into R with one copy), what
             projectR calls; only up to --limma-max samples (it needs ~7x the input)
- r_h5ad     the job's path reading a CSR .h5ad (2% non-zero) from disk in chunks:
             memory stays bounded whatever the file's dense size

The input is dense float64, genes x samples, D = L P + noise, generated in place
(samples x genes C order, i.e. R's column-major genes x samples) before the clock
starts; peak RSS is the process's high-water mark from just before the method runs
(/proc/self/clear_refs), so it counts the input, the interpreter and R. Seconds are wall
time; CPU seconds (all threads) are steadier when the machine is shared, and the load
average is recorded with each figure. Results go to bench/results/projectr.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "projectr.json"
METHODS = ("r", "r_full", "numpy", "numpy_qr", "limma", "r_h5ad")
LIMMA_R = """
gq_bench_limma <- function(D, L) {
  design <- model.matrix(~0 + L)
  fit <- limma::lmFit(t(D), design)
  t(fit$coefficients)
}
"""


#: Noise sd; signal values are ~250, so RSS/||d||^2 ~ 4e-4, a realistic fit. Much closer
#: fits (< 1e-6) make full_output form residuals exactly (see projectr.R), ~2x slower.
NOISE = 5.0


def generate(genes: int, samples: int, patterns: int) -> tuple[np.ndarray, np.ndarray]:
    """(L genes x patterns, D as samples x genes C order), without a second copy of D."""
    rng = np.random.default_rng(0)
    loadings = rng.gamma(2.0, 1.0, size=(genes, patterns))
    data = np.empty((samples, genes))
    for start in range(0, samples, 1000):
        stop = min(start + 1000, samples)
        truth = rng.uniform(0, 5, size=(stop - start, patterns))
        data[start:stop] = truth @ loadings.T + rng.normal(0, NOISE, size=(stop - start, genes))
    return loadings, data


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds() -> float:
    """CPU time of this process, all threads: far steadier than wall time on a shared
    machine, where other processes take turns on the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(method: str, genes: int, samples: int, patterns: int, h5ad: str | None) -> dict:
    """Measure one method in this process; returns the record."""
    from scipy.linalg import solve_triangular

    from gearqueue.matrices.targets import MatrixTarget
    from gearqueue.projectr.engine import make_engine
    from gearqueue.projectr.projection import project

    engine = make_engine("numpy" if method == "numpy" else "r")
    if method != "numpy_qr":
        engine.start()
    loadings, data = (generate(genes, samples, patterns) if method != "r_h5ad"
                      else (generate(genes, 1, patterns)[0], None))
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    cpu_started = cpu_seconds()
    started = time.perf_counter()
    if method in ("r", "r_full", "numpy"):
        target = MatrixTarget([str(i) for i in range(genes)],
                              [str(i) for i in range(samples)], data)
        coef = project(target, np.arange(genes), loadings, "nmf", zscore=False,
                       full_output=method == "r_full", engine=engine).coef
    elif method == "r_h5ad":
        from gearqueue.matrices.h5ad import H5adTarget

        target = H5adTarget(Path(h5ad or ""))
        coef = project(target, np.arange(genes), loadings, "nmf", zscore=False,
                       full_output=False, engine=engine).coef
        target.close()
    elif method == "numpy_qr":
        q, r = np.linalg.qr(loadings)
        coef = solve_triangular(r, (data @ q).T)  # NumPy's fastest GEMM layout for this
    else:
        coef = limma(engine, loadings, data)
    seconds = time.perf_counter() - started
    return {"method": method, "genes": genes, "samples": samples, "patterns": patterns,
            "seconds": seconds, "cpu_seconds": cpu_seconds() - cpu_started,
            "peak_rss_bytes": status_kib("VmHWM") * 1024,
            "rss_before_bytes": before * 1024, "input_bytes": genes * samples * 8,
            "checksum": float(np.nansum(coef)), "load_average": os.getloadavg()[0],
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")}


def limma(engine, loadings: np.ndarray, data: np.ndarray) -> np.ndarray:
    ri = engine._ri  # the engine's embedded R
    ri.baseenv["eval"](ri.parse(LIMMA_R), envir=ri.globalenv)
    d = engine._matrix(data.T)
    l = engine._matrix(loadings)  # noqa: E741
    result = ri.globalenv.find("gq_bench_limma")(d, l)
    return np.array(result.memoryview())


def write_csr_h5ad(path: Path, genes: int, samples: int, density: float = 0.02) -> None:
    """A sparse AnnData file written in blocks (the dense matrix never exists)."""
    import h5py

    rng = np.random.default_rng(1)
    per_row = max(1, int(genes * density))
    with h5py.File(path, "w") as file:
        file.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        for axis, count in (("obs", samples), ("var", genes)):
            group = file.create_group(axis)
            group.attrs.update({"_index": "_index", "encoding-type": "dataframe",
                                "encoding-version": "0.2.0", "column-order": np.array([])})
            group.create_dataset("_index", data=np.array([f"{axis}{i}" for i in range(count)],
                                                        dtype=h5py.string_dtype()))
        x = file.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array([samples, genes])})
        nnz = per_row * samples
        x.create_dataset("indptr", data=np.arange(0, nnz + 1, per_row, dtype=np.int64))
        data = x.create_dataset("data", shape=(nnz,), dtype=np.float32)
        indices = x.create_dataset("indices", shape=(nnz,), dtype=np.int32)
        step = genes // per_row
        for start in range(0, samples, 5000):
            stop = min(start + 5000, samples)
            # evenly spaced columns shifted by a random offset per row: sorted, unique
            offsets = rng.integers(0, step, size=(stop - start, 1))
            cols = offsets + np.arange(per_row) * step
            indices[start * per_row:stop * per_row] = cols.reshape(-1)
            data[start * per_row:stop * per_row] = rng.gamma(2.0, 1.0, cols.size)


def best_of(runs: list[dict]) -> dict:
    """The fastest run (the machine may be shared), with its peak RSS; failures listed."""
    good = [run for run in runs if "error" not in run] or runs
    best = dict(min(good, key=lambda run: run.get("seconds", 0.0)))
    best["runs_seconds"] = [run.get("seconds") for run in runs]
    best["failed_runs"] = [run["error"][-300:] for run in runs if "error" in run]
    return best


def measure_once(method: str, genes: int, samples: int, patterns: int, threads: str | None,
                 h5ad: Path | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OPENBLAS_NUM_THREADS"] = threads
    command = [sys.executable, __file__, "--child", method, "--genes", str(genes),
               "--patterns", str(patterns), "--sizes", str(samples)]
    if h5ad:
        command += ["--h5ad", str(h5ad)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"method": method, "samples": samples, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(records: list[dict]) -> str:
    lines = [f"{'samples':>8} {'method':>9} {'seconds':>8} {'x qr':>6} {'cpu s':>7} "
             f"{'x qr':>6} {'peak GiB':>9} {'x input':>8} {'load':>5}"]
    for record in records:
        if "seconds" not in record:
            lines.append(f"{record['samples']:>8} {record['method']:>9}  FAILED")
            continue
        base = next((r for r in records if r.get("method") == "numpy_qr"
                     and r["samples"] == record["samples"] and "seconds" in r), None)
        wall = record["seconds"] / base["seconds"] if base else float("nan")
        cpu = record["cpu_seconds"] / base["cpu_seconds"] if base else float("nan")
        lines.append(f"{record['samples']:>8} {record['method']:>9} {record['seconds']:>8.2f} "
                     f"{wall:>6.2f} {record['cpu_seconds']:>7.2f} {cpu:>6.2f} "
                     f"{record['peak_rss_bytes'] / 2**30:>9.2f} "
                     f"{record['peak_rss_bytes'] / record['input_bytes']:>8.2f} "
                     f"{record['load_average']:>5.1f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute)")
    parser.add_argument("--sizes", default="1000,10000,50000", help="sample counts")
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--patterns", type=int, default=50)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--limma-max", type=int, default=10000)
    parser.add_argument("--threads", help="OPENBLAS_NUM_THREADS for the measured processes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method, round robin "
                        "(the fastest is kept)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--h5ad", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.genes, args.patterns = "200,2000", 2000, 10
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.child, args.genes, sizes[0], args.patterns, args.h5ad)))
        return 0
    records = []
    methods = args.methods.split(",")
    for samples in sizes:
        chosen = [m for m in methods if not (m == "limma" and samples > args.limma_max)]
        h5ad = None
        if "r_h5ad" in chosen:
            h5ad = args.output.parent / f"projectr-bench-{samples}.h5ad"
            h5ad.parent.mkdir(parents=True, exist_ok=True)
            write_csr_h5ad(h5ad, args.genes, samples)
        runs: dict[str, list[dict]] = {method: [] for method in chosen}
        # Round robin, so a busy moment on a shared machine hits every method alike.
        for repetition in range(args.repeat):
            for method in chosen:
                if method == "limma" and repetition:
                    continue  # minutes per run, and only for orientation
                runs[method].append(measure_once(method, args.genes, samples, args.patterns,
                                                 args.threads, h5ad))
        for method in chosen:
            records.append(best_of(runs[method]))
            print(table(records).splitlines()[-1], flush=True)
        if h5ad is not None:
            h5ad.unlink(missing_ok=True)
    print("\n" + table(records))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "genes": args.genes, "patterns": args.patterns, "threads": args.threads or "default",
        "results": records}, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
