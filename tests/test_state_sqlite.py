"""What only the SQLite backend has: its files, its WAL, its fork guard, its busy timeout."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from dataclasses import fields
from pathlib import Path

import pytest

from gearqueue.config import load_settings
from gearqueue.errors import ConfigError, StateStoreUnavailable
from gearqueue.state import JobRecord, JobStatus, open_store, sqlitedb
from gearqueue.state.sqlite import SqliteStore


def stored_rows(store: SqliteStore) -> dict[str, str]:
    with sqlite3.connect(store.path) as connection:
        return dict(connection.execute("SELECT job_id, record FROM jobs"))


def test_open_store_without_a_state_url_is_sqlite_under_state_dir(make_config) -> None:
    settings = load_settings(make_config())
    store = open_store(settings, "echo")
    assert isinstance(store, SqliteStore)
    assert store.path == settings.paths.state_dir / "echo" / "jobs.sqlite3"


def test_records_live_in_one_wal_database_per_job_type_as_compact_json(tmp_path) -> None:
    store = SqliteStore(tmp_path, "echo")
    store.queued("job-1")
    SqliteStore(tmp_path, "export").queued("job-1")
    assert store.root == tmp_path / "echo"
    assert store.path == tmp_path / "echo" / "jobs.sqlite3"
    assert (tmp_path / "export" / "jobs.sqlite3").exists()
    with sqlite3.connect(store.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    text = stored_rows(store)["job-1"]
    # A record without progress has no `progress` key, as before it existed.
    assert list(json.loads(text)) == [item.name for item in fields(JobRecord)
                                      if item.name != "progress"]
    assert json.loads(text)["status"] == "queued"
    assert ", " not in text and ": " not in text


def test_queued_many_refused_by_the_database_midway_rolls_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, "echo")
    with pytest.raises(sqlite3.IntegrityError):
        store.queued_many(["job-0", "job-1", None, "job-3"])  # type: ignore[list-item]
    assert stored_rows(store) == {}
    store.queued("job-4")  # the connection is usable again
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
    store = SqliteStore(tmp_path, "echo")
    store.queued("parent")
    assert locks_held_on(store.path)
    busy = threading.Event()
    done = threading.Event()

    def keep_busy() -> None:
        while not done.is_set():
            store.begin_attempt("parent", 1, "w")
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
                    store.queued(f"child-{child}")
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
    store.queued("parent-after")
    assert SqliteStore(tmp_path, "echo").get("parent-after") is not None


def test_opening_a_second_store_keeps_the_locks_of_the_first(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops all of the process's POSIX locks on it;
    a store that lost its read lock could have the WAL checkpointed and deleted under
    it by another process, and read a stale snapshot from then on."""
    first = SqliteStore(tmp_path, "echo")
    first.queued("job-1")
    held = locks_held_on(first.path)
    assert held
    second = SqliteStore(tmp_path, "echo")
    second.check_writable()
    assert second.get("job-1") is not None
    assert locks_held_on(first.path) == held


def test_a_database_locked_past_the_timeout_raises_a_transient_error_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlitedb, "BUSY_TIMEOUT", 0.2)
    store = SqliteStore(tmp_path, "echo")
    store.check_writable()
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StateStoreUnavailable, match=r"jobs\.sqlite3.*locked"):
            store.queued("job-1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.queued("job-1")
    assert store.require("job-1").status is JobStatus.QUEUED


def test_close_lets_the_next_use_open_a_new_connection(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, "echo")
    store.queued("job-1")
    assert locks_held_on(store.path)
    store.close()
    assert not locks_held_on(store.path)
    assert store.require("job-1").status is JobStatus.QUEUED


def test_check_writable_names_state_dir_when_the_folder_cannot_be_made(tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"\[paths\].*state_dir.*not writable"):
        SqliteStore(blocker / "state", "echo").check_writable()


def test_check_writable_names_state_dir_when_the_database_cannot_be_opened(tmp_path) -> None:
    (tmp_path / "echo" / "jobs.sqlite3").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"\[paths\].*state_dir.*jobs\.sqlite3"):
        SqliteStore(tmp_path, "echo").check_writable()


def test_check_writable_creates_a_private_database(tmp_path: Path) -> None:
    SqliteStore(tmp_path, "echo").check_writable()
    assert (tmp_path / "echo" / "jobs.sqlite3").stat().st_mode & 0o777 == 0o600
