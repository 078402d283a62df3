"""Progress: the throttle, its bad input, the `progressed` transition on both backends,
records without progress or with keys of a newer gearqueue, the schema versions, and a
job's progress seen while it runs in the caller (queue_enabled = 0). No broker here:
the consumers' two isolations are in test_progress_queue.py."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from state_backends import scratch_database

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import ConfigError, InvalidProgress
from gearqueue.state import JobRecord, JobStatus, Progress, StateStore, open_store
from gearqueue.state.postgres import SCHEMA_VERSION as PG_VERSION
from gearqueue.state.postgres import PostgresStore
from gearqueue.state.sqlite import SCHEMA_VERSION as SQLITE_VERSION
from gearqueue.state.store import AttemptRecord
from gearqueue.worker.progress import INTERVAL, MAX_PHASE, ProgressReporter

NO_BROKER = {"url": "amqp://guest:guest@127.0.0.1:1/%2F"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reporter(clock: Clock) -> tuple[ProgressReporter, list[Progress]]:
    written: list[Progress] = []
    return ProgressReporter("echo job j", written.append, clock=clock), written


# --- the throttle -------------------------------------------------------------------


def test_many_calls_make_a_write_per_interval_at_most() -> None:
    clock = Clock()
    throttle, written = reporter(clock)
    report, finish = throttle.report, throttle.finish
    for done in range(10_000):  # 10 000 calls over 5 s
        clock.now += 5.0 / 10_000
        report(done, 10_000, "chunk")
    finish()
    assert 9 <= len(written) <= 11  # ~2 a second, plus the last
    assert written[-1] == Progress(9_999, 10_000, "chunk")
    assert [p.done for p in written] == sorted(p.done for p in written)


def test_a_quick_job_writes_nothing_not_even_at_its_end() -> None:
    clock = Clock()
    throttle, written = reporter(clock)
    report, finish = throttle.report, throttle.finish
    for phase in ("read", "project", "write"):  # phase changes within the first interval
        for done in range(100):
            clock.now += 0.0001
            report(done, 100, phase)
    finish()
    assert written == []


def test_a_phase_change_is_written_at_once_and_the_end_at_the_end() -> None:
    clock = Clock()
    throttle, written = reporter(clock)
    report, finish = throttle.report, throttle.finish
    clock.now += INTERVAL
    report(1, 10, "z-scores")
    clock.now += 0.01
    report(2, 10, "z-scores")  # throttled
    report(0, 10, "projecting")  # a new phase: at once
    report(5, 10, "projecting")
    finish()
    assert written == [Progress(1, 10, "z-scores"), Progress(0, 10, "projecting"),
                       Progress(5, 10, "projecting")]
    finish()  # nothing new: no write
    assert len(written) == 3


@pytest.mark.parametrize(("done", "total", "phase", "expected"), [
    (11, 10, "", "done cannot exceed total"),
    (-1, 10, "", "counts cannot be negative"),
    (0, -5, "", "counts cannot be negative"),
    (1, 0, "", "done cannot exceed total"),
    (1.5, 10, "", "must be integers"),
    (True, 10, "", "must be integers"),
    ("3", None, "", "must be integers"),
    (1, 10, 7, "the phase must be text"),
])
def test_impossible_progress_is_a_clear_permanent_error(done: object, total: object,
                                                        phase: object, expected: str) -> None:
    throttle, written = reporter(Clock())
    report = throttle.report
    with pytest.raises(InvalidProgress, match=expected) as raised:
        report(done, total, phase)  # type: ignore[arg-type]
    assert "echo job j reported progress" in str(raised.value)
    assert not raised.value.retryable
    assert written == []


def test_numpy_integers_unknown_totals_and_nothing_to_do_are_accepted() -> None:
    clock = Clock()
    throttle, written = reporter(clock)
    report = throttle.report
    clock.now += INTERVAL
    report(np.int64(3), np.int64(7), "chunk")  # type: ignore[arg-type]
    clock.now += INTERVAL
    report(1200, None, "rows read")
    clock.now += INTERVAL
    report(0, 0, "x" * 200)
    assert written == [Progress(3, 7, "chunk"), Progress(1200, None, "rows read"),
                       Progress(0, 0, "x" * MAX_PHASE)]
    assert type(written[0].done) is int


def test_a_throttled_call_costs_a_few_empty_function_calls() -> None:
    """Against an empty function of the same arguments, timed alternately, so a loaded
    machine slows both alike (alone: ~0.4 us a call against ~0.1 us, docs/operations.md)."""
    written: list[Progress] = []  # the real clock; every call throttled
    report = ProgressReporter("echo job j", written.append, interval=3600).report

    def empty(done: int, total: int | None = None, phase: str = "") -> None:
        pass

    def timed(function: object, calls: int = 100_000) -> float:
        started = time.perf_counter()
        for done in range(calls):
            function(done, calls, "chunk")  # type: ignore[operator]
        return (time.perf_counter() - started) / calls

    ours = min(timed(report) for _ in range(5))
    baseline = min(timed(empty) for _ in range(5))
    assert written == []
    assert ours < 10 * baseline, f"{ours * 1e9:.0f} ns a call, {baseline * 1e9:.0f} ns empty"


# --- the record and the transition ----------------------------------------------------


def test_progressed_is_recorded_under_the_lock_and_cleared_by_a_new_attempt(
        store: StateStore) -> None:
    with store.locked("p1"):
        store.begin_attempt("p1", 1, "w")
        store.progressed("p1", Progress(3, 10, "chunk"))
        store.progressed("p1", Progress(4, 10, "chunk"))
    record = store.require("p1")
    assert record.status is JobStatus.RUNNING and record.progress == Progress(4, 10, "chunk")
    with store.locked("p1"):
        store.succeeded("p1", {"success": 1})
    assert store.require("p1").progress == Progress(4, 10, "chunk")  # kept at the end
    with store.locked("p1"):
        store.begin_attempt("p1", 2, "w", restart=True)
    assert store.require("p1").progress is None


def test_a_first_progress_records_an_unrecorded_attempt_as_running(store: StateStore) -> None:
    store.queued("p2")
    with store.locked("p2"):
        store.progressed("p2", Progress(1, None, "rows read"),
                         attempt=AttemptRecord(1, "host:1"))
    record = store.require("p2")
    assert (record.status, record.attempts, record.worker) == (JobStatus.RUNNING, 1, "host:1")
    assert record.progress == Progress(1, None, "rows read")


def test_progress_outside_the_jobs_lock_is_refused(store: StateStore) -> None:
    store.queued("p3")
    with pytest.raises(InvalidProgress, match="only by the thread running the job"):
        store.progressed("p3", Progress(1, 2))
    assert store.require("p3").progress is None


def test_a_record_without_progress_loads_and_unknown_keys_are_ignored() -> None:
    old = {"job_id": "o", "job_type": "echo", "status": "succeeded", "attempts": 1,
           "created": 1.0, "updated": 2.0, "result": {"success": 1}, "error": None,
           "worker": "h:1"}
    assert JobRecord.from_json(old).progress is None
    newer = {**old, "progress": {"done": 2, "total": 4, "phase": "x", "eta": 3},
             "priority_class": "gold"}
    record = JobRecord.from_json(newer)
    assert record.progress == Progress(2, 4, "x")
    assert JobRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_stored_old_and_newer_records_load_on_both_backends(store: StateStore) -> None:
    old = {"job_id": "old", "job_type": "echo", "status": "succeeded", "attempts": 1,
           "created": 1.0, "updated": 2.0, "result": {"success": 1}, "error": None,
           "worker": "h:1"}
    newer = {**old, "job_id": "newer", "from_the_future": [1, 2]}
    raw_insert(store, [old, newer])
    assert store.require("old").progress is None
    assert store.require("newer").result == {"success": 1}
    assert {record.job_id for record in store.records()} >= {"old", "newer"}


def raw_insert(store: StateStore, records: list[dict[str, object]]) -> None:
    """Rows written as another gearqueue would have written them."""
    if isinstance(store, PostgresStore):
        store.check_writable()
        with psycopg.connect(store.url, autocommit=True) as connection:
            for record in records:
                connection.execute("INSERT INTO gear_jobs VALUES ('echo', %s, %s::jsonb)",
                                   (record["job_id"], json.dumps(record)))
        return
    store.check_writable()
    with sqlite3.connect(store.where) as connection:  # type: ignore[attr-defined]
        connection.executemany("INSERT INTO jobs VALUES (?, ?)",
                               [(r["job_id"], json.dumps(r)) for r in records])


# --- schema versions ----------------------------------------------------------------------


def test_postgres_schema_1_is_migrated_to_the_version_with_progress() -> None:
    with scratch_database() as url:
        with psycopg.connect(url, autocommit=True) as connection:  # as version 1 left it
            connection.execute("CREATE TABLE gear_schema (version integer NOT NULL)")
            connection.execute("INSERT INTO gear_schema VALUES (1)")
            connection.execute("CREATE TABLE gear_jobs (job_type text NOT NULL, job_id text "
                               "NOT NULL, record jsonb NOT NULL, PRIMARY KEY (job_type, "
                               "job_id))")
            connection.execute(
                "INSERT INTO gear_jobs VALUES ('echo', 'v1', %s::jsonb)",
                (json.dumps({"job_id": "v1", "job_type": "echo", "status": "queued"}),))
        store = PostgresStore(url, "echo")
        try:
            store.check_writable()
            assert PG_VERSION == 2 and store.schema_version() == PG_VERSION
            assert store.require("v1").progress is None
            with psycopg.connect(url) as connection:
                assert connection.execute("SELECT count(*) FROM gear_schema").fetchone() == (1,)
        finally:
            store.close()


def test_sqlite_records_its_schema_version_and_refuses_a_newer_one(tmp_path: Path,
                                                                   make_config) -> None:
    settings = load_settings(make_config())
    store = open_store(settings, "echo")
    store.check_writable()
    path = Path(store.where)
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SQLITE_VERSION,)
        connection.execute(f"PRAGMA user_version = {SQLITE_VERSION + 1}")
    store.close()
    with pytest.raises(ConfigError, match=f"schema version {SQLITE_VERSION + 1}, newer"):
        open_store(settings, "echo").check_writable()


# --- in the caller (queue_enabled = 0) --------------------------------------------------


def test_progress_is_in_the_record_while_a_job_runs_in_the_caller(make_config) -> None:
    config = make_config(rabbitmq=NO_BROKER, echo_service={"queue_enabled": 0})
    settings = load_settings(config)
    seen: list[Progress] = []
    replies: list[dict[str, object]] = []

    def run() -> None:
        with Client(settings) as client:
            replies.append(client.call("echo", {"data": 1, "sleep": 2.5, "progress": 50},
                                       job_id="in-caller"))

    worker = threading.Thread(target=run)
    worker.start()
    watcher = open_store(settings, "echo")
    while worker.is_alive():
        record = watcher.get("in-caller")
        if record is not None and record.progress is not None:
            assert record.status is JobStatus.RUNNING
            if not seen or seen[-1] != record.progress:
                seen.append(record.progress)
        time.sleep(0.05)
    worker.join()
    assert replies == [{"success": 1, "echo": 1, "attempt": 1}]
    assert len(seen) >= 3, seen
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert all(p.total == 50 and p.phase == "step" for p in seen)
    final = watcher.require("in-caller")
    assert final.status is JobStatus.SUCCEEDED and final.progress == Progress(50, 50, "step")
    assert final.attempts == 1
