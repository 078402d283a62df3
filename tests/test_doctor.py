"""`gearqueue doctor` against the real shared broker (3.10, consumer_timeout 30 min, no
management plugin: configs here set `management_port = 0` unless a test is about it).

Every problem is a `fail` line with a fix, and any makes the exit 1. Its private-broker
checks (a consumer_timeout set on the node, a node rabbitmqctl does not reach, the
management API) are in tests/chaos/test_doctor_private.py; under systemd (units, their
code, R as a unit loads it, a clean stop) in tests/test_systemd_doctor.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pika
import pytest
from conftest import BROKER_URL

from gearqueue.client import Client
from gearqueue.codeversion import code_digest
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


def problems(findings: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(subject, message, fix) of every finding; each has a fix."""
    found = [(item["subject"], item["message"], item["fix"]) for item in findings
             if item["level"] == "fail"]
    assert all(fix for _, _, fix in found), found
    return found


NO_MANAGEMENT = {"management_port": 0}


def test_a_healthy_echo_service_passes_with_the_consumer_timeout_read_from_the_node(
        make_config, start_consumer) -> None:
    config = make_config(echo_service={"time_limit": 600}, rabbitmq=NO_MANAGEMENT)
    start_consumer(config)
    with Client(load_settings(config)) as client:
        client.call("echo", {"data": "bad", "fail": "permanent"}, timeout=20)
    queue = load_settings(config).service("echo").queue
    code, findings = doctor(config, "echo")
    assert (code, problems(findings)) == (0, [])
    assert ("ok", "amqp://guest:***@127.0.0.1:5672/%2F: RabbitMQ 3.10.8") in \
        about(findings, "broker")
    assert about(findings, queue) == [("ok", "declared as configured"),
                                      ("ok", "1 consumer(s), 0 job(s) waiting")]
    assert about(findings, queue + ".dead") == [
        ("info", "1 dead job(s): gearqueue dead list echo")]
    assert ("ok", "time_limit 600 s is below the broker's consumer_timeout (30 min, "
            "rabbitmqctl environment)") in about(findings, "echo")


def test_time_limits_that_reach_the_consumer_timeout_are_findings_with_a_fix(
        make_config, start_consumer) -> None:
    for time_limit, wanted, fix in (
            (0, "no time_limit: a job running longer than the broker's consumer_timeout "
                "(30 min", "set time_limit = <seconds> in [echo_service] below it, or raise "
                "it in the broker's rabbitmq.conf (consumer_timeout = 86400000"),
            (1750, "time_limit 1750 s reaches the broker's consumer_timeout (30 min",
             "raise it in the broker's rabbitmq.conf (consumer_timeout = <more than "
             "1810000>, in ms; then restart the broker), or lower time_limit in "
             "[echo_service]")):
        config = make_config(f"gear-{time_limit}.ini", rabbitmq=NO_MANAGEMENT,
                             echo_service={"time_limit": time_limit})
        start_consumer(config, instance=str(time_limit))
        code, findings = doctor(config, "echo")
        assert code == 1
        [(subject, message, found_fix)] = problems(findings)
        assert subject == "echo" and message.startswith(wanted), message
        assert found_fix.startswith(fix), found_fix


def test_a_queue_declared_with_other_arguments_fails_and_is_left_alone(make_config) -> None:
    # gEAR's web API declared the queue plainly; gear.ini asks for a length limit.
    config = make_config(echo_service={"max_length": 10, "time_limit": 600},
                         rabbitmq=NO_MANAGEMENT)
    queue = load_settings(config).service("echo").queue
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        code, findings = doctor(config, "echo")
        assert code == 1
        level, message = about(findings, queue)[0]
        assert level == "fail" and "x-max-length" in message
        mismatch, idle = [(message, fix) for subject, message, fix in problems(findings)
                          if subject == queue]
        assert "x-max-length" in mismatch[0] and f"rabbitmqctl delete_queue {queue}" in \
            mismatch[1]
        assert idle[0] == "no consumer: 0 job(s) waiting, and none will run"
        # Nothing was changed: the queue is still there, plain.
        channel.queue_declare(queue, durable=True)
        channel.queue_delete(queue)
    finally:
        connection.close()


def test_an_unreachable_broker_fails_with_what_to_check(make_config) -> None:
    config = make_config(rabbitmq={"url": "amqp://guest:secret@127.0.0.1:1/%2F"})
    code, findings = doctor(config, "echo")
    assert code == 1
    [(level, message)] = about(findings, "broker")
    assert level == "fail" and "127.0.0.1:1" in message and "secret" not in message
    [fix] = [fix for subject, _, fix in problems(findings) if subject == "broker"]
    assert fix == (f"check [rabbitmq] url in {config} (host, port, user, password, vhost), "
                   "and that the broker runs: systemctl status rabbitmq-server on its host")


