"""The Celery 5 side of the benchmark: one no-op task, late acks, no result backend.

The worker is started as `celery -A bench.celery_app worker -Q <queue> ...` with the
queue and prefetch multiplier from $BENCH_CELERY_QUEUE and $BENCH_CELERY_PREFETCH.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

from bench.common import BROKER_URL

app = Celery("bench", broker=BROKER_URL.replace("amqp://", "pyamqp://"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "1")),
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # No pidbox queue or events on the shared broker: the worker consumes its queue only.
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    task_default_queue=os.environ.get("BENCH_CELERY_QUEUE", "celery"),
)


@app.task(name="bench.celery_app.noop")
def noop(index: int, marker: str = "") -> None:
    """Do nothing; the last task of a run creates `marker` so the publisher can stop."""
    if marker:
        Path(marker).touch()
