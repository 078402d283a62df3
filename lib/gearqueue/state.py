"""Durable job-state records: one SQLite database per job type, one row per job id.

Direct reply-to is at-most-once, so the state record is the durable truth of a job:
queued -> running -> succeeded | retrying | failed, with its attempt count and result.
The attempt count is what makes a message that kills its consumer (kill -9, OOM) end
in the dead queue after max_retries, even on classic queues that count nothing.

Concurrency: a per-job lock is held while a job runs, so a redelivered duplicate
waits for the first copy and then finds its result (exactly-once effect). The lock is
a byte-range lock of its own file, not a database transaction, because it is held for
the whole job. Each record is written in a transaction of its own, so a reader never
sees half of one. Consumers, their executor children and web apps write one database at
once: SQLite's WAL lets readers run beside the one writer, and a writer waits up to
BUSY_TIMEOUT for the previous one. The folder must be on a local file system (WAL keeps
its index in shared memory, so every process must be on the same host).

Why SQLite: a record used to be a file replaced by write-to-temp + rename, ~45 us a
write on ext4 and twice per job; a row in a WAL database costs about half of that and
a read less than half. Durability is the same as before: a commit survives the crash
of any process (it is in the WAL file), and a power loss can lose the last commits
(synchronous=NORMAL does not fsync a commit, just as the rename did not; it fsyncs at
each checkpoint, every ~1000 pages of WAL).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownJob
from .statedb import Database, immediate

log = logging.getLogger(__name__)


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    job_type: str
    status: JobStatus
    attempts: int = 0
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    worker: str | None = None

    def to_json(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies the result, which json
        # serialises anyway, and this runs on every job.
        data = {name: getattr(self, name) for name in _RECORD_FIELDS}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        # Positional and with a dict for the status: half the cost of cls(**data) with
        # JobStatus(value), and this runs on every job.
        return cls(data["job_id"], data["job_type"], _STATUSES[data["status"]],
                   data["attempts"], data["created"], data["updated"], data["result"],
                   data["error"], data["worker"])

    def evolve(self, **changes: Any) -> JobRecord:
        """A copy with `changes` and a fresh `updated` time.

        A direct constructor call: dataclasses.replace costs half as much again, and
        this runs twice per job. A name that is not a field is left in `changes` and
        makes the call fail, as replace does.
        """
        pop = changes.pop
        return JobRecord(pop("job_id", self.job_id), pop("job_type", self.job_type),
                         pop("status", self.status), pop("attempts", self.attempts),
                         pop("created", self.created), time.time(),
                         pop("result", self.result), pop("error", self.error),
                         pop("worker", self.worker), **changes)


_RECORD_FIELDS = tuple(item.name for item in fields(JobRecord))
_STATUSES = {status.value: status for status in JobStatus}

#: `struct flock` of 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (+ padding).
_FLOCK = struct.Struct("hh4xqqi4x")


#: Stored in the database header (PRAGMA user_version) by `check_writable`.
SCHEMA_VERSION = 1

_SCHEMA = ("CREATE TABLE IF NOT EXISTS jobs "
           "(job_id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID")
_SELECT = "SELECT record FROM jobs WHERE job_id = ?"
_REPLACE = "INSERT OR REPLACE INTO jobs (job_id, record) VALUES (?, ?)"
_INSERT = "INSERT INTO jobs (job_id, record) VALUES (?, ?)"
_INSERT_OR_KEEP = "INSERT OR IGNORE INTO jobs (job_id, record) VALUES (?, ?)"

def lock_offset(job_id: str) -> int:
    """Where a job's lock byte lives in the lock file: 62 bits of a hash of its id."""
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(),
                          "big") >> 2