def test_missing_queues_and_a_queue_without_consumers_are_findings(make_config) -> None:
    config = make_config(echo_service={"time_limit": 600}, rabbitmq=NO_MANAGEMENT)
    service = load_settings(config).service("echo")
    code, findings = doctor(config, "echo")
    assert code == 1
    start = (f"start a consumer (it declares the queues): systemctl start "
             f"echo-consumer.target (or listeners/echo_consumer.py --config {config})")
    assert problems(findings) == [
        ("echo", f"missing queue(s): {service.queue}, {service.queue}.retry.1, "
                 f"{service.queue}.retry.2, {service.queue}.retry.3, {service.queue}.dead",
         start)]
    # Declared (as a publisher does) but nobody consumes: the jobs would wait for ever.
    with Client(load_settings(config)) as client:
        client.submit("echo", {"data": "x"})
    code, findings = doctor(config, "echo")
    assert code == 1
    assert problems(findings) == [
        (service.queue, "no consumer: 1 job(s) waiting, and none will run", start)]
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        for name in (service.queue, f"{service.queue}.dead",
                     *(f"{service.queue}.retry.{n}" for n in (1, 2, 3))):
            channel.queue_delete(name)
    finally:
        connection.close()


def test_a_management_plugin_that_does_not_answer_is_a_finding(make_config,
                                                               start_consumer) -> None:
    config = make_config(echo_service={"time_limit": 600})  # management_port 15672
    start_consumer(config)
    code, findings = doctor(config, "echo")
    assert code == 1
    assert problems(findings) == [(
        "management", "the management API does not answer for this broker "
        "(http://127.0.0.1:15672: [Errno 111] Connection refused)",
        f"rabbitmq-plugins enable rabbitmq_management on 127.0.0.1 (it listens on 15672), "
        f"or set management_port in [rabbitmq] of {config} to its port (0: do not use it)")]


def test_r_that_cannot_start_in_the_executors_environment_is_named_with_its_fix(
        make_config, tmp_path: Path) -> None:
    # queue_enabled = 0: jobs run in the caller, so R is checked in doctor's own
    # environment, here with R_HOME pointing at an empty folder.
    config = make_config(projectr_service={"queue_enabled": 0})
    empty = tmp_path / "empty-r-home"
    empty.mkdir()
    code, findings = doctor(config, "projectr")
    assert code == 0
    [(level, message)] = about(findings, "projectr R")
    assert level == "ok" and "limma and nnls load" in message
    code, findings = doctor(config, "projectr", env={**os.environ, "R_HOME": str(empty)})
    assert code == 1
    assert problems(findings) == [(
        "projectr R", f"R does not start in the executor's environment ({sys.executable}, "
        f"this environment, R_HOME={empty}): exit 2: Fatal error: unable to open the base "
        "package", "apt-get install r-base-core, and let R_HOME be R's home (/usr/lib/R; "
        "the units set Environment=R_HOME=/usr/lib/R)")]


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


def test_a_consumer_running_other_code_than_this_checkout_is_named(
        make_config, start_consumer, tmp_path: Path) -> None:
    # No systemd here: consumers started by hand are found by the code record each one
    # writes at start. One runs this checkout; another a copy of it edited since.
    import gearqueue

    config = make_config(echo_service={"time_limit": 600}, rabbitmq=NO_MANAGEMENT)
    current = start_consumer(config, instance="1")
    copy = tmp_path / "older" / "gearqueue"
    shutil.copytree(Path(gearqueue.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "defaults.py").write_text((copy / "defaults.py").read_text() + "# older\n")
    older = start_consumer(config, instance="2", env={"PYTHONPATH": str(copy.parent)})
    code, findings = doctor(config, "echo")
    assert code == 1
    here = code_digest()
    assert about(findings, "echo-consumer-1") == [
        ("ok", f"pid {current.process.pid} runs this code {here}")]
    assert problems(findings) == [(
        "echo-consumer-2", f"pid {older.process.pid} runs code {code_digest(copy)} ({copy}), "
        f"not this code {here} ({Path(gearqueue.__file__).parent})",
        f"restart it: kill -TERM {older.process.pid} (it finishes its job first), then "
        "start it again from this checkout")]
    older.stop()
    code, findings = doctor(config, "echo")
    assert (code, problems(findings)) == (0, [])
