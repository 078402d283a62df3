"""The embedded backend: one SQLite database per job type, one row per job id.

The lock is a byte-range lock of its own file, not a database transaction, because it
is held for the whole job. Each record is written in a transaction of its own, so a
reader never sees half of one. Consumers, their executor children and web apps write
one database at once: SQLite's WAL lets readers run beside the one writer, and a writer
waits up to BUSY_TIMEOUT for the previous one. The folder must be on a local file
system (WAL keeps its index in shared memory, so every process must be on the same
host): several hosts need the PostgreSQL backend.

Durability: a commit survives the crash of any process (it is in the WAL file), and a
power loss can lose the last commits (synchronous=NORMAL fsyncs at each checkpoint,
every ~1000 pages of WAL, not at each commit). Why SQLite and what a write costs:
docs/performance.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ConfigError
from .records import JobRecord, JobStatus
from .sqlitedb import BUSY_TIMEOUT, Database, immediate
from .store import UNREAD, Change, RecordStore, refuse_existing

#: `struct flock` of 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (+ padding).
_FLOCK = struct.Struct("hh4xqqi4x")

#: Stored in the database header (PRAGMA user_version) by `check_writable`. 2: records
#: may carry `progress` (no change to the table; a record without it still loads). A
#: database of a newer version is refused.
SCHEMA_VERSION = 2

_SCHEMA = ("CREATE TABLE IF NOT EXISTS jobs "
           "(job_id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID")
_SELECT = "SELECT record FROM jobs WHERE job_id = ?"
_SELECT_ALL = "SELECT record FROM jobs ORDER BY job_id"
_REPLACE = "INSERT OR REPLACE INTO jobs (job_id, record) VALUES (?, ?)"
_INSERT = "INSERT INTO jobs (job_id, record) VALUES (?, ?)"
_INSERT_OR_KEEP = "INSERT OR IGNORE INTO jobs (job_id, record) VALUES (?, ?)"

#: Seconds a probe waits for another writer: short, since a consumer waiting for its
#: store probes from its main loop, between heartbeats and watchdog pings.
PROBE_BUSY_TIMEOUT = 1.0


def lock_offset(job_id: str) -> int:
    """Where a job's lock byte lives in the lock file: 62 bits of a hash of its id."""
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(),
                          "big") >> 2


