"""What finished attempts mean on the wire: one ordered plan of publishes, replies, acks.

`plan` is the only place where outcomes become steps, and `log_settled` the only place
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


def log_settled(service: ServiceSettings, done: Plan) -> None:
    """One INFO line per job of a carried-out plan, with structured fields."""
    for job in done.settled:
        described = job.verdict.value
        duration_ms = round(job.seconds * 1000)
        job_id = job.envelope.job_id
        log.info("job %s %s (attempt %d, %d ms)", job_id, described,
                 job.outcome.attempt, duration_ms, extra=fields(
                     job_id=job_id, job_type=service.job_type, queue=service.queue,
                     attempt=job.outcome.attempt, duration_ms=duration_ms,
                     outcome=described))
