"""Item 3: round-trip latency of `Client.call()` against a raw pika direct reply-to echo.

Raw: a plain pika client publishes a persistent JSON message with
`reply_to = amq.rabbitmq.reply-to` to `raw_consumer.py`, which replies and acks; the
client waits for the reply. gearqueue: `Client.call("echo", ...)` to a real echo
consumer process (publish with confirm, the job through the executor child with its
state records, reply, ack). One request at a time; percentiles of the samples after a
warm-up.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pika

from bench.common import (
    BENCH,
    PYTHON,
    ROOT,
    broker,
    broker_params,
    gear_queues,
    percentile,
    start,
    stop,
    unique_tag,
    wait_until,
    write_gear_ini,
)
from gearqueue.client import DIRECT_REPLY_TO, Client
from gearqueue.config import load_settings

log = logging.getLogger(__name__)

WARM_UP = 300


def _summary(samples: list[float]) -> dict[str, Any]:
    milliseconds = [sample * 1000 for sample in samples]
    return {"samples": len(milliseconds), "p50_ms": percentile(milliseconds, 0.50),
            "p95_ms": percentile(milliseconds, 0.95), "p99_ms": percentile(milliseconds, 0.99)}


def _raw_round_trips(queue: str, count: int) -> list[float]:
    connection = pika.BlockingConnection(broker_params())
    channel = connection.channel()
    replies: list[bytes] = []
    channel.basic_consume(DIRECT_REPLY_TO, lambda _c, _m, _p, body: replies.append(body),
                          auto_ack=True)
    samples = []
    try:
        for number in range(count + WARM_UP):
            job_id = uuid.uuid4().hex
            started = time.perf_counter()
            channel.basic_publish("", queue, json.dumps({"data": number}).encode(),
                                  pika.BasicProperties(
                                      content_type="application/json", delivery_mode=2,
                                      message_id=job_id, correlation_id=job_id,
                                      reply_to=DIRECT_REPLY_TO))
            while not replies:
                connection.process_data_events(time_limit=None)
            samples.append(time.perf_counter() - started)
            replies.clear()
    finally:
        connection.close()
    return samples[WARM_UP:]


def _call_round_trips(config: Path, count: int) -> list[float]:
    samples = []
    with Client(load_settings(config), name="gearqueue-bench") as client:
        for number in range(count + WARM_UP):
            started = time.perf_counter()
            reply = client.call("echo", {"data": number}, timeout=30)
            samples.append(time.perf_counter() - started)
            assert reply.get("success") == 1, reply
    return samples[WARM_UP:]


def measure(count: int) -> dict[str, object]:
    tag = unique_tag()
    raw_queue, gear_queue = f"{tag}.raw-echo", f"{tag}.echo"
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix=f"{tag}-") as temp, broker() as admin:
        folder = Path(temp)
        raw = start([PYTHON, str(BENCH / "raw_consumer.py"), raw_queue, "1"],
                    folder / "raw.log")
        try:
            wait_until(lambda: admin.consumers(raw_queue) >= 1, 30, "raw echo ready",
                       process=raw)
            result["raw"] = _summary(_raw_round_trips(raw_queue, count))
        finally:
            stop(raw)
            admin.delete_own_queues(tag, [raw_queue])
        config = write_gear_ini(folder, {"echo": gear_queue})
        gear = start([PYTHON, str(ROOT / "listeners" / "echo_consumer.py"), "--config",
                      str(config)], folder / "gear.log")
        try:
            wait_until(lambda: admin.consumers(gear_queue) >= 1, 60, "echo consumer ready",
                       process=gear)
            result["call"] = _summary(_call_round_trips(config, count))
        finally:
            stop(gear)
            admin.delete_own_queues(tag, gear_queues(gear_queue))
    log.info("latency p50: raw %.2f ms, call() %.2f ms", result["raw"]["p50_ms"],
             result["call"]["p50_ms"])
    return result