class SqliteStore(RecordStore):
    """Job records of one job type in `<state_dir>/<job_type>/jobs.sqlite3`.

    One connection per store and process, opened on first use and closed before a fork
    (the child opens its own; see sqlitedb). Threads share it under a mutex (a web
    app's threads may share one Client). A blind write is one statement, atomic on its
    own; a change runs in a BEGIN IMMEDIATE transaction, which takes the write lock
    before reading, so two writers cannot both read the old record and lose an update.
    A database still busy after BUSY_TIMEOUT, or a disk error, raises
    StateStoreUnavailable naming the database file.
    """

    def __init__(self, state_dir: Path, job_type: str) -> None:
        super().__init__(job_type)
        self.root = state_dir / job_type
        self.path = self.root / "jobs.sqlite3"
        self.where = str(self.path)
        self._lock_file = f"{self.root}/.locks"
        self._encode = json.JSONEncoder(separators=(",", ":")).encode
        self._db = Database(self.path, _SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def check_writable(self) -> None:
        try:
            connection = self._db.open()
            try:
                connection.execute("BEGIN IMMEDIATE")
                (version,) = connection.execute("PRAGMA user_version").fetchone()
                if version <= SCHEMA_VERSION:
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute("COMMIT")
            finally:
                connection.close()
            os.close(os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"state_dir is not writable: {self.path}: {error}",
                              section="paths", key="state_dir") from None
        if version > SCHEMA_VERSION:
            raise ConfigError(f"the job-state database {self.path} has schema version "
                              f"{version}, newer than this gearqueue's {SCHEMA_VERSION}: "
                              "upgrade gearqueue on this host", section="paths",
                              key="state_dir")

    def probe(self) -> None:
        """The write lock taken and given back, and the lock file opened: what every
        job needs first."""
        def take_the_write_lock(connection: sqlite3.Connection) -> None:
            connection.execute(f"PRAGMA busy_timeout = {int(PROBE_BUSY_TIMEOUT * 1000)}")
            try:
                with immediate(connection):
                    pass
            finally:
                connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            os.close(os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))

        self._db.use(take_the_write_lock)

    def close(self) -> None:
        self._db.close()

    # --- records -----------------------------------------------------------------

    def _read(self, job_id: str) -> JobRecord | None:
        row = self._db.use(lambda connection: connection.execute(_SELECT, (job_id,)).fetchone())
        return None if row is None else JobRecord.from_json(json.loads(row[0]))

    def records(self) -> Iterator[JobRecord]:
        rows = self._db.use(lambda connection: connection.execute(_SELECT_ALL).fetchall())
        for (text,) in rows:
            yield JobRecord.from_json(json.loads(text))

    def _row(self, record: JobRecord) -> tuple[str, str]:
        return record.job_id, self._encode(record.to_json())

    def _write(self, record: JobRecord, *, final: bool = False) -> None:
        row = self._row(record)
        self._db.use(lambda connection: connection.execute(_REPLACE, row))

    def _write_many(self, records: list[JobRecord]) -> None:
        rows = [self._row(record) for record in records]

        def write(connection: sqlite3.Connection) -> None:
            if len(rows) == 1:
                connection.execute(_REPLACE, rows[0])
                return
            with immediate(connection):
                connection.executemany(_REPLACE, rows)

        self._db.use(write)

    def _change(self, job_id: str, change: Change) -> JobRecord:
        def write(connection: sqlite3.Connection) -> JobRecord:
            with immediate(connection):
                row = connection.execute(_SELECT, (job_id,)).fetchone()
                record = change(JobRecord(job_id, self.job_type, JobStatus.QUEUED)
                                if row is None else JobRecord.from_json(json.loads(row[0])))
                connection.execute(_REPLACE, self._row(record))
            return record

        return self._db.use(write)

    def _insert(self, records: list[JobRecord]) -> None:
        rows = [self._row(record) for record in records]

        def write(connection: sqlite3.Connection) -> None:
            if len(rows) == 1:  # one statement is atomic on its own
                connection.execute(_INSERT, rows[0])
                return
            with immediate(connection):
                connection.executemany(_INSERT, rows)

        try:
            self._db.use(write)
        except sqlite3.IntegrityError as error:
            if error.sqlite_errorname != "SQLITE_CONSTRAINT_PRIMARYKEY":
                raise
            raise refuse_existing(self.job_type, [record.job_id for record in records],
                                  str(self.path)) from None

    def adopt(self, records: Iterable[JobRecord]) -> int:
        rows = [self._row(record) for record in records]

        def write(connection: sqlite3.Connection) -> int:
            with immediate(connection):
                before = connection.total_changes
                connection.executemany(_INSERT_OR_KEEP, rows)
                return connection.total_changes - before

        return self._db.use(write)

    # --- locks -------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self, job_ids: Iterable[str]) -> Iterator[None]:
        """Hold the locks of a batch's jobs until it ends, so the results of its jobs
        are committed in one transaction (see StateStore.batch). One descriptor holds
        all the lock bytes, taken in offset order, so two batches never wait for each
        other in a circle; closing it releases them all, after the commit."""
        ids = list(dict.fromkeys(job_ids))
        held = self._held.records
        if len(ids) < 2 or any(job_id in held for job_id in ids):
            yield
            return
        self._db.make_folder()
        lock = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            for offset in sorted({lock_offset(job_id) for job_id in ids}):
                fcntl.fcntl(lock, fcntl.F_OFD_SETLKW,
                            _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
            for job_id in ids:
                held[job_id] = UNREAD
            self._begin_batch(ids)
            try:
                yield
            finally:
                try:
                    self._end_batch(ids)
                finally:
                    for job_id in ids:
                        del held[job_id]
        finally:
            os.close(lock)

    @contextlib.contextmanager
    def _lock(self, job_id: str) -> Iterator[object]:
        """Hold the job's lock; released by the kernel if the holder dies.

        The lock is one byte of `<root>/.locks`, at an offset hashed from the job id,
        taken as an open-file-description lock (F_OFD_SETLKW): it excludes other
        processes and other threads alike, like flock, but costs no file creation per
        job.
        """
        self._db.make_folder()
        lock = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.fcntl(lock, fcntl.F_OFD_SETLKW,
                        _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, lock_offset(job_id), 1, 0))
            yield UNREAD
        finally:
            os.close(lock)  # closing the only descriptor releases the lock
