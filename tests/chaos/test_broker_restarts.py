"""Chaos 2: the broker restarts twice under load (once stopped, once killed -9)."""

from __future__ import annotations

import threading
import time

import pytest

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import BrokerError
from gearqueue.state import JobStatus
from gearqueue.topology import retry_queue

from .harness import Feeder, Fleet, Ledger, wait_until

pytestmark = pytest.mark.slow

JOBS = 500
BACK_WITHIN = 10.0


class SteadyPublisher(threading.Thread):
    """Submits jobs at a steady pace; a submit that fails is retried with the same id,
    as a web API would, until the broker confirms it."""

    def __init__(self, config, job_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.settings = load_settings(config)
        self.job_ids = job_ids
        self.confirmed: list[str] = []
        self.failed_submits = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Client(self.settings, name="chaos-publisher") as client:
                for number, job_id in enumerate(self.job_ids):
                    while True:
                        try:
                            client.submit("echo", {"data": number, "sleep": 0.05, "mark": True},
                                          job_id=job_id)
                            break
                        except BrokerError:
                            self.failed_submits += 1
                            client.close()
                            time.sleep(0.2)
                    self.confirmed.append(job_id)
                    time.sleep(0.02)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error


def test_two_broker_restarts_lose_no_confirmed_job(chaos_config, broker, fleet: Fleet) -> None:
    config = chaos_config(echo_service={"retry_backoff": 0.2},
                          rabbitmq={"reconnect_max_delay": 2})
    ledger = Ledger.of(config)
    consumers = [fleet.start(config, "1"), fleet.start(config, "2")]
    job_ids = [f"job-{number}" for number in range(JOBS)]
    publisher = SteadyPublisher(config, job_ids)
    publisher.start()

    away: list[float] = []
    back: list[float] = []
    for hard, after in ((False, 100), (True, 300)):
        wait_until(lambda after=after: len(publisher.confirmed) >= after or publisher.error,
                   timeout=60, what=f"{after} jobs confirmed")
        ready = [fleet.readiness(consumer) for consumer in consumers]
        away.append(broker.restart(hard=hard))
        back.append(wait_until(
            lambda ready=ready: all(fleet.readiness(consumer) > count
                                    for consumer, count in zip(consumers, ready, strict=True)),
            timeout=30, what="both consumers consuming again"))

    publisher.join(120)
    assert publisher.error is None, publisher.error
    assert publisher.confirmed == job_ids
    wait_until(lambda: ledger.count(job_ids, JobStatus.SUCCEEDED, JobStatus.FAILED) == JOBS,
               timeout=120, what=f"{JOBS} jobs finished", poll=0.25)

    records = ledger.records(job_ids)
    marks = ledger.marks()
    lost = [job_id for job_id in job_ids if records[job_id].status is not JobStatus.SUCCEEDED
            or job_id not in marks]
    print(f"\nchaos 2: jobs {JOBS}, broker restarts {len(away)} (away "
          f"{', '.join(f'{s:.1f}' for s in away)} s), consumers back after "
          f"{', '.join(f'{s:.1f}' for s in back)} s, submits retried "
          f"{publisher.failed_submits}, run again {sum(r.attempts > 1 for r in records.values())}, "
          f"re-runs that found their effect made {len(ledger.reruns())}, lost {len(lost)}, "
          f"duplicated effects {len(set(marks) - set(job_ids))}")
    assert all(seconds <= BACK_WITHIN for seconds in back), back
    assert lost == []
    assert sorted(marks) == sorted(job_ids)
    assert all(fleet.alive(consumer) for consumer in consumers)
    feeder = Feeder(broker.url, config)
    try:
        assert feeder.depth(feeder.service.queue) == 0
        assert feeder.depth(feeder.service.queue + ".dead") == 0
        assert all(feeder.depth(retry_queue(feeder.service, n)) == 0 for n in (1, 2, 3))
    finally:
        feeder.close()
