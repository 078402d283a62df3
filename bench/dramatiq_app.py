"""The Dramatiq side of the benchmark: its RabbitMQ broker and one echo actor.

The actor's queue comes from $BENCH_DRAMATIQ_QUEUE (the worker and the publisher must
agree on it); prefetch per worker thread is Dramatiq's own $dramatiq_queue_prefetch.
With $BENCH_RESULTS_URL (a Redis URL) the broker has Dramatiq's Results middleware and
the actor `store_results=True`: every result is stored there, keys under
$BENCH_RESULTS_PREFIX, before the ack (the like-for-like peer of gearqueue). Without
it, no result backend (today's rows).
"""

from __future__ import annotations

import os
from pathlib import Path

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results

from bench.common import BROKER_URL
from bench.redis_store import dramatiq_backend

RESULTS_URL = os.environ.get("BENCH_RESULTS_URL", "")

broker = RabbitmqBroker(url=BROKER_URL)
if RESULTS_URL:
    broker.add_middleware(Results(backend=dramatiq_backend(
        RESULTS_URL, os.environ.get("BENCH_RESULTS_PREFIX", ""))))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", queue_name=os.environ.get("BENCH_DRAMATIQ_QUEUE", "default"),
                max_retries=0, **({"store_results": True} if RESULTS_URL else {}))
def noop(index: int, marker: str = "") -> dict[str, int] | None:
    """Echo the index when results are stored (what gearqueue's echo job replies), else
    nothing; with no backend, the last message of a run creates `marker` so the
    publisher can stop (with one, the publisher waits for the last result instead)."""
    if marker:
        Path(marker).touch()
    return {"echo": index} if RESULTS_URL else None
