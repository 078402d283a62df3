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
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..config import Settings

Request = TypeVar("Request")

#: `context.progress(done, total, phase)`: see JobContext.progress.
ReportProgress = Callable[[int, "int | None", str], None]


def _no_progress(done: int, total: int | None = None, phase: str = "") -> None:
    """Where no runtime listens (a job built by hand, a test)."""


class FinalFailure(Protocol):
    """What a job type is told of its final failure (the runtime's `Outcome` is one):
    declared here so the job layer never imports the runtime above it."""

    @property
    def reply(self) -> dict[str, Any]: ...

    @property
    def message(self) -> str | None: ...


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
    #: `progress(done, total=None, phase="")`: how far the job is (`done` of `total`
    #: units, total None while unknown, a short phase text). Call it as often as is
    #: natural (per chunk, per block of rows): it is throttled into the job's state
    #: record (worker/progress.py), and costs nothing measurable. Bad values raise
    #: InvalidProgress. Call it from the thread that runs the job.
    progress: ReportProgress = _no_progress


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


    def on_final_failure(self, job_id: str, payload: Mapping[str, Any] | None,
                         outcome: FinalFailure) -> None:
        """The job failed for good (it is dead-lettered): a bad message, a permanent
        error, retries or a crash loop exhausted.

        For a job type whose caller learns the end some other way than the reply (gEAR
        polls a status file). Called once per final failure, after its state is stored,
        in whichever process recorded it (the executor child, or the consumer when the
        child died or the message never decoded: then `payload` is None). It must not
        raise; the runtime logs it if it does.
        """

    @property
    def reruns_fresh_duplicates(self) -> bool:
        """True: a fresh publish of a job that succeeded before runs again instead of
        being answered from its stored result (a redelivery is still answered from it).

        For a job whose own files say whether the work is done, and whose caller asks
        again with an identical message when it wants it again (gEAR's web API does,
        and then waits for a status file that only a run writes).
        """
        return False
