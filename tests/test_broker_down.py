"""The broker is down: submit/call retry for a bounded time, then one clear BrokerDown
(or run the job in-process with fallback = inline); and a failover past a broker that
refuses the login is said in one gearqueue line. Against a private node we stop."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_broker import PrivateBroker

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import BrokerDown, UnknownJob
from gearqueue.state import JobStatus

pytestmark = pytest.mark.slow

BOUND = 1.5


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path_factory.mktemp("down-broker")).start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def up(node: PrivateBroker) -> PrivateBroker:
    if not node.running:
        node.start()
    return node


@pytest.fixture
def down(node: PrivateBroker) -> PrivateBroker:
    """The node stopped, as `systemctl stop rabbitmq-server` leaves it."""
    node.stop()
    return node


def masked(node: PrivateBroker) -> str:
    return f"amqp://guest:***@127.0.0.1:{node.port}/%2F"


def test_a_failover_past_a_refused_login_is_one_warning_and_no_traceback(
        make_config, start_consumer, up: PrivateBroker) -> None:
    wrong = up.url.replace("guest:guest@", "guest:wrong@")
    config = make_config(rabbitmq={"url": f"{wrong}, {up.url}"})
    consumer = start_consumer(config)
    before = consumer.log()
    # The node drops every connection: the consumer fails over, and the node it just
    # lost (the right URL) is tried last, so the refusing one comes first.
    assert up.ctl("close_all_connections", "test failover").returncode == 0
    consumer.wait_for_log("consuming from", count=before.count("consuming from") + 1)
    after = consumer.log()[len(before):]
    refused = [line for line in after.splitlines() if "refused the login" in line]
    assert len(refused) == 1, after
    assert re.search(rf"WARNING gearqueue\.broker\[\d+\]: broker {re.escape(masked(up))} "
                     r"refused the login \(.*ACCESS_REFUSED.*\); trying the next of 1",
                     refused[0]), refused[0]
    assert re.search(rf"INFO gearqueue\.broker\[\d+\]: connected to broker "
                     rf"{re.escape(masked(up))} as echo-consumer-1 after 1 failed", after), after
    assert "Traceback" not in consumer.log() and " pika." not in consumer.log()
    assert "guest:wrong" not in consumer.log()


def test_submit_and_call_raise_broker_down_within_the_bound(make_config,
                                                            down: PrivateBroker) -> None:
    settings = load_settings(make_config(rabbitmq={"url": down.url,
                                                   "connect_retry_seconds": BOUND}))
    with Client(settings) as client:
        started = time.monotonic()
        with pytest.raises(BrokerDown) as raised:
            client.submit("echo", {"data": 1}, job_id="down-submit")
        took = time.monotonic() - started
        assert BOUND <= took < BOUND + 1.0
        message = str(raised.value)
        assert masked(down) in message and "guest:guest" not in message
        assert "systemctl status rabbitmq-server" in message
        assert str(settings.source) in message and "[rabbitmq] url" in message
        # Known down: the next call tries once, with no wait.
        started = time.monotonic()
        with pytest.raises(BrokerDown, match=re.escape(masked(down))):
            client.call("echo", {"data": 1}, job_id="down-call")
        assert time.monotonic() - started < 0.5
        # Nothing was recorded as queued for jobs that never left.
        with pytest.raises(UnknownJob):
            client.status("echo", "down-submit")


def test_fallback_inline_runs_the_job_here_and_stores_its_result(
        make_config, down: PrivateBroker, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(make_config(
        rabbitmq={"url": down.url, "connect_retry_seconds": 0.3},
        echo_service={"fallback": "inline"}))
    caplog.set_level(logging.WARNING, logger="gearqueue.client")
    with Client(settings) as client:
        job_id = client.submit("echo", {"data": {"x": 1}}, job_id="fallback-submit")
        record = client.status("echo", job_id)
        assert record.status is JobStatus.SUCCEEDED
        assert record.result == {"success": 1, "echo": {"x": 1}, "attempt": 1}
        assert client.call("echo", {"data": 2}, job_id="fallback-call") == {
            "success": 1, "echo": 2, "attempt": 1}
        # The same validation as queueing off: a bad payload fails the same way.
        reply = client.call("echo", {"data": 1, "sleep": "long"})
        assert reply["success"] == -1 and "field 'sleep'" in reply["message"]
        assert client.fallbacks == 3
        many = client.submit_many("echo", [{"data": "a"}, {"data": "b"}])
        assert [client.status("echo", job_id).status for job_id in many] == [
            JobStatus.SUCCEEDED] * 2
        assert client.fallbacks == 5
    lines = [record for record in caplog.records if "in-process (fallback = inline)" in
             record.getMessage()]
    assert len(lines) == 4 and all(line.levelno == logging.WARNING for line in lines)
    assert "running echo 2 jobs in-process" in lines[3].getMessage()
    assert lines[0].GEAR_JOB_ID == "fallback-submit"  # type: ignore[attr-defined]
    assert lines[0].GEAR_FALLBACK == "inline"  # type: ignore[attr-defined]
    assert [line.GEAR_FALLBACKS for line in lines] == [1, 2, 3, 5]  # type: ignore[attr-defined]
    assert masked(down) in lines[0].getMessage()


def test_the_cli_exits_4_with_the_message(make_config, down: PrivateBroker) -> None:
    config = make_config(rabbitmq={"url": down.url, "connect_retry_seconds": 0.5})
    result = subprocess.run([sys.executable, "-m", "gearqueue.cli", "--config", str(config),
                             "submit", "echo", "--json", '{"data": 1}'],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 4, result.stderr
    assert result.stderr.startswith("gearqueue: broker down: cannot queue the echo job: "
                                    "RabbitMQ did not answer, tried for 0.5 s")
    assert masked(down) in result.stderr and "Traceback" not in result.stderr


def test_once_the_broker_is_back_submit_queues_again(make_config, node: PrivateBroker,
                                                     tmp_path: Path) -> None:
    node.stop()
    settings = load_settings(make_config(rabbitmq={"url": node.url,
                                                   "connect_retry_seconds": 0.2}))
    with Client(settings) as client:
        with pytest.raises(BrokerDown):
            client.submit("echo", {"data": 1})
        node.start()
        job_id = client.submit("echo", {"data": 1})
        assert client.status("echo", job_id).status is JobStatus.QUEUED
