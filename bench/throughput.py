"""Item 1: end-to-end throughput of no-op jobs, one consumer, publisher running alongside.

Each system's consumer runs as a real process on a queue of its own; `publisher.py`
publishes N persistent messages in that system's format while the consumer drains them,
and the figure is N / (last job done - first publish). Every consumer acks manually
after the job; prefetch is 1 or 10 (Celery: worker_prefetch_multiplier; Dramatiq:
$dramatiq_queue_prefetch per process, except "default", which is Dramatiq untouched).
The first run of each consumer is a warm-up that also sizes N, so a run lasts about
`seconds` whatever the system's speed.

Celery and Dramatiq run twice: as they are usually benchmarked (no result backend), and
like for like with gearqueue, which stores every result: with their Redis result backend
(`results=True`: the same app, worker, warm-up and runs, plus $BENCH_RESULTS_URL).
Each system says what it guarantees (`Guarantees`), and the table shows it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import redis_store
from bench.common import (
    BENCH,
    PYTHON,
    ROOT,
    broker,
    cpu_seconds,
    gear_queues,
    median,
    start,
    stop,
    unique_tag,
    wait_until,
    write_gear_ini,
)

log = logging.getLogger(__name__)

WARM_UP_COUNT = 100
MIN_COUNT, MAX_COUNT = 50, 30000
#: Past this many seconds of runs, stop after the third: a system that stalls (Celery's
#: solo pool, see docs/performance.md) would otherwise take most of the bench's time.
RUNS_BUDGET_SECONDS = 90.0
#: Warm-up before the measured runs, for every system alike (see `measure`).
WARM_UP_SECONDS = 10.0


@dataclass(frozen=True)
class Guarantees:
    """What a system promises about a job, for the table next to its speed."""

    ack_after_work: str
    result_stored: str  # for `results` systems: filled in from Redis's settings
    exactly_once_effect: str
    crash_loop_guard: str


@dataclass(frozen=True)
class System:
    key: str
    label: str
    kind: str  # publisher.py --kind
    command: Callable[[str, int, Path], tuple[list[str], dict[str, str]]]
    queues: Callable[[str], list[str]]
    guarantees: Guarantees
    exchanges: Callable[[str], list[str]] = lambda queue: []
    #: Store every result in Redis (Celery's result backend, Dramatiq's Results).
    results: bool = False


def _raw(queue: str, prefetch: int, folder: Path) -> tuple[list[str], dict[str, str]]:
    return [PYTHON, str(BENCH / "raw_consumer.py"), queue, str(prefetch)], {}


def _gear(isolation: str):
    """gearqueue's echo consumer with its defaults, but for `isolation` (process: the
    jobs in the executor child; inline: in the consumer, echo's own default)."""
    def command(queue: str, prefetch: int, folder: Path) -> tuple[list[str], dict[str, str]]:
        config = write_gear_ini(folder, {"echo": queue}, prefetch, isolation=isolation)
        return [PYTHON, str(ROOT / "listeners" / "echo_consumer.py"), "--config",
                str(config)], {}
    return command


def _celery(pool: str, concurrency: int):
    def command(queue: str, prefetch: int, folder: Path) -> tuple[list[str], dict[str, str]]:
        return ([PYTHON, "-m", "celery", "-A", "bench.celery_app", "worker", "-Q", queue,
                 f"--pool={pool}", f"--concurrency={concurrency}", "-n", f"{queue}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat",
                 "--loglevel=WARNING"],
                {"BENCH_CELERY_QUEUE": queue, "BENCH_CELERY_PREFETCH": str(prefetch)})
    return command


def _dramatiq(processes: int | None, threads: int | None):
    def command(queue: str, prefetch: int, folder: Path) -> tuple[list[str], dict[str, str]]:
        args = [PYTHON, "-m", "dramatiq", "bench.dramatiq_app", "-Q", queue]
        env = {"BENCH_DRAMATIQ_QUEUE": queue}
        if processes is not None:
            args += ["--processes", str(processes), "--threads", str(threads)]
            env["dramatiq_queue_prefetch"] = str(prefetch)
        return args, env
    return command


def _dramatiq_queues(queue: str) -> list[str]:
    return [queue, f"{queue}.DQ", f"{queue}.XQ"]


