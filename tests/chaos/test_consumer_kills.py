"""Chaos 1 and 3: consumers killed with SIGKILL, and messages that crash what runs them.

The figures of each run are printed (pytest -s, or in the report of a failure):
jobs, kills, redeliveries, lost, duplicated.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from gearqueue.state import JobStatus
from gearqueue.topology import retry_queue

from .harness import Feeder, Fleet, Ledger, wait_until

pytestmark = pytest.mark.slow

JOBS = 500
KILL_EVERY = 2.0


def test_sigkill_every_2_s_loses_nothing_and_repeats_no_effect(
        chaos_config, broker, fleet: Fleet) -> None:
    config = chaos_config(echo_service={"retry_backoff": 0.2})
    ledger = Ledger.of(config)
    consumers = [fleet.start(config, "1"), fleet.start(config, "2")]
    feeder = Feeder(broker.url, config)
    job_ids = [f"job-{number}" for number in range(JOBS)]
    for number, job_id in enumerate(job_ids):
        feeder.publish(job_id, {"data": number, "sleep": 0.05, "mark": True})

    rng = random.Random(5)
    next_kill = time.monotonic() + KILL_EVERY
    victim = 0

    def chaos() -> None:
        nonlocal next_kill, victim
        feeder.pump()
        if time.monotonic() < next_kill:
            return
        consumer = consumers[victim]
        victim = 1 - victim
        if fleet.alive(consumer):
            fleet.kill(consumer)
            fleet.restart(consumer, wait=False)
        next_kill = time.monotonic() + KILL_EVERY * rng.uniform(0.75, 1.25)

    wait_until(lambda: ledger.count(job_ids, JobStatus.SUCCEEDED, JobStatus.FAILED) == JOBS,
               timeout=150, what=f"{JOBS} jobs finished", tick=chaos, poll=0.05)
    feeder.wait_replies(job_ids, linger=1.0)  # and late ones, to see duplicates

    records = ledger.records(job_ids)
    marks = ledger.marks()
    reruns = ledger.reruns()
    redelivered = sum(1 for record in records.values() if record and record.attempts > 1)
    lost = [job_id for job_id in job_ids if job_id not in marks or not feeder.replies.get(job_id)]
    print(f"\nchaos 1: jobs {JOBS}, kills {fleet.kills}, jobs run again after a kill "
          f"{redelivered}, re-runs that found their effect made {len(reruns)}, "
          f"duplicate replies {sum(len(r) - 1 for r in feeder.replies.values())}, "
          f"lost {len(lost)}, duplicated effects {len(marks) - len(set(marks) & set(job_ids))}")

    assert fleet.kills >= 5
    assert redelivered >= 1, "no kill hit a running job: the test injected nothing"
    assert all(record.status is JobStatus.SUCCEEDED for record in records.values()), \
        {job_id: record for job_id, record in records.items()
         if record.status is not JobStatus.SUCCEEDED}
    # Each side effect exactly once: one mark per job id, and no other marks.
    assert sorted(marks) == sorted(job_ids)
    assert lost == []
    # A run that found its effect made follows an attempt that died before storing its
    # success: a kill inside that window. Never more of them than kills.
    assert len(reruns) <= fleet.kills
    assert all(earlier < attempt for _, attempt, earlier in reruns)
    for number, job_id in enumerate(job_ids):
        # Every reply of a job is the one stored result: a job that succeeded never ran again.
        assert feeder.replies[job_id] == [{"success": 1, "echo": number,
                                           "attempt": records[job_id].attempts}] \
            * len(feeder.replies[job_id])
    assert feeder.depth(feeder.service.queue) == 0
    assert feeder.depth(feeder.service.queue + ".dead") == 0
    assert all(feeder.depth(retry_queue(feeder.service, n)) == 0 for n in (1, 2, 3))
    feeder.close()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_job_that_crashes_the_executor_every_time_is_dead_lettered_after_max_retries(
        chaos_config, broker, fleet: Fleet, queue_type: str) -> None:
    config = chaos_config(echo_service={"retry_backoff": 0.1, "queue_type": queue_type})
    ledger = Ledger.of(config)
    consumers = [fleet.start(config, "1"), fleet.start(config, "2")]
    feeder = Feeder(broker.url, config)
    feeder.publish("poison", {"data": "poison", "fail": "crash"})
    job_ids = [f"job-{number}" for number in range(100)]
    for number, job_id in enumerate(job_ids):
        feeder.publish(job_id, {"data": number, "sleep": 0.02, "mark": True})

    wait_until(lambda: ledger.count(["poison"], JobStatus.FAILED) == 1
               and ledger.count(job_ids, JobStatus.SUCCEEDED) == len(job_ids),
               timeout=60, what="poison dead and the others done", tick=feeder.pump)
    feeder.wait_replies(["poison", *job_ids])

    poison = ledger.store.require("poison")
    assert poison.attempts == 4  # max_retries (3) + 1
    assert poison.error is not None and poison.error["class"] == "ExecutorCrashed"
    [(properties, body)] = feeder.dead_letters()
    headers = properties.headers
    assert properties.message_id == "poison"
    assert json.loads(body) == {"data": "poison", "fail": "crash"}
    assert headers["x-gear-attempts"] == 4
    assert headers["x-gear-error-class"] == "ExecutorCrashed"
    assert "killed by signal 9" in headers["x-gear-error-message"]
    assert headers["x-gear-original-queue"] == feeder.service.queue
    [reply] = feeder.replies["poison"]
    assert reply["success"] == -1 and "executor child died" in reply["message"]
    # The others kept flowing, each run once, and no consumer had to reconnect.
    assert sorted(ledger.marks()) == sorted(job_ids)
    assert all(record.attempts == 1 for record in ledger.records(job_ids).values())
    assert all(fleet.alive(consumer) and fleet.readiness(consumer) == 1
               for consumer in consumers)
    feeder.close()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_job_that_kills_its_consumer_every_time_is_dead_lettered_after_max_retries(
        chaos_config, broker, fleet: Fleet, queue_type: str) -> None:
    config = chaos_config(echo_service={"queue_type": queue_type})
    ledger = Ledger.of(config)
    consumer = fleet.start(config, "1")
    feeder = Feeder(broker.url, config)
    feeder.publish("killer", {"data": "killer", "sleep": 60})
    for attempt in (1, 2, 3, 4):
        wait_until(lambda attempt=attempt: (record := ledger.store.get("killer")) is not None
                   and record.status is JobStatus.RUNNING and record.attempts == attempt,
                   timeout=30, what=f"attempt {attempt} running")
        fleet.kill(consumer)  # e.g. the OOM killer, every time this job runs
        fleet.restart(consumer)
    wait_until(lambda: ledger.count(["killer"], JobStatus.FAILED) == 1, timeout=30,
               what="the killer job dead-lettered", tick=feeder.pump)
    feeder.wait_replies(["killer"])

    record = ledger.store.require("killer")
    assert record.attempts == 4 and record.error is not None
    assert record.error["class"] == "AttemptsExhausted"
    [(properties, _)] = feeder.dead_letters()
    assert properties.headers["x-gear-attempts"] == 4
    assert properties.headers["x-gear-error-class"] == "AttemptsExhausted"
    [reply] = feeder.replies["killer"]
    assert reply == {"success": -1, "message": "gave up after 4 attempts"}
    assert feeder.depth(feeder.service.queue) == 0
    feeder.close()
