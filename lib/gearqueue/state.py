"""Durable job-state records: one small JSON file per job id, written atomically.

Direct reply-to is at-most-once, so the state record is the durable truth of a job:
queued -> running -> succeeded | retrying | failed, with its attempt count and result.
The attempt count is what makes a message that kills its consumer (kill -9, OOM) end
in the dead queue after max_retries, even on classic queues that count nothing.

Concurrency: a per-job `flock` is held while a job runs, so a redelivered duplicate
waits for the first copy and then finds its result (exactly-once effect). Records are
replaced with write-to-temp + rename, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
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
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        return cls(**{**data, "status": JobStatus(data["status"])})

    def evolve(self, **changes: Any) -> JobRecord:
        return replace(self, updated=time.time(), **changes)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a mix."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
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

    def check_writable(self) -> None:
        """Fail at start-up, not on the first job, when the state folder is unusable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomically(self.root / ".writable", b"")
        except OSError as error:
            raise ConfigError(f"state_dir is not writable: {error}",
                              section="paths", key="state_dir") from None

    def _path(self, job_id: str, suffix: str) -> Path:
        folder = self.root / job_id[:2]
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{job_id}{suffix}"

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

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Read-modify-write one record (creating it as queued if absent)."""
        record = self.get(job_id) or JobRecord(job_id, self.job_type, JobStatus.QUEUED)
        return self.put(record.evolve(**changes))

    @contextlib.contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """Hold the job's lock; released by the kernel if the holder dies."""
        with open(self._path(job_id, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
