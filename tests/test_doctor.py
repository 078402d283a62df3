"""`gearqueue doctor` against the real shared broker (3.10, consumer_timeout 30 min).

Its private-broker checks (a consumer_timeout set on the node, a node rabbitmqctl does
not reach) are in tests/chaos/test_doctor_private.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pika
import pytest
from conftest import BROKER_URL

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.worker.channel import consumer_arguments

pytestmark = pytest.mark.slow


def doctor(config: Path, *args: str, env: dict[str, str] | None = None
           ) -> tuple[int, list[dict[str, Any]]]:
    result = subprocess.run([sys.executable, "-m", "gearqueue.cli", "--config", str(config),
                             "doctor", "--json", *args], capture_output=True, text=True,
                            timeout=120, check=False, env=env)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


def about(findings: list[dict[str, Any]], subject: str) -> list[tuple[str, str]]:
    return [(item["level"], item["message"]) for item in findings
            if item["subject"] == subject]


def test_a_healthy_echo_service_passes_with_the_consumer_timeout_read_from_the_node(
        make_config, start_consumer) -> None:
    config = make_config(echo_service={"time_limit": 600})
    start_consumer(config)
    with Client(load_settings(config)) as client:
        client.call("echo", {"data": "bad", "fail": "permanent"}, timeout=20)
    queue = load_settings(config).service("echo").queue
    code, findings = doctor(config, "echo")
    assert code == 0
    assert ("ok", "amqp://guest:***@127.0.0.1:5672/%2F: RabbitMQ 3.10.8") in \
        about(findings, "broker")
    assert about(findings, queue) == [("ok", "declared as configured"),
                                      ("ok", "1 consumer(s), 0 job(s) waiting")]
    assert about(findings, queue + ".dead") == [
        ("warn", "1 dead job(s): gearqueue dead list echo")]
    assert ("ok", "time_limit 600 s is below the broker's consumer_timeout (30 min, "
            "rabbitmqctl environment)") in about(findings, "echo")


def test_time_limits_that_reach_the_consumer_timeout_are_warned_about(make_config) -> None:
    for time_limit, wanted in ((0, "no time_limit: a job running longer than the broker's "
                                   "consumer_timeout (30 min"),
                               (1750, "time_limit 1750 s reaches the broker's "
                                      "consumer_timeout (30 min")):
        config = make_config(f"gear-{time_limit}.ini", echo_service={"time_limit": time_limit})
        code, findings = doctor(config, "echo")
        assert code == 0  # a warning, not a failure
        warnings = [message for level, message in about(findings, "echo") if level == "warn"]
        assert any(message.startswith(wanted) for message in warnings), warnings


def test_a_queue_declared_with_other_arguments_fails_and_is_left_alone(make_config) -> None:
    # gEAR's web API declared the queue plainly; gear.ini asks for a length limit.
    config = make_config(echo_service={"max_length": 10})
    queue = load_settings(config).service("echo").queue
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        code, findings = doctor(config, "echo")
        assert code == 1
        level, message = about(findings, queue)[0]
        assert level == "fail" and "x-max-length" in message
        # Nothing was changed: the queue is still there, plain.
        channel.queue_declare(queue, durable=True)
        channel.queue_delete(queue)
    finally:
        connection.close()


def test_an_unreachable_broker_fails(make_config) -> None:
    config = make_config(rabbitmq={"url": "amqp://guest:guest@127.0.0.1:1/%2F"})
    code, findings = doctor(config, "echo")
    assert code == 1
    [(level, message)] = about(findings, "broker")
    assert level == "fail" and "127.0.0.1:1" in message


def test_x_consumer_timeout_is_asked_for_only_from_3_12_and_with_a_time_limit(
        make_config) -> None:
    settings = load_settings(make_config(echo_service={"time_limit": 100}))
    service = settings.service("echo")
    assert consumer_arguments(service, (3, 10, 8)) is None
    assert consumer_arguments(service, (3, 11, 28)) is None
    assert consumer_arguments(service, (3, 12, 0)) == {"x-consumer-timeout": 160_000}
    assert consumer_arguments(service, (4, 0, 5)) == {"x-consumer-timeout": 160_000}
    unlimited = load_settings(make_config("unlimited.ini")).service("echo")
    assert consumer_arguments(unlimited, (3, 13, 1)) is None
