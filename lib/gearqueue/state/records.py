"""A job's state record: what every backend stores, one record per job id.

Direct reply-to is at-most-once, so the state record is the durable truth of a job:
queued -> running -> succeeded | retrying | failed, with its attempt count and result.
The attempt count is what makes a message that kills its consumer (kill -9, OOM) end
in the dead queue after max_retries, even on classic queues that count nothing.
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
        """The fields in declaration order, the status as its value (shallow: json
        serialises the result anyway)."""
        data = {name: getattr(self, name) for name in _FIELDS}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        return cls(**{**data, "status": JobStatus(data["status"])})

    def evolve(self, **changes: Any) -> JobRecord:
        """A copy with `changes` and a fresh `updated` time (TypeError for a name that
        is not a field)."""
        return dataclasses.replace(self, updated=time.time(), **changes)


_FIELDS = tuple(item.name for item in dataclasses.fields(JobRecord))
