"""The job-state store: one SQLite database per job type, shared by processes and threads."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest

from gearqueue import statedb
from gearqueue.errors import ConfigError, StateStoreUnavailable, UnknownJob
from gearqueue.state import JobRecord, JobStatus, StateStore

#: Run by several processes at once: count attempts of one job under its lock.
COUNTER = """
import sys
from pathlib import Path
from gearqueue.state import JobRecord, JobStatus, StateStore
store = StateStore(Path(sys.argv[1]), "echo")
for _ in range(int(sys.argv[2])):
    with store.locked("counted"):
        record = store.get("counted") or JobRecord("counted", "echo", JobStatus.QUEUED)
        store.put(record.evolve(attempts=record.attempts + 1))
"""

#: Two of these change different fields of one record with `update`, without the lock.
#: A lost update shows as a field going back to an older value.
UPDATER = """
import sys, time
from pathlib import Path
from gearqueue.state import StateStore
store = StateStore(Path(sys.argv[1]), "echo")
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # start together
for i in range(1, int(sys.argv[3]) + 1):
    if sys.argv[2] == "attempts":
        store.update("shared", attempts=i)
        seen = store.get("shared").attempts
    else:
        store.update("shared", worker=f"w{i:05}")
        seen = int(store.get("shared").worker[1:])
    if seen < i:
        sys.exit(f"{sys.argv[2]} went back from {i} to {seen}: an update was lost")
