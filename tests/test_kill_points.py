"""kill -9 of a consumer at every step of a job's life, in both isolations.

The test hook (worker/testhook.py, GEAR_TEST_KILL_AT) kills the consumer, and its
executor child if it has one, the first time a job reaches the step; a second consumer
then takes the redelivered message. Whatever the step: the job ends succeeded, its
effect (echo's mark) is made once, every reply it gets is its stored one, and the
attempt that left no record is counted. A job that kills its consumer every time is
dead-lettered after max_retries, in both isolations (the crash-loop guard).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from amqp import PlainPublisher

from gearqueue.config import load_settings
from gearqueue.state import JobStatus, open_store
from gearqueue.worker import testhook

pytestmark = pytest.mark.slow

#: Attempts of the job that survived the kill, by step: killed before its result was
#: stored, its first attempt left no record and counts as one.
ATTEMPTS = {testhook.BEFORE_RUN: 2, testhook.MID_RUN: 2, testhook.AFTER_STORE: 1,
            testhook.AFTER_REPLY: 1}


def _wait_exit(consumer, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while consumer.process.poll() is None:
        assert time.monotonic() < deadline, f"consumer not killed:\n{consumer.log()[-2000:]}"
        time.sleep(0.05)
    return consumer.process.returncode


@pytest.mark.parametrize("point", testhook.KILL_POINTS)
def test_kill_9_at_each_step_loses_nothing_and_makes_the_effect_once(
        make_config, start_consumer, isolation: str, point: str, tmp_path: Path) -> None:
    config = make_config(echo_service={"max_retries": 3})
    settings = load_settings(config)
    publisher = PlainPublisher(settings.service("echo").queue)
    env = {testhook.KILL_AT_ENV: point, testhook.KILL_ONCE_ENV: str(tmp_path / "killed")}
    first = start_consumer(config, env=env)
    publisher.publish({"data": point, "mark": True}, "job", message_id="job")
    assert _wait_exit(first) == -9
    start_consumer(config, instance="2", env=env)  # the kill was once: this one lives
    publisher.wait_replies(1, timeout=30)
    publisher.settle(0.5)
    attempt = ATTEMPTS[point]
    replies = publisher.replies["job"]
    # after_reply: the reply went out before the kill; the redelivery repeats it.
    assert len(replies) == (2 if point == testhook.AFTER_REPLY else 1)
    assert all(reply == {"success": 1, "echo": point, "attempt": attempt}
               for reply in replies)
    record = open_store(settings, "echo").require("job")
    assert (record.status, record.attempts) == (JobStatus.SUCCEEDED, attempt)
    marks = settings.paths.exports_dir / "echo-marks"
    # before_run: the first attempt made no effect; the second made it.
    assert (marks / "job").read_text() == ("2" if point == testhook.BEFORE_RUN else "1")
    # mid_run: the first attempt made the effect, then died; the second saw it.
    again = sorted(path.name for path in marks.iterdir() if ".again." in path.name)
    assert again == (["job.again.2"] if point == testhook.MID_RUN else [])
    assert publisher.depth(publisher.queue) == 0
    publisher.close()


def test_a_job_that_kills_its_consumer_every_time_is_dead_lettered(
        make_config, start_consumer, isolation: str) -> None:
    """process: the child dies, the consumer records it; inline: the consumer dies and
    is started again (as systemd would), and the redeliveries count the attempts."""
    config = make_config(echo_service={"max_retries": 2, "retry_backoff": 0.1})
    settings = load_settings(config)
    publisher = PlainPublisher(settings.service("echo").queue)
    consumer = start_consumer(config, instance="0")  # declares the topology
    publisher.publish({"data": 1, "fail": "crash"}, "poison", message_id="poison")
    publisher.publish({"data": 2}, "fine", message_id="fine")
    deadline = time.monotonic() + 90
    restarts = 1
    while publisher.depth(f"{publisher.queue}.dead") < 1:
        assert time.monotonic() < deadline, "the poison job was never dead-lettered"
        if consumer.process.poll() is not None:
            consumer = start_consumer(config, instance=str(restarts))
            restarts += 1
        publisher.settle(0.2)
    publisher.wait_replies(2, timeout=30)
    assert publisher.replies["poison"][-1]["success"] == -1
    assert publisher.replies["fine"] == [{"success": 1, "echo": 2, "attempt": 1}]
    record = open_store(settings, "echo").require("poison")
    assert record.status is JobStatus.FAILED and record.attempts == 3
    assert (restarts > 1) == (isolation == "inline")
    publisher.close()
