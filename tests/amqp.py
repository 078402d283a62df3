"""A plain pika client, the way gEAR's web API talks to the broker (no gearqueue code)."""

from __future__ import annotations

import json
import time
from typing import Any

import pika
from conftest import BROKER_URL


class PlainPublisher:
    """Declares the queue as gEAR does (durable, no arguments) and collects replies."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.channel = self.connection.channel()
        self.channel.queue_declare(queue=queue, durable=True)
        self.reply_queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.replies: dict[str, list[dict[str, Any]]] = {}
        self.channel.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.replies.setdefault(properties.correlation_id, []).append(json.loads(body))

    def publish(self, body: bytes | dict[str, Any], correlation_id: str, *,
                reply: bool = True, **properties: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.channel.basic_publish("", self.queue, data, pika.BasicProperties(
            delivery_mode=2, correlation_id=correlation_id,
            reply_to=self.reply_queue if reply else None, **properties))

    def wait_replies(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(map(len, self.replies.values())) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{sum(map(len, self.replies.values()))} of {count} "
                                     f"replies within {timeout} s")
            self.connection.process_data_events(time_limit=0.2)

    def settle(self, seconds: float) -> None:
        """Keep taking replies for a while (to see duplicates that come late)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=0.1)

    def depth(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def get(self, queue: str) -> tuple[Any, bytes] | None:
        method, properties, body = self.channel.basic_get(queue, auto_ack=True)
        return None if method is None else (properties, body)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()