"""


def queued(job_id: str) -> JobRecord:
    return JobRecord(job_id, "echo", JobStatus.QUEUED)


def stored_rows(store: StateStore) -> dict[str, str]:
    with sqlite3.connect(store.path) as connection:
        return dict(connection.execute("SELECT job_id, record FROM jobs"))


def run_together(script: str, *argument_lists: list[str]) -> None:
    processes = [subprocess.Popen([sys.executable, "-c", script, *arguments],
                                  stderr=subprocess.PIPE, text=True)
                 for arguments in argument_lists]
    failures = [process.communicate(timeout=120)[1] for process in processes
                if process.wait(timeout=120) != 0]
    assert not failures, failures


def test_a_record_round_trips_through_a_fresh_store(tmp_path: Path) -> None:
    record = JobRecord("job-1", "echo", JobStatus.SUCCEEDED, attempts=2,
                       result={"success": True, "text": "é"}, worker="host:1")
    StateStore(tmp_path, "echo").put(record)
    again = StateStore(tmp_path, "echo")
    assert again.get("job-1") == record
    assert again.require("job-1") == record
    assert again.get("job-2") is None
    with pytest.raises(UnknownJob, match="job-2"):
        again.require("job-2")


def test_records_live_in_one_wal_database_per_job_type_as_compact_json(tmp_path) -> None:
    store = StateStore(tmp_path, "echo")
    store.put(queued("job-1"))
    StateStore(tmp_path, "export").put(JobRecord("job-1", "export", JobStatus.QUEUED))
    assert store.root == tmp_path / "echo"
    assert store.path == tmp_path / "echo" / "jobs.sqlite3"
    assert (tmp_path / "export" / "jobs.sqlite3").exists()
    with sqlite3.connect(store.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    text = stored_rows(store)["job-1"]
    assert list(json.loads(text)) == [item.name for item in fields(JobRecord)]
    assert json.loads(text)["status"] == "queued"
    assert ", " not in text and ": " not in text


def test_create_refuses_an_id_that_has_a_record(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "echo")
    first = store.create(queued("job-1"))
    with pytest.raises(FileExistsError):
        store.create(JobRecord("job-1", "echo", JobStatus.FAILED))
    assert store.get("job-1") == first


def test_update_creates_a_queued_record_and_changes_only_what_it_is_given(tmp_path) -> None:
    store = StateStore(tmp_path, "echo")
    created = store.update("job-1", attempts=1)
    assert (created.status, created.attempts) == (JobStatus.QUEUED, 1)
    time.sleep(0.01)
    changed = store.update("job-1", status=JobStatus.RETRYING, error={"class": "X"})
    assert (changed.status, changed.attempts, changed.error) == \
        (JobStatus.RETRYING, 1, {"class": "X"})
    assert changed.created == created.created and changed.updated > created.updated
    assert store.get("job-1") == changed
    with pytest.raises(TypeError):
        store.update("job-1", colour="red")


def test_processes_counting_under_the_job_lock_lose_no_count(tmp_path: Path) -> None:
    run_together(COUNTER, *[[str(tmp_path), "200"] for _ in range(4)])
    assert StateStore(tmp_path, "echo").require("counted").attempts == 800


def test_concurrent_updates_of_different_fields_lose_neither(tmp_path: Path) -> None:
    start = str(time.time() + 2.0)
    run_together(UPDATER, [str(tmp_path), "attempts", "2000", start],
                 [str(tmp_path), "worker", "2000", start])
    record = StateStore(tmp_path, "echo").require("shared")
    assert (record.attempts, record.worker) == (2000, "w02000")


def test_threads_share_one_store(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "echo")
    errors: list[BaseException] = []

    def count() -> None:
        try:
            for _ in range(100):
                with store.locked("counted"):
                    record = store.get("counted") or queued("counted")
                    store.put(record.evolve(attempts=record.attempts + 1))
        except BaseException as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert store.require("counted").attempts == 400


def test_create_many_stores_all_records_in_one_go(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "echo")
    records = [queued(f"job-{i}") for i in range(3)]
    assert store.create_many(iter(records)) == records
    assert [store.get(f"job-{i}") for i in range(3)] == records


def test_create_many_with_one_existing_id_stores_none(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "echo")
    before = store.put(queued("job-1").evolve(status=JobStatus.RUNNING))
    with pytest.raises(FileExistsError, match=r"job-0, job-1, job-2, \.\.\. already has"):
        store.create_many([queued(f"job-{i}") for i in range(4)])
    assert stored_rows(store).keys() == {"job-1"}
    assert store.get("job-1") == before


def test_create_many_with_a_record_that_cannot_be_serialised_stores_none(tmp_path) -> None:
    store = StateStore(tmp_path, "echo")
    store.put(queued("earlier"))
    bad = JobRecord("job-1", "echo", JobStatus.SUCCEEDED, result={"value": object()})
    with pytest.raises(TypeError):
        store.create_many([queued("job-0"), bad, queued("job-2")])
    assert stored_rows(store).keys() == {"earlier"}


def test_create_many_refused_by_the_database_midway_rolls_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "echo")
    no_id = JobRecord(None, "echo", JobStatus.QUEUED)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.create_many([queued("job-0"), queued("job-1"), no_id, queued("job-3")])
    assert stored_rows(store) == {}
    store.put(queued("job-4"))  # the connection is usable again
    assert stored_rows(store).keys() == {"job-4"}


def locks_held_on(path: Path) -> list[str]:
    """This process's POSIX locks on `path`, from /proc/locks."""
    inode = f":{path.stat().st_ino} "
    return [line.split(maxsplit=1)[1]  # without the line's number
            for line in Path("/proc/locks").read_text().splitlines()
            if " POSIX " in line and line.split()[4] == str(os.getpid()) and inode in line]


