"""The consumers under a real systemd, installed by install.sh's production mode.

One namespace for the module (tests/systemd_fleet.py): systemd boots, install.sh runs
inside it, and each test then starts what it needs with systemctl; after each test every
consumer is stopped and gear.ini is put back. The last test reinstalls and uninstalls.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from systemd_fleet import CONFIG, PREFIX, Fleet, installed_fleet

from gearqueue.jobtypes import JOB_TYPES

pytestmark = pytest.mark.slow

UNIT_DIR = "/etc/systemd/system"
TYPES = [job_type.replace("_", "-") for job_type in JOB_TYPES]


@pytest.fixture(scope="module")
def installed() -> Iterator[Fleet]:
    with installed_fleet() as fleet:
        yield fleet


@pytest.fixture
def fleet(installed: Fleet) -> Iterator[Fleet]:
    yield installed
    installed.reset()


def journal_text(fleet: Fleet, *matches: str) -> str:
    return "\n".join(str(entry.get("MESSAGE", "")) for entry in fleet.ns.journal(*matches))


# --- install.sh ----------------------------------------------------------------------------


def test_install_creates_the_user_config_data_and_units_with_real_paths(fleet: Fleet) -> None:
    ns = fleet.ns
    assert ns.run("getent", "passwd", "gear").stdout.split(":")[6].strip() == "/usr/sbin/nologin"
    assert ns.run("stat", "-c", "%a %U %G", CONFIG).stdout.split() == ["640", "root", "gear"]
    assert ns.run("readlink", "/usr/local/bin/gearqueue").stdout.strip() == \
        f"{PREFIX}/venv/bin/gearqueue"
    owners = ns.run("stat", "-c", "%U:%G %n", *(f"/var/lib/gear/{name}" for name in (
        "state", "datasets", "carts", "projections", "uploads", "exports"))).stdout
    assert owners.count("gear:gear") == 6
    unit = ns.read_file(f"{UNIT_DIR}/projectr-consumer@.service")
    assert (f"ExecStart={PREFIX}/venv/bin/python {PREFIX}/listeners/projectr_consumer.py "
            f"--config {CONFIG} --instance %i") in unit
    assert "ReadWritePaths=/var/lib/gear/carts /var/lib/gear/datasets" in unit
    leftovers = ns.run("sh", "-c", f"grep -l '@GEAR_' {UNIT_DIR}/*.* || true").stdout
    assert leftovers == ""
    # Each target enabled, and gear.ini's default `workers = 2` instances of each type.
    assert ns.systemctl("is-enabled", "gear-consumers.target", *(
        f"{t}-consumer.target" for t in TYPES)).split() == ["enabled"] * 5
    assert ns.systemctl("is-enabled", *(f"{t}-consumer@{n}.service" for t in TYPES
                                        for n in (1, 2))).split() == ["enabled"] * 8


def installed_units(fleet: Fleet) -> list[str]:
    return fleet.ns.run("sh", "-c", f"grep -ls '^# Installed by gearqueue' {UNIT_DIR}/*.*",
                        check=False).stdout.split()


def test_systemd_analyze_verify_is_clean_for_every_installed_unit(fleet: Fleet) -> None:
    files = installed_units(fleet)
    assert len(files) == 4 * 2 + 3  # per type a template and a target; group, slice, scale
    result = fleet.ns.run("systemd-analyze", "verify", *files, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_every_consumer_unit_rates_ok_in_systemd_analyze_security(fleet: Fleet) -> None:
    scores = {}
    for unit in [f"{t}-consumer@1.service" for t in TYPES] + ["gear-scale@echo.service"]:
        text = fleet.ns.run("systemd-analyze", "security", "--no-pager", unit).stdout
        level = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", text)
        assert level, text[-500:]
        scores[unit] = (float(level[1]), level[2])
    assert all(rating in ("SAFE", "OK") for _, rating in scores.values()), scores


# --- the six scenarios ---------------------------------------------------------------------


def test_starting_the_projectr_target_gives_two_ready_instances_with_status(
        fleet: Fleet) -> None:
    started = time.monotonic()
    fleet.ns.systemctl("start", "projectr-consumer.target")
    took = time.monotonic() - started
    # systemctl returns once both are READY, and READY comes after basic.consume: the
    # broker already counts both consumers (R is loaded by then too, in each executor).
    assert fleet.running("projectr") == ["projectr-consumer@1.service",
                                         "projectr-consumer@2.service"]
    assert fleet.consumers_on("projectr") == 2
    for unit in fleet.running("projectr"):
        state = fleet.show(unit)
        assert (state["ActiveState"], state["SubState"], state["StatusText"]) == \
            ("active", "running", "idle")
        user = fleet.ns.run("ps", "-o", "user=", "-p", state["MainPID"]).stdout.strip()
        assert user == "gear"
    status = fleet.ns.systemctl("status", "projectr-consumer@*")
    assert status.count('Status: "idle"') == 2
    assert "R engine ready" in journal_text(fleet, "-u", "projectr-consumer@1.service")
    assert took < 60


def _write_projectr_inputs(fleet: Fleet) -> None:
    genes = [f"g{n}" for n in range(12)]
    samples = ["s0", "s1", "s2"]
    loadings = [[(n % 3) + 1.0, (n % 4) * 0.5] for n in range(12)]
    weights = [[1.0, 2.0, 0.5], [3.0, 0.0, 1.0]]
    rows = [",".join([gene, *(repr(sum(loadings[g][p] * weights[p][s] for p in range(2))
                                       + 0.01 * ((g * 7 + s) % 5)) for s in range(3))])
            for g, gene in enumerate(genes)]
    fleet.ns.write_file("/var/lib/gear/datasets/ds.csv",
                        "\n".join(["gene," + ",".join(samples), *rows]) + "\n")
    cart = ["gene_id\tgene_symbol\tP0\tP1", *(
        f"{gene}\tSYM{n}\t{loadings[n][0]!r}\t{loadings[n][1]!r}" for n, gene in enumerate(genes))]
    fleet.ns.write_file("/var/lib/gear/carts/cart.cart.tab", "\n".join(cart) + "\n")
    fleet.ns.run("chown", "gear:gear", "/var/lib/gear/datasets/ds.csv",
                 "/var/lib/gear/carts/cart.cart.tab")


def test_a_projectr_job_is_found_in_the_journal_by_its_gear_fields(fleet: Fleet) -> None:
    _write_projectr_inputs(fleet)
    fleet.ns.systemctl("start", "projectr-consumer.target")
    job_id = f"{fleet.tag}-projection"
    publisher = fleet.publisher("projectr")
    try:
        publisher.publish({"dataset_id": "ds", "genecart_id": "cart", "projection_id": "p1",
                           "scope": "weighted-list", "algorithm": "nmf", "zscore": False,
                           "full_output": False}, job_id, message_id=job_id)
        publisher.wait_replies(1, timeout=60)
    finally:
        publisher.close()
    assert publisher.replies[job_id][0]["success"] == 1, publisher.replies
    entries = fleet.ns.wait_for(
        lambda: [e for e in fleet.ns.journal(f"GEAR_JOB_ID={job_id}") if "GEAR_OUTCOME" in e],
        "the job's outcome line in the journal", timeout=10)
    line = entries[0]
    assert line["GEAR_JOB_TYPE"] == "projectr"
    assert line["GEAR_QUEUE"] == fleet.queue("projectr")
    assert line["GEAR_ATTEMPT"] == "1"
    assert line["GEAR_OUTCOME"].startswith("succeeded")
    assert int(line["GEAR_DURATION_MS"]) > 0
    assert re.fullmatch(r"projectr-consumer@[12]\.service", line["_SYSTEMD_UNIT"])
    assert line["SYSLOG_IDENTIFIER"] == line["_SYSTEMD_UNIT"].replace("@", "-").removesuffix(
        ".service")
    # systemd's own JOB_ID (its job queue) is never ours.
    assert all("JOB_ID" not in entry for entry in fleet.ns.journal(f"GEAR_JOB_ID={job_id}"))
    assert len(fleet.ns.journal("-u", "projectr-consumer@*", "GEAR_JOB_TYPE=projectr")) >= 1


def _instance_running(fleet: Fleet, job_type: str, job_id: str) -> str:
    """The instance whose STATUS says it runs `job_id`."""
    def find() -> str | None:
        for unit in fleet.running(job_type):
            if fleet.show(unit)["StatusText"].startswith(f"job {job_id} running"):
                return unit
        return None
    return fleet.ns.wait_for(find, f"an instance running {job_id}", timeout=20, interval=0.05)


def test_a_killed_instance_is_restarted_and_its_job_is_not_lost(fleet: Fleet) -> None:
    fleet.ns.systemctl("start", "echo-consumer.target")
    fleet.wait_running("echo", 2)
    publisher = fleet.publisher("echo")
    job_id = f"{fleet.tag}-killed"
    try:
        publisher.publish({"data": "survives", "sleep": 2}, job_id, message_id=job_id)
        victim = _instance_running(fleet, "echo", job_id)
        fleet.ns.systemctl("kill", "--kill-whom=main", "--signal=SIGKILL", victim)
        fleet.ns.wait_for(lambda: fleet.show(victim)["NRestarts"] == "1",
                          f"{victim} restarted", timeout=30)
        fleet.wait_running("echo", 2)
        publisher.wait_replies(1, timeout=30)
        publisher.settle(1)
    finally:
        publisher.close()
    # Redelivered, run again as attempt 2, answered once.
    assert publisher.replies[job_id] == [{"success": 1, "echo": "survives", "attempt": 2}]
    assert "status=9/KILL" in journal_text(fleet, "-u", victim)


def test_a_hung_main_loop_is_killed_by_the_watchdog_but_a_long_job_is_not(
        fleet: Fleet) -> None:
    # The test hook and a short watchdog, for this test only (the unit says 60 s).
    fleet.add_dropin("echo-consumer@.service", "[Service]\nWatchdogSec=3\n"
                     "Environment=GEAR_TEST_HANG_ON_SIGUSR2=1\n")
    fleet.ns.systemctl("start", "echo-consumer.target")
    fleet.wait_running("echo", 2)
    publisher = fleet.publisher("echo")
    job_id = f"{fleet.tag}-long"
    try:
        publisher.publish({"data": "long", "sleep": 8}, job_id, message_id=job_id)
        busy = _instance_running(fleet, "echo", job_id)
        (idle,) = set(fleet.running("echo")) - {busy}
        fleet.ns.systemctl("kill", "--kill-whom=main", "--signal=SIGUSR2", idle)
        fleet.ns.wait_for(lambda: fleet.show(idle)["NRestarts"] == "1",
                          f"{idle} restarted by the watchdog", timeout=30)
        publisher.wait_replies(1, timeout=30)
    finally:
        publisher.close()
    assert publisher.replies[job_id] == [{"success": 1, "echo": "long", "attempt": 1}]
    assert fleet.show(busy)["NRestarts"] == "0"  # 8 s job, 3 s watchdog: pinged throughout
    fleet.wait_running("echo", 2)
    log = journal_text(fleet, "-u", idle)
    assert "Watchdog timeout" in log
    # PYTHONFAULTHANDLER=1: the SIGABRT leaves the hung main thread's stack in the journal.
    assert "Fatal Python error: Aborted" in log and "testhook.py" in log


def test_stopping_the_target_during_jobs_finishes_them_and_loses_nothing(
        fleet: Fleet) -> None:
    fleet.ns.systemctl("start", "echo-consumer.target")
    units = fleet.wait_running("echo", 2)
    publisher = fleet.publisher("echo")
    ids = [f"{fleet.tag}-stop-{n}" for n in range(4)]
    try:
        for job_id in ids:
            publisher.publish({"data": job_id, "sleep": 2}, job_id, message_id=job_id)
        for unit in units:
            fleet.wait_status(unit, "job ")
        fleet.ns.systemctl("stop", "echo-consumer.target")
        for unit in units:  # STOPPING=1 with a STATUS naming the job it finishes first
            fleet.wait_status(unit, "job ", timeout=5)
            assert fleet.show(unit)["ActiveState"] in ("deactivating", "inactive")
        fleet.ns.wait_for(lambda: fleet.running("echo") == [] and all(
            fleet.show(u)["ActiveState"] == "inactive" for u in units),
            "both instances stopped", timeout=30)
        for unit in units:
            state = fleet.show(unit)
            assert (state["Result"], state["ExecMainStatus"]) == ("success", "0")
        publisher.wait_replies(2, timeout=5)
        assert publisher.depth(fleet.queue("echo")) == 2  # the others wait, untouched
        fleet.ns.systemctl("start", "echo-consumer.target")
        publisher.wait_replies(4, timeout=30)
        publisher.settle(1)
    finally:
        publisher.close()
    assert {job_id: publisher.replies[job_id] for job_id in ids} == {
        job_id: [{"success": 1, "echo": job_id, "attempt": 1}] for job_id in ids}
    assert "finishing the current job, then stopping" in journal_text(
        fleet, "-u", "echo-consumer@1.service")


def test_a_status_line_during_a_graceful_stop_says_so(fleet: Fleet) -> None:
    fleet.ns.systemctl("start", "echo-consumer@1.service")
    publisher = fleet.publisher("echo")
    job_id = f"{fleet.tag}-status"
    try:
        publisher.publish({"data": 1, "sleep": 3}, job_id, message_id=job_id)
        fleet.wait_status("echo-consumer@1.service", f"job {job_id} running")
        fleet.ns.systemctl("stop", "--no-block", "echo-consumer@1.service")
        text = fleet.wait_status("echo-consumer@1.service", f"job {job_id} running")
        fleet.ns.wait_for(lambda: "stopping after it" in fleet.show(
            "echo-consumer@1.service")["StatusText"], "the stopping status", timeout=5)
        publisher.wait_replies(1, timeout=10)
    finally:
        publisher.close()
    assert text.startswith(f"job {job_id} running")
    assert publisher.replies[job_id][0]["success"] == 1


def test_editing_gear_ini_and_restarting_the_target_applies_workers_and_queueing(
        fleet: Fleet) -> None:
    fleet.ns.systemctl("start", "echo-consumer.target")
    fleet.wait_running("echo", 2)

    fleet.write_config(echo={"workers": 3})
    fleet.ns.systemctl("restart", "echo-consumer.target")
    fleet.wait_running("echo", 3)
    assert fleet.ns.systemctl("is-enabled", "echo-consumer@3.service").strip() == "enabled"

    fleet.write_config(echo={"workers": 1})
    fleet.ns.systemctl("restart", "echo-consumer.target")
    fleet.wait_running("echo", 1)
    assert fleet.ns.systemctl("is-enabled", "echo-consumer@2.service", "echo-consumer@3.service",
                              check=False).split() == ["disabled", "disabled"]

    fleet.write_config(echo={"queue_enabled": 0})
    fleet.ns.systemctl("restart", "echo-consumer.target")
    fleet.ns.wait_for(lambda: fleet.running("echo") == [], "no echo consumer", timeout=30)
    assert fleet.consumers_on("echo") == 0
    rows = [json.loads(line) for line in fleet.gearqueue("status", "--json").splitlines()]
    assert {r["job_type"]: r["queue_enabled"] for r in rows}["echo"] is False

    fleet.write_config(echo={"queue_enabled": 1, "workers": 2})
    fleet.ns.systemctl("restart", "echo-consumer.target")
    fleet.wait_running("echo", 2)
    assert fleet.consumers_on("echo") == 2


def test_gearqueue_scale_starts_or_stops_instances_and_saves_workers(fleet: Fleet) -> None:
    fleet.ns.systemctl("start", "echo-consumer.target")
    fleet.wait_running("echo", 2)
    assert "echo: workers = 3 saved" in fleet.gearqueue("scale", "echo", "3")
    assert fleet.running("echo") == [f"echo-consumer@{n}.service" for n in (1, 2, 3)]
    assert "workers = 3" in fleet.ns.read_file(CONFIG)
    fleet.gearqueue("scale", "echo", "1")
    assert fleet.running("echo") == ["echo-consumer@1.service"]
    # The next restart of the target keeps what scale saved.
    fleet.ns.systemctl("restart", "echo-consumer.target")
    fleet.wait_running("echo", 1)


def test_without_a_broker_an_instance_is_not_ready_and_says_it_reconnects(
        fleet: Fleet) -> None:
    fleet.write_config(url="amqp://guest:guest@127.0.0.1:1/%2F")  # nothing listens there
    fleet.ns.systemctl("start", "--no-block", "echo-consumer@1.service")
    fleet.wait_status("echo-consumer@1.service", "reconnecting to broker (attempt ")
    time.sleep(1.5)  # backoff capped at 1 s (reconnect_max_delay): it keeps trying
    state = fleet.show("echo-consumer@1.service")
    attempt = re.fullmatch(r"reconnecting to broker \(attempt (\d+)\)", state["StatusText"])
    assert attempt and int(attempt[1]) >= 2, state
    assert state["ActiveState"] == "activating"  # no READY=1 without a broker


def test_a_config_error_stops_the_instance_instead_of_restarting_it(fleet: Fleet) -> None:
    fleet.write_config(echo={"no_such_key": 1})
    fleet.ns.systemctl("start", "echo-consumer@1.service", check=False)
    state = fleet.ns.wait_for(lambda: (s := fleet.show("echo-consumer@1.service"))[
        "ActiveState"] == "failed" and s, "the instance failed", timeout=20)
    # RestartPreventExitStatus=2: failed for good (not "auto-restart"), with exit status 2.
    assert (state["SubState"], state["ExecMainStatus"], state["NRestarts"]) == \
        ("failed", "2", "0")
    assert "unknown key" in journal_text(fleet, "-u", "echo-consumer@1.service")


def test_a_crash_loop_hits_the_start_limit_and_a_target_restart_clears_it(
        fleet: Fleet) -> None:
    # A consumer that dies at once (exit 1, worth a restart), restarted without delay.
    fleet.add_dropin("echo-consumer@.service", "[Service]\nExecStart=\n"
                     "ExecStart=/bin/sh -c 'exit 1'\nRestartSec=0.1\n")
    fleet.ns.systemctl("start", "echo-consumer@1.service", check=False)
    fleet.ns.wait_for(lambda: "Start request repeated too quickly" in journal_text(
        fleet, "-u", "echo-consumer@1.service"), "the start limit", timeout=20)
    state = fleet.show("echo-consumer@1.service")
    assert (state["ActiveState"], state["NRestarts"]) == ("failed", "5")
    time.sleep(1)
    assert fleet.show("echo-consumer@1.service")["ActiveState"] == "failed"  # for good

    fleet.ns.run("rm", "/etc/systemd/system/echo-consumer@.service.d/zz-test.conf")
    fleet.ns.systemctl("daemon-reload")
    fleet.ns.systemctl("restart", "echo-consumer.target")
    fleet.wait_running("echo", 2)


# --- upgrade and uninstall (last: it removes the installation) ------------------------------


def test_status_shows_units_their_status_lines_a_hung_instance_and_a_failed_unit(
        fleet: Fleet) -> None:
    fleet.ns.run("sh", "-c", f"printf '[status]\\nstale_after = 3\\n' >> {CONFIG}")
    fleet.add_dropin("echo-consumer@.service", "[Service]\n"
                     "Environment=GEAR_TEST_HANG_ON_SIGUSR2=1\n")
    # Instance 3 cannot start: a failed unit, which the broker never hears of.
    fleet.add_dropin("echo-consumer@3.service",
                     "[Service]\nRestart=no\nExecStart=\nExecStart=/bin/false\n")
    fleet.ns.systemctl("start", "echo-consumer.target")
    fleet.wait_running("echo", 2)
    fleet.ns.systemctl("start", "echo-consumer@3.service", check=False)
    publisher = fleet.publisher("echo")
    # Its own id: the graceful-stop test's job (tag-status) is done, and a job id
    # that is done is answered from its record, never run again.
    job_id = f"{fleet.tag}-status-table"
    try:
        publisher.publish({"data": "long", "sleep": 12}, job_id, message_id=job_id)
        busy = _instance_running(fleet, "echo", job_id)
        (hung,) = set(fleet.running("echo")) - {busy}
        fleet.ns.systemctl("kill", "--kill-whom=main", "--signal=SIGUSR2", hung)
        time.sleep(4.5)  # past stale_after
        text = fleet.gearqueue("status", "echo", "--json")
        (row,) = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        views = {view["unit"]: view for view in row["instances"]}
        table = fleet.gearqueue("status", "echo")
        fleet.ns.systemctl("kill", "--kill-whom=all", "--signal=SIGKILL", hung)
        publisher.wait_replies(1, timeout=30)
    finally:
        publisher.close()
    assert row["systemd"] is True
    assert views[busy]["state"] == "running" and views[busy]["job_id"] == job_id
    assert views[busy]["unit_state"] == "active/running"
    assert views[busy]["status_line"].startswith(f"job {job_id} running")
    assert views[busy]["executor_rss_mb"] > 10 and views[busy]["uptime_seconds"] > 1
    assert views[hung]["state"] == "not responding" and not views[hung]["healthy"]
    assert views[hung]["status_line"] == "idle"  # what it told systemd before it hung
    failed = views["echo-consumer@3.service"]
    assert (failed["state"], failed["detail"]) == ("failed", "systemd: exit-code")
    # The broker still counts the hung instance's consumer.
    assert (row["consumers"], row["responding"], row["not_responding"],
            row["failed_units"]) == (2, 1, 1, 1)
    assert "1 NOT RESPONDING" in table and "1 unit(s) FAILED" in table
    print(table)


def test_a_metrics_textfile_dir_is_made_and_writable_inside_the_units_sandbox(
        fleet: Fleet) -> None:
    ns, folder = fleet.ns, "/var/lib/gear/metrics"
    fleet.write_config(metrics={"textfile_dir": folder})
    try:
        fleet.install()
        unit = ns.read_file(f"{UNIT_DIR}/echo-consumer@.service")
        (paths,) = re.findall(r"^ReadWritePaths=(.*)$", unit, flags=re.M)
        assert folder in paths.split()
        assert ns.run("stat", "-c", "%a %U %G", folder).stdout.split() == ["2770", "gear", "gear"]
        ns.systemctl("start", "echo-consumer@1.service")
        fleet.wait_running("echo", 1)
        ns.systemctl("stop", "echo-consumer@1.service")  # the last write says it stopped
        prom = f"{folder}/echo-consumer-1.prom"
        assert 'gear_consumer_up{instance="1",job_type="echo"} 0.0' in ns.read_file(prom)
        # node_exporter reads it as a member of group gear; the units' UMask=0027 leaves 640.
        assert ns.run("stat", "-c", "%a %U %G", prom).stdout.split() == ["640", "gear", "gear"]
        assert "cannot write" not in journal_text(fleet, "-u", "echo-consumer@1.service")
    finally:
        fleet.write_config()
        fleet.install()  # the units as the other tests know them
    assert folder not in ns.read_file(f"{UNIT_DIR}/echo-consumer@.service")


def test_reinstall_changes_nothing_and_uninstall_leaves_config_and_data(fleet: Fleet) -> None:
    ns = fleet.ns
    files = [*installed_units(fleet), CONFIG]
    before = ns.run("stat", "-c", "%n %Y %s", *files).stdout
    fleet.install()
    assert ns.run("stat", "-c", "%n %Y %s", *files).stdout == before  # not even rewritten

    ns.systemctl("start", "echo-consumer.target")
    fleet.wait_running("echo", 2)
    output = fleet.install("--uninstall")
    assert "Left alone" in output
    assert fleet.running("echo") == []
    assert ns.run("sh", "-c", f"ls {UNIT_DIR} | grep -E 'consumer|gear' || true").stdout == ""
    assert ns.run("test", "-e", PREFIX, check=False).returncode == 1
    assert ns.run("test", "-e", "/usr/local/bin/gearqueue", check=False).returncode == 1
    ns.run("test", "-f", CONFIG)
    ns.run("test", "-d", "/var/lib/gear/projections")
    assert ns.run("pgrep", "-u", "gear", check=False).returncode == 1
