#!/usr/bin/env python3
"""`make bench`: every benchmark against the local broker, one table, JSON in bench/results/.

    bench/run.py [--quick] [--only throughput,publish,latency,startup,syscalls,projectr]
                 [--repetitions N] [--systems raw,gear,...]

Each figure is the median of several repetitions in this one run, so ratios compare
like with like. The ProjectR figures come from bench/bench_projectr.py (its own script),
run as a subprocess; its JSON (bench/results/projectr.json) is folded into the table.
See docs/performance.md for what each item measures and the latest table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench import latency, publish_rate, redis_store, report, startup, syscalls, throughput
from bench.common import BENCH, PYTHON, ROOT

log = logging.getLogger("bench")

RESULTS = BENCH / "results"
ITEMS = ("throughput", "publish", "latency", "startup", "syscalls", "projectr")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        broker = subprocess.run(["rabbitmqctl", "-q", "version"], capture_output=True,
                                text=True, timeout=20, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        broker = "unknown"
    return {"cpu": cpu, "cores": psutil.cpu_count(), "memory_gib":
            round(psutil.virtual_memory().total / 2**30, 1), "os": platform.platform(),
            "python": platform.python_version(), "rabbitmq": broker or "unknown",
            "load_average_at_start": os.getloadavg()}


def run_projectr(quick: bool) -> dict[str, Any]:
    """Run bench_projectr.py with the flags it accepts; its JSON, or why there is none."""
    script = BENCH / "bench_projectr.py"
    output = RESULTS / "projectr.json"
    if not script.exists():
        return {"error": "bench/bench_projectr.py is not there yet"}
    usage = subprocess.run([PYTHON, str(script), "--help"], capture_output=True, text=True,
                           cwd=ROOT, timeout=120, check=False).stdout
    flags = set(re.findall(r"--[a-z][a-z-]*", usage))
    args = [PYTHON, str(script)]
    if quick and "--quick" in flags:
        args.append("--quick")
    for flag in ("--output", "--out", "--json"):
        if flag in flags:
            args += [flag, str(output)]
            break
    started = time.time()
    result = subprocess.run(args, cwd=ROOT, text=True, capture_output=True, check=False)
    if result.returncode != 0:
        return {"error": f"bench_projectr.py exited {result.returncode}: "
                         f"{result.stderr.strip()[-300:]}"}
    if not output.exists() or output.stat().st_mtime < started:
        return {"error": f"bench_projectr.py wrote no fresh {output.relative_to(ROOT)}"}
    return json.loads(output.read_text())


def measure_throughput(systems: list[str], repetitions: int, seconds: float
                       ) -> dict[str, dict[str, Any]]:
    """Item 1 for every system at prefetch 1 and 10; Redis running if a system stores
    its results there (started here if nothing answers, see bench/redis_store.py)."""
    figures: dict[str, dict[str, Any]] = {"1": {}, "10": {}}
    with contextlib.ExitStack() as stack:
        no_redis = ""
        if any(throughput.SYSTEMS[key].results for key in systems):
            try:
                stack.enter_context(redis_store.running())
            except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
                log.error("no Redis for the result-backend peers: %s", error)
                no_redis = f"failed: no Redis: {error}"
        for prefetch, row in figures.items():
            for key in systems:
                if no_redis and throughput.SYSTEMS[key].results:
                    row[key] = {"label": throughput.SYSTEMS[key].label, "jobs_per_s": None,
                                "note": no_redis[:80]}
                    continue
                try:
                    row[key] = throughput.measure(key, int(prefetch), repetitions, seconds)
                except Exception as error:
                    log.exception("%s at prefetch %s failed", key, prefetch)
                    row[key] = {"label": throughput.SYSTEMS[key].label,
                                "jobs_per_s": None, "note": f"failed: {error}"[:80]}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer and shorter repetitions (a few minutes)")
    parser.add_argument("--only", default=",".join(ITEMS), help="comma-separated items")
    parser.add_argument("--repetitions", type=int, help="runs per figure (median taken)")
    parser.add_argument("--systems", default=",".join(throughput.SYSTEMS),
                        help="throughput systems to run")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its consumer and deletes its
    # queues (they run in process groups of their own and would outlive us).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.ERROR)
    # This sandbox sets PYTHONDONTWRITEBYTECODE; then every spawned executor child would
    # compile gearqueue from source again (the competitors' site-packages come compiled).
    # A deployed worker has its .pyc files, and so do the processes started here.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    items = [item.strip() for item in args.only.split(",") if item.strip()]
    repetitions = args.repetitions or (3 if args.quick else 5)
    seconds = 1.0 if args.quick else 2.5
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick,
                               "repetitions": repetitions, "started": time.time()}

    if "throughput" in items:
        systems = [key.strip() for key in args.systems.split(",") if key.strip()]
        results["throughput"] = measure_throughput(systems, repetitions, seconds)
    if "publish" in items:
        results["publish"] = publish_rate.measure(
            repetitions, one_count=500 if args.quick else 1000,
            batch_count=5000 if args.quick else 10000)
    if "latency" in items:
        results["latency"] = latency.measure(300 if args.quick else 1000)
    if "startup" in items:
        results["startup"] = []
        for job_type in ("echo", "projectr"):
            try:
                results["startup"].append(startup.measure(job_type, repetitions))
            except Exception as error:
                log.exception("start-up of %s failed", job_type)
                results["startup"].append({"job_type": job_type, "error": str(error)})
    if "syscalls" in items:
        results["syscalls"] = syscalls.measure_all(1000 if args.quick else 2000)
    if "projectr" in items:
        results["projectr"] = run_projectr(args.quick)
    results["finished"] = time.time()

    name = "latest-quick.json" if args.quick else "latest.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report.table(results))
    if results.get("syscalls"):
        print("\n[6] system calls a job (strace -c -f, consumer and executor child):\n")
        print(syscalls.table(results["syscalls"]))
    print(f"\n{len(items)} items in {results['finished'] - results['started']:.0f} s; "
          f"JSON: {(RESULTS / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