def test_a_forked_child_opens_a_connection_of_its_own_that_takes_real_locks(tmp_path) -> None:
    """Forks happen while another thread is inside the store. A child that used the
    parent's connection or mutex would hang (the alarm kills it) or fail; one whose new
    connection believed the parent's locks were its own would hold no lock (checked in
    /proc/locks) and could see the WAL checkpointed and deleted under it."""
    store = StateStore(tmp_path, "echo")
    store.put(queued("parent"))
    assert locks_held_on(store.path)
    busy = threading.Event()
    done = threading.Event()

    def keep_busy() -> None:
        while not done.is_set():
            store.update("parent", attempts=1)
            busy.set()

    thread = threading.Thread(target=keep_busy)
    thread.start()
    try:
        assert busy.wait(10)
        statuses = []
        for child in range(10):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    signal.alarm(10)
                    store.put(queued(f"child-{child}"))
                    if store.get("parent") is not None and locks_held_on(store.path):
                        code = 0
                finally:
                    os._exit(code)
            statuses.append(os.waitpid(pid, 0)[1])
    finally:
        done.set()
        thread.join(10)
    assert statuses == [0] * 10
    assert all(store.get(f"child-{child}") is not None for child in range(10))
    store.put(queued("parent-after"))
    assert StateStore(tmp_path, "echo").get("parent-after") is not None


def test_opening_a_second_store_keeps_the_locks_of_the_first(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops all of the process's POSIX locks on it;
    a store that lost its read lock could have the WAL checkpointed and deleted under
    it by another process, and read a stale snapshot from then on."""
    first = StateStore(tmp_path, "echo")
    first.put(queued("job-1"))
    held = locks_held_on(first.path)
    assert held
    second = StateStore(tmp_path, "echo")
    second.check_writable()
    assert second.get("job-1") is not None
    assert locks_held_on(first.path) == held


def test_a_database_locked_past_the_timeout_raises_a_transient_error_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statedb, "BUSY_TIMEOUT", 0.2)
    store = StateStore(tmp_path, "echo")
    store.check_writable()
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StateStoreUnavailable, match=r"jobs\.sqlite3.*locked"):
            store.put(queued("job-1"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.put(queued("job-1")) == store.get("job-1")


def test_check_writable_names_state_dir_when_the_folder_cannot_be_made(tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"\[paths\].*state_dir.*not writable"):
        StateStore(blocker / "state", "echo").check_writable()


def test_check_writable_names_state_dir_when_the_database_cannot_be_opened(tmp_path) -> None:
    (tmp_path / "echo" / "jobs.sqlite3").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"\[paths\].*state_dir.*jobs\.sqlite3"):
        StateStore(tmp_path, "echo").check_writable()


def test_check_writable_creates_a_private_database(tmp_path: Path) -> None:
    StateStore(tmp_path, "echo").check_writable()
    assert (tmp_path / "echo" / "jobs.sqlite3").stat().st_mode & 0o777 == 0o600


def test_records_of_the_file_per_job_store_are_imported_at_start_up(tmp_path: Path) -> None:
    """Before the database each record was <root>/<id[:2]>/<id>.json. After an upgrade a
    job that succeeded then must still be found (its redelivery replies from it), and a
    row the database already has is newer and wins."""
    root = tmp_path / "echo"
    succeeded = JobRecord("ab12", "echo", JobStatus.SUCCEEDED, attempts=1,
                          result={"success": 1, "echo": 7})
    for folder in ("ab", "cd", "ef"):
        (root / folder).mkdir(parents=True)
    (root / "ab" / "ab12.json").write_text(json.dumps(succeeded.to_json()))
    (root / "ab" / "ab12.json.4242.1.tmp").write_text('{"job_id": "ab1')
    (root / "cd" / "cd34.json").write_text(json.dumps(queued("cd34").to_json()))
    (root / "ef" / "ef56.json").write_text("not a record")
    store = StateStore(tmp_path, "echo")
    newer = store.put(queued("cd34").evolve(status=JobStatus.RUNNING, attempts=2))
    store.import_record_files()
    assert store.get("ab12") == succeeded
    assert store.get("cd34") == newer
    assert not (root / "ab").exists() and not (root / "cd").exists()
    assert (root / "ef" / "ef56.json").read_text() == "not a record"  # left for a human
    StateStore(tmp_path, "echo").import_record_files()  # nothing left to import
    assert stored_rows(store).keys() == {"ab12", "cd34"}
