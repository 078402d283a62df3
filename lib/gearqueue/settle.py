"""What a finished attempt means on the wire: reply, retry, dead-letter, ack.

The order is the contract: the next copy of a message (retry or dead letter) is
confirmed by the broker *before* the ack, and the ack comes *after* the reply, so no
crash between two steps can lose a job; it can only repeat a step that the state
record then makes harmless.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pika

from .backoff import equal_jitter
from .config import ServiceSettings
from .envelope import Envelope
from .errors import BrokerUnavailable, JobError, PublishError
from .outcome import Outcome
from .session import Delivery, Session
from .topology import DEAD_LETTER_EXCHANGE, retry_queue

HEADER_PREFIX = "x-gear-"


def failure_reply(error: JobError) -> dict[str, Any]:
    """The failure reply for errors raised outside a job (bad message, crash, limits)."""
    return {"success": -1, "message": error.message, **error.reply_fields}


def describe(outcome: Outcome, max_retries: int | None = None) -> str:
    if outcome.succeeded:
        return "replayed" if outcome.reused else "succeeded"
    if outcome.reused:
        return "replayed-failure"
    if max_retries is not None and outcome.should_retry(max_retries):
        return "retrying"
    return "failed"


def settle(session: Session, service: ServiceSettings, delivery: Delivery,
           envelope: Envelope, outcome: Outcome) -> None:
    hand_on(session, service, delivery, envelope, outcome)
    session.ack(delivery)


def hand_on(session: Session, service: ServiceSettings, delivery: Delivery,
            envelope: Envelope, outcome: Outcome) -> None:
    """Everything an outcome needs before its ack: the next copy of the message (retry
    or dead letter, confirmed by the broker), then the reply. The caller acks, alone
    or with the rest of a batch."""
    try:
        if not outcome.succeeded and not outcome.reused:
            if outcome.should_retry(service.max_retries):
                _publish_retry(session, service, delivery, envelope, outcome)
                return
            _publish_dead(session, service, delivery, envelope, outcome)
    except PublishError as error:
        # Not acked: the message comes back after the reconnect, and its state record
        # makes the repeat harmless.
        raise BrokerUnavailable(f"could not hand the job on: {error}") from error
    if envelope.reply_to:
        session.reply(envelope.reply_to, envelope.correlation_id, outcome.reply)


def _next_properties(delivery: Delivery, envelope: Envelope, headers: dict[str, Any],
                     expiration: str | None = None) -> pika.BasicProperties:
    old = delivery.properties
    merged = {key: value for key, value in (old.headers or {}).items()
              if not key.startswith(HEADER_PREFIX)}
    merged.update(headers)
    return pika.BasicProperties(
        content_type=old.content_type or "application/json",
        content_encoding=old.content_encoding, delivery_mode=2, priority=old.priority,
        correlation_id=old.correlation_id, reply_to=old.reply_to,
        message_id=envelope.job_id, timestamp=old.timestamp, type=old.type,
        app_id=old.app_id, headers=merged, expiration=expiration)


def _publish_retry(session: Session, service: ServiceSettings, delivery: Delivery,
                   envelope: Envelope, outcome: Outcome) -> None:
    delay = equal_jitter(outcome.attempt, service.retry_backoff, service.retry_backoff_max)
    properties = _next_properties(delivery, envelope, {
        "x-gear-attempt": outcome.attempt,
        "x-gear-error-class": outcome.error_class,
        "x-gear-error-message": (outcome.message or "")[:1000],
    }, expiration=str(max(1, round(delay * 1000))))
    session.publish_confirmed("", retry_queue(service, outcome.attempt), delivery.body,
                              properties)


def dead_letter_headers(service: ServiceSettings, outcome: Outcome) -> dict[str, Any]:
    return {
        "x-gear-error-class": outcome.error_class,
        "x-gear-error-message": (outcome.message or "")[:4000],
        "x-gear-traceback": outcome.traceback or "",
        "x-gear-attempts": outcome.attempt,
        "x-gear-failed-at": int(time.time()),
        "x-gear-original-queue": service.queue,
        "x-gear-job-type": service.job_type,
        "x-gear-reply": json.dumps(outcome.reply)[:4000],
    }


def _publish_dead(session: Session, service: ServiceSettings, delivery: Delivery,
                  envelope: Envelope, outcome: Outcome) -> None:
    properties = _next_properties(delivery, envelope, dead_letter_headers(service, outcome))
    session.publish_confirmed(DEAD_LETTER_EXCHANGE, service.queue, delivery.body, properties)
