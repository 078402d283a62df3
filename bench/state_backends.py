"""The job-state store's backends side by side: echo jobs/s at prefetch 1 and 10 and
`call()` latency, with SQLite (under state_dir) and with PostgreSQL (`[state] url`).

One run measures both: an echo consumer per backend and prefetch runs the whole time on
a queue of its own, and the backends take turns round by round (and, for call(), in
batches of 25 calls), so a busy moment of a shared machine weighs on both alike. A
round publishes N no-op jobs with `Client.submit_many` while the consumer drains them;
the figure is N / (last job's record succeeded - submit started). The PostgreSQL side
uses a database of its own on the server at $GEAR_BENCH_POSTGRES (default the local
one), created for the run and dropped after it.

    .venv/bin/python bench/state_backends.py [--jobs N] [--rounds R] [--calls C]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    ROOT,
    broker,
    gear_queues,
    median,
    percentile,
    start,
    stop,
    unique_tag,
    wait_until,
    write_gear_ini,
)
from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.state import JobStatus, open_store
from tests.state_backends import scratch_database  # the tests' own: create, yield, drop

POSTGRES = os.environ.get("GEAR_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
BACKENDS = ("sqlite", "postgresql")
PREFETCHES = (1, 10)
CALL_BATCH = 25
CALL_WARM_UP = 100


def config_for(folder: Path, queue: str, prefetch: int, state_url: str) -> Path:
    folder.mkdir(parents=True)
    path = write_gear_ini(folder, {"echo": queue}, prefetch=prefetch)
    if state_url:
        path.write_text(path.read_text() + f"\n[state]\nurl = {state_url}\n")
    return path


def drain_rate(config: Path, jobs: int) -> float:
    """Jobs/s of one round: submit `jobs` no-op echo jobs, wait for the last success."""
    settings = load_settings(config)
    store = open_store(settings, "echo")
    try:
        with Client(settings, name="gearqueue-bench") as client:
            started = time.perf_counter()
            job_ids = client.submit_many("echo", [{"data": n} for n in range(jobs)])

            def done() -> bool:
                record = store.get(job_ids[-1])
                return record is not None and record.status is JobStatus.SUCCEEDED

            wait_until(done, 300, "the last job of the round")
            elapsed = time.perf_counter() - started
        unfinished = [job_id for job_id in job_ids
                      if store.require(job_id).status is not JobStatus.SUCCEEDED]
        if unfinished:  # prefetch > 1 may finish the last one before a few others
            wait_until(lambda: all(store.require(job_id).status is JobStatus.SUCCEEDED
                                   for job_id in unfinished), 60, "the round's stragglers")
            elapsed = time.perf_counter() - started
    finally:
        store.close()
    return jobs / elapsed


def call_latencies(configs: dict[str, Path], count: int) -> dict[str, list[float]]:
    clients = {name: Client(load_settings(config), name="gearqueue-bench")
               for name, config in configs.items()}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for number in range(CALL_WARM_UP):
            for client in clients.values():
                client.call("echo", {"data": number}, timeout=30)
        for first in range(0, count, CALL_BATCH):
            for name, client in clients.items():
                for number in range(first, min(first + CALL_BATCH, count)):
                    began = time.perf_counter()
                    reply = client.call("echo", {"data": number}, timeout=30)
                    samples[name].append(time.perf_counter() - began)
                    assert reply.get("success") == 1, reply
    finally:
        for client in clients.values():
            client.close()
    return samples


def measure(jobs: int, rounds: int, calls: int) -> dict[str, object]:
    tag = unique_tag()
    with tempfile.TemporaryDirectory(prefix=f"{tag}-") as temp, broker() as admin, \
            scratch_database(POSTGRES) as database:
        folder = Path(temp)
        urls = {"sqlite": "", "postgresql": database}
        configs: dict[tuple[str, int], Path] = {}
        queues: list[str] = []
        consumers = []
        try:
            for backend in BACKENDS:
                for prefetch in PREFETCHES:
                    queue = f"{tag}.{backend}.p{prefetch}"
                    queues.append(queue)
                    config = config_for(folder / f"{backend}-p{prefetch}", queue, prefetch,
                                        urls[backend])
                    configs[backend, prefetch] = config
                    process = start([PYTHON, str(ROOT / "listeners" / "echo_consumer.py"),
                                     "--config", str(config)],
                                    folder / f"{backend}-p{prefetch}.log")
                    consumers.append(process)
                    wait_until(lambda q=queue: admin.consumers(q) >= 1, 60,
                               f"echo consumer on {queue}", process=process)
            rates: dict[str, list[float]] = {f"{b}_p{p}": [] for b in BACKENDS
                                             for p in PREFETCHES}
            for _ in range(rounds):
                for prefetch in PREFETCHES:
                    for backend in BACKENDS:
                        rates[f"{backend}_p{prefetch}"].append(
                            drain_rate(configs[backend, prefetch], jobs))
            latencies = call_latencies({backend: configs[backend, 1] for backend in BACKENDS},
                                       calls)
        finally:
            for process in consumers:
                stop(process)
            for queue in queues:
                admin.delete_own_queues(tag, gear_queues(queue))
    result: dict[str, object] = {"jobs_per_round": jobs, "rounds": rounds}
    for name, values in rates.items():
        result[f"{name}_jobs_per_s"] = round(median(values))
        result[f"{name}_rounds"] = [round(value) for value in values]
    for backend, values in latencies.items():
        milliseconds = [value * 1000 for value in values]
        result[f"{backend}_call_p50_ms"] = round(percentile(milliseconds, 0.50), 2)
        result[f"{backend}_call_p95_ms"] = round(percentile(milliseconds, 0.95), 2)
    for prefetch in PREFETCHES:
        sqlite, postgres = (result[f"{b}_p{prefetch}_jobs_per_s"] for b in BACKENDS)
        assert isinstance(sqlite, int) and isinstance(postgres, int)
        result[f"per_job_time_ratio_p{prefetch}"] = round(sqlite / postgres, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=500, help="timed call()s per backend")
    args = parser.parse_args()
    print(json.dumps(measure(args.jobs, args.rounds, args.calls), indent=2))


if __name__ == "__main__":
    main()
