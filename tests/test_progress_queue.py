"""Progress through real consumers (both isolations): in the record while the job runs,
in Client.status, and shown by `gearqueue watch` and `gearqueue submit --wait` on a
non-terminal (plain lines on stderr, the reply alone on stdout)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.state import JobStatus, Progress

pytestmark = pytest.mark.slow

SLOW_JOB = {"data": "p", "sleep": 3.0, "progress": 30}
#: Inline, a job's time limit is a quarter of the heartbeat: 7.5 s, past SLOW_JOB's 3 s.
HEARTBEAT = {"heartbeat": 30}
LINE = re.compile(r"^job (\S+): (?:(\d+)/(\d+) step )?\((\w+)\)$")


def gearqueue(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gearqueue.cli", "--config", str(config),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_progress_is_in_the_record_and_in_client_status_while_the_job_runs(
        make_config, start_consumer, isolation: str) -> None:
    config = make_config(rabbitmq=HEARTBEAT)
    start_consumer(config)
    settings = load_settings(config)
    with Client(settings) as client:
        job_id = client.submit("echo", SLOW_JOB)
        seen: list[Progress] = []
        deadline = time.monotonic() + 30
        while (record := client.status("echo", job_id)).status is not JobStatus.SUCCEEDED:
            assert time.monotonic() < deadline, record
            if record.progress is not None:
                assert record.status is JobStatus.RUNNING and record.attempts == 1
                if not seen or seen[-1] != record.progress:
                    seen.append(record.progress)
            time.sleep(0.05)
    assert len(seen) >= 3, seen  # ~2 writes a second over 3 s
    assert len(seen) <= 10, seen  # throttled: 30 reports, a handful of writes
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert {(p.total, p.phase) for p in seen} == {(30, "step")}
    assert record.progress == Progress(30, 30, "step")  # the end is written too
    assert record.result == {"success": 1, "echo": "p", "attempt": 1}


def test_watch_follows_a_job_submitted_elsewhere_to_its_reply(make_config,
                                                             start_consumer) -> None:
    config = make_config(echo_service={"isolation": "process"})
    start_consumer(config)
    with Client(load_settings(config)) as client:
        job_id = client.submit("echo", SLOW_JOB)
    watch = gearqueue(config, "watch", job_id)
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    assert json.loads(out) == {"success": 1, "echo": "p", "attempt": 1}
    assert_increasing_lines(err, job_id)


def test_watch_exits_1_with_the_reply_of_a_failed_job_and_2_for_an_unknown_one(
        make_config, start_consumer) -> None:
    config = make_config()
    start_consumer(config)
    with Client(load_settings(config)) as client:
        job_id = client.submit("echo", {"data": 1, "fail": "permanent"})
    watch = gearqueue(config, "watch", job_id, "--type", "echo")
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 1, err
    assert json.loads(out) == {"success": -1, "message": "echo asked to fail permanently"}
    assert f"job {job_id}: (failed)" in err.splitlines()
    unknown = gearqueue(config, "watch", "no-such-job")
    out, err = unknown.communicate(timeout=60)
    assert unknown.returncode == 2 and "no state recorded for job 'no-such-job'" in err


def test_watch_shows_queued_then_times_out_with_exit_3(make_config) -> None:
    config = make_config()  # no consumer: the job stays queued
    with Client(load_settings(config)) as client:
        job_id = client.submit("echo", {"data": 1})
    watch = gearqueue(config, "watch", job_id, "--timeout", "1")
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 3 and out == ""
    assert f"job {job_id}: (queued)" in err and "did not end within 1 s" in err


def test_submit_wait_shows_progress_on_stderr_and_only_the_reply_on_stdout(
        make_config, start_consumer, isolation: str) -> None:
    config = make_config(rabbitmq=HEARTBEAT)
    start_consumer(config)
    submit = gearqueue(config, "submit", "echo", "--json", json.dumps(SLOW_JOB), "--wait",
                       "--job-id", f"waited-{isolation}")
    out, err = submit.communicate(timeout=60)
    assert submit.returncode == 0, err
    assert json.loads(out) == {"success": 1, "echo": "p", "attempt": 1}
    assert_increasing_lines(err, f"waited-{isolation}")


def test_submit_wait_in_process_shows_progress_too(make_config) -> None:
    config = make_config(rabbitmq={"url": "amqp://guest:guest@127.0.0.1:1/%2F"},
                         echo_service={"queue_enabled": 0})
    submit = gearqueue(config, "submit", "echo", "--json", json.dumps(SLOW_JOB), "--wait",
                       "--job-id", "waited-in-process")
    out, err = submit.communicate(timeout=60)
    assert submit.returncode == 0, err
    assert json.loads(out) == {"success": 1, "echo": "p", "attempt": 1}
    assert_increasing_lines(err, "waited-in-process")


def assert_increasing_lines(err: str, job_id: str) -> None:
    """Plain lines of the job: some progress, never going back, ending at 30/30."""
    lines = [LINE.match(line) for line in err.splitlines()]
    assert all(lines), err
    assert {match.group(1) for match in lines if match} == {job_id}
    done = [int(match.group(2)) for match in lines if match and match.group(2)]
    assert len(done) >= 3, err
    assert done == sorted(done) and done[-1] == 30, err
    assert lines[-1] is not None and lines[-1].group(4) == "succeeded", err
