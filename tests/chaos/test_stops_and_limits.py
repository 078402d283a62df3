"""Chaos 4, 5 and 6: SIGTERM mid-job, a job far longer than the heartbeat, and the time
and memory limits of the executor child."""

from __future__ import annotations

import itertools
import random
import re
import time

import pytest

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.state import JobStatus

from .harness import CHILD_READY, Feeder, Fleet, Ledger, wait_until

pytestmark = pytest.mark.slow


def test_sigterm_mid_job_loses_nothing_and_runs_nothing_twice(
        chaos_config, broker, fleet: Fleet) -> None:
    # prefetch 2: a stopping consumer also holds a job it has not started, to give back.
    config = chaos_config(echo_service={"prefetch": 2})
    ledger = Ledger.of(config)
    consumers = [fleet.start(config, "1"), fleet.start(config, "2")]
    feeder = Feeder(broker.url, config)
    rng = random.Random(4)
    job_ids = [f"job-{number}" for number in range(120)]
    long_jobs = set(rng.sample(job_ids, 12))
    for number, job_id in enumerate(job_ids):
        feeder.publish(job_id, {"data": number, "sleep": 2.5 if job_id in long_jobs else 0.05,
                                "mark": True})

    exit_codes = []
    mid_job = {True: 0, False: 0}  # SIGTERMs that came during a long / a short job
    while ledger.count(job_ids, JobStatus.SUCCEEDED) < len(job_ids):
        feeder.pump(0.6)
        want_long = fleet.terms % 2 == 0
        running = {record.worker.rpartition(":")[2]: record.job_id
                   for record in ledger.records(job_ids).values()
                   if record is not None and record.status is JobStatus.RUNNING
                   and record.worker}
        victim = consumers[fleet.terms % 2]
        for consumer in consumers:
            job_id = running.get(str(fleet.child_pid(consumer)))
            if job_id is not None and (job_id in long_jobs) == want_long:
                victim = consumer
                mid_job[want_long] += 1
                break
        exit_codes.append(fleet.terminate(victim, timeout=30))
        fleet.restart(victim)
        assert fleet.terms < 40, "jobs did not finish"
    feeder.wait_replies(job_ids)

    records = ledger.records(job_ids)
    print(f"\nchaos 4: jobs {len(job_ids)} ({len(long_jobs)} of 2.5 s), SIGTERMs {fleet.terms} "
          f"({mid_job[True]} during a long job, {mid_job[False]} during a short one), "
          f"lost {len(set(job_ids) - set(ledger.marks()))}, "
          f"run twice {sum(record.attempts > 1 for record in records.values())}")
    assert exit_codes == [0] * fleet.terms
    assert fleet.terms >= 5 and mid_job[True] >= 1 and mid_job[False] >= 1
    assert sorted(ledger.marks()) == sorted(job_ids)
    assert ledger.reruns() == []
    # Nothing run twice (reruns above): a graceful stop finishes the job it runs and
    # gives back the rest. A job given back unstarted comes back redelivered, and a
    # redelivery counts the delivery that left no record (issue 14): its number is 2.
    assert all(record.attempts in (1, 2) for record in records.values())
    assert all(len(feeder.replies[job_id]) == 1 for job_id in job_ids)
    assert feeder.depth(feeder.service.queue) == 0
    feeder.close()


def test_a_job_of_ten_heartbeats_needs_no_reconnect_and_is_not_redelivered(
        chaos_config, broker, fleet: Fleet) -> None:
    config = chaos_config(rabbitmq={"heartbeat": 1})
    consumer = fleet.start(config, "1")
    with Client(load_settings(config)) as client:
        started = time.monotonic()
        reply = client.call("echo", {"data": "long", "sleep": 10}, timeout=60,
                            job_id="ten-heartbeats")
    assert time.monotonic() - started >= 10
    assert reply == {"success": 1, "echo": "long", "attempt": 1}
    record = Ledger.of(config).store.require("ten-heartbeats")
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 1
    log = consumer.log()
    assert fleet.readiness(consumer) == 1, log
    assert "lost the broker" not in log and "replying from its stored record" not in log
    assert "missed heartbeats" not in broker.log()


def test_hard_time_limit_kills_the_child_and_retries_and_the_consumer_stays_up(
        chaos_config, broker, fleet: Fleet) -> None:
    config = chaos_config(echo_service={"time_limit": 1, "max_retries": 1,
                                        "retry_backoff": 0.1})
    ledger = Ledger.of(config)
    consumer = fleet.start(config, "1")
    feeder = Feeder(broker.url, config)
    feeder.publish("slow", {"data": "slow", "sleep": 30})
    feeder.publish("after", {"data": "after"})
    wait_until(lambda: ledger.count(["slow"], JobStatus.FAILED) == 1
               and ledger.count(["after"], JobStatus.SUCCEEDED) == 1,
               timeout=30, what="slow dead-lettered, after done", tick=feeder.pump)
    feeder.wait_replies(["slow", "after"])

    slow = ledger.store.require("slow")
    assert slow.attempts == 2 and slow.error is not None
    assert slow.error["class"] == "HardTimeLimitExceeded"
    [(properties, _)] = feeder.dead_letters()
    assert properties.headers["x-gear-error-class"] == "HardTimeLimitExceeded"
    assert properties.headers["x-gear-attempts"] == 2
    assert feeder.replies["after"] == [{"success": 1, "echo": "after", "attempt": 1}]
    log = consumer.log()
    assert log.count("job ran past time_limit (1 s) and was killed") == 2
    # A new child is started for the next job after each kill (here: 'after').
    assert len(CHILD_READY.findall(log)) == 2
    assert fleet.alive(consumer) and fleet.readiness(consumer) == 1
    feeder.close()


