"""`gearqueue doctor` lists every node of the cluster with its state, and a fix for each
problem (here through rabbitmqctl: the private nodes run no management plugin, so
management_port = 0). A healthy cluster with a consumer passes (exit 0); a stopped node
or an alarm is a finding (exit 1) with its fix."""

from __future__ import annotations

import os

import pytest
from private_broker import RABBITMQ_BIN
from private_cluster import PrivateCluster
from test_doctor import NO_MANAGEMENT, doctor, problems

pytestmark = pytest.mark.slow


def node_findings(findings: list[dict[str, str]]) -> dict[str, tuple[str, ...]]:
    return {item["subject"].removeprefix("node "):
            (item["level"], item["message"], *((item["fix"],) if item["fix"] else ()))
            for item in findings if item["subject"].startswith("node ")}


def test_doctor_lists_every_node_and_tells_a_stopped_one_and_an_alarm_with_their_fixes(
        cluster_config, cluster: PrivateCluster, start_consumer) -> None:
    config = cluster_config(rabbitmq=NO_MANAGEMENT, echo_service={"time_limit": 600})
    # rabbitmqctl finds the cluster through a node's environment (name, cookie, epmd),
    # as an operator's shell on a node's host would.
    seed, alarmed, stopped = cluster.nodes
    env = {**os.environ, **seed.env,
           "PATH": f"{RABBITMQ_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    start_consumer(config, env=env)
    code, findings = doctor(config, "echo", env=env)
    assert (code, problems(findings)) == (0, [])
    assert node_findings(findings) == dict.fromkeys(
        (node.node for node in cluster.nodes),
        ("ok", "running, no alarms, no partitions (rabbitmqctl cluster_status)"))

    cluster.stop_node(stopped)
    try:
        alarmed.eval("vm_memory_monitor:set_vm_memory_high_watermark(0.000001).")
        code, findings = doctor(config, "echo", env=env)
    finally:
        alarmed.eval("vm_memory_monitor:set_vm_memory_high_watermark(0.4).")
    states = node_findings(findings)
    assert code == 1
    assert states[seed.node][0] == "ok"
    assert states[alarmed.node] == ("fail", "memory alarm: publishers on every node are "
                                    "blocked", "free memory on that host or raise "
                                    "vm_memory_high_watermark")
    assert states[stopped.node] == (
        "fail", "not running (rabbitmqctl cluster_status)", "start it (systemctl start "
        f"rabbitmq-server on its host); if it is gone for good, rabbitmqctl "
        f"forget_cluster_node {stopped.node}")
