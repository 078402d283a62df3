"""The wire format: what a gearqueue message is on the broker, in both directions.

A job is a persistent AMQP message whose body is a JSON object (UTF-8, never pickle)
under `max_message_bytes`. Its properties:

    message_id      the job id (a SAFE_ID; anything else is hashed into one)
    correlation_id  = message_id unless the publisher set its own; copied onto the reply
    reply_to        where the reply goes (a queue, or amq.rabbitmq.reply-to); optional
    type            the job type; timestamp: when it was published (unix seconds)

Headers gearqueue writes (all `x-gear-*`; every copy of a message drops the old ones):

    on a retry copy (published to <queue>.retry.N, `expiration` = the backoff delay)
        x-gear-attempt          attempts made so far; its presence marks a retry
        x-gear-error-class      the last attempt's error class
        x-gear-error-message    ... and message (at most 1000 characters)
    on a dead letter (published to gear.dlx, routing key = the main queue)
        x-gear-attempts         attempts made in all
        x-gear-error-class      the error class of the last attempt
        x-gear-error-message    ... its message (at most 4000 characters)
        x-gear-traceback        ... its traceback, if it was unexpected ('' if none)
        x-gear-failed-at        when it was dead-lettered (unix seconds)
        x-gear-original-queue   the main queue it came from
        x-gear-job-type         its job type
        x-gear-reply            the failure reply sent, as JSON (at most 4000 characters)
    on a replayed dead letter (published to the main queue again)
        x-gear-replayed-at      when (unix seconds); the broker's x-death headers go

A reply is a JSON object with `success` (1 or -1), published to reply_to with the
request's correlation_id.

pika is imported by the property builders, not at the top: the executor child imports
this module (through the outcome of a job) but never builds a message, and it stays
free of pika.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidMessage

if TYPE_CHECKING:
    from pika.spec import BasicProperties

#: Ids that name files: letters, digits, '.', '_', '-'; no leading dot, no '..', <= 128.
SAFE_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")

#: Every header of ours starts so; a new copy of a message drops the old ones.
HEADER_PREFIX = "x-gear-"
#: Retry copy: attempts so far. A message carrying it was republished by us (a retry).
ATTEMPT = "x-gear-attempt"
#: Retry copy and dead letter: the last attempt's error class and message.
ERROR_CLASS = "x-gear-error-class"
ERROR_MESSAGE = "x-gear-error-message"
#: Dead letter: the last attempt's traceback ('' when the error was an expected one).
TRACEBACK = "x-gear-traceback"
#: Dead letter: attempts made in all.
ATTEMPTS = "x-gear-attempts"
#: Dead letter: when it was dead-lettered (unix seconds).
FAILED_AT = "x-gear-failed-at"
#: Dead letter: the main queue and the job type it came from.
ORIGINAL_QUEUE = "x-gear-original-queue"
JOB_TYPE = "x-gear-job-type"
#: Dead letter: the failure reply that was sent, as JSON.
REPLY = "x-gear-reply"
#: Replayed dead letter: when it was replayed (unix seconds).
REPLAYED_AT = "x-gear-replayed-at"

#: Headers the broker adds when it dead-letters a message itself; dropped on replay.
BROKER_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue",
                        "x-first-death-reason", "x-last-death-exchange",
                        "x-last-death-queue", "x-last-death-reason", "x-delivery-count")

RETRY_MESSAGE_LIMIT = 1000
DEAD_TEXT_LIMIT = 4000

CONTENT_TYPE = "application/json"
ACCEPTED_CONTENT_TYPES = (None, "", CONTENT_TYPE, "text/json", "text/plain")
ACCEPTED_ENCODINGS = (None, "", "utf-8", "utf8", "UTF-8")


@dataclass(frozen=True)
class Envelope:
    job_id: str
    reply_to: str | None
    correlation_id: str | None


# --- encoding and decoding --------------------------------------------------------------

def encode_payload(payload: Any, max_bytes: int) -> bytes:
    """The body of a job; InvalidMessage for what a consumer would refuse."""
    if not isinstance(payload, dict):
        raise InvalidMessage(f"payload must be a JSON object, got {type(payload).__name__}")
    try:
        body = json.dumps(payload, allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise InvalidMessage(f"payload is not JSON-serialisable: {error}") from None
    if len(body) > max_bytes:
        raise InvalidMessage(f"payload is {len(body)} bytes, over max_message_bytes "
                             f"({max_bytes})")
    return body


def job_id_of(properties: BasicProperties, body: bytes) -> str:
    """The publisher's message_id when it is safe, otherwise a hash of it, otherwise a
    hash of the body: a redelivery or a duplicate publish maps to the same record."""
    message_id = properties.message_id
    if message_id and SAFE_ID.match(message_id):
        return message_id
    source = message_id.encode() if message_id else body
    return hashlib.sha256(source).hexdigest()[:32]


def envelope_of(properties: BasicProperties, body: bytes) -> Envelope:
    return Envelope(job_id=job_id_of(properties, body), reply_to=properties.reply_to or None,
                    correlation_id=properties.correlation_id or properties.message_id)


def is_retry(properties: BasicProperties) -> bool:
    """True when we republished this message ourselves after a failed attempt."""
    return bool((properties.headers or {}).get(ATTEMPT))


def decode_payload(properties: BasicProperties, body: bytes, max_bytes: int) -> dict[str, Any]:
    """The JSON object in `body`, or InvalidMessage saying what is wrong with it."""
    if len(body) > max_bytes:
        raise InvalidMessage(f"message body is {len(body)} bytes, over the limit of "
                             f"{max_bytes} (max_message_bytes)")
    if properties.content_type not in ACCEPTED_CONTENT_TYPES:
        raise InvalidMessage(f"content type {properties.content_type!r} is not accepted; "
                             "send JSON (application/json)")
    if properties.content_encoding not in ACCEPTED_ENCODINGS:
        raise InvalidMessage(f"content encoding {properties.content_encoding!r} is not "
                             "accepted; send UTF-8")
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InvalidMessage(f"message body is not UTF-8 (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise InvalidMessage(f"message body is not JSON: {error.msg} at line {error.lineno} "
                             f"column {error.colno}") from None
    if not isinstance(payload, dict):
        raise InvalidMessage(f"message body must be a JSON object, got "
                             f"{type(payload).__name__}")
    return payload


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    return json.dumps(reply).encode()


# --- properties ---------------------------------------------------------------------------

def _properties(**values: Any) -> BasicProperties:
    from pika.spec import BasicProperties  # see the module docstring

    return BasicProperties(**values)


def job_properties(job_type: str, job_id: str, *, reply_to: str | None = None,
                   priority: int | None = None, timestamp: int | None = None
                   ) -> BasicProperties:
    """A new job: persistent JSON, its id as message_id and correlation_id."""
    return _properties(
        content_type=CONTENT_TYPE, delivery_mode=2, message_id=job_id, correlation_id=job_id,
        reply_to=reply_to, priority=priority,
        timestamp=int(time.time()) if timestamp is None else timestamp, type=job_type)


def _next_copy(old: BasicProperties, job_id: str, headers: Mapping[str, Any],
               expiration: str | None = None) -> BasicProperties:
    """The properties of the next copy of a message: the same, our old headers dropped."""
    merged = {key: value for key, value in (old.headers or {}).items()
              if not key.startswith(HEADER_PREFIX)}
    merged.update(headers)
    return _properties(
        content_type=old.content_type or CONTENT_TYPE,
        content_encoding=old.content_encoding, delivery_mode=2, priority=old.priority,
        correlation_id=old.correlation_id, reply_to=old.reply_to,
        message_id=job_id, timestamp=old.timestamp, type=old.type,
        app_id=old.app_id, headers=merged, expiration=expiration)


def retry_properties(old: BasicProperties, job_id: str, *, attempt: int,
                     error_class: str | None, error_message: str | None,
                     delay: float) -> BasicProperties:
    """A retry copy, which waits `delay` seconds in its retry queue (per-message TTL)."""
    return _next_copy(old, job_id, {
        ATTEMPT: attempt,
        ERROR_CLASS: error_class,
        ERROR_MESSAGE: (error_message or "")[:RETRY_MESSAGE_LIMIT],
    }, expiration=str(max(1, round(delay * 1000))))


def dead_letter_headers(*, queue: str, job_type: str, attempts: int,
                        error_class: str | None, error_message: str | None,
                        traceback: str | None, reply: Mapping[str, Any]) -> dict[str, Any]:
    return {
        ERROR_CLASS: error_class,
        ERROR_MESSAGE: (error_message or "")[:DEAD_TEXT_LIMIT],
        TRACEBACK: traceback or "",
        ATTEMPTS: attempts,
        FAILED_AT: int(time.time()),
        ORIGINAL_QUEUE: queue,
        JOB_TYPE: job_type,
        REPLY: json.dumps(reply)[:DEAD_TEXT_LIMIT],
    }


def dead_properties(old: BasicProperties, job_id: str, headers: Mapping[str, Any]
                    ) -> BasicProperties:
    """A dead letter, with `dead_letter_headers`."""
    return _next_copy(old, job_id, headers)


def replay_properties(old: BasicProperties, job_id: str) -> BasicProperties:
    """A dead letter going back to its main queue, without the marks of its failed life
    (ours and the broker's): a fresh publish."""
    headers = {key: value for key, value in (old.headers or {}).items()
               if not key.startswith(HEADER_PREFIX) and key not in BROKER_DEATH_HEADERS}
    headers[REPLAYED_AT] = int(time.time())
    return _properties(
        content_type=old.content_type, content_encoding=old.content_encoding,
        delivery_mode=2, priority=old.priority, correlation_id=old.correlation_id,
        reply_to=old.reply_to, message_id=old.message_id or job_id,
        timestamp=old.timestamp, type=old.type, app_id=old.app_id, headers=headers)


def reply_properties(correlation_id: str | None) -> BasicProperties:
    return _properties(correlation_id=correlation_id, content_type=CONTENT_TYPE)
