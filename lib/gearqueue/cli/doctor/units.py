"""The consumers' systemd units: installed, enabled, running, and on which code.

For each instance 1..`workers` of a job type, `systemctl show` gives LoadState
(installed), UnitFileState (enabled), ActiveState/SubState/Result and MainPID. Which
code runs is compared three ways (gearqueue.codeversion): the checkout (this code when
doctor runs from one, else the folder install.sh recorded in <prefix>/.gearqueue-install),
the package the units' python imports, and the digest each instance recorded at start
with its pid, which must be the unit's MainPID. Without systemd (PID 1 is something
else) nothing here is a finding: it is said once, as information.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ... import codeversion
from ...config import ServiceSettings, Settings
from ..scale_units import unit_prefix
from .findings import Finding, fail, info, ok

SYSTEMD_RUNNING = Path("/run/systemd/system")
INSTALL_MARK = ".gearqueue-install"
PROPERTIES = ("LoadState", "UnitFileState", "ActiveState", "SubState", "Result", "MainPID",
              "StatusText", "ExecStart", "Environment", "User", "Group")


def systemd_running() -> bool:
    return SYSTEMD_RUNNING.is_dir()


def show(unit: str) -> dict[str, str]:
    result = subprocess.run(["systemctl", "show", "--no-pager", unit,
                             *(f"--property={name}" for name in PROPERTIES)],
                            capture_output=True, text=True, timeout=30, check=False)
    values = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        values[key] = value
    return values


@dataclass(frozen=True)
class UnitCode:
    """The python a unit runs and the gearqueue package it imports."""

    python: str
    package: Path | None
    #: Environment= of the unit, as a mapping.
    environment: dict[str, str]
    #: User= and Group= of the unit (empty: root).
    user: str = ""
    group: str = ""


def unit_code(state: dict[str, str]) -> UnitCode | None:
    """From ExecStart (`{ path=... ; argv[]=PYTHON SCRIPT ... ; ... }`) and Environment."""
    exec_start = state.get("ExecStart", "")
    if "argv[]=" not in exec_start:
        return None
    argv = exec_start.split("argv[]=", 1)[1].split(" ;", 1)[0].split()
    if not argv:
        return None
    environment = dict(item.partition("=")[::2] for item in
                       shlex.split(state.get("Environment", "")) if "=" in item)
    python = argv[0]
    try:
        result = subprocess.run(
            [python, "-c", "import gearqueue, os; print(os.path.dirname(gearqueue.__file__))"],
            capture_output=True, text=True, timeout=60, check=False, cwd="/")
        package = Path(result.stdout.strip()) if result.returncode == 0 else None
    except OSError:
        package = None
    return UnitCode(python, package, environment, state.get("User", ""),
                    state.get("Group", ""))


def checkout_dir(installed: Path | None) -> Path | None:
    """The checkout's package folder: this code's, when doctor runs from a checkout;
    else the one install.sh recorded beside the units' venv."""
    here = codeversion.PACKAGE_DIR
    if here.parent.name == "lib" and (here.parent.parent / "install.sh").is_file():
        return here
    if installed is None:
        return None
    for parent in installed.parents:
        mark = parent / INSTALL_MARK
        if mark.is_file():
            for line in mark.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "source" and value.strip():
                    package = Path(value.strip()) / "lib" / "gearqueue"
                    return package if package.is_dir() else None
            return None
    return None


def check_code(settings: Settings, job_type: str, code: UnitCode) -> Iterator[Finding]:
    """Installed code against the checkout."""
    subject = f"{unit_prefix(job_type)} code"
    if code.package is None:
        yield fail(subject, f"the units' python {code.python} cannot import gearqueue",
                   "re-run install.sh (production mode) from the checkout")
        return
    installed = codeversion.code_digest(code.package)
    checkout = checkout_dir(code.package)
    if checkout is None:
        yield info(subject, f"installed code {installed} ({code.package}); no checkout "
                   "known to compare it with")
    elif checkout.resolve() == code.package.resolve():
        yield ok(subject, f"the units run the checkout itself ({code.package}), code "
                 f"{installed}")
    else:
        wanted = codeversion.code_digest(checkout)
        if wanted == installed:
            yield ok(subject, f"installed code {installed} ({code.package}) is the "
                     f"checkout's ({checkout.parent.parent})")
        else:
            yield fail(subject, f"installed code {installed} ({code.package}) differs from "
                       f"the checkout's {wanted} ({checkout.parent.parent})",
                       f"{checkout.parent.parent}/install.sh, then systemctl restart "
                       f"{unit_prefix(job_type)}.target (jobs in progress finish first)")


