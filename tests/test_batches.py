"""With prefetch > 1 the consumer hands the executor child a batch of jobs at once, and
the next batch while it settles the last. Nothing may be lost or doubled by that:
not when it is stopped midway, nor when a job in the middle of a batch kills the
child, overruns its time limit, or is not a job at all."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from amqp import PlainPublisher
from consumers import ConsumerProcess

from gearqueue.config import load_settings
from gearqueue.state import JobStatus, open_store

pytestmark = pytest.mark.slow


@pytest.fixture
def prefetch_config(make_config) -> Path:
    return make_config(echo_service={"prefetch": 5})


@dataclass
class BatchRun:
    """Jobs `job-0`, `job-1`, ... published before the consumer starts, so its first
    deliveries form whole batches; run until each has its reply."""

    config: Path
    publisher: PlainPublisher
    consumer: ConsumerProcess
    ids: list[str]


@pytest.fixture
def run_batch(make_config, start_consumer):
    publishers: list[PlainPublisher] = []

    def run(service: dict[str, object], bodies: list[dict | bytes],
            settle: float = 0.5) -> BatchRun:
        config = make_config(echo_service=service)
        publisher = PlainPublisher(load_settings(config).service("echo").queue)
        publishers.append(publisher)
        ids = [f"job-{number}" for number in range(len(bodies))]
        for job_id, body in zip(ids, bodies, strict=True):
            publisher.publish(body, job_id, message_id=job_id)
        consumer = start_consumer(config)
        publisher.wait_replies(len(ids), timeout=60)
        publisher.settle(settle)
        return BatchRun(config, publisher, consumer, ids)

    yield run
    for publisher in publishers:
        publisher.close()


def _marks(config: Path) -> dict[str, int]:
    folder = load_settings(config).paths.exports_dir / "echo-marks"
    return {path.name: int(path.read_text()) for path in folder.iterdir()
            if not path.name.startswith(".")}


@pytest.fixture
def publisher(prefetch_config: Path):
    plain = PlainPublisher(load_settings(prefetch_config).service("echo").queue)
    yield plain
    plain.close()


def test_every_job_gets_exactly_one_reply_with_prefetch(
        prefetch_config: Path, publisher: PlainPublisher, start_consumer) -> None:
    start_consumer(prefetch_config)
    for number in range(300):
        publisher.publish({"data": number}, f"job-{number}", message_id=f"job-{number}")
    publisher.wait_replies(300, timeout=120)
    publisher.settle(0.5)
    assert all(publisher.replies[f"job-{number}"] == [
        {"success": 1, "echo": number, "attempt": 1}] for number in range(300))
    store = open_store(load_settings(prefetch_config), "echo")
    assert {store.require(f"job-{n}").status for n in range(300)} == {JobStatus.SUCCEEDED}
    assert publisher.depth(publisher.queue) == 0


def test_sigterm_midway_finishes_what_started_and_gives_back_the_rest(
        prefetch_config: Path, publisher: PlainPublisher, start_consumer) -> None:
    consumer = start_consumer(prefetch_config)
    for number in range(20):
        publisher.publish({"data": number, "sleep": 0.1}, f"job-{number}",
                          message_id=f"job-{number}")
    publisher.wait_replies(3, timeout=30)
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(timeout=30) == 0
    publisher.settle(0.5)
    done = set(publisher.replies)
    assert all(len(replies) == 1 and replies[0]["success"] == 1
               for replies in publisher.replies.values())
    # Each job was either run and answered once, or given back untouched: none lost.
    assert len(done) + publisher.depth(publisher.queue) == 20
    store = open_store(load_settings(prefetch_config), "echo")
    started = {f"job-{n}" for n in range(20) if store.get(f"job-{n}") is not None}
    assert started == done  # nothing was left half-way (running, unacked)


def test_a_crash_mid_batch_fails_that_job_alone(run_batch) -> None:
    """Job 3 of the first batch kills the child: jobs 0-2 finished before it (their
    results stored, settled from them) and the jobs after it in the batch had not
    started. Each is done and answered once; job 3 alone is retried until it is
    dead-lettered. A job given back unstarted comes back redelivered, and a redelivery
    counts the delivery that left no record (issue 14): its number is 2, not 1."""
    run = run_batch({"prefetch": 5, "max_retries": 1, "retry_backoff": 0.1}, [
        {"data": n, "mark": n != 3, **({"fail": "crash"} if n == 3 else {})}
        for n in range(10)], settle=1.0)
    publisher, ids = run.publisher, run.ids
    assert {job_id: len(replies) for job_id, replies in publisher.replies.items()} == {
        job_id: 1 for job_id in ids}
    for number, job_id in enumerate(ids):
        reply = publisher.replies[job_id][0]
        if number == 3:
            assert reply["success"] == -1 and "executor child died" in reply["message"]
        elif number < 3:
            assert reply == {"success": 1, "echo": number, "attempt": 1}
        else:
            assert reply in ({"success": 1, "echo": number, "attempt": 1},
                             {"success": 1, "echo": number, "attempt": 2})
    store = open_store(load_settings(run.config), "echo")
    assert store.require("job-3").status is JobStatus.FAILED
    assert store.require("job-3").attempts == 2
    marks = _marks(run.config)
    # One effect each, made by the attempt that answered: no job ran twice.
    assert {job_id: marks.get(job_id) for job_id in ids if job_id != "job-3"} == {
        job_id: publisher.replies[job_id][0]["attempt"] for job_id in ids
        if job_id != "job-3"}
    assert not [name for name in marks if ".again." in name]
    assert publisher.depth(f"{publisher.queue}.dead") == 1
    assert publisher.depth(publisher.queue) == 0
    assert run.consumer.process.poll() is None


def test_a_time_limit_mid_batch_kills_that_job_alone(run_batch) -> None:
    run = run_batch({"prefetch": 4, "max_retries": 0, "time_limit": 1}, [
        {"data": n, **({"sleep": 30} if n == 1 else {})} for n in range(4)])
    replies = {job_id: run.publisher.replies[job_id] for job_id in run.ids}
    assert replies["job-1"][0]["success"] == -1
    assert "time_limit" in replies["job-1"][0]["message"]
    assert replies["job-0"] == [{"success": 1, "echo": 0, "attempt": 1}]
    # Jobs 2-3 went back unstarted when job 1 was killed: their redelivery counts the
    # delivery that left no record (issue 14), so 2 if they were in job 1's batch.
    assert all(replies[job_id] in ([{"success": 1, "echo": n, "attempt": 1}],
                                   [{"success": 1, "echo": n, "attempt": 2}])
               for n, job_id in enumerate(run.ids) if n > 1)
    assert run.consumer.process.poll() is None
    assert run.publisher.depth(run.publisher.queue) == 0


def test_a_bad_message_between_good_ones_is_rejected_in_its_turn(run_batch) -> None:
    run = run_batch({"prefetch": 10}, [
        b"not json" if n == 4 else {"data": n} for n in range(8)])
    publisher = run.publisher
    bad = publisher.replies["job-4"]
    assert len(bad) == 1 and bad[0]["success"] == -1 and "JSON" in bad[0]["message"]
    assert all(publisher.replies[job_id] == [{"success": 1, "echo": n, "attempt": 1}]
               for n, job_id in enumerate(run.ids) if n != 4)
    assert publisher.depth(f"{publisher.queue}.dead") == 1
    assert publisher.depth(publisher.queue) == 0
    assert run.consumer.process.poll() is None
