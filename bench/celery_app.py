"""The Celery 5 side of the benchmark: one echo task, late acks, result backend optional.

The worker is started as `celery -A bench.celery_app worker -Q <queue> ...` with the
queue and prefetch multiplier from $BENCH_CELERY_QUEUE and $BENCH_CELERY_PREFETCH.
With $BENCH_RESULTS_URL (a Redis URL) every task's result is stored there, its keys
under $BENCH_RESULTS_PREFIX, before the late ack: the like-for-like peer of gearqueue,
which stores every result. Without it, no result backend (today's rows).
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

from bench.common import BROKER_URL

RESULTS_URL = os.environ.get("BENCH_RESULTS_URL", "")

app = Celery("bench", broker=BROKER_URL.replace("amqp://", "pyamqp://"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "1")),
    task_ignore_result=not RESULTS_URL,
    result_backend=RESULTS_URL or None,
    result_backend_transport_options={
        "global_keyprefix": os.environ.get("BENCH_RESULTS_PREFIX", "")},
    result_expires=3600,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # No pidbox queue or events on the shared broker: the worker consumes its queue only.
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    task_default_queue=os.environ.get("BENCH_CELERY_QUEUE", "celery"),
)


@app.task(name="bench.celery_app.noop")
def noop(index: int, marker: str = "") -> dict[str, int] | None:
    """Echo the index when results are stored (what gearqueue's echo job replies), else
    nothing; with no backend, the last task of a run creates `marker` so the publisher
    can stop (with one, the publisher waits for the last result instead)."""
    if marker:
        Path(marker).touch()
    return {"echo": index} if RESULTS_URL else None