def test_soft_time_limit_raises_in_the_job_which_is_retried_in_the_same_child(
        chaos_config, broker, fleet: Fleet) -> None:
    config = chaos_config(echo_service={"soft_time_limit": 0.5, "time_limit": 5,
                                        "max_retries": 1, "retry_backoff": 0.1})
    ledger = Ledger.of(config)
    consumer = fleet.start(config, "1")
    feeder = Feeder(broker.url, config)
    feeder.publish("slow", {"data": "slow", "sleep": 30})
    wait_until(lambda: ledger.count(["slow"], JobStatus.FAILED) == 1, timeout=30,
               what="slow dead-lettered", tick=feeder.pump)
    slow = ledger.store.require("slow")
    assert slow.attempts == 2 and slow.error is not None
    assert slow.error["class"] == "SoftTimeLimitExceeded"
    # The job got an exception it could handle: its child was not killed.
    assert consumer.log().count("executor child") == 1
    assert "was killed" not in consumer.log()
    feeder.close()


def test_memory_cap_recycles_a_grown_child_and_kills_a_runaway_one(
        chaos_config, broker, fleet: Fleet) -> None:
    config = chaos_config(echo_service={"max_memory_mb": 150, "max_retries": 1,
                                        "retry_backoff": 0.1})
    ledger = Ledger.of(config)
    consumer = fleet.start(config, "1")
    feeder = Feeder(broker.url, config)
    # 200 MiB kept: over the cap, under twice it -> finishes, then the child is replaced.
    feeder.publish("grown", {"data": "grown", "memory_mb": 200})
    # 400 MiB: past twice the cap -> killed mid-job, retried, then dead-lettered.
    feeder.publish("runaway", {"data": "runaway", "memory_mb": 400, "sleep": 3})
    feeder.publish("after", {"data": "after"})
    wait_until(lambda: ledger.count(["grown", "after"], JobStatus.SUCCEEDED) == 2
               and ledger.count(["runaway"], JobStatus.FAILED) == 1,
               timeout=60, what="grown and after done, runaway dead", tick=feeder.pump)
    feeder.wait_replies(["grown", "runaway", "after"])

    assert feeder.replies["grown"] == [{"success": 1, "echo": "grown", "attempt": 1}]
    runaway = ledger.store.require("runaway")
    assert runaway.attempts == 2 and runaway.error is not None
    assert runaway.error["class"] == "MemoryLimitExceeded"
    assert feeder.replies["after"] == [{"success": 1, "echo": "after", "attempt": 1}]
    log = consumer.log()
    assert "recycling the executor child: RSS" in log
    assert log.count("passed twice max_memory_mb (150 MiB) and it was killed") == 2
    assert fleet.alive(consumer) and fleet.readiness(consumer) == 1
    feeder.close()


def test_max_jobs_per_child_recycles_the_child_between_jobs(
        chaos_config, broker, fleet: Fleet) -> None:
    config = chaos_config(echo_service={"max_jobs_per_child": 3})
    ledger = Ledger.of(config)
    consumer = fleet.start(config, "1")
    feeder = Feeder(broker.url, config)
    job_ids = [f"job-{number}" for number in range(7)]
    for job_id in job_ids:
        feeder.publish(job_id, {"data": job_id, "mark": True})
    wait_until(lambda: ledger.count(job_ids, JobStatus.SUCCEEDED) == 7, timeout=30,
               what="7 jobs done", tick=feeder.pump)
    log = consumer.log()
    assert log.count("recycling the executor child: 3 jobs done (max_jobs_per_child)") == 2
    assert len(set(CHILD_READY.findall(log))) == 3
    # Each replacement was started while its predecessor still ran jobs, and adopted warm.
    events = re.findall(r"starting the next executor child ahead|recycling the executor", log)
    assert events[:4] == ["starting the next executor child ahead",
                          "recycling the executor"] * 2
    assert sorted(ledger.marks()) == sorted(job_ids)
    feeder.close()


def test_rate_limit_spaces_the_starts_of_jobs(chaos_config, broker, fleet: Fleet) -> None:
    config = chaos_config(echo_service={"rate_limit": 5, "prefetch": 10})
    ledger = Ledger.of(config)
    fleet.start(config, "1")
    feeder = Feeder(broker.url, config)
    job_ids = [f"job-{number}" for number in range(10)]
    for job_id in job_ids:
        feeder.publish(job_id, {"data": job_id})
    wait_until(lambda: ledger.count(job_ids, JobStatus.SUCCEEDED) == 10, timeout=30,
               what="10 jobs done", tick=feeder.pump)
    # At most 5 starts per second: jobs of a few ms end about 0.2 s apart (without the
    # limit all ten end within some 50 ms). When each ended is in its state record.
    ends = sorted(record.updated for record in ledger.records(job_ids).values()
                  if record is not None)
    gaps = [later - earlier for earlier, later in itertools.pairwise(ends)]
    assert len(gaps) == 9 and all(gap >= 0.1 for gap in gaps) and sum(gaps) >= 1.6, gaps
    feeder.close()
