"""Retries: exponential backoff with jitter through <queue>.retry.N, the dead letter at
the end, and a reply and a job state that say the same as the dead letter."""

from __future__ import annotations

import datetime
import itertools
import json
import re
import time

import pytest
from amqp import PlainPublisher

from gearqueue.config import load_settings
from gearqueue.state import JobStatus, open_store

LOG_LINE = re.compile(r"^(\S+ \S+) INFO gearqueue\.consumer\[\d+\]: job (\S+) (retrying|failed) "
                      r"\(attempt (\d+)", re.M)


def attempt_times(log: str, job_id: str) -> list[float]:
    """When each attempt of `job_id` ended, from the consumer's log."""
    return [datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for stamp, job, _, _ in LOG_LINE.findall(log) if job == job_id]


@pytest.fixture
def served(make_config, start_consumer):
    config = make_config(echo_service={"retry_backoff": 0.4, "max_retries": 3})
    consumer = start_consumer(config)
    publisher = PlainPublisher(load_settings(config).service("echo").queue)
    yield config, consumer, publisher
    publisher.close()


def test_transient_failures_back_off_exponentially_then_dead_letter_says_why(served) -> None:
    config, consumer, publisher = served
    publisher.publish({"data": "flaky", "fail": "transient"}, "flaky", message_id="flaky-1")
    publisher.wait_replies(1, timeout=30)

    # Delay before retry n is retry_backoff * 2^(n-1), jittered to 50-100%: 0.4, 0.8, 1.6 s.
    ends = attempt_times(consumer.log(), "flaky-1")
    assert len(ends) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(ends)]
    for gap, delay in zip(gaps, (0.4, 0.8, 1.6), strict=True):
        assert delay / 2 <= gap <= delay + 0.6, gaps
    [reply] = publisher.replies["flaky"]
    assert reply == {"success": -1, "message": "echo asked to fail transiently"}
    properties, body = publisher.get(publisher.queue + ".dead")
    headers = properties.headers
    assert json.loads(body) == {"data": "flaky", "fail": "transient"}
    assert headers["x-gear-error-class"] == "TransientJobError"
    assert headers["x-gear-error-message"] == "echo asked to fail transiently"
    assert headers["x-gear-attempts"] == 4
    assert headers["x-gear-original-queue"] == publisher.queue
    assert abs(headers["x-gear-failed-at"] - time.time()) < 30
    assert json.loads(headers["x-gear-reply"]) == reply
    record = open_store(load_settings(config), "echo").require("flaky-1")
    assert record.status is JobStatus.FAILED and record.attempts == 4
    assert record.error is not None and record.error["class"] == "TransientJobError"
    assert record.result == reply
    assert all(publisher.depth(f"{publisher.queue}.retry.{n}") == 0 for n in (1, 2, 3))


def test_a_job_waiting_for_its_retry_holds_up_nothing(served) -> None:
    _, _, publisher = served
    publisher.publish({"data": "flaky", "fail": "transient"}, "flaky", message_id="flaky-2")
    for number in range(20):
        publisher.publish({"data": number}, f"job-{number}")
    started = time.monotonic()
    publisher.wait_replies(20, timeout=20)
    assert time.monotonic() - started < 3  # all 20 while flaky waits out its retries
    assert "flaky" not in publisher.replies


def test_a_permanent_error_is_dead_lettered_at_once(served) -> None:
    config, consumer, publisher = served
    publisher.publish({"data": "x", "fail": "permanent"}, "bad", message_id="bad-1")
    publisher.wait_replies(1, timeout=20)
    assert publisher.replies["bad"] == [{"success": -1,
                                         "message": "echo asked to fail permanently"}]
    properties, _ = publisher.get(publisher.queue + ".dead")
    assert properties.headers["x-gear-attempts"] == 1
    assert properties.headers["x-gear-error-class"] == "PermanentJobError"
    assert len(attempt_times(consumer.log(), "bad-1")) == 1
    record = open_store(load_settings(config), "echo").require("bad-1")
    assert (record.status, record.attempts) == (JobStatus.FAILED, 1)
