"""Where one echo job's microseconds go, step by step, on the consumer's side.

`make bench` gives jobs/s end to end; this says what each step of one job costs, so the
per-job overhead can be taken apart (docs/performance.md, "Where a job's time goes").
Each step runs `--count` times in a loop in this process, against a real SQLite store in
a temporary folder, a real executor child and (for the wire steps) the local broker; the
figure is the median over `--repetitions` loops, in microseconds per job.

Wall-clock figures on a shared 2-core host are noisy; for repeatable figures run one
step under callgrind and compare instruction counts:

    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/job_path.py --steps runner_execute --count 0
    (again with --count 500; the difference / 500 is instructions per job)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pickle
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pika

from bench.common import BROKER_URL, write_gear_ini
from gearqueue.config import load_settings
from gearqueue.log import FieldsFormatter
from gearqueue.message import decode_payload, envelope_of
from gearqueue.state import open_store
from gearqueue.worker import settlement
from gearqueue.worker.child import BatchDone, Finished, JobOrder, RunBatch
from gearqueue.worker.outcome import Outcome
from gearqueue.worker.runner import JobRunner

BODY = b'{"data": 1}'
PROPERTIES = pika.BasicProperties(content_type="application/json", message_id="x",
                                  reply_to="amq.rabbitmq.reply-to", correlation_id="c",
                                  delivery_mode=2)


def job_ids(prefix: str) -> Iterator[str]:
    number = 0
    while True:
        number += 1
        yield f"{prefix}-{number}"


def steps(folder: Path, wire: bool) -> dict[str, Callable[[int], None]]:
    """Each step as a function that does it `count` times."""
    config = write_gear_ini(folder, {"echo": "bench-job-path"}, 1)
    settings = load_settings(config)
    service = settings.service("echo")
    store = open_store(settings, "echo")
    store.check_writable()
    runner = JobRunner(settings, service, isolated=True)
    ids = job_ids("p")

    def decode(count: int) -> None:
        for _ in range(count):
            decode_payload(PROPERTIES, BODY, service.max_message_bytes)
            envelope_of(PROPERTIES, BODY)

    def lock(count: int) -> None:
        for job_id in _take(ids, count):
            with store.locked(job_id):
                pass

    def read(count: int) -> None:
        for job_id in _take(ids, count):
            store.get(job_id)

    def begin_commit(count: int) -> None:
        for job_id in _take(ids, count):
            with store.locked(job_id):
                store.get(job_id)
                store.begin_attempt(job_id, 1, "w")

    def result_commit(count: int) -> None:
        for job_id in _take(ids, count):
            with store.locked(job_id):
                store.get(job_id)
                store.succeeded(job_id, {"success": 1, "echo": 1})

    def job_itself(count: int) -> None:
        job = runner.job
        context = types.SimpleNamespace(attempt=1, isolated=True)
        for _ in range(count):
            job.run(job.validate({"data": 1}), context)  # type: ignore[arg-type]

    def runner_execute(count: int) -> None:
        for job_id in _take(ids, count):
            runner.execute(job_id, {"data": 1}, fresh=True)

    def pickling(count: int) -> None:
        outcome = Outcome.success({"success": 1, "echo": 1, "attempt": 1}, 1)
        for job_id in _take(ids, count):
            there = pickle.loads(pickle.dumps(RunBatch([JobOrder(job_id, {"data": 1}, True)]),
                                              -1))
            back = pickle.loads(pickle.dumps(BatchDone([Finished(outcome, 0.0001)]), -1))
            assert there and back

    def plan_and_log(count: int, quick_ms: int = 0) -> None:
        job_log = settlement.JobLog(dataclasses.replace(service, log_quick_jobs_ms=quick_ms))
        handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
        handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)s %(name)s "
                                             "%(message)s"))
        logger = logging.getLogger("gearqueue")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        outcome = Outcome.success({"success": 1, "echo": 1, "attempt": 1}, 1)
        envelope = envelope_of(PROPERTIES, BODY)
        try:
            for _ in range(count):
                done = settlement.plan(service, [settlement.Settled(
                    None, envelope, outcome, 0.0001)])  # type: ignore[arg-type]
                job_log.settled(done)
        finally:
            logger.removeHandler(handler)

    def plan_only(count: int) -> None:
        outcome = Outcome.success({"success": 1, "echo": 1, "attempt": 1}, 1)
        envelope = envelope_of(PROPERTIES, BODY)
        for _ in range(count):
            settlement.plan(service, [settlement.Settled(
                None, envelope, outcome, 0.0001)])  # type: ignore[arg-type]

    result = {"decode": decode, "lock": lock, "read": read, "begin_commit": begin_commit,
              "result_commit": result_commit, "job_itself": job_itself,
              "runner_execute": runner_execute, "pickling": pickling,
              "plan": plan_only, "plan_and_log_line": plan_and_log,
              "plan_and_quick_log": lambda count: plan_and_log(count, 10)}
    result["executor_round_trip"] = _executor_round_trip(settings, service, ids)
    if wire:
        result["reply_publish"] = _wire(settings)
    return result


def _take(ids: Iterator[str], count: int) -> list[str]:
    return [next(ids) for _ in range(count)]


def _executor_round_trip(settings: Any, service: Any, ids: Iterator[str]
                         ) -> Callable[[int], None]:
    """submit + poll of one-job batches through a real executor child (the child runs
    runner.execute too: subtract `runner_execute` for the hop itself)."""
    from gearqueue.worker.executor import Executor

    holder: dict[str, Any] = {}

    def round_trip(count: int) -> None:
        if "executor" not in holder:
            executor = Executor(settings, service, "bench-job-path")
            executor.start(idle=lambda: None)
            holder["executor"] = executor
        executor = holder["executor"]
        for job_id in _take(ids, count):
            executor.submit([JobOrder(job_id, {"data": 1}, True)])
            while executor.poll(1.0) is None:
                pass
            executor.jobs_done = 0

    return round_trip


def _wire(settings: Any) -> Callable[[int], None]:
    """A reply publish on a real connection (what pika costs to frame and send it; an
    ack is one small frame more; the broker's side is not in it)."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    properties = pika.BasicProperties(correlation_id="c", content_type="application/json")

    def send(count: int) -> None:
        for _ in range(count):
            channel.basic_publish("", queue, b'{"success":1,"echo":1,"attempt":1}',
                                  properties)
        connection.process_data_events(0)
        channel.queue_purge(queue)

    return send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--steps", default="", help="comma-separated (default: all)")
    parser.add_argument("--no-wire", action="store_true", help="no broker steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-job-path-") as temp:
        everything = steps(Path(temp), wire=not args.no_wire)
        chosen = args.steps.split(",") if args.steps else list(everything)
        figures: dict[str, float] = {}
        for name in chosen:
            step = everything[name]
            step(min(args.count, 50))  # warm
            times = []
            for _ in range(args.repetitions if args.count else 0):
                started = time.perf_counter()
                step(args.count)
                times.append((time.perf_counter() - started) / args.count * 1e6)
            figures[name] = round(statistics.median(times), 1) if times else 0.0
            print(f"{name:24s} {figures[name]:8.1f} us/job", file=sys.stderr)
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
