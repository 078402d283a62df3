"""The `gearqueue` command: output on stdout as JSON lines, documented exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gearqueue.config import load_settings
from gearqueue.state import JobStatus, open_store

pytestmark = pytest.mark.slow


def gearqueue(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gearqueue.cli", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_submit_wait_prints_the_reply_and_exits_0(make_config, start_consumer) -> None:
    config = make_config()
    start_consumer(config)
    result = gearqueue(config, "submit", "echo", "--json", '{"data": [1, "a"]}', "--wait")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"success": 1, "echo": [1, "a"], "attempt": 1}


def test_submit_without_wait_prints_the_job_id_and_the_state_records_it(
        make_config, start_consumer) -> None:
    config = make_config()
    result = gearqueue(config, "submit", "echo", "--json", '{"data": 1}',
                       "--job-id", "my-job-1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"job_id": "my-job-1"}
    store = open_store(load_settings(config), "echo")
    assert store.require("my-job-1").status is JobStatus.QUEUED
    start_consumer(config)
    status = gearqueue(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {row["job_type"]: row for row in map(json.loads, status.stdout.splitlines())}
    assert rows["echo"]["consumers"] == 1


def test_job_failure_exits_1(make_config, start_consumer) -> None:
    config = make_config()
    start_consumer(config)
    result = gearqueue(config, "submit", "echo", "--json", '{"data": 1, "fail": "permanent"}',
                       "--wait")
    assert result.returncode == 1
    assert json.loads(result.stdout)["success"] == -1


def test_no_reply_in_time_exits_3(make_config) -> None:
    config = make_config()  # no consumer running
    result = gearqueue(config, "submit", "echo", "--json", '{"data": 1}', "--wait",
                       "--timeout", "1")
    assert result.returncode == 3
    assert "no reply" in result.stderr


def test_usage_and_payload_errors_exit_2(make_config) -> None:
    config = make_config()
    assert gearqueue(config, "submit", "nope", "--json", "{}").returncode == 2
    bad_json = gearqueue(config, "submit", "echo", "--json", "{nope")
    assert bad_json.returncode == 2 and "--json is not JSON" in bad_json.stderr


def test_broker_unreachable_exits_4(make_config) -> None:
    config = make_config(rabbitmq={"url": "amqp://guest:guest@127.0.0.1:1/%2F"})
    result = gearqueue(config, "submit", "echo", "--json", '{"data": 1}')
    assert result.returncode == 4
    assert "no broker reachable" in result.stderr


def test_ping_round_trips_through_the_queue(make_config, start_consumer) -> None:
    config = make_config()
    start_consumer(config)
    result = gearqueue(config, "ping", "--count", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("pong from echo in") == 3


def test_several_broker_urls_fail_over_to_the_one_that_answers(make_config,
                                                               start_consumer) -> None:
    dead_then_live = ("amqp://guest:guest@127.0.0.1:1/%2F, "
                      "amqp://guest:guest@127.0.0.1:5672/%2F")
    config = make_config(rabbitmq={"url": dead_then_live})
    start_consumer(config)
    result = gearqueue(config, "submit", "echo", "--json", '{"data": "via second"}', "--wait")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["echo"] == "via second"


def test_status_counts_the_job_in_progress_as_unacked(make_config, start_consumer) -> None:
    config = make_config()
    start_consumer(config)
    assert gearqueue(config, "submit", "echo", "--json", '{"data": 1, "sleep": 10}',
                     "--job-id", "slow-one").returncode == 0
    store = open_store(load_settings(config), "echo")
    deadline = time.monotonic() + 20
    while store.require("slow-one").status is not JobStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status = gearqueue(config, "status", "--json")
    rows = {row["job_type"]: row for row in map(json.loads, status.stdout.splitlines())}
    assert (rows["echo"]["ready"], rows["echo"]["unacked"], rows["echo"]["consumers"]) == \
        (0, 1, 1)
    table = gearqueue(config, "status")
    assert "unacked 1" in table.stdout and "running" in table.stdout


def test_consumer_with_an_unwritable_state_dir_exits_2_at_once(make_config, tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = make_config(paths={"state_dir": str(blocker / "state")})
    result = subprocess.run([sys.executable, "listeners/echo_consumer.py", "--config",
                             str(config)], capture_output=True, text=True, timeout=30,
                            check=False, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 2
    assert "state_dir is not writable" in result.stderr
