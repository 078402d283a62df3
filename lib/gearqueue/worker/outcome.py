"""The outcome of one attempt at a job: a value the executor child sends back.

Built here from a reply, an error or a stored record, so the child, the consumer and
the in-process path agree on it. Whether a failure is retried is decided once, when
the failure is built (`retrying`), and stored with the attempt; what that means on
the wire (retry copy, dead letter, reply, ack) is `settlement`'s.

This module stays free of pika and of the consumer: the executor child imports it.
"""

from __future__ import annotations

import traceback as traceback_module
from dataclasses import dataclass
from typing import Any

from ..errors import JobError, TransientJobError
from ..state import JobRecord, JobStatus

#: Dead-letter headers and job state carry at most this much traceback.
TRACEBACK_LIMIT = 4000

_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.RETRYING, JobStatus.FAILED})


def failure_reply(error: JobError) -> dict[str, Any]:
    """The failure reply of every job type, for errors raised in a job or outside it
    (bad message, crash, limits). Job types add fields through `error.reply_fields`."""
    return {"success": -1, "message": error.message, **error.reply_fields}


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    reply: dict[str, Any]
    attempt: int
    #: True when the result was stored by an earlier delivery and is only replayed.
    reused: bool = False
    #: A failure that gets another attempt (through a retry queue); else it is final.
    retrying: bool = False
    error_class: str | None = None
    message: str | None = None
    traceback: str | None = None

    @classmethod
    def success(cls, reply: dict[str, Any], attempt: int, reused: bool = False) -> Outcome:
        return cls(succeeded=True, reply=reply, attempt=attempt, reused=reused)

    @classmethod
    def failure(cls, error: JobError, attempt: int, *, max_retries: int,
                traceback: str | None = None) -> Outcome:
        """A failed attempt; retried if the error is transient and retries are left (the
        one place that rule is written)."""
        return cls(succeeded=False, reply=failure_reply(error), attempt=attempt,
                   retrying=error.retryable and attempt <= max_retries,
                   error_class=type(error).__name__, message=error.message,
                   traceback=traceback[-TRACEBACK_LIMIT:] if traceback else None)

    @classmethod
    def from_record(cls, record: JobRecord | None, *, reused: bool,
                    since: float | None = None) -> Outcome | None:
        """The outcome an attempt stored in `record`; None if no attempt finished (after
        `since`, a time.time(), when given).

        `reused`: a replay for a later delivery (never retried again). Otherwise the
        attempt really ended this way here and was not settled yet (its child died
        before sending it back), and a failure is retried as its record says.
        """
        if record is None or record.status not in _FINISHED:
            return None
        if since is not None and record.updated < since:
            return None
        if record.status is JobStatus.SUCCEEDED:
            return cls.success(record.result or {}, record.attempts, reused=reused)
        error = record.error or {}
        return cls(succeeded=False, reply=record.result or {}, attempt=record.attempts,
                   reused=reused, retrying=not reused and record.status is JobStatus.RETRYING,
                   error_class=error.get("class"), message=error.get("message"),
                   traceback=error.get("traceback"))

    def error_record(self) -> dict[str, Any]:
        return {"class": self.error_class, "message": self.message,
                "traceback": self.traceback, "attempt": self.attempt}


def as_job_error(error: BaseException) -> tuple[JobError, str | None]:
    """A JobError for any exception; an unexpected one becomes transient, with traceback."""
    if isinstance(error, JobError):
        return error, None
    text = "".join(traceback_module.format_exception(error))
    return TransientJobError(f"unexpected {type(error).__name__}: {error}"), text
