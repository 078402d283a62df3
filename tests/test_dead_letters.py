"""`gearqueue dead list|show|replay|purge` against the real broker and real consumers.

The rule under test: nothing leaves the dead queue before it is safely elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pika
import pytest
from conftest import BROKER_URL

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.state import JobStatus, open_store
from gearqueue.topology import DEAD_LETTER_EXCHANGE

pytestmark = pytest.mark.slow


def gearqueue(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gearqueue.cli", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=60, check=False)


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


class Broker:
    """A plain connection to inspect queues and plant dead letters."""

    def __init__(self, config: Path) -> None:
        self.service = load_settings(config).service("echo")
        self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.channel = self.connection.channel()

    def depth(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.message_count

    @property
    def dead(self) -> int:
        return self.depth(self.service.queue + ".dead")

    def plant(self, job_id: str, body: dict[str, Any], **headers: Any) -> None:
        """A dead letter as settle.py writes one (the queues must exist)."""
        self.channel.basic_publish(DEAD_LETTER_EXCHANGE, self.service.queue,
                                   json.dumps(body).encode(), pika.BasicProperties(
                                       delivery_mode=2, message_id=job_id,
                                       content_type="application/json", headers=headers))

    def close(self) -> None:
        self.connection.close()


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def dead_jobs(make_config, start_consumer):
    """Three jobs dead for three reasons, by a consumer with a 0.5 s time limit (since
    stopped), and a second config of the same queues without that limit."""
    limited = make_config(echo_service={"time_limit": 0.5, "max_retries": 1,
                                        "retry_backoff": 0.1})
    relaxed = make_config("relaxed.ini")
    consumer = start_consumer(limited)
    with Client(load_settings(limited)) as client:
        client.submit("echo", {"data": "bad", "fail": "permanent"}, job_id="permanent-1")
        client.submit("echo", {"data": "slow", "sleep": 1.5}, job_id="slow-1")
        client.submit("echo", {"data": "slow", "sleep": 1.5}, job_id="slow-2")
    broker = Broker(limited)
    wait_for(lambda: broker.dead == 3)
    consumer.stop()
    yield limited, relaxed, broker
    broker.close()


def test_list_shows_id_error_attempts_and_age_and_removes_nothing(dead_jobs) -> None:
    limited, _, broker = dead_jobs
    rows = {row["job_id"]: row for row in lines(gearqueue(limited, "dead", "list", "echo",
                                                          "--json"))}
    assert set(rows) == {"permanent-1", "slow-1", "slow-2"}
    assert rows["permanent-1"]["error_class"] == "PermanentJobError"
    assert rows["permanent-1"]["attempts"] == 1
    assert rows["slow-1"]["error_class"] == "HardTimeLimitExceeded"
    assert rows["slow-1"]["attempts"] == 2
    assert "time_limit" in rows["slow-1"]["error"]
    assert all(0 <= row["age_seconds"] < 60 for row in rows.values())
    table = gearqueue(limited, "dead", "list", "echo")
    assert table.returncode == 0, table.stderr
    assert "permanent-1" in table.stdout and "HardTimeLimitExceeded" in table.stdout
    assert broker.dead == 3


def test_show_prints_headers_body_and_traceback(dead_jobs) -> None:
    limited, _, broker = dead_jobs
    broker.plant("crashed-1", {"data": 1}, **{
        "x-gear-error-class": "TransientJobError", "x-gear-error-message": "unexpected",
        "x-gear-traceback": "Traceback (most recent call last):\n  boom\nKeyError: 'x'",
        "x-gear-attempts": 4, "x-gear-failed-at": int(time.time())})
    shown = json.loads(gearqueue(limited, "dead", "show", "echo", "crashed-1",
                                 "--json").stdout)
    assert shown["body"] == {"data": 1}
    assert shown["traceback"].endswith("KeyError: 'x'")
    assert shown["headers"]["x-gear-attempts"] == 4
    text = gearqueue(limited, "dead", "show", "echo", "slow-1")
    assert text.returncode == 0, text.stderr
    assert "x-gear-original-queue: " + broker.service.queue in text.stdout
    assert '"sleep": 1.5' in text.stdout
    missing = gearqueue(limited, "dead", "show", "echo", "no-such-job")
    assert missing.returncode == 2
    assert "no-such-job" in missing.stderr
    assert broker.dead == 4


def test_replay_by_id_resets_attempts_and_the_job_runs_again(dead_jobs, start_consumer) -> None:
    limited, relaxed, broker = dead_jobs
    store = open_store(load_settings(limited), "echo")
    assert store.require("slow-1").status is JobStatus.FAILED
    result = gearqueue(limited, "dead", "replay", "echo", "slow-1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["replayed", "slow-1"]
    assert broker.dead == 2  # removed, once confirmed in the main queue
    assert store.require("slow-1").status is JobStatus.QUEUED
    assert store.require("slow-1").attempts == 0
    start_consumer(relaxed)  # the cause is fixed: no more 0.5 s time limit
    wait_for(lambda: store.require("slow-1").status is JobStatus.SUCCEEDED)
    record = store.require("slow-1")
    assert record.attempts == 1 and record.result == {"success": 1, "echo": "slow",
                                                      "attempt": 1}
    # The others are untouched.
    assert {row["job_id"] for row in lines(gearqueue(limited, "dead", "list", "echo",
                                                     "--json"))} == {"permanent-1", "slow-2"}


def test_replay_all_and_unknown_ids(dead_jobs) -> None:
    limited, _, broker = dead_jobs
    unknown = gearqueue(limited, "dead", "replay", "echo", "slow-2", "nope")
    assert unknown.returncode == 2
    assert "not in the dead queue: nope" in unknown.stderr
    assert broker.dead == 2 and broker.depth(broker.service.queue) == 1
    everything = gearqueue(limited, "dead", "replay", "echo", "--all")
    assert everything.returncode == 0, everything.stderr
    assert sorted(everything.stdout.split()[1::2]) == ["permanent-1", "slow-1"]
    assert broker.dead == 0 and broker.depth(broker.service.queue) == 3
    both = gearqueue(limited, "dead", "replay", "echo", "--all", "x")
    assert both.returncode == 2


def test_replay_that_the_broker_refuses_leaves_the_job_dead(make_config, start_consumer) -> None:
    config = make_config(echo_service={"max_length": 1})
    consumer = start_consumer(config)
    with Client(load_settings(config)) as client:
        client.submit("echo", {"data": "bad", "fail": "permanent"}, job_id="refused-1")
    broker = Broker(config)
    try:
        wait_for(lambda: broker.dead == 1)
        consumer.stop()
        with Client(load_settings(config)) as client:  # fills the main queue
            client.submit("echo", {"data": "filler"}, job_id="filler-1")
        store = open_store(load_settings(config), "echo")
        before = store.require("refused-1")
        result = gearqueue(config, "dead", "replay", "echo", "refused-1")
        assert result.returncode == 1
        assert "refused" in result.stderr
        assert broker.dead == 1 and broker.depth(broker.service.queue) == 1
        after = store.require("refused-1")
        assert (after.status, after.attempts) == (before.status, before.attempts) \
            == (JobStatus.FAILED, 1)
    finally:
        broker.close()


def test_purge_older_than_keeps_the_younger_ones(make_config, start_consumer) -> None:
    config = make_config()
    start_consumer(config)  # declares the queues
    broker = Broker(config)
    try:
        now = int(time.time())
        for job_id, age in (("old-1", 3 * 86400), ("old-2", 2 * 86400 + 60), ("new-1", 3600)):
            broker.plant(job_id, {"data": job_id}, **{"x-gear-failed-at": now - age,
                                                      "x-gear-error-class": "X"})
        wait_for(lambda: broker.dead == 3)
        old = gearqueue(config, "dead", "purge", "echo", "--older-than", "2d")
        assert old.returncode == 0, old.stderr
        assert sorted(old.stdout.split()[1::2]) == ["old-1", "old-2"]
        assert broker.dead == 1
        bad = gearqueue(config, "dead", "purge", "echo", "--older-than", "soon")
        assert bad.returncode == 2 and "not a duration" in bad.stderr
        rest = gearqueue(config, "dead", "purge", "echo")
        assert rest.stdout.split() == ["purged", "new-1"]
        assert broker.dead == 0
    finally:
        broker.close()
