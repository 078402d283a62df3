"""Retries: exponential backoff with jitter through <queue>.retry.N, the dead letter at
the end, and a reply and a job state that say the same as the dead letter."""

from __future__ import annotations

import itertools
import json
import time

import pytest
from amqp import PlainPublisher

from gearqueue.config import load_settings
from gearqueue.state import JobStatus, StateStore, open_store

pytestmark = pytest.mark.slow


def attempt_ends(store: StateStore, job_id: str, timeout: float = 30.0) -> list[float]:
    """When each attempt of `job_id` ended, from its state record until it is failed: the
    `updated` time of each retrying or failed record it goes through. (Polled: a
    retrying record stays while its retry waits, at least 0.2 s here.)"""
    ends: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record is not None and record.status in (JobStatus.RETRYING, JobStatus.FAILED):
            ends.setdefault(record.attempts, record.updated)
            if record.status is JobStatus.FAILED:
                break
        time.sleep(0.02)
    return [ends[attempt] for attempt in sorted(ends)]


@pytest.fixture
def served(make_config, start_consumer):
    config = make_config(echo_service={"retry_backoff": 0.4, "max_retries": 3})
    consumer = start_consumer(config)
    publisher = PlainPublisher(load_settings(config).service("echo").queue)
    yield config, consumer, publisher
    publisher.close()


def test_transient_failures_back_off_exponentially_then_dead_letter_says_why(served) -> None:
    config, _, publisher = served
    store = open_store(load_settings(config), "echo")
    publisher.publish({"data": "flaky", "fail": "transient"}, "flaky", message_id="flaky-1")
    ends = attempt_ends(store, "flaky-1")
    publisher.wait_replies(1, timeout=30)

    # Delay before retry n is retry_backoff * 2^(n-1), jittered to 50-100%: 0.4, 0.8, 1.6 s.
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
    record = store.require("flaky-1")
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
    config, _, publisher = served
    publisher.publish({"data": "x", "fail": "permanent"}, "bad", message_id="bad-1")
    publisher.wait_replies(1, timeout=20)
    assert publisher.replies["bad"] == [{"success": -1,
                                         "message": "echo asked to fail permanently"}]
    properties, _ = publisher.get(publisher.queue + ".dead")
    assert properties.headers["x-gear-attempts"] == 1
    assert properties.headers["x-gear-error-class"] == "PermanentJobError"
    store = open_store(load_settings(config), "echo")
    assert len(attempt_ends(store, "bad-1")) == 1
    record = store.require("bad-1")
    assert (record.status, record.attempts) == (JobStatus.FAILED, 1)
