"""`gearqueue status` and the Prometheus metrics against real consumers and the broker.

Consumers are real listener processes; metrics are scraped over HTTP; a hung instance
is a consumer stopped with SIGSTOP, which the broker goes on counting.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.state import JobStatus, open_store

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """{'name{labels}': value} of a consumer's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def gearqueue(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gearqueue.cli", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=60, check=False)


def status_json(config: Path, job_type: str = "echo") -> dict[str, Any]:
    result = gearqueue(config, "status", job_type, "--json")
    assert result.returncode == 0, result.stderr
    (row,) = map(json.loads, result.stdout.splitlines())
    return row


def by_instance(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {view["instance"]: view for view in row["instances"]}


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def run_known_jobs(config: Path) -> None:
    """3 successes, 1 permanent failure, 1 transient failure (retried, then dead)."""
    with Client(load_settings(config)) as client:
        for n in range(3):
            assert client.call("echo", {"data": n}, timeout=20)["success"] == 1
        assert client.call("echo", {"data": "p", "fail": "permanent"}, timeout=20)[
            "success"] == -1
        assert client.call("echo", {"data": "t", "fail": "transient"}, timeout=30)[
            "success"] == -1


LABELS = '{instance="2",job_type="echo"'


def test_a_scrape_of_a_running_consumer_counts_the_known_jobs(make_config,
                                                               start_consumer) -> None:
    base = free_port()
    # One retry: the transient failure is retried once, then dead-lettered.
    config = make_config(metrics={"port": base}, echo_service={
        "max_retries": 1, "metrics_port": base - 1})
    start_consumer(config, instance="2")  # instance 2: metrics_port + 1 = base
    run_known_jobs(config)
    samples = wait_for(lambda: (found := scrape(base)) and found.get(
        f'gear_jobs_total{LABELS},verdict="failed"}}') == 2 and found, "both dead letters")
    assert samples[f'gear_jobs_total{LABELS},verdict="succeeded"}}'] == 3
    assert samples[f'gear_jobs_total{LABELS},verdict="retrying"}}'] == 1
    assert samples[f"gear_retries_total{LABELS}}}"] == 1
    assert samples[f"gear_dead_letters_total{LABELS}}}"] == 2
    assert samples[f"gear_job_duration_seconds_count{LABELS}}}"] == 6
    assert samples[f"gear_executor_rss_bytes{LABELS}}}"] > 10 * 2**20
    assert time.time() - 60 < samples[f"gear_last_success_timestamp_seconds{LABELS}}}"]
    assert samples[f"gear_reconnects_total{LABELS}}}"] == 0
    assert samples[f"gear_events_failed_total{LABELS}}}"] == 0
    assert samples[f"gear_consumer_up{LABELS}}}"] == 1


def test_textfile_mode_writes_the_prom_file_and_marks_a_stop(make_config,
                                                              start_consumer, tmp_path) -> None:
    folder = tmp_path / "textfiles"
    folder.mkdir()
    config = make_config(metrics={"port": free_port(), "textfile_dir": str(folder)})
    consumer = start_consumer(config, instance="1")
    with Client(load_settings(config)) as client:
        assert client.call("echo", {"data": 1}, timeout=20)["success"] == 1
    consumer.stop()
    text = (folder / "echo-consumer-1.prom").read_text()
    assert 'gear_jobs_total{instance="1",job_type="echo",verdict="succeeded"} 1.0' in text
    assert 'gear_consumer_up{instance="1",job_type="echo"} 0.0' in text
    assert "metrics on http" not in consumer.log()  # instead of serving, not as well
    assert not list(folder.glob("*.tmp"))
    assert (folder / "echo-consumer-1.prom").stat().st_mode & 0o040  # node_exporter's group


def test_a_port_in_use_is_a_warning_jobs_go_on_and_it_serves_once_free(
        make_config, start_consumer) -> None:
    port = free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    config = make_config(metrics={"port": port})
    consumer = start_consumer(config, instance="1")
    try:
        with Client(load_settings(config)) as client:
            assert client.call("echo", {"data": 1}, timeout=20)["success"] == 1
        assert (f"metrics: cannot listen on 127.0.0.1:{port} (Address already in use"
                in consumer.log())
        assert "jobs go on, retrying every 10 s" in consumer.log()
    finally:
        squatter.close()
    consumer.wait_for_log(f"metrics on http://127.0.0.1:{port}/metrics", timeout=20)
    assert scrape(port)['gear_jobs_total{instance="1",job_type="echo",verdict="succeeded"}'] \
        == 1


def test_status_json_tells_idle_running_hung_and_stopped_instances(make_config,
                                                                    start_consumer) -> None:
    config = make_config(status={"stale_after": 3})
    idle, busy, hung, stopped = (start_consumer(config, instance=str(n)) for n in range(1, 5))
    with Client(load_settings(config)) as client:
        client.submit("echo", {"data": "long", "sleep": 20}, job_id=f"{config.parent.name}-l")
    store = open_store(load_settings(config), "echo")
    wait_for(lambda: (record := store.get(f"{config.parent.name}-l")) is not None
             and record.status is JobStatus.RUNNING, "the long job to run")
    stopped.stop()
    # Which instance took the long job is up to the broker: hang another one.
    running = wait_for(lambda: [name for name, view in by_instance(status_json(config)).items()
                                if view["state"] == "running"], "a running instance")
    others = [c for c in (idle, busy, hung) if c.instance not in running]
    victim, quiet = others[0], others[1]
    victim.signal(signal.SIGSTOP)
    try:
        time.sleep(4.5)  # past stale_after = 3
        row = status_json(config)
        views = by_instance(row)
        assert views[running[0]]["state"] == "running"
        assert views[running[0]]["job_id"] == f"{config.parent.name}-l"
        assert views[running[0]]["job_seconds"] > 4
        assert views[running[0]]["executor_rss_mb"] > 10
        assert views[quiet.instance]["state"] == "idle" and views[quiet.instance]["healthy"]
        assert views[victim.instance]["state"] == "not responding"
        assert not views[victim.instance]["healthy"]
        assert "hung?" in views[victim.instance]["detail"]
        assert views["4"]["state"] == "stopped"
        # The broker still counts the hung one's consumer; status does not call it healthy.
        assert (row["consumers"], row["responding"], row["not_responding"]) == (3, 2, 1)
        assert "do not respond" in row["warning"]
        table = gearqueue(config, "status", "echo").stdout
        assert "1 NOT RESPONDING" in table and "no heartbeat for" in table
    finally:
        victim.signal(signal.SIGCONT)
    wait_for(lambda: by_instance(status_json(config))[victim.instance]["state"] == "idle",
             "the stopped process to respond again after SIGCONT")


def test_status_shows_the_progress_of_the_job_an_instance_runs(make_config,
                                                               start_consumer) -> None:
    # In the executor child, as the long jobs run (projectr, import, export).
    config = make_config(echo_service={"isolation": "process"})
    start_consumer(config, instance="1")
    job_id = f"{config.parent.name}-p"
    with Client(load_settings(config)) as client:
        client.submit("echo", {"data": "p", "sleep": 15, "progress": 150}, job_id=job_id)

    def progress() -> dict[str, Any] | None:
        view = by_instance(status_json(config))["1"]
        return view["progress"] if view["job_id"] == job_id else None

    first = wait_for(lambda: (found := progress()) and found["done"] > 0 and found,
                     "the running job's progress in status --json")
    assert (first["total"], first["phase"]) == (150, "step")
    later = wait_for(lambda: (found := progress()) and found["done"] > first["done"] and found,
                     "the progress to advance")
    assert later["done"] <= 150
    table = gearqueue(config, "status", "echo").stdout
    header, line = table.splitlines()[1:3]
    cell = line[header.index("PROGRESS"):].split("  ")[0]
    done, _, rest = cell.partition("/")
    assert rest == "150 step" and first["done"] < int(done) <= 150, table
    assert job_id[:20] in line
    # Once it ends the instance is idle, with no job and no progress.
    wait_for(lambda: (view := by_instance(status_json(config))["1"])["state"] == "idle"
             and view["progress"] is None, "the job to end", timeout=30)


def test_a_killed_instance_is_gone_not_healthy(make_config, start_consumer) -> None:
    config = make_config()
    consumer = start_consumer(config, instance="1")
    consumer.signal(signal.SIGKILL)
    consumer.wait()
    (view,) = status_json(config)["instances"]
    assert (view["state"], view["healthy"]) == ("gone", False)
    assert "is gone (killed?)" in view["detail"]


def test_status_of_a_missing_queue_and_an_unknown_type_say_so(make_config) -> None:
    config = make_config()  # nothing declared the queues yet
    row = status_json(config)
    assert (row["queue_exists"], row["ready"], row["instances"]) == (False, None, [])
    table = gearqueue(config, "status", "echo")
    assert table.returncode == 0
    assert "the queue does not exist on the broker" in table.stdout
    unknown = gearqueue(config, "status", "nope")
    assert unknown.returncode == 2 and "unknown job type 'nope'" in unknown.stderr


def test_status_with_a_broken_broker_url_exits_4_naming_it(make_config) -> None:
    config = make_config(rabbitmq={"url": "amqp://guest:secret@127.0.0.1:1/%2F"})
    result = gearqueue(config, "status")
    assert result.returncode == 4
    assert "broker unavailable" in result.stderr and "127.0.0.1:1" in result.stderr
    assert "secret" not in result.stderr


def test_watch_repeats_plain_frames_off_a_terminal_and_survives_an_outage(
        make_config) -> None:
    config = make_config(rabbitmq={"url": "amqp://guest:guest@127.0.0.1:1/%2F"})
    process = subprocess.Popen([sys.executable, "-m", "gearqueue.cli", "--config", str(config),
                                "status", "echo", "--watch", "--interval", "0.3"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(6)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert out.count("broker unavailable") >= 2  # a frame per refresh, the watch goes on
