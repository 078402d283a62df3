#!/usr/bin/env python3
"""Publish N no-op jobs in one system's wire format and time them until the last is done.

`publisher.py --kind json|celery|dramatiq --queue Q --count N [--marker PATH]`

Runs as its own process, next to the consumer under test, so the two run together.
Every system gets the same publisher: plain pika, persistent messages, no confirms, the
messages encoded before the clock starts. The clock stops when the *last* message is
done: for `json` (raw pika and gearqueue consumers) its reply arrives on direct
reply-to; for Celery and Dramatiq with no result backend its task creates `--marker`;
with one ($BENCH_RESULTS_URL, see bench/redis_store.py) its result is in the backend,
read through the system's own result API.
One consumer takes messages in queue order, so the last one done means all are done
(with two processes, at most one other job is still finishing).

Prints one JSON line: started, published, finished (time.monotonic, which is one clock
for every process of the machine), count, timed_out (then count is what was drained).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import broker_params

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
Message = tuple[bytes, pika.BasicProperties]
#: Set (with BENCH_RESULTS_PREFIX) when the consumer stores results in Redis.
RESULTS_URL = os.environ.get("BENCH_RESULTS_URL", "")


def json_messages(count: int) -> list[Message]:
    messages = []
    for index in range(count):
        job_id = uuid.uuid4().hex
        messages.append((json.dumps({"data": index}).encode(), pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=job_id,
            correlation_id=job_id,
            reply_to=DIRECT_REPLY_TO if index == count - 1 else None)))
    return messages


def celery_messages(count: int, marker: str) -> tuple[list[Message], Callable[[], bool]]:
    """The messages, and whether the last one is done (its marker, or its result)."""
    from bench.celery_app import app

    messages = []
    for index in range(count):
        kwargs = {"marker": marker} if index == count - 1 and not RESULTS_URL else {}
        task_id = str(uuid.uuid4())
        headers, properties, body, _ = app.amqp.as_task_v2(
            task_id, "bench.celery_app.noop", args=(index,), kwargs=kwargs,
            ignore_result=not RESULTS_URL)
        encoded = json.dumps(body).encode()
        messages.append((encoded, pika.BasicProperties(
            content_type="application/json", content_encoding="utf-8", delivery_mode=2,
            correlation_id=properties["correlation_id"], headers=headers, priority=0)))
    if not RESULTS_URL:
        return messages, lambda: os.path.exists(marker)
    last = app.AsyncResult(task_id)
    return messages, lambda: last.ready() and _echoed(last.get(), count - 1)


def dramatiq_messages(count: int, queue: str, marker: str
                      ) -> tuple[list[Message], Callable[[], bool]]:
    """The messages, and whether the last one is done (its marker, or its result)."""
    import dramatiq

    messages = []
    for index in range(count):
        kwargs = {"marker": marker} if index == count - 1 and not RESULTS_URL else {}
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue, actor_name="noop", args=(index,), kwargs=kwargs, options={})
        messages.append((message.encode(), pika.BasicProperties(delivery_mode=2,
                                                                priority=0)))
    if not RESULTS_URL:
        return messages, lambda: os.path.exists(marker)
    from dramatiq.results import ResultMissing

    from bench.redis_store import dramatiq_backend

    backend = dramatiq_backend(RESULTS_URL, os.environ["BENCH_RESULTS_PREFIX"])
    last = message

    def done() -> bool:
        try:
            return _echoed(backend.get_result(last), count - 1)
        except ResultMissing:
            return False
    return messages, done


def _echoed(result: Any, index: int) -> bool:
    """True for the echo the job returns; anything else means the run is broken."""
    if result != {"echo": index}:
        raise RuntimeError(f"stored result {result!r}, expected {{'echo': {index}}}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("json", "celery", "dramatiq"), required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--marker", default="")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds from the first publish; then count what was drained")
    parser.add_argument("--prefetch", type=int, default=0,
                        help="messages the consumer may hold unacked (for --timeout)")
    args = parser.parse_args()

    replies: list[bytes] = []
    done: Callable[[], bool]
    if args.kind == "json":
        messages = json_messages(args.count)
        done = lambda: bool(replies)  # noqa: E731
    elif args.kind == "celery":
        messages, done = celery_messages(args.count, args.marker)
    else:
        messages, done = dramatiq_messages(args.count, args.queue, args.marker)
    if args.marker and os.path.exists(args.marker):
        os.unlink(args.marker)

    connection = pika.BlockingConnection(broker_params())
    channel = connection.channel()
    if args.kind == "json":
        channel.basic_consume(DIRECT_REPLY_TO, lambda _c, _m, _p, body: replies.append(body),
                              auto_ack=True)

    started = time.monotonic()
    for body, properties in messages:
        channel.basic_publish("", args.queue, body, properties)
    published = time.monotonic()
    deadline = started + args.timeout
    count, timed_out = args.count, False
    while not done():
        if time.monotonic() > deadline:
            # A stalling consumer (Celery's solo pool) must not hold the bench for minutes:
            # count what left the queue instead (the few unacked in the consumer's
            # prefetch count as not done).
            ready = channel.queue_declare(args.queue, passive=True).method.message_count
            count, timed_out = args.count - ready - args.prefetch, True
            break
        connection.process_data_events(time_limit=0.001)
    finished = time.monotonic()
    connection.close()
    print(json.dumps({"started": started, "published": published, "finished": finished,
                      "count": max(count, 0), "timed_out": timed_out}))


if __name__ == "__main__":
    main()
