"""The outcome of one attempt at a job, and what the runtime does with it.

Built in one place from a reply or an error, so the consumer, the executor and the
in-process path agree on what "retry", "dead-letter" and "reply" mean.
"""

from __future__ import annotations

import traceback as traceback_module
from dataclasses import dataclass
from typing import Any

from .errors import JobError, TransientJobError

#: Dead-letter headers and job state carry at most this much traceback.
TRACEBACK_LIMIT = 4000


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    reply: dict[str, Any]
    attempt: int
    #: True when the result was stored by an earlier delivery and is only replayed.
    reused: bool = False
    retryable: bool = False
    error_class: str | None = None
    message: str | None = None
    traceback: str | None = None

    @classmethod
    def success(cls, reply: dict[str, Any], attempt: int, reused: bool = False) -> Outcome:
        return cls(succeeded=True, reply=reply, attempt=attempt, reused=reused)

    @classmethod
    def failure(cls, error: JobError, reply: dict[str, Any], attempt: int,
                traceback: str | None = None) -> Outcome:
        return cls(succeeded=False, reply=reply, attempt=attempt, retryable=error.retryable,
                   error_class=type(error).__name__, message=error.message,
                   traceback=traceback[-TRACEBACK_LIMIT:] if traceback else None)

    def should_retry(self, max_retries: int) -> bool:
        return not self.succeeded and self.retryable and self.attempt <= max_retries

    def error_record(self) -> dict[str, Any]:
        return {"class": self.error_class, "message": self.message,
                "traceback": self.traceback, "attempt": self.attempt}


def as_job_error(error: BaseException) -> tuple[JobError, str | None]:
    """A JobError for any exception; an unexpected one becomes transient, with traceback."""
    if isinstance(error, JobError):
        return error, None
    text = "".join(traceback_module.format_exception(error))
    return TransientJobError(f"unexpected {type(error).__name__}: {error}"), text
