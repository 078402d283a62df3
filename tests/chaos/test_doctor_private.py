"""`gearqueue doctor` reads consumer_timeout from the node it checks, and only from it."""

from __future__ import annotations

import os

import pytest
from private_broker import RABBITMQ_BIN, PrivateBroker
from test_doctor import about, doctor

pytestmark = pytest.mark.slow


def test_doctor_reads_the_consumer_timeout_of_the_node_behind_the_url(
        chaos_config, broker: PrivateBroker) -> None:
    config = chaos_config(echo_service={"time_limit": 600})
    # rabbitmqctl finds the private node through its environment (node name, cookie,
    # epmd port), as an operator's shell would for a non-default node.
    env = {**os.environ, **broker.env,
           "PATH": f"{RABBITMQ_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    with broker.rabbit_env(consumer_timeout=600_000):
        code, findings = doctor(config, "echo", env=env)
    assert code == 0
    assert ("warn", "time_limit 600 s reaches the broker's consumer_timeout (10 min, "
            "rabbitmqctl environment): the broker would take the job back before "
            "time_limit stops it; raise consumer_timeout above 660 s or lower time_limit; "
            "RabbitMQ 3.12+ would take x-consumer-timeout") in about(findings, "echo")


def test_doctor_does_not_take_another_nodes_consumer_timeout(
        chaos_config, broker: PrivateBroker) -> None:
    # Without that environment, rabbitmqctl reaches the shared node on 5672: not ours.
    config = chaos_config(echo_service={"time_limit": 600})
    code, findings = doctor(config, "echo")
    assert code == 0
    assert ("ok", f"time_limit 600 s is below the broker's consumer_timeout (30 min, "
            f"assumed: the default (the local node rabbitmqctl reaches does not listen on "
            f"{broker.port}))") in about(findings, "echo")