def check_units(settings: Settings, service: ServiceSettings
                ) -> tuple[list[Finding], UnitCode | None]:
    """Findings for instances 1..workers, and the code of the first unit (None if the
    units are not installed)."""
    prefix = unit_prefix(service.job_type)
    findings: list[Finding] = []
    if not service.workers:
        return [info(prefix, "workers = 0: no instance is meant to run")], None
    code: UnitCode | None = None
    installed_digest: str | None = None
    for number in range(1, service.workers + 1):
        unit = f"{prefix}@{number}.service"
        state = show(unit)
        if state.get("LoadState") != "loaded":
            findings.append(fail(unit, f"not installed (LoadState "
                                 f"{state.get('LoadState') or '?'})",
                                 "run install.sh (production mode) from the checkout"))
            continue
        if code is None:
            code = unit_code(state)
            if code is not None and code.package is not None:
                installed_digest = codeversion.code_digest(code.package)
        problems = []
        if state.get("UnitFileState") not in ("enabled", "enabled-runtime"):
            findings.append(fail(unit, f"not enabled ({state.get('UnitFileState')}): it "
                                 "does not start at boot",
                                 f"gearqueue scale {service.job_type} {service.workers}"))
            problems.append("enabled")
        active, sub = state.get("ActiveState"), state.get("SubState")
        # systemd keeps the last STATUS= of a stopped unit: only a live one's is news.
        status = f", STATUS {state['StatusText']!r}" if state.get("StatusText") and \
            active in ("active", "activating") else ""
        if active == "failed":
            findings.append(fail(unit, f"failed (result {state.get('Result')})",
                                 f"journalctl -u {unit} -n 50 says why; after fixing it, "
                                 f"systemctl restart {unit}"))
            continue
        if active != "active":
            findings.append(fail(unit, f"not running ({active}/{sub}{status})",
                                 f"systemctl start {unit}" if active == "inactive" else
                                 f"journalctl -u {unit} -n 50 says what it waits for"))
            continue
        findings += _check_running(settings, unit, prefix, number, state, installed_digest)
        if not problems:
            findings.append(ok(unit, f"enabled, {active}/{sub}{status}"))
    return findings, code


def _check_running(settings: Settings, unit: str, prefix: str, number: int,
                   state: dict[str, str], installed: str | None) -> list[Finding]:
    """Does the running instance run the installed code?"""
    if installed is None:
        return []
    record = codeversion.read_running_code(settings.paths.state_dir, f"{prefix}-{number}")
    restart = f"systemctl restart {unit} (its jobs in progress finish first)"
    if record is None or str(record.pid) != state.get("MainPID"):
        return [fail(unit, "runs code of unknown version: it recorded none at start "
                     "(started before an upgrade, or with another state_dir)", restart)]
    if record.digest != installed:
        return [fail(unit, f"runs code {record.digest}, not the installed {installed}: "
                     "installed after it started", restart)]
    return [ok(unit, f"runs the installed code {installed}")]


def check_started_by_hand(settings: Settings, job_type: str) -> Iterator[Finding]:
    """Without systemd: consumers of `job_type` alive now (by the records they wrote at
    start, their pid still a consumer) against this code."""
    prefix = unit_prefix(job_type)
    folder = settings.paths.state_dir / codeversion.RUNNING_DIR
    here: str | None = None
    for path in sorted(folder.glob(f"{prefix}-*.json")):
        identifier = path.stem
        record = codeversion.read_running_code(settings.paths.state_dir, identifier)
        if record is None or not _is_consumer(record.pid):
            continue
        here = here or codeversion.code_digest()
        if record.digest == here:
            yield ok(identifier, f"pid {record.pid} runs this code {here}")
        else:
            yield fail(identifier, f"pid {record.pid} runs code {record.digest} "
                       f"({record.package}), not this code {here} ({codeversion.PACKAGE_DIR})",
                       f"restart it: kill -TERM {record.pid} (it finishes its job first), "
                       f"then start it again from this checkout")


def _is_consumer(pid: int) -> bool:
    """Is `pid` alive and a consumer (a pid may have been reused since)?"""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"_consumer.py" in command or b"gearqueue" in command
