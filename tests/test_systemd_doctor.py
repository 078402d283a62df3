"""Under a real systemd (tests/systemd_fleet.py): a clean stop kills nothing, and
`gearqueue doctor` reads the units, the code they run and the R of their executor.

One installation for the module; each test starts what it needs, and the fleet fixture
stops everything and puts gear.ini back afterwards. gear.ini gets `management_port = 0`:
the shared broker runs no management plugin (that finding is tested in test_doctor.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from systemd_fleet import CONFIG, GEARQUEUE, PREFIX, Fleet, installed_fleet

pytestmark = pytest.mark.slow

ROOT_OF_CHECKOUT = __file__.rsplit("/tests/", 1)[0]


@pytest.fixture(scope="module")
def installed() -> Iterator[Fleet]:
    with installed_fleet() as fleet:
        yield fleet


@pytest.fixture
def fleet(installed: Fleet) -> Iterator[Fleet]:
    # Time limits below the broker's consumer_timeout (30 min), or doctor says so.
    installed.write_config(echo={"time_limit": 600}, projectr={"time_limit": 600})
    without_management(installed)
    yield installed
    installed.reset()


def without_management(fleet: Fleet) -> None:
    fleet.ns.run("sed", "-i", "s/^\\[rabbitmq\\]$/[rabbitmq]\\nmanagement_port = 0/", CONFIG)


def doctor(fleet: Fleet, *job_types: str) -> tuple[int, list[dict[str, Any]]]:
    result = fleet.ns.run(GEARQUEUE, "--config", CONFIG, "doctor", "--json", *job_types,
                          check=False, timeout=300)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


def about(findings: list[dict[str, Any]], subject: str) -> list[tuple[str, str, str]]:
    return [(item["level"], item["message"], item["fix"]) for item in findings
            if item["subject"] == subject]


def problems(findings: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(item["subject"], item["message"], item["fix"]) for item in findings
            if item["level"] == "fail"]


def unit_journal(fleet: Fleet, unit: str, since: float) -> list[str]:
    return [str(entry.get("MESSAGE", "")) for entry in fleet.ns.journal("-u", unit)
            if int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6 >= since]


@pytest.mark.parametrize("job_type", ["echo", "projectr"])
def test_a_clean_stop_kills_no_leftover_process_and_ends_in_success(
        fleet: Fleet, job_type: str) -> None:
    unit = f"{job_type}-consumer@1.service"
    fleet.ns.systemctl("start", unit)
    fleet.wait_status(unit, "idle")
    pid = fleet.show(unit)["MainPID"]
    children = fleet.ns.run("ps", "-o", "args=", "--ppid", pid).stdout
    assert "resource_tracker" in children  # the helper the spawn context starts
    started = time.time()
    fleet.ns.systemctl("stop", unit)
    log = unit_journal(fleet, unit, started)
    assert not [line for line in log if "SIGKILL" in line or "Killing process" in line], log
    assert any("Deactivated successfully" in line for line in log), log
    state = fleet.show(unit)
    assert (state["ActiveState"], state["SubState"], state["Result"],
            state["ExecMainStatus"]) == ("inactive", "dead", "success", "0")
    assert "inactive (dead)" in fleet.ns.systemctl("status", unit, check=False)


def test_doctor_passes_a_running_fleet_then_names_a_stopped_and_a_failed_instance(
        fleet: Fleet) -> None:
    fleet.ns.systemctl("start", "echo-consumer.target")
    fleet.wait_running("echo", 2)
    code, findings = doctor(fleet, "echo")
    assert (code, problems(findings)) == (0, [])
    for unit in ("echo-consumer@1.service", "echo-consumer@2.service"):
        [running, state] = about(findings, unit)
        assert running[:2] == ("ok", f"runs the installed code {running[1].split()[-1]}")
        assert state[:2] == ("ok", "enabled, active/running, STATUS 'idle'")
    [(level, message, _)] = about(findings, "echo-consumer code")
    assert level == "ok" and message.endswith(f"is the checkout's ({ROOT_OF_CHECKOUT})")

    fleet.ns.systemctl("stop", "echo-consumer@2.service")
    code, findings = doctor(fleet, "echo")
    assert code == 1
    assert problems(findings) == [("echo-consumer@2.service",
                                   "not running (inactive/dead)",
                                   "systemctl start echo-consumer@2.service")]

    # An instance that exits 2 (configuration error) fails for good.
    fleet.add_dropin("echo-consumer@2.service", "[Service]\nExecStart=\n"
                     "ExecStart=/bin/sh -c 'exit 2'\n")
    fleet.ns.systemctl("start", "echo-consumer@2.service", check=False)
    fleet.ns.wait_for(lambda: fleet.show("echo-consumer@2.service")["ActiveState"] ==
                      "failed", "echo-consumer@2 failed", timeout=20)
    code, findings = doctor(fleet, "echo")
    assert code == 1
    assert problems(findings) == [(
        "echo-consumer@2.service", "failed (result exit-code)",
        "journalctl -u echo-consumer@2.service -n 50 says why; after fixing it, "
        "systemctl restart echo-consumer@2.service")]


def test_doctor_tells_installed_code_that_differs_and_an_instance_on_older_code(
        fleet: Fleet) -> None:
    fleet.ns.systemctl("start", "echo-consumer.target")
    fleet.wait_running("echo", 2)
    package = fleet.ns.run(f"{PREFIX}/venv/bin/python", "-c", "import gearqueue, os; "
                           "print(os.path.dirname(gearqueue.__file__))").stdout.strip()
    edited = f"{package}/defaults.py"
    original = fleet.ns.read_file(edited)
    # A hand edit of the installed copy: what an upgrade not yet restarted looks like.
    fleet.ns.write_file(edited, original + "# patched by hand\n")
    try:
        code, findings = doctor(fleet, "echo")
    finally:
        fleet.ns.write_file(edited, original)
    assert code == 1
    found = problems(findings)
    [(_, message, fix)] = [item for item in found if item[0] == "echo-consumer code"]
    assert f"({package}) differs from the checkout's" in message
    assert fix == (f"{ROOT_OF_CHECKOUT}/install.sh, then systemctl restart "
                   "echo-consumer.target (jobs in progress finish first)")
    stale = {subject: (message, fix) for subject, message, fix in found
             if subject.startswith("echo-consumer@")}
    assert sorted(stale) == ["echo-consumer@1.service", "echo-consumer@2.service"]
    for unit, (message, fix) in stale.items():
        assert message.startswith("runs code ") and "installed after it started" in message
        assert fix == f"systemctl restart {unit} (its jobs in progress finish first)"
    # The file is back: the running code is the installed code again.
    code, findings = doctor(fleet, "echo")
    assert (code, problems(findings)) == (0, [])


def test_doctor_loads_r_as_the_projectr_unit_would_and_names_a_broken_r_home(
        fleet: Fleet) -> None:
    fleet.ns.systemctl("start", "projectr-consumer.target")
    fleet.wait_running("projectr", 2)
    code, findings = doctor(fleet, "projectr")
    assert (code, problems(findings)) == (0, [])
    levels = about(findings, "projectr R")
    assert levels[0] == ("info", f"checked with the unit's python {PREFIX}/venv/bin/python "
                         "and its Environment= lines as user gear", "")
    assert levels[1][0] == "ok" and "limma and nnls load" in levels[1][1]

    fleet.ns.run("mkdir", "-p", "/var/lib/gear/empty-r-home")
    fleet.add_dropin("projectr-consumer@1.service",
                     "[Service]\nEnvironment=R_HOME=/var/lib/gear/empty-r-home\n")
    code, findings = doctor(fleet, "projectr")
    assert code == 1
    [(subject, message, fix)] = problems(findings)
    assert subject == "projectr R"
    assert message == (f"R does not start in the executor's environment ({PREFIX}/venv/bin/"
                       "python, the unit's environment, R_HOME=/var/lib/gear/empty-r-home): "
                       "exit 2: Fatal error: unable to open the base package")
    assert fix.startswith("apt-get install r-base-core")
