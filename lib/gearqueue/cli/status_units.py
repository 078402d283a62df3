"""What systemd says of a job type's consumer units, for `gearqueue status`.

`systemctl show` of every loaded `<type>-consumer@*.service`: running ones, and failed
ones too (a failed unit stays loaded until `reset-failed`), with the STATUS= line the
consumer last sent. None when systemd does not run this host (no /run/systemd/system)
or systemctl cannot answer: status then goes by the broker and the status files alone.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..jobtypes import JOB_TYPES

SYSTEMD_RUNNING = Path("/run/systemd/system")
PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "StatusText", "MainPID",
              "Result", "NRestarts", "ActiveEnterTimestamp")


@dataclass(frozen=True)
class UnitState:
    unit: str
    job_type: str
    instance: str
    active: str
    sub: str
    status_text: str
    main_pid: int
    result: str
    restarts: int
    active_since: str

    @property
    def failed(self) -> bool:
        return self.active == "failed"


def unit_prefix(job_type: str) -> str:
    return f"{job_type.replace('_', '-')}-consumer@"


def consumer_units(job_types: tuple[str, ...] = JOB_TYPES, timeout: float = 10.0
                   ) -> dict[str, list[UnitState]] | None:
    """{job type: its loaded consumer units, by instance}, or None without systemd."""
    if not SYSTEMD_RUNNING.is_dir() or not shutil.which("systemctl"):
        return None
    patterns = [f"{unit_prefix(job_type)}*.service" for job_type in job_types]
    try:
        result = subprocess.run(
            ["systemctl", "show", "--no-pager", *(f"--property={p}" for p in PROPERTIES),
             "--", *patterns],
            capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0 and not result.stdout:
        return None
    units: dict[str, list[UnitState]] = {job_type: [] for job_type in job_types}
    for block in result.stdout.split("\n\n"):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        unit = _unit_of(values, job_types)
        if unit is not None:
            units[unit.job_type].append(unit)
    for found in units.values():
        found.sort(key=lambda unit: _instance_order(unit.instance))
    return units


def _unit_of(values: dict[str, str], job_types: tuple[str, ...]) -> UnitState | None:
    name = values.get("Id", "")
    if values.get("LoadState") != "loaded":
        return None
    for job_type in job_types:
        prefix = unit_prefix(job_type)
        if name.startswith(prefix) and name.endswith(".service"):
            return UnitState(
                unit=name, job_type=job_type, instance=name[len(prefix):-len(".service")],
                active=values.get("ActiveState", ""), sub=values.get("SubState", ""),
                status_text=values.get("StatusText", ""),
                main_pid=_number(values.get("MainPID")), result=values.get("Result", ""),
                restarts=_number(values.get("NRestarts")),
                active_since=values.get("ActiveEnterTimestamp", ""))
    return None


def _number(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


def _instance_order(instance: str) -> tuple[int, str]:
    return (int(instance), "") if instance.isdigit() else (1 << 30, instance)
