"""A job's state record: what every backend stores, one record per job id.

Direct reply-to is at-most-once, so the state record is the durable truth of a job:
queued -> running -> succeeded | retrying | failed, with its attempt count and result.
The attempt count is what makes a message that kills its consumer (kill -9, OOM) end
in the dead queue after max_retries, even on classic queues that count nothing.

A record read from storage may carry keys this code does not know (written by a newer
gearqueue): they are ignored, so an older reader survives a newer record; one written
before `progress` existed loads with none.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Progress:
    """How far a running job is: `done` of `total` units (None: not known yet, e.g.
    rows of a text file still being read) in its current `phase` ("rows read")."""

    done: int
    total: int | None = None
    phase: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "phase": self.phase}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        return cls(int(data["done"]), None if data.get("total") is None else int(data["total"]),
                   str(data.get("phase") or ""))

    def describe(self) -> str:
        """`40/100 chunk` or `1200 rows read`: what a person reads."""
        counted = str(self.done) if self.total is None else f"{self.done}/{self.total}"
        return f"{counted} {self.phase}".strip()


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
    #: The last progress the running attempt reported (throttled); kept once it ends.
    progress: Progress | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields in declaration order, the status as its value (shallow: json
        serialises the result anyway); no `progress` key when there is none."""
        data = {name: getattr(self, name) for name in _FIELDS}
        data["status"] = self.status.value
        if self.progress is None:
            del data["progress"]  # as before progress existed: a record older code reads
        else:
            data["progress"] = self.progress.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        """The record of stored JSON; keys of a newer gearqueue are ignored."""
        known = {name: data[name] for name in _FIELDS if name in data}
        known["status"] = JobStatus(data["status"])
        progress = data.get("progress")
        known["progress"] = None if progress is None else Progress.from_json(progress)
        return cls(**known)

    def evolve(self, **changes: Any) -> JobRecord:
        """A copy with `changes` and a fresh `updated` time (TypeError for a name that
        is not a field)."""
        return dataclasses.replace(self, updated=time.time(), **changes)


_FIELDS = tuple(item.name for item in dataclasses.fields(JobRecord))
