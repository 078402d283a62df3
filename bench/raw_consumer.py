#!/usr/bin/env python3
"""The ceiling: the least a pika consumer can do per job and still be correct.

`raw_consumer.py QUEUE PREFETCH`: durable queue, basic.qos(prefetch), decode the JSON
body, reply when the message asks for one (direct reply-to), then a manual ack. The
same messages gearqueue's echo consumer gets; no state, no child process, no limits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from bench.common import broker_params


def main() -> None:
    queue, prefetch = sys.argv[1], int(sys.argv[2])
    connection = pika.BlockingConnection(broker_params())
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    channel.basic_qos(prefetch_count=prefetch)

    def on_message(channel: Any, method: Any, properties: pika.BasicProperties,
                   body: bytes) -> None:
        data = json.loads(body)
        if properties.reply_to:
            reply = {"success": 1, "echo": data.get("data"), "attempt": 1}
            channel.basic_publish("", properties.reply_to, json.dumps(reply).encode(),
                                  pika.BasicProperties(correlation_id=properties.correlation_id,
                                                       content_type="application/json"))
        channel.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    with contextlib.suppress(KeyboardInterrupt):
        channel.start_consuming()


if __name__ == "__main__":
    main()
