"""Item 3: round-trip latency of `Client.call()` against a raw pika direct reply-to echo.

Raw: a plain pika client publishes a persistent JSON message with
`reply_to = amq.rabbitmq.reply-to` to `raw_consumer.py`, which replies and acks; the
client waits for the reply. gearqueue: `Client.call("echo", ...)` to a real echo
consumer process (queued state record, publish, the job through the executor child with
its state records, reply, ack). One request at a time; both consumers run for the whole
measurement and the two sides take turns in batches of BATCH calls, so a busy moment of
a shared machine weighs on both alike (measured one after the other, a load burst from
another process could land on one side only). Percentiles of the samples after a
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

ISOLATIONS = ("inline", "process")

WARM_UP = 300
#: Calls in a row on one side before the other side's turn.
BATCH = 25


def _summary(samples: list[float]) -> dict[str, Any]:
    milliseconds = [sample * 1000 for sample in samples]
    return {"samples": len(milliseconds), "p50_ms": percentile(milliseconds, 0.50),
            "p95_ms": percentile(milliseconds, 0.95), "p99_ms": percentile(milliseconds, 0.99)}


class _RawCaller:
    """The raw side: a plain pika client, one persistent request at a time."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.connection = pika.BlockingConnection(broker_params())
        self.channel = self.connection.channel()
        self.replies: list[bytes] = []
        self.channel.basic_consume(DIRECT_REPLY_TO,
                                   lambda _c, _m, _p, body: self.replies.append(body),
                                   auto_ack=True)

    def __call__(self, number: int) -> None:
        job_id = uuid.uuid4().hex
        self.channel.basic_publish("", self.queue, json.dumps({"data": number}).encode(),
                                   pika.BasicProperties(
                                       content_type="application/json", delivery_mode=2,
                                       message_id=job_id, correlation_id=job_id,
                                       reply_to=DIRECT_REPLY_TO))
        while not self.replies:
            self.connection.process_data_events(time_limit=None)
        self.replies.clear()

    def close(self) -> None:
        self.connection.close()


class _GearCaller:
    """The gearqueue side: `Client.call("echo", ...)`."""

    def __init__(self, config: Path) -> None:
        self.client = Client(load_settings(config), name="gearqueue-bench")

    def __call__(self, number: int) -> None:
        reply = self.client.call("echo", {"data": number}, timeout=30)
        assert reply.get("success") == 1, reply

    def close(self) -> None:
        self.client.close()


def _interleaved(callers: dict[str, _RawCaller | _GearCaller], count: int
                 ) -> dict[str, list[float]]:
    """`count` timed calls of each caller, taking turns in batches of BATCH after WARM_UP
    untimed ones each, so a busy moment on a shared machine hits both sides alike."""
    for number in range(WARM_UP):
        for caller in callers.values():
            caller(number)
    samples: dict[str, list[float]] = {name: [] for name in callers}
    for first in range(0, count, BATCH):
        for name, caller in callers.items():
            for number in range(first, min(first + BATCH, count)):
                started = time.perf_counter()
                caller(number)
                samples[name].append(time.perf_counter() - started)
    return samples


def measure(count: int) -> dict[str, object]:
    tag = unique_tag()
    raw_queue = f"{tag}.raw-echo"
    #: One echo consumer per isolation, each on a queue of its own.
    gear_queue = {isolation: f"{tag}.echo-{isolation}" for isolation in ISOLATIONS}
    with tempfile.TemporaryDirectory(prefix=f"{tag}-") as temp, broker() as admin:
        folder = Path(temp)
        configs = {isolation: write_gear_ini(folder, {"echo": queue}, isolation=isolation)
                   for isolation, queue in gear_queue.items()}
        raw = start([PYTHON, str(BENCH / "raw_consumer.py"), raw_queue, "1"],
                    folder / "raw.log")
        gears = [start([PYTHON, str(ROOT / "listeners" / "echo_consumer.py"), "--config",
                        str(config)], folder / f"gear-{isolation}.log")
                 for isolation, config in configs.items()]
        callers: dict[str, _RawCaller | _GearCaller] = {}
        try:
            wait_until(lambda: admin.consumers(raw_queue) >= 1, 30, "raw echo ready",
                       process=raw)
            for (isolation, queue), gear in zip(gear_queue.items(), gears, strict=True):
                wait_until(lambda queue=queue: admin.consumers(queue) >= 1, 60,
                           f"echo consumer ({isolation}) ready", process=gear)
            callers["raw"] = _RawCaller(raw_queue)
            for isolation, config in configs.items():
                callers[f"call_{isolation}"] = _GearCaller(config)
            samples = _interleaved(callers, count)
        finally:
            for caller in callers.values():
                caller.close()
            stop(raw)
            for gear in gears:
                stop(gear)
            admin.delete_own_queues(tag, [raw_queue, *(name for queue in gear_queue.values()
                                                       for name in gear_queues(queue))])
    result: dict[str, object] = {name: _summary(values) for name, values in samples.items()}
    log.info("latency p50: raw %.2f ms, call() inline %.2f ms, process %.2f ms",
             result["raw"]["p50_ms"], result["call_inline"]["p50_ms"],
             result["call_process"]["p50_ms"])
    return result
