"""Item 2: how fast the client queues jobs: `submit` one by one vs `submit_many`.

Both go through gearqueue's Client with its defaults: JSON, persistent, `mandatory`,
publisher confirms, and a "queued" state record per job. `submit` waits for each
message's confirm (BlockingChannel confirm mode); `submit_many` streams them
(gearqueue.bulk). No consumer runs: the figure is the publisher's alone. The queues are
this run's own and are deleted afterwards.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from bench.common import broker, gear_queues, median, unique_tag, write_gear_ini
from gearqueue.client import Client
from gearqueue.config import load_settings

log = logging.getLogger(__name__)


def _one_by_one(client: Client, count: int) -> float:
    started = time.perf_counter()
    for number in range(count):
        client.submit("echo", {"data": number})
    return count / (time.perf_counter() - started)


def _batch(client: Client, count: int) -> float:
    payloads = [{"data": number} for number in range(count)]
    started = time.perf_counter()
    job_ids = client.submit_many("echo", payloads)
    elapsed = time.perf_counter() - started
    assert len(job_ids) == count
    return count / elapsed


def measure(repetitions: int, one_count: int = 1000, batch_count: int = 10000
            ) -> dict[str, object]:
    tag = unique_tag()
    queue = f"{tag}.publish"
    with tempfile.TemporaryDirectory(prefix=f"{tag}-") as temp, broker() as admin:
        settings = load_settings(write_gear_ini(Path(temp), {"echo": queue}))
        try:
            with Client(settings, name="gearqueue-bench") as client:
                client.submit("echo", {"data": "warm-up"})  # connect, declare, first write
                one = [_one_by_one(client, one_count) for _ in range(repetitions)]
                many = [_batch(client, batch_count) for _ in range(repetitions)]
        finally:
            admin.delete_own_queues(tag, gear_queues(queue))
    log.info("publish: one by one %.0f/s, submit_many %.0f/s", median(one), median(many))
    return {"one_by_one": {"count": one_count, "runs": one, "jobs_per_s": median(one)},
            "submit_many": {"count": batch_count, "runs": many, "jobs_per_s": median(many)}}