NO_RESULT = "no"
IN_REDIS = "Redis"  # replaced by what Redis's settings make of it (redis_store.durability)
RAW = Guarantees("yes: after the reply", NO_RESULT, "no", "no")
GEAR = Guarantees(
    "yes: after the result is stored and the reply sent",
    "yes: SQLite WAL, synchronous=NORMAL, before the reply and ack: survives any process "
    "crash; a power loss can lose the last commits",
    "yes: per job id, under its lock; a redelivered finished job gets its stored reply",
    "yes: a redelivered job's attempt stored before it runs (a first delivery's with its "
    "result); past max_retries, dead-lettered")
CELERY_SOLO = Guarantees(
    "yes: task_acks_late, after the task returns", NO_RESULT,
    "no: a redelivered task runs again", "no: a task that kills the worker is "
    "redelivered without limit")
CELERY_PREFORK = dataclasses.replace(
    CELERY_SOLO, crash_loop_guard="no count: a task that kills its child fails at once, "
    "acked (task_reject_on_worker_lost off)")
DRAMATIQ = Guarantees(
    "yes: after the actor returns", NO_RESULT, "no: a redelivered message runs again",
    "no: a message that kills the worker is redelivered without limit (Retries counts "
    "exceptions only)")


def _with_results(guarantees: Guarantees) -> Guarantees:
    return dataclasses.replace(
        guarantees, ack_after_work=guarantees.ack_after_work + " and its result is stored",
        result_stored=IN_REDIS)


SYSTEMS: dict[str, System] = {system.key: system for system in (
    System("raw", "raw pika consumer (ceiling)", "json", _raw, lambda queue: [queue], RAW),
    *(System(f"gear_{isolation}", f"gearqueue echo consumer, isolation = {isolation}",
             "json", _gear(isolation), gear_queues, GEAR)
      for isolation in ("inline", "process")),
    System("celery_solo", "Celery 5 --pool=solo", "celery", _celery("solo", 1),
           lambda queue: [queue], CELERY_SOLO, lambda queue: [queue]),
    System("celery_prefork2", "Celery 5 prefork x2", "celery", _celery("prefork", 2),
           lambda queue: [queue], CELERY_PREFORK, lambda queue: [queue]),
    System("dramatiq_1x1", "Dramatiq 1 process x 1 thread", "dramatiq", _dramatiq(1, 1),
           _dramatiq_queues, DRAMATIQ),
    System("dramatiq_default", "Dramatiq default (2 proc x 8 threads)", "dramatiq",
           _dramatiq(None, None), _dramatiq_queues, DRAMATIQ),
    # Like for like with gearqueue: the same peers, every result stored.
    System("celery_solo_results", "Celery 5 --pool=solo + Redis results", "celery",
           _celery("solo", 1), lambda queue: [queue], _with_results(CELERY_SOLO),
           lambda queue: [queue], results=True),
    System("celery_prefork2_results", "Celery 5 prefork x2 + Redis results", "celery",
           _celery("prefork", 2), lambda queue: [queue], _with_results(CELERY_PREFORK),
           lambda queue: [queue], results=True),
    System("dramatiq_1x1_results", "Dramatiq 1 process x 1 thread + Redis Results",
           "dramatiq", _dramatiq(1, 1), _dramatiq_queues, _with_results(DRAMATIQ),
           results=True),
    System("dramatiq_default_results", "Dramatiq default (2x8) + Redis Results", "dramatiq",
           _dramatiq(None, None), _dramatiq_queues, _with_results(DRAMATIQ), results=True),
)}