class StateStore:
    """Job records of one job type in `<state_dir>/<job_type>/jobs.sqlite3`.

    One connection per store and process, opened on first use and closed before a fork
    (the child opens its own). Threads share it under a mutex (a web app's threads may
    share one Client). A single-row write is one statement, atomic on its own (and
    cheaper without BEGIN and COMMIT around it); `update` and `create_many` run in a BEGIN
    IMMEDIATE transaction, which takes the write lock before reading, so two writers
    cannot both read the old record and lose an update. A database still busy after
    BUSY_TIMEOUT, or a disk error, raises StateStoreUnavailable naming the database file.
    """

    def __init__(self, state_dir: Path, job_type: str) -> None:
        self.root = state_dir / job_type
        self.job_type = job_type
        self.path = self.root / "jobs.sqlite3"
        self._lock_file = f"{self.root}/.locks"
        #: One encoder for every write: json.dumps with options builds one per call.
        self._encode = json.JSONEncoder(separators=(",", ":")).encode
        self._db = Database(self.path, _SCHEMA)
        self._root_made = False

    # --- records -----------------------------------------------------------------

    def check_writable(self) -> None:
        """Fail at start-up, not on the first job, when the state folder is unusable."""
        try:
            connection = self._db.open()
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute("COMMIT")
            finally:
                connection.close()
            os.close(os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"state_dir is not writable: {self.path}: {error}",
                              section="paths", key="state_dir") from None

    def import_record_files(self) -> None:
        """Move records of the file-per-job store into the database (a consumer's start-up).

        Before this database, each record was `<root>/<id[:2]>/<id>.json`. A job that
        succeeded then must still be found when its message is redelivered now, or it
        would run twice. A row already in the database is newer and wins; each file is
        removed once its record is committed, so an interrupted import resumes.
        """
        try:
            imported = sum(self._import_folder(entry.path) for entry in os.scandir(self.root)
                           if entry.is_dir() and len(entry.name) == 2)
        except OSError as error:
            raise ConfigError(f"cannot import the job records in {self.root}: {error}",
                              section="paths", key="state_dir") from None
        if imported:
            log.info("imported %d job records of the file-per-job store into %s",
                     imported, self.path)

    def _import_folder(self, folder: str) -> int:
        """One bucket folder of the old store, in one commit; the number of records."""
        done, rows = [], []
        for entry in os.scandir(folder):
            if not entry.name.endswith(".tmp"):  # .tmp: a write the old store never finished
                try:
                    with open(entry.path, "rb") as stream:
                        record = JobRecord.from_json(json.loads(stream.read()))
                except (OSError, ValueError, TypeError, KeyError) as error:
                    log.warning("left %s in place: not a job record (%s)", entry.path, error)
                    continue
                rows.append((record.job_id, self._encode(record.to_json())))
            done.append(entry.path)

        def write(connection: sqlite3.Connection) -> None:
            with immediate(connection):
                connection.executemany(_INSERT_OR_KEEP, rows)

        self._db.use(write)
        for path in done:
            os.unlink(path)
        with contextlib.suppress(OSError):  # not empty: what was left in place
            os.rmdir(folder)
        return len(rows)

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.use(lambda connection: connection.execute(_SELECT, (job_id,)).fetchone())
        return None if row is None else JobRecord.from_json(json.loads(row[0]))

    def require(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise UnknownJob(f"no state recorded for {self.job_type} job '{job_id}'")
        return record

    def put(self, record: JobRecord) -> JobRecord:
        row = (record.job_id, self._encode(record.to_json()))
        self._db.use(lambda connection: connection.execute(_REPLACE, row))
        return record

    def create(self, record: JobRecord) -> JobRecord:
        """Store the first record of a job id; FileExistsError if it has one already.

        Client.call relies on the error: a record the executor child wrote meanwhile
        is never set back to queued.
        """
        row = (record.job_id, self._encode(record.to_json()))
        with self._refusing_existing([record.job_id]):
            self._db.use(lambda connection: connection.execute(_INSERT, row))
        return record

    def create_many(self, records: Iterable[JobRecord]) -> list[JobRecord]:
        """`create` for many records in one transaction: all of them, or none and
        FileExistsError.

        Client.submit_many stores the queued records of a whole batch with it: one
        commit instead of one per job (measured ~25 us each, most of a batched
        submit's time after pika's).
        """
        records = list(records)
        rows = [(record.job_id, self._encode(record.to_json())) for record in records]

        def write(connection: sqlite3.Connection) -> None:
            with immediate(connection):
                connection.executemany(_INSERT, rows)

        with self._refusing_existing([record.job_id for record in records]):
            self._db.use(write)
        return records

    @contextlib.contextmanager
    def _refusing_existing(self, job_ids: list[str]) -> Iterator[None]:
        """An insert over an existing id -> FileExistsError naming the job(s)."""
        try:
            yield
        except sqlite3.IntegrityError as error:
            if error.sqlite_errorname != "SQLITE_CONSTRAINT_PRIMARYKEY":
                raise
            what = ", ".join(job_ids[:3]) + (", ..." if len(job_ids) > 3 else "")
            raise FileExistsError(errno.EEXIST, f"{self.job_type} job {what} already has a "
                                  "state record", str(self.path)) from None

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Read-modify-write one record (creating it as queued if absent), atomically."""

        def write(connection: sqlite3.Connection) -> JobRecord:
            with immediate(connection):
                row = connection.execute(_SELECT, (job_id,)).fetchone()
                record = (JobRecord(job_id, self.job_type, JobStatus.QUEUED) if row is None
                          else JobRecord.from_json(json.loads(row[0]))).evolve(**changes)
                connection.execute(_REPLACE, (job_id, self._encode(record.to_json())))
            return record

        return self._db.use(write)

    # --- locks -------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """Hold the job's lock; released by the kernel if the holder dies.

        The lock is one byte of `<root>/.locks`, at an offset hashed from the job id,
        taken as an open-file-description lock (F_OFD_SETLKW): it excludes other
        processes and other threads alike, like flock, but costs no file creation per
        job (creating a lock file was a fifth of a no-op job's time).
        """
        self._make_root()
        lock = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.fcntl(lock, fcntl.F_OFD_SETLKW,
                        _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, lock_offset(job_id), 1, 0))
            yield
        finally:
            os.close(lock)  # closing the only descriptor releases the lock

    # --- the connection ------------------------------------------------------------

    def _make_root(self) -> None:
        if not self._root_made:  # saves a mkdir system call per job
            os.makedirs(self.root, exist_ok=True)
            self._root_made = True
