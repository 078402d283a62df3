"""The Dramatiq side of the benchmark: its RabbitMQ broker and one no-op actor.

The actor's queue comes from $BENCH_DRAMATIQ_QUEUE (the worker and the publisher must
agree on it); prefetch per worker thread is Dramatiq's own $dramatiq_queue_prefetch.
"""

from __future__ import annotations

import os
from pathlib import Path

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.common import BROKER_URL

broker = RabbitmqBroker(url=BROKER_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", queue_name=os.environ.get("BENCH_DRAMATIQ_QUEUE", "default"),
                max_retries=0)
def noop(index: int, marker: str = "") -> None:
    """Do nothing; the last message of a run creates `marker` so the publisher can stop."""
    if marker:
        Path(marker).touch()
