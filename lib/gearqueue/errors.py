"""One exception tree for gearqueue.

Errors are raised where they are detected and handled in one place (the consumer's
outcome handler, or the CLI's `main`). Job errors say whether retrying can help:
a `PermanentJobError` (bad input) is dead-lettered at once, a `TransientJobError`
goes through the retry queues. pika's exceptions are converted at the boundary
(`broker.py`) so callers catch `BrokerError` and nothing else.
"""

from __future__ import annotations


class GearError(Exception):
    """Base of every error gearqueue raises on purpose."""


# --- configuration -----------------------------------------------------------------


class ConfigError(GearError):
    """gear.ini is missing, unreadable or invalid. Never worth a restart."""

    def __init__(self, message: str, *, path: str | None = None,
                 section: str | None = None, key: str | None = None) -> None:
        where = ", ".join(
            part for part in (
                path and f"file {path}",
                section and f"section [{section}]",
                key and f"key '{key}'",
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.section, self.key = path, section, key


# --- jobs ----------------------------------------------------------------------------


class JobError(GearError):
    """A job did not produce a result. `reply_fields` are merged into the failure reply."""

    retryable: bool = False

    def __init__(self, message: str, **reply_fields: object) -> None:
        super().__init__(message)
        self.message = message
        self.reply_fields = reply_fields


class PermanentJobError(JobError):
    """Retrying cannot help: bad input, missing files, impossible request."""

    retryable = False


class InvalidMessage(PermanentJobError):
    """The message itself is unusable: not JSON, not an object, too large, wrong fields."""


class TransientJobError(JobError):
    """Retrying may help: a resource was busy or briefly unavailable."""

    retryable = True


class MatrixFormatError(PermanentJobError):
    """A matrix file is not what it should be: the message names the file and the place."""


class StateStoreUnavailable(TransientJobError):
    """The job-state database could not be read or written (locked past the busy
    timeout, disk full or failing, corrupt): the attempt is retried, not failed."""


class ExecutorCrashed(TransientJobError):
    """The executor child died during the job (segfault, R fatal error, kill -9, OOM)."""


class HardTimeLimitExceeded(TransientJobError):
    """The job ran past `time_limit`; the executor child was killed."""


class SoftTimeLimitExceeded(TransientJobError):
    """Raised inside the job at `soft_time_limit` so it can clean up before the hard limit."""


class MemoryLimitExceeded(TransientJobError):
    """The executor child's memory grew far past `max_memory_mb`; it was killed."""


class InvalidProgress(PermanentJobError):
    """A job reported impossible progress (done above total, a negative count, not an
    integer): a bug in the job, which the same code would repeat, so not retried."""


class AttemptsExhausted(PermanentJobError):
    """The message was already tried `max_retries + 1` times (e.g. it kills its consumer)."""


# --- broker --------------------------------------------------------------------------


class BrokerError(GearError):
    """Any failure talking to RabbitMQ, converted from pika at the boundary."""


class BrokerUnavailable(BrokerError):
    """No broker could be reached or the connection was lost; reconnecting may help."""


class BrokerDown(BrokerUnavailable):
    """A client kept trying for `[rabbitmq] connect_retry_seconds` and reached no broker:
    the message names the URLs (passwords masked), why each failed and what to check."""


class PublishError(BrokerError):
    """A publish was not accepted by the broker."""


class UnroutableError(PublishError):
    """The message reached no queue (`mandatory` publish returned): nothing consumes it."""


class PublishNacked(PublishError):
    """The broker refused the message (publisher confirm nack)."""


class QueueFull(PublishNacked):
    """The queue is at `max_length` and rejects new publishes (`overflow = reject-publish`)."""


class BatchPublishError(PublishError):
    """Some jobs of a `submit_many` batch were not queued; `report` (a bulk.BatchReport)
    lists which were confirmed, nacked, unroutable, unconfirmed or unsent."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


class DuplicateJobIds(GearError):
    """A bulk publish was given one job id twice: its report accounts for each job by id,
    so the caller's list is wrong, and nothing is published."""


class TopologyMismatch(BrokerError):
    """A queue exists with other arguments than ours (PRECONDITION_FAILED on declare)."""


class ReplyTimeout(GearError):
    """`call()` gave up waiting for the reply."""


class UnknownJob(GearError):
    """No job state is stored for that job id."""


class NotInDeadQueue(UnknownJob):
    """No message with that job id is in the dead queue of its job type."""


class JobExists(GearError):
    """A job id that was to be new already has a state record (`queued_many`)."""


# --- executor child -----------------------------------------------------------------


class ExecutorStartFailed(GearError):
    """The executor child could not start or warm up (e.g. R or a library is missing)."""


class ExecutorDied(GearError):
    """The executor child exited while running a batch; `done` jobs of it had finished.

    Raised by the executor handle and handled by the consumer loop, which settles the
    batch around it (the job at `done` failed with ExecutorCrashed)."""

    def __init__(self, message: str, done: int) -> None:
        super().__init__(message)
        self.done = done


# --- systemd ---------------------------------------------------------------------


class SystemdUnavailable(GearError):
    """systemd is not the init system here, so there are no units to scale."""


class SystemctlFailed(GearError):
    """A `systemctl` call failed (its stderr is in the message)."""
