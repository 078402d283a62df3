"""What finished attempts mean on the wire: one ordered plan of publishes, replies, acks.

`plan` is the only place where outcomes become steps, and `JobLog` the only place
where they are described for the log. The consumer loop carries a plan out against its
channel, step by step, and does nothing else with an outcome.

The order is the contract: for each job, in delivery order, the next copy of its
message (retry or dead letter) is confirmed by the broker *before* anything after it,
its reply comes next, and the single ack (`multiple` for a batch) comes *last*. So no
crash between two steps can lose a job; it can only repeat a step, which the state
record then makes harmless (the message comes back, and is answered from its record).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import message
from ..backoff import equal_jitter
from ..config import ServiceSettings
from ..log import fields
from ..message import Envelope
from ..topology import DEAD_LETTER_EXCHANGE, retry_queue
from .channel import Delivery
from .outcome import Outcome

if TYPE_CHECKING:
    from pika.spec import BasicProperties

log = logging.getLogger(__name__)

class Verdict(enum.Enum):
    """What becomes of one outcome; the value is how the log says it."""

    SUCCEEDED = "succeeded"
    REPLAYED = "replayed"
    REPLAYED_FAILURE = "replayed-failure"
    RETRYING = "retrying"
    FAILED = "failed"


def verdict(outcome: Outcome) -> Verdict:
    if outcome.succeeded:
        return Verdict.REPLAYED if outcome.reused else Verdict.SUCCEEDED
    if outcome.reused:
        return Verdict.REPLAYED_FAILURE
    return Verdict.RETRYING if outcome.retrying else Verdict.FAILED


# --- the steps of a plan ------------------------------------------------------------------

@dataclass(frozen=True)
class Publish:
    """Publish the next copy of a message and wait for the broker's confirm.

    `kind` is "retry" (to `<queue>.retry.N`, with an expiration) or "dead" (to gear.dlx).
    """

    kind: str
    exchange: str
    routing_key: str
    body: bytes
    properties: BasicProperties


@dataclass(frozen=True)
class Reply:
    reply_to: str
    correlation_id: str | None
    reply: dict[str, Any]


@dataclass(frozen=True)
class GiveBack:
    """A delivery of the batch that never started (a stop): back to the queue untouched."""

    delivery: Delivery


@dataclass(frozen=True)
class Ack:
    """The last step: ack `delivery`, and with `multiple` every one before it too."""

    delivery: Delivery
    multiple: bool


Step = Publish | Reply | GiveBack | Ack


@dataclass(frozen=True)
class Settled:
    """One job of a plan: its delivery, what its attempt came to, how long it ran."""

    delivery: Delivery
    envelope: Envelope
    outcome: Outcome
    seconds: float

    @property
    def verdict(self) -> Verdict:
        return verdict(self.outcome)


@dataclass(frozen=True)
class Plan:
    steps: list[Step]
    settled: list[Settled]


def plan(service: ServiceSettings, settled: Sequence[Settled],
         unstarted: Sequence[Delivery] = ()) -> Plan:
    """The steps that settle `settled` (in delivery order) and give back `unstarted`:
    each job's next copy and reply, then the give-backs, then one ack for them all."""
    steps: list[Step] = []
    for job in settled:
        steps += _steps_of(service, job)
    steps += [GiveBack(delivery) for delivery in unstarted]
    if settled:
        steps.append(Ack(settled[-1].delivery, multiple=len(settled) > 1))
    return Plan(steps, list(settled))


def _steps_of(service: ServiceSettings, job: Settled) -> list[Step]:
    outcome, delivery, envelope = job.outcome, job.delivery, job.envelope
    steps: list[Step] = []
    kind = job.verdict
    if kind is Verdict.RETRYING:
        delay = equal_jitter(outcome.attempt, service.retry_backoff, service.retry_backoff_max)
        return [Publish("retry", "", retry_queue(service, outcome.attempt), delivery.body,
                        message.retry_properties(
                            delivery.properties, envelope.job_id, attempt=outcome.attempt,
                            error_class=outcome.error_class, error_message=outcome.message,
                            delay=delay))]
    if kind is Verdict.FAILED:
        headers = message.dead_letter_headers(
            queue=service.queue, job_type=service.job_type, attempts=outcome.attempt,
            error_class=outcome.error_class, error_message=outcome.message,
            traceback=outcome.traceback, reply=outcome.reply)
        steps.append(Publish("dead", DEAD_LETTER_EXCHANGE, service.queue, delivery.body,
                             message.dead_properties(delivery.properties, envelope.job_id,
                                                     headers)))
    if envelope.reply_to:
        steps.append(Reply(envelope.reply_to, envelope.correlation_id, outcome.reply))
    return steps


#: The most seconds between two lines that count the quick jobs (see JobLog).
QUICK_JOBS_EVERY_SECONDS = 10.0


class JobLog:
    """The log lines of settled jobs: one a job, with structured fields, at INFO, or at
    DEBUG for a job that succeeded in under `log_quick_jobs_ms`, which an INFO line
    then counts, at most every QUICK_JOBS_EVERY_SECONDS and at the end (`flush`):
    "settled N quick jobs" with GEAR_QUICK_JOBS=N. So every job is counted at INFO:
    the job lines plus the sum of GEAR_QUICK_JOBS (docs/operations.md)."""

    def __init__(self, service: ServiceSettings) -> None:
        self.service = service
        self._quick_below = service.log_quick_jobs_ms / 1000
        self._quick = 0
        self._counted_at = time.monotonic()

    def settled(self, done: Plan) -> None:
        """Log each job of a carried-out plan."""
        service = self.service
        for job in done.settled:
            verdict = job.verdict
            quick = verdict is Verdict.SUCCEEDED and job.seconds < self._quick_below
            if quick:
                self._quick += 1
                if not log.isEnabledFor(logging.DEBUG):
                    continue
            described = verdict.value
            duration_ms = round(job.seconds * 1000)
            job_id = job.envelope.job_id
            log.log(logging.DEBUG if quick else logging.INFO,
                    "job %s %s (attempt %d, %d ms)", job_id, described,
                    job.outcome.attempt, duration_ms, extra=fields(
                        job_id=job_id, job_type=service.job_type, queue=service.queue,
                        attempt=job.outcome.attempt, duration_ms=duration_ms,
                        outcome=described))
        if self._quick and time.monotonic() - self._counted_at > QUICK_JOBS_EVERY_SECONDS:
            self.flush()

    def flush(self) -> None:
        """The INFO line that counts the quick jobs logged at DEBUG since the last one."""
        self._counted_at = time.monotonic()
        if not self._quick:
            return
        count, self._quick = self._quick, 0
        log.info("settled %d quick jobs (each under %d ms, at DEBUG)", count,
                 self.service.log_quick_jobs_ms, extra=fields(
                     job_type=self.service.job_type, queue=self.service.queue,
                     quick_jobs=count))

