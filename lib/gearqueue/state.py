"""Durable job-state records: one small JSON file per job id, written atomically.

Direct reply-to is at-most-once, so the state record is the durable truth of a job:
queued -> running -> succeeded | retrying | failed, with its attempt count and result.
The attempt count is what makes a message that kills its consumer (kill -9, OOM) end
in the dead queue after max_retries, even on classic queues that count nothing.

Concurrency: a per-job lock is held while a job runs, so a redelivered duplicate
waits for the first copy and then finds its result (exactly-once effect). Records are
replaced with write-to-temp + rename, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownJob


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
        return cls(**{**data, "status": JobStatus(data["status"])})

    def evolve(self, **changes: Any) -> JobRecord:
        return replace(self, updated=time.time(), **changes)


#: Flags of a temp file of `write_atomically`, created private (0600) like mkstemp's.
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


#: `struct flock` of 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (+ padding).
_FLOCK = struct.Struct("hh4xqqi4x")


def lock_offset(job_id: str) -> int:
    """Where a job's lock byte lives in the lock file: 62 bits of a hash of its id."""
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(),
                          "big") >> 2


_RECORD_FIELDS = tuple(item.name for item in fields(JobRecord))


def write_atomically(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a mix.

    The temp file is named after the writer (pid, thread) rather than by mkstemp's
    random retry loop: a job's record has one writer at a time (it holds the job's
    lock), and this is on every job's path, twice.
    """
    temp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    handle = os.open(temp, _TEMP_FLAGS, 0o600)
    try:
        try:
            os.write(handle, data)
        finally:
            os.close(handle)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


class StateStore:
    """Job records of one job type under `<state_dir>/<job_type>/<id[:2]>/<id>.json`."""

    def __init__(self, state_dir: Path, job_type: str) -> None:
        self.root = state_dir / job_type
        self.job_type = job_type
        self._lock_file = f"{self.root}/.locks"
        #: Bucket folders known to exist: saves a mkdir system call per access.
        self._folders: set[str] = set()

    def check_writable(self) -> None:
        """Fail at start-up, not on the first job, when the state folder is unusable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomically(self.root / ".writable", b"")
        except OSError as error:
            raise ConfigError(f"state_dir is not writable: {error}",
                              section="paths", key="state_dir") from None

    def _path(self, job_id: str, suffix: str) -> str:
        folder = f"{self.root}/{job_id[:2]}"
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        return f"{folder}/{job_id}{suffix}"

    def get(self, job_id: str) -> JobRecord | None:
        try:
            with open(self._path(job_id, ".json"), "rb") as stream:
                return JobRecord.from_json(json.loads(stream.read()))
        except FileNotFoundError:
            return None

    def require(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise UnknownJob(f"no state recorded for {self.job_type} job '{job_id}'")
        return record

    def put(self, record: JobRecord) -> JobRecord:
        write_atomically(self._path(record.job_id, ".json"),
                         json.dumps(record.to_json(), separators=(",", ":")).encode())
        return record

    def create(self, record: JobRecord) -> JobRecord:
        """Store the first record of a job id nobody else knows yet (FileExistsError if any).

        For ids just generated by the caller (Client.submit_many): no reader can look
        for the record before the id is handed out, so it is written in place,
        without put's temp file and rename.
        """
        handle = os.open(self._path(record.job_id, ".json"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(handle, json.dumps(record.to_json(), separators=(",", ":")).encode())
        finally:
            os.close(handle)
        return record

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Read-modify-write one record (creating it as queued if absent)."""
        record = self.get(job_id) or JobRecord(job_id, self.job_type, JobStatus.QUEUED)
        return self.put(record.evolve(**changes))

    @contextlib.contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """Hold the job's lock; released by the kernel if the holder dies.

        The lock is one byte of `<root>/.locks`, at an offset hashed from the job id,
        taken as an open-file-description lock (F_OFD_SETLKW): it excludes other
        processes and other threads alike, like flock, but costs no file creation per
        job (creating a lock file was a fifth of a no-op job's time).
        """
        if self.root not in self._folders:
            os.makedirs(self.root, exist_ok=True)
            self._folders.add(self.root)
        lock = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.fcntl(lock, fcntl.F_OFD_SETLKW,
                        _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, lock_offset(job_id), 1, 0))
            yield
        finally:
            os.close(lock)  # closing the only descriptor releases the lock
