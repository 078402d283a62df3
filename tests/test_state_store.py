"""The job-state store, on every backend: records, transitions, concurrency, migration.

Every test here runs against the `store` fixture, once per backend (tests/conftest.py);
what only SQLite has (its files, its fork guard) is in test_state_sqlite.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gearqueue.config import load_settings
from gearqueue.errors import JobExists, QueueFull, UnknownJob
from gearqueue.state import JobRecord, JobStatus, StateStore, open_store
from gearqueue.state.migrate import import_record_files

#: Run by several processes at once: count attempts of one job under its lock.
COUNTER = """
import sys
from gearqueue.config import load_settings
from gearqueue.state import open_store
store = open_store(load_settings(sys.argv[1]), "echo")
for _ in range(int(sys.argv[2])):
    with store.locked("counted"):
        record = store.get("counted")
        store.begin_attempt("counted", (record.attempts if record else 0) + 1, "w")
"""

#: Two of these change one record without the lock: one counts attempts up with
#: `failed`, the other marks it refused, which keeps the attempts. A lost update shows
#: as the attempts going back to an older value.
UPDATER = """
import sys, time
from gearqueue.config import load_settings
from gearqueue.errors import QueueFull
from gearqueue.state import open_store
store = open_store(load_settings(sys.argv[1]), "echo")
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # start together
for i in range(1, int(sys.argv[3]) + 1):
    if sys.argv[2] == "attempts":
        store.failed("shared", i, {"class": "X"}, {}, retrying=True)
        seen = store.get("shared").attempts
        if seen < i:
            sys.exit(f"attempts went back from {i} to {seen}: an update was lost")
    else:
        store.refused("shared", QueueFull(f"refused {i}"))
