"""`gearqueue doctor` against private nodes: consumer_timeout read from the node it
checks and only from it, and the management API (a node of our own with the plugin on
a free port)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from private_broker import RABBITMQ_BIN, PrivateBroker, free_ports
from test_doctor import NO_MANAGEMENT, about, doctor, problems

from gearqueue.config import load_settings

pytestmark = pytest.mark.slow


def test_doctor_reads_the_consumer_timeout_of_the_node_behind_the_url(
        chaos_config, broker: PrivateBroker, start_consumer) -> None:
    config = chaos_config(echo_service={"time_limit": 600}, rabbitmq=NO_MANAGEMENT)
    start_consumer(config)
    # rabbitmqctl finds the private node through its environment (node name, cookie,
    # epmd port), as an operator's shell would for a non-default node.
    env = {**os.environ, **broker.env,
           "PATH": f"{RABBITMQ_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    with broker.rabbit_env(consumer_timeout=600_000):
        code, findings = doctor(config, "echo", env=env)
    assert code == 1
    assert problems(findings) == [(
        "echo", "time_limit 600 s reaches the broker's consumer_timeout (10 min, "
        "rabbitmqctl environment): the broker would take the job back before time_limit "
        "stops it", "raise it in the broker's rabbitmq.conf (consumer_timeout = <more than "
        "660000>, in ms; then restart the broker), or lower time_limit in [echo_service]; "
        "RabbitMQ 3.12+ would take x-consumer-timeout")]


def test_doctor_does_not_take_another_nodes_consumer_timeout(
        chaos_config, broker: PrivateBroker, start_consumer) -> None:
    # Without that environment, rabbitmqctl reaches the shared node on 5672: not ours.
    config = chaos_config(echo_service={"time_limit": 600}, rabbitmq=NO_MANAGEMENT)
    start_consumer(config)
    code, findings = doctor(config, "echo")
    assert (code, problems(findings)) == (0, [])
    assert ("ok", f"time_limit 600 s is below the broker's consumer_timeout (30 min, "
            f"assumed: the default (the local node rabbitmqctl reaches does not listen on "
            f"{broker.port}))") in about(findings, "echo")


@pytest.fixture(scope="module")
def managed_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A private node with rabbitmq_management on a free port of 127.0.0.1."""
    [port] = free_ports(1)
    base = tmp_path_factory.mktemp("managed-broker")
    broker = PrivateBroker(base, conf={"management.tcp.port": str(port),
                                       "management.tcp.ip": "127.0.0.1"})
    (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    broker.management_port = port  # type: ignore[attr-defined]
    broker.start(timeout=120)
    try:
        yield broker
    finally:
        broker.close()


def test_doctor_reads_queues_from_the_management_api_and_names_a_type_mismatch(
        make_config, managed_broker: PrivateBroker, start_consumer) -> None:
    port = managed_broker.management_port  # type: ignore[attr-defined]
    rabbitmq = {"url": managed_broker.url, "management_port": port}
    config = make_config(rabbitmq=rabbitmq, echo_service={"time_limit": 600})
    start_consumer(config)
    code, findings = doctor(config, "echo")
    assert (code, problems(findings)) == (0, [])
    [(level, message)] = about(findings, "management")
    assert level == "ok" and message.startswith(
        f"rabbitmq_management answers at http://127.0.0.1:{port} (RabbitMQ 3.")
    assert ("ok", "running, no alarms, no partitions (management API)") in about(
        findings, f"node {managed_broker.node}")
    queue = load_settings(config).service("echo").queue
    assert ("ok", "declared as configured") in about(findings, queue)

    # The same queue name asked for as a quorum queue: the classic one is named.
    quorum = make_config("quorum.ini", rabbitmq=rabbitmq,
                         echo_service={"time_limit": 600, "queue_type": "quorum",
                                       "queue": queue})
    code, findings = doctor(quorum, "echo")
    assert code == 1
    [(message, fix)] = [(message, fix) for subject, message, fix in problems(findings)
                        if subject == queue]
    assert message == ("declared otherwise than gear.ini says (management API): type "
                       "classic (gear.ini: quorum); x-dead-letter-exchange unset (gear.ini: "
                       "gear.dlx); x-dead-letter-routing-key unset (gear.ini: "
                       f"{queue}); x-delivery-limit unset (gear.ini: 4)")
    assert f"rabbitmqctl delete_queue {queue}" in fix


def test_a_management_port_that_serves_another_broker_is_a_finding(
        chaos_config, managed_broker: PrivateBroker, tmp_path: Path) -> None:
    port = managed_broker.management_port  # type: ignore[attr-defined]
    config = chaos_config(rabbitmq={"management_port": port},
                          echo_service={"time_limit": 600})
    connection = pika.BlockingConnection(pika.URLParameters(managed_broker.url))
    connection.close()
    code, findings = doctor(config, "echo")
    assert code == 1
    [(message, fix)] = [(message, fix) for subject, message, fix in problems(findings)
                        if subject == "management"]
    assert message == (f"the management API does not answer for this broker "
                       f"(http://127.0.0.1:{port} serves another broker (AMQP on "
                       f"[{managed_broker.port}]))")
    assert fix.startswith("rabbitmq-plugins enable rabbitmq_management on 127.0.0.1")
