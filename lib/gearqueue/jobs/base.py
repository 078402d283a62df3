"""What a job type is: validate a payload, run it, describe a failure.

A `Job` object is created once per executor child and reused for many jobs, so a job
type can load expensive things (R, limma) once in `warm_up`. The runtime calls
`validate` before any work starts and `run` with the validated request; `run` returns
the success reply (a JSON object). Failures are raised as `PermanentJobError` or
`TransientJobError` (gearqueue.errors); the runtime turns them into the failure reply
(`gearqueue.worker.outcome.failure_reply`, with the error's `reply_fields`), so a job
never formats its own error replies.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from ..config import Settings

Request = TypeVar("Request")


@dataclass(frozen=True)
class JobContext:
    job_id: str
    job_type: str
    #: 1 for the first delivery, counted by the runtime across crashes and retries.
    attempt: int
    settings: Settings
    #: True in an executor child (which may be killed hard); False when the job runs
    #: in the consumer itself (isolation = inline) or in the caller (queue_enabled = 0).
    isolated: bool
    log: logging.LoggerAdapter[logging.Logger]
    #: Raises StateStoreUnavailable if the job's lock was lost (its PostgreSQL
    #: connection died): a job calls it just before it makes its effect.
    confirm_lock: Callable[[], None] = lambda: None
    #: True when a consumer runs the job (in its child or inline): a crash of the
    #: process is redelivered and counted. False in the caller (queue_enabled = 0).
    consumer: bool = False


#: Where a job runs in its consumer (the `isolation` key): a child process, or the
#: consumer's own process with no hop (only for jobs that end well within a heartbeat).
PROCESS, INLINE = "process", "inline"
ISOLATIONS = (PROCESS, INLINE)


class Job(ABC, Generic[Request]):
    name: ClassVar[str]
    #: The job type's default `isolation` (its gear.ini section may set another).
    isolation: ClassVar[str] = PROCESS

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def warm_up(self) -> None:
        """Load what every job needs (R, libraries) once, before the first job."""

    @abstractmethod
    def validate(self, payload: Mapping[str, Any]) -> Request:
        """Check every field; raise InvalidMessage naming the field. No side effects."""

    @abstractmethod
    def run(self, request: Request, context: JobContext) -> dict[str, Any]:
        """Do the work; return the success reply."""