"""


def queued(job_id: str) -> JobRecord:
    return JobRecord(job_id, "echo", JobStatus.QUEUED)


def stored_ids(store: StateStore) -> set[str]:
    return {record.job_id for record in store.records()}


def run_together(script: str, *argument_lists: list[str]) -> None:
    processes = [subprocess.Popen([sys.executable, "-c", script, *arguments],
                                  stderr=subprocess.PIPE, text=True)
                 for arguments in argument_lists]
    failures = [process.communicate(timeout=120)[1] for process in processes
                if process.wait(timeout=120) != 0]
    assert not failures, failures


def test_a_record_round_trips_through_a_fresh_store(store: StateStore, state_config) -> None:
    assert store.queued("job-1")
    store.begin_attempt("job-1", 2, "host:1")
    record = store.succeeded("job-1", {"success": True, "text": "é"})
    assert (record.status, record.attempts, record.worker) == (JobStatus.SUCCEEDED, 2, "host:1")
    again = open_store(load_settings(state_config), "echo")
    try:
        assert again.get("job-1") == record
        assert again.require("job-1") == record
        assert again.get("job-2") is None
        with pytest.raises(UnknownJob, match="job-2"):
            again.require("job-2")
    finally:
        again.close()


def test_queued_refuses_an_id_that_has_a_record(store: StateStore) -> None:
    assert store.queued("job-1") is True
    first = store.require("job-1")
    assert first.status is JobStatus.QUEUED
    assert store.queued("job-1") is False
    assert store.get("job-1") == first
    running = store.begin_attempt("job-1", 1, "w")  # the child's record is never set back
    assert store.queued("job-1") is False
    assert store.get("job-1") == running


def test_a_transition_creates_a_queued_record_and_changes_only_its_fields(store) -> None:
    created = store.failed("job-1", 1, {"class": "X"}, {"success": 0}, retrying=True)
    assert (created.status, created.attempts, created.error, created.result) == \
        (JobStatus.RETRYING, 1, {"class": "X"}, None)
    time.sleep(0.01)
    changed = store.refused("job-1", QueueFull("queue is full"))
    assert (changed.status, changed.attempts, changed.error) == (JobStatus.FAILED, 1, {
        "class": "QueueFull", "message": "queue is full", "traceback": None, "attempt": 0})
    assert changed.created == created.created and changed.updated > created.updated
    assert store.get("job-1") == changed
    with pytest.raises(TypeError):
        changed.evolve(colour="red")


def test_the_life_of_a_job_through_the_named_transitions(store: StateStore) -> None:
    store.queued("job-1")
    first = store.begin_attempt("job-1", 1, "host:1")
    assert (first.status, first.attempts, first.worker) == (JobStatus.RUNNING, 1, "host:1")
    store.failed("job-1", 1, {"class": "Busy"}, {"success": 0}, retrying=True)
    second = store.begin_attempt("job-1", 2, "host:2")
    assert (second.status, second.attempts, second.error) == \
        (JobStatus.RUNNING, 2, {"class": "Busy"})  # the last error stays while it runs
    final = store.failed("job-1", 2, {"class": "Bad"}, {"success": 0, "message": "no"},
                         retrying=False)
    assert (final.status, final.result) == (JobStatus.FAILED, {"success": 0, "message": "no"})
    again = store.begin_attempt("job-1", 1, "host:1", restart=True)  # a fresh publish
    assert (again.status, again.attempts, again.error, again.result) == \
        (JobStatus.RUNNING, 1, None, None)
    done = store.succeeded("job-1", {"success": 1})
    assert (done.status, done.result, done.error, done.attempts) == \
        (JobStatus.SUCCEEDED, {"success": 1}, None, 1)
    assert done.created == first.created


def test_reset_for_replay_requeues_a_failed_job_and_restore_puts_it_back(store) -> None:
    store.failed("job-1", 4, {"class": "Busy"}, {"success": 0}, retrying=False)
    previous = store.require("job-1")
    assert store.reset_for_replay("job-1") == previous
    reset = store.require("job-1")
    assert (reset.status, reset.attempts, reset.error, reset.result) == \
        (JobStatus.QUEUED, 0, None, None)
    store.restore(previous)
    assert store.get("job-1") == previous
    assert store.reset_for_replay("never-seen") is None
    assert store.require("never-seen").status is JobStatus.QUEUED


def test_reset_for_replay_keeps_a_job_that_succeeded(store: StateStore) -> None:
    done = store.succeeded("job-1", {"success": 1})
    assert store.reset_for_replay("job-1") is None
    assert store.get("job-1") == done


def test_processes_counting_under_the_job_lock_lose_no_count(store, state_config) -> None:
    run_together(COUNTER, *[[str(state_config), "200"] for _ in range(4)])
    assert store.require("counted").attempts == 800


def test_concurrent_transitions_outside_the_lock_lose_no_update(store, state_config) -> None:
    start = str(time.time() + 2.0)
    run_together(UPDATER, [str(state_config), "attempts", "2000", start],
                 [str(state_config), "refused", "2000", start])
    assert store.require("shared").attempts == 2000


def test_threads_share_one_store(store: StateStore) -> None:
    errors: list[BaseException] = []

    def count() -> None:
        try:
            for _ in range(100):
                with store.locked("counted"):
                    record = store.get("counted")
                    store.begin_attempt("counted", (record.attempts if record else 0) + 1,
                                        "w")
        except BaseException as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert store.require("counted").attempts == 400


def test_queued_many_stores_all_records_in_one_go(store: StateStore) -> None:
    store.queued_many(iter([f"job-{i}" for i in range(3)]))
    records = [store.require(f"job-{i}") for i in range(3)]
    assert [(record.job_id, record.job_type, record.status, record.attempts)
            for record in records] == [(f"job-{i}", "echo", JobStatus.QUEUED, 0)
                                       for i in range(3)]


def test_queued_many_with_one_existing_id_stores_none(store: StateStore) -> None:
    before = store.begin_attempt("job-1", 1, "w")
    with pytest.raises(JobExists, match=r"job-0, job-1, job-2, \.\.\. already has"):
        store.queued_many([f"job-{i}" for i in range(4)])
    assert stored_ids(store) == {"job-1"}
    assert store.get("job-1") == before


def test_adopt_keeps_the_records_it_has_and_stores_the_others(store: StateStore) -> None:
    newer = store.begin_attempt("job-1", 3, "w")
    old = [queued("job-0"), JobRecord("job-1", "echo", JobStatus.SUCCEEDED, attempts=1,
                                      result={"success": 1}), queued("job-2")]
    assert store.adopt(old) == 2
    assert store.get("job-1") == newer
    assert store.get("job-0") == old[0] and store.get("job-2") == old[2]
    assert store.adopt(old) == 0


def test_adopt_with_a_record_that_cannot_be_serialised_stores_none(store) -> None:
    store.queued("earlier")
    bad = JobRecord("job-1", "echo", JobStatus.SUCCEEDED, result={"value": object()})
    with pytest.raises(TypeError):
        store.adopt([queued("job-0"), bad, queued("job-2")])
    assert stored_ids(store) == {"earlier"}


def test_records_of_the_file_per_job_store_are_imported_at_start_up(store, tmp_path) -> None:
    """Before the database each record was <root>/<id[:2]>/<id>.json. After an upgrade a
    job that succeeded then must still be found (its redelivery replies from it), and a
    record the store already has is newer and wins."""
    root = tmp_path / "old-store" / "echo"
    succeeded = JobRecord("ab12", "echo", JobStatus.SUCCEEDED, attempts=1,
                          result={"success": 1, "echo": 7})
    for folder in ("ab", "cd", "ef"):
        (root / folder).mkdir(parents=True)
    (root / "ab" / "ab12.json").write_text(json.dumps(succeeded.to_json()))
    (root / "ab" / "ab12.json.4242.1.tmp").write_text('{"job_id": "ab1')
    (root / "cd" / "cd34.json").write_text(json.dumps(queued("cd34").to_json()))
    (root / "ef" / "ef56.json").write_text("not a record")
    newer = store.begin_attempt("cd34", 2, "w")
    assert import_record_files(store, root) == 2
    assert store.get("ab12") == succeeded
    assert store.get("cd34") == newer
    assert not (root / "ab").exists() and not (root / "cd").exists()
    assert (root / "ef" / "ef56.json").read_text() == "not a record"  # left for a human
    assert import_record_files(store, root) == 0  # nothing left to import
    assert stored_ids(store) == {"ab12", "cd34"}


def test_a_record_is_stored_as_json_of_its_fields_in_order(store: StateStore) -> None:
    record = store.succeeded("job-1", {"success": 1})
    data = record.to_json()
    assert list(data) == ["job_id", "job_type", "status", "attempts", "created", "updated",
                          "result", "error", "worker"]
    assert data["status"] == "succeeded"
    assert JobRecord.from_json(json.loads(json.dumps(data))) == record


def test_open_store_keeps_job_types_apart(state_config: Path) -> None:
    settings = load_settings(state_config)
    echo, export = open_store(settings, "echo"), open_store(settings, "export")
    try:
        echo.queued("job-1")
        assert export.get("job-1") is None
        export.queued("job-1")
        assert export.require("job-1").job_type == "export"
        assert echo.require("job-1").job_type == "echo"
    finally:
        echo.close()
        export.close()


def test_a_batch_stores_each_result_before_the_next_job_runs(store, state_config) -> None:
    """batch() may group writes (PostgreSQL: one commit a job), but a job's result is
    visible to everyone once the next job has begun, and all of them at the batch's end."""
    observer = open_store(load_settings(state_config), "echo")
    seen: list[JobStatus | None] = []
    try:
        with store.batch(["job-a", "job-b", "job-c"]):
            for job_id in ("job-a", "job-b", "job-c"):
                with store.locked(job_id):
                    record = store.get(job_id)
                    store.begin_attempt(job_id, (record.attempts if record else 0) + 1, "w")
                    if job_id != "job-a":
                        previous = observer.get("job-a" if job_id == "job-b" else "job-b")
                        seen.append(previous.status if previous else None)
                    store.succeeded(job_id, {"success": 1, "job": job_id})
        assert seen == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED]
        assert [(observer.require(j).status, observer.require(j).result["job"],
                 observer.require(j).attempts) for j in ("job-a", "job-b", "job-c")] == \
            [(JobStatus.SUCCEEDED, j, 1) for j in ("job-a", "job-b", "job-c")]
    finally:
        observer.close()
