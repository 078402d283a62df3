"""The live status file and the metrics follow the loop's jobs; status tells a hung,
killed, failed or stopped instance from a healthy one."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from gearqueue import instances
from gearqueue.cli.status_instances import instance_views, with_progress
from gearqueue.cli.status_render import render
from gearqueue.cli.status_units import UnitState
from gearqueue.errors import StateStoreUnavailable
from gearqueue.instances import InstanceRecord
from gearqueue.state import JobRecord, JobStatus, Progress
from gearqueue.worker import instance_status
from gearqueue.worker.instance_status import InstanceStatus
from gearqueue.worker.metrics import ConsumerMetrics
from gearqueue.worker.metrics_output import Textfile, instance_port


def _jobs(channel, tag: str) -> list[str]:
    ids = [f"{tag}-{n}" for n in range(4)]
    channel.deliver(json.dumps({"data": 0}).encode(), ids[0])
    channel.deliver(json.dumps({"data": 1, "fail": "permanent"}).encode(), ids[1])
    channel.deliver(json.dumps({"data": 2, "fail": "transient"}).encode(), ids[2])
    channel.deliver(json.dumps({"data": 3}).encode(), ids[3])
    return ids


def test_the_status_file_counts_the_jobs_and_says_stopped_at_the_end(
        consumer, tag, fast_settings) -> None:
    status = InstanceStatus(fast_settings, "echo", "7", f"{tag}-consumer-7", inline=False)
    loop, channel = consumer(observers=[status])
    status.started(loop.executor)
    first = json.loads(status.path.read_text())
    assert (first["state"], first["pid"], first["instance"]) == ("idle", os.getpid(), "7")
    _jobs(channel, tag)
    loop.serve(channel)  # type: ignore[arg-type]
    status.stopped()
    record = InstanceRecord.from_json(status.path.read_bytes())
    assert (record.jobs_done, record.jobs_failed, record.state) == (4, 2, "stopped")
    assert record.job_id is None and record.stale_after == 10.0
    assert any(found.identifier == f"{tag}-consumer-7"
               for found in instances.read_all(fast_settings, "echo"))


def test_a_long_job_shows_in_the_file_at_the_next_write(consumer, tag, fast_settings,
                                                        monkeypatch) -> None:
    monkeypatch.setattr(instance_status, "WRITE_EVERY_SECONDS", 0.1)  # 1 s: too long here
    status = InstanceStatus(fast_settings, "echo", "8", f"{tag}-consumer-8", inline=False)
    seen: list[dict[str, object]] = []

    def look(stop) -> None:
        seen.append(json.loads(status.path.read_text()))

    loop, channel = consumer(on_pump=look, observers=[status])
    status.started(loop.executor)
    channel.deliver(json.dumps({"data": 0, "sleep": 0.45}).encode(), f"{tag}-long")
    loop.serve(channel)  # type: ignore[arg-type]
    running = [entry for entry in seen if entry["state"] == "running"]
    # The process child pumps while it waits; inline runs it in one go (seen after).
    if loop.executor.pid != os.getpid():
        assert running and running[0]["job_id"] == f"{tag}-long"


def test_metrics_count_verdicts_retries_and_dead_letters(consumer, tag, tmp_path) -> None:
    output = Textfile(tmp_path / "m.prom")
    metrics = ConsumerMetrics("echo", "3", output)
    loop, channel = consumer(observers=[metrics])
    metrics.started(loop.executor)
    _jobs(channel, tag)
    loop.serve(channel)  # type: ignore[arg-type]
    metrics.event_failed()
    labels = {"job_type": "echo", "instance": "3"}

    def value(name: str, **extra: str) -> float | None:
        return metrics.registry.get_sample_value(name, {**labels, **extra})

    assert value("gear_jobs_total", verdict="succeeded") == 2
    assert value("gear_jobs_total", verdict="failed") == 1
    assert value("gear_jobs_total", verdict="retrying") == 1
    assert (value("gear_retries_total"), value("gear_dead_letters_total")) == (1, 1)
    assert value("gear_job_duration_seconds_count") == 4
    assert value("gear_events_failed_total") == 1
    assert time.time() - 60 < (value("gear_last_success_timestamp_seconds") or 0)
    assert (value("gear_executor_rss_bytes") or 0) > 5 * 2**20
    metrics.stopped()
    text = (tmp_path / "m.prom").read_text()
    assert 'gear_consumer_up{instance="3",job_type="echo"} 0.0' in text
    assert 'gear_jobs_total{instance="3",job_type="echo",verdict="succeeded"} 2.0' in text


def test_instance_ports_are_the_types_first_plus_the_number_minus_one() -> None:
    assert [instance_port(9400, name) for name in ("0", "1", "2", "17")] == \
        [9400, 9400, 9401, 9416]
    assert instance_port(9400, "blue") is None


# --- what status makes of a file and a unit -------------------------------------------------

def _record(**values: object) -> InstanceRecord:
    now = time.time()
    base: dict[str, object] = dict(
        identifier="echo-consumer-1", job_type="echo", instance="1",
        host=os.uname().nodename, pid=os.getpid(), started_at=now - 100, state="idle",
        heartbeat_at=now, stale_after=10.0, jobs_done=5, jobs_failed=1)
    return InstanceRecord(**{**base, **values})  # type: ignore[arg-type]


def _unit(instance: str, active: str = "active", sub: str = "running", pid: int = 0,
          result: str = "success", status: str = "idle") -> UnitState:
    return UnitState(f"echo-consumer@{instance}.service", "echo", instance, active, sub,
                     status, pid, result, 0, "")


def test_a_fresh_heartbeat_is_healthy_and_an_old_one_is_not_responding() -> None:
    now = time.time()
    fresh = _record(state="running", job_id="j1", job_since=now - 30)
    hung = _record(instance="2", state="running", job_id="j2", job_since=now - 80,
                   heartbeat_at=now - 45)
    views = {view.instance: view for view in instance_views([fresh, hung], None, now=now)}
    assert (views["1"].state, views["1"].healthy, views["1"].job_id) == ("running", True, "j1")
    assert round(views["1"].job_seconds or 0) == 30
    assert (views["2"].state, views["2"].healthy) == ("not responding", False)
    assert "no heartbeat for 45 s (hung?)" in views["2"].detail
    # A [status] stale_after of its own overrides the instance's figure.
    (strict,) = instance_views([_record(heartbeat_at=now - 4)], None, stale_after=3, now=now)
    assert strict.state == "not responding"


def test_a_killed_process_is_gone_and_a_failed_unit_shows_with_its_reason() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (gone,) = instance_views([_record(pid=dead.pid)], None)  # no systemd to ask
    assert gone.state == "gone" and "is gone (killed?)" in gone.detail
    failed = _record(instance="2", state="stopped")
    units = [_unit("2", "failed", "failed", result="watchdog"),
             _unit("3", "activating", "auto-restart", result="exit-code")]
    views = {view.instance: view for view in instance_views([failed], units)}
    assert (views["2"].state, views["2"].detail) == ("failed", "systemd: watchdog")
    assert views["3"].state == "restarting"
    assert not any(view.healthy for view in views.values())


def test_a_unit_restarted_under_a_new_pid_is_starting_not_its_old_file() -> None:
    (view,) = instance_views([_record(state="running", job_id="old")],
                             [_unit("1", pid=os.getpid() + 100000)])
    assert (view.state, view.job_id) == ("starting", None)


@pytest.mark.parametrize("seconds, text", [(5, "5 s"), (245, "4m05s"), (3 * 3600 + 120,
                                                                       "3h02m")])
def test_the_table_says_durations_and_flags_what_does_not_respond(seconds, text) -> None:
    now = time.time()
    views = instance_views([_record(started_at=now - seconds),
                            _record(instance="2", heartbeat_at=now - 60)], None, now=now)
    row = {"job_type": "echo", "queue": "q", "queue_enabled": True, "queue_exists": True,
           "ready": 0, "unacked": 0, "retrying": 0, "dead": 0, "consumers": 2,
           "responding": 1, "not_responding": 1, "failed_units": 0,
           "instances": [view.as_dict() for view in views]}
    table = render([row])
    assert "consumers 2 (1 responding here, 1 NOT RESPONDING)" in table
    assert f" {text} " in table.splitlines()[2]
    assert "not responding" in table.splitlines()[3]


def test_a_running_jobs_progress_comes_from_its_record_one_read_per_running_instance(
        ) -> None:
    now = time.time()
    views = instance_views([_record(state="running", job_id="j1", job_since=now - 12),
                            _record(instance="2", state="running", job_id="j2",
                                    job_since=now - 3),
                            _record(instance="3")], None, now=now)
    records = {"j1": JobRecord("j1", "echo", JobStatus.RUNNING, 1,
                               progress=Progress(40, 100, "chunk")),
               "j2": JobRecord("j2", "echo", JobStatus.RUNNING, 1)}  # reported nothing yet
    asked: list[str] = []

    def read(job_id: str) -> JobRecord | None:
        asked.append(job_id)
        return records.get(job_id)

    with_progress(views, read)
    assert asked == ["j1", "j2"]  # the idle instance costs no read
    assert [view.progress for view in views] == [
        {"done": 40, "total": 100, "phase": "chunk"}, None, None]
    row = {"job_type": "echo", "queue": "q", "queue_enabled": True, "queue_exists": True,
           "ready": 0, "unacked": 2, "retrying": 0, "dead": 0, "consumers": 3,
           "responding": 3, "not_responding": 0, "failed_units": 0,
           "instances": [view.as_dict() for view in views]}
    lines = render([row]).splitlines()
    assert "PROGRESS" in lines[1]
    start = lines[1].index("PROGRESS")
    assert lines[2][start:].startswith("40/100 chunk ")
    assert lines[3][start:].startswith("- ")


def test_a_state_store_that_does_not_answer_costs_the_progress_not_the_status() -> None:
    (view,) = instance_views([_record(state="running", job_id="j1",
                                      job_since=time.time())], None)

    def read(job_id: str) -> JobRecord | None:
        raise StateStoreUnavailable("job state store /x/jobs.sqlite3: disk I/O error")

    with_progress([view], read)
    assert (view.state, view.job_id, view.progress) == ("running", "j1", None)
    assert view.detail == "progress unknown: job state store /x/jobs.sqlite3: disk I/O error"
