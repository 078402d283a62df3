"""An incoming AMQP message -> job id and validated JSON payload, or InvalidMessage.

Messages are JSON objects only (never pickle), UTF-8, under the size limit. The job id
is the publisher's message_id when it is a safe file-name id, otherwise a hash of it,
otherwise a hash of the body: a redelivery or a duplicate publish of the same message
always maps to the same state record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pika.spec import BasicProperties

from .errors import InvalidMessage
from .fields import SAFE_ID

ACCEPTED_CONTENT_TYPES = (None, "", "application/json", "text/json", "text/plain")


@dataclass(frozen=True)
class Envelope:
    job_id: str
    reply_to: str | None
    correlation_id: str | None


def job_id_of(properties: BasicProperties, body: bytes) -> str:
    message_id = properties.message_id
    if message_id and SAFE_ID.match(message_id):
        return message_id
    source = message_id.encode() if message_id else body
    return hashlib.sha256(source).hexdigest()[:32]


def envelope_of(properties: BasicProperties, body: bytes) -> Envelope:
    return Envelope(job_id=job_id_of(properties, body), reply_to=properties.reply_to or None,
                    correlation_id=properties.correlation_id or properties.message_id)


def decode_payload(properties: BasicProperties, body: bytes, max_bytes: int) -> dict[str, Any]:
    """The JSON object in `body`, or InvalidMessage saying what is wrong with it."""
    if len(body) > max_bytes:
        raise InvalidMessage(f"message body is {len(body)} bytes, over the limit of "
                             f"{max_bytes} (max_message_bytes)")
    if properties.content_type not in ACCEPTED_CONTENT_TYPES:
        raise InvalidMessage(f"content type {properties.content_type!r} is not accepted; "
                             "send JSON (application/json)")
    if properties.content_encoding not in (None, "", "utf-8", "utf8", "UTF-8"):
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