def publish_and_wait(kind: str, queue: str, count: int, marker: Path, timeout: float,
                     prefetch: int, env: dict[str, str]) -> tuple[float, bool]:
    """Run publisher.py once: jobs per second from first publish to last job done, and
    whether it timed out (then the rate is of what was drained within `timeout`)."""
    result = subprocess.run(
        [PYTHON, str(BENCH / "publisher.py"), "--kind", kind, "--queue", queue,
         "--count", str(count), "--marker", str(marker), "--timeout", str(timeout),
         "--prefetch", str(prefetch)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60, check=False,
        env={**os.environ, **env})
    if result.returncode != 0:
        raise RuntimeError(f"publisher failed ({result.returncode}): {result.stderr[-2000:]}")
    times = json.loads(result.stdout.strip().splitlines()[-1])
    return times["count"] / (times["finished"] - times["started"]), times["timed_out"]


def measure(key: str, prefetch: int, repetitions: int, seconds: float,
            timeout: float = 30.0) -> dict[str, Any]:
    """Median jobs/s of one system at one prefetch, over `repetitions` runs."""
    system = SYSTEMS[key]
    tag = unique_tag()
    queue = f"{tag}.{key}"
    # The consumer and the publisher (which reads the last result) share the backend.
    results_env = redis_store.results_env(queue) if system.results else {}
    guarantees = dataclasses.asdict(system.guarantees)
    if system.results:
        guarantees["result_stored"] = "before the ack, in " + redis_store.durability(
            redis_store.persistence())
    stored: int | None = None
    published = 0
    with tempfile.TemporaryDirectory(prefix=f"{tag}-") as temp, broker() as admin:
        folder = Path(temp)
        args, env = system.command(queue, prefetch, folder)
        process = start(args, folder / "consumer.log", {**env, **results_env})
        try:
            wait_until(lambda: admin.consumers(queue) >= 1, 60, f"{key} consumer ready",
                       process=process)
            marker = folder / "last-job-done"
            # A cap on held messages, for counting what a timed-out run drained.
            held = prefetch * (2 if key.startswith("celery_prefork2") else 1)
            if key.startswith("dramatiq_default"):
                held = 2 * 16

            def run(count: int) -> tuple[float, bool]:
                nonlocal published
                published += count
                return publish_and_wait(system.kind, queue, count, marker, timeout, held,
                                        results_env)

            warm, timed_out = run(WARM_UP_COUNT)
            timeouts = int(timed_out)
            if timed_out:  # what it left would count against the next run
                admin.purge_own_queue(tag, queue)
            count = int(min(MAX_COUNT, max(MIN_COUNT, warm * seconds)))
            # Then run until every consumer is in its steady state (interpreter caches,
            # the broker's queue process, gearqueue's state database and its executor
            # child's first recycling), as a deployed worker long is.
            warm_until = time.monotonic() + WARM_UP_SECONDS
            while time.monotonic() < warm_until:
                _, timed_out = run(count)
                if timed_out:
                    timeouts += 1
                    admin.purge_own_queue(tag, queue)
                    break
            rates: list[float] = []
            runs_started = time.monotonic()
            cpu_before = cpu_seconds(process.pid)
            while len(rates) < repetitions and (
                    len(rates) < 3 or time.monotonic() - runs_started < RUNS_BUDGET_SECONDS):
                rate, timed_out = run(count)
                rates.append(rate)
                if timed_out:
                    timeouts += 1
                    admin.purge_own_queue(tag, queue)
            cpu_us_per_job = (cpu_seconds(process.pid) - cpu_before) / (
                count * len(rates)) * 1e6
        except Exception:
            log.error("%s consumer log:\n%s", key,
                      (folder / "consumer.log").read_text(errors="replace")[-3000:])
            raise
        finally:
            stop(process)
            admin.delete_own_queues(tag, system.queues(queue))
            admin.delete_own_exchanges(tag, system.exchanges(queue))
            if system.results:
                stored = redis_store.delete_own_keys(queue)
    log.info("%s prefetch %d: %.0f jobs/s (runs of %d: %s), %.0f us CPU a job", key,
             prefetch, median(rates), count, ", ".join(f"{rate:.0f}" for rate in rates),
             cpu_us_per_job)
    note = f"runs of {count}"
    if timeouts:
        note += (f"; {timeouts} run(s) hit the {timeout:g} s cap (rate = what was "
                 "drained)")
    if warm < 0.5 * median(rates):  # e.g. Celery solo's stalls: say so next to the figure
        note += f"; warm-up of {WARM_UP_COUNT} ran at only {warm:.0f}/s"
    entry: dict[str, Any] = {
        "system": key, "label": system.label, "prefetch": prefetch, "count": count,
        "runs": rates, "jobs_per_s": median(rates), "warm_up_jobs_per_s": warm,
        "note": note, "guarantees": guarantees, "cpu_us_per_job": cpu_us_per_job}
    if stored is not None:  # every job's result, counted (then deleted) after the runs
        entry["results_stored"], entry["jobs_published"] = stored, published
        if stored < published and not timeouts:
            entry["note"] += f"; only {stored} of {published} results stored"
    return entry
