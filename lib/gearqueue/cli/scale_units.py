"""A job type's consumer instances as systemd sees them, driven through `systemctl`.

systemd names use dashes: job type `dataset_import` runs as `dataset-import-consumer@N`
instances grouped by `dataset-import-consumer.target`. An instance is enabled when its
link exists in `<target>.wants/` (what `systemctl enable` writes, from the unit's
WantedBy=), so the target pulls it in at boot without listing it.

Scaling to N means: instances 1..N enabled and started, every other one (N+1.., or an
odd name such as @test) stopped and disabled; failure states are reset.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, SystemctlFailed, SystemdUnavailable
from ..jobtypes import JOB_TYPES

#: Where `systemctl enable` writes the links of units installed in /etc/systemd/system.
UNIT_DIR = Path("/etc/systemd/system")
SYSTEMCTL_TIMEOUT = 600.0


def job_type_of(name: str) -> str:
    """`dataset-import`, `dataset_import` or `dataset-import-consumer` -> `dataset_import`."""
    job_type = name.removesuffix("-consumer").replace("-", "_")
    if job_type not in JOB_TYPES:
        raise ConfigError(f"unknown job type '{name}' (known: "
                          f"{', '.join(t.replace('_', '-') for t in JOB_TYPES)})")
    return job_type


def unit_prefix(job_type: str) -> str:
    return f"{job_type.replace('_', '-')}-consumer"


def systemctl(*args: str) -> str:
    """Run systemctl; SystemctlFailed (with its stderr) if it fails."""
    if not Path("/run/systemd/system").is_dir():
        raise SystemdUnavailable("systemd is not running here (PID 1 is not systemd): "
                                 "consumers are started by hand or by your supervisor")
    try:
        result = subprocess.run(["systemctl", "--no-pager", *args], capture_output=True,
                                text=True, timeout=SYSTEMCTL_TIMEOUT)
    except FileNotFoundError:
        raise SystemdUnavailable("systemctl is not installed") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise SystemctlFailed(f"systemctl {' '.join(args)} failed: {detail}")
    return result.stdout


@dataclass(frozen=True)
class ScalePlan:
    wanted: tuple[str, ...]
    enable: tuple[str, ...]
    disable: tuple[str, ...]
    stop: tuple[str, ...]


def _instance_order(unit: str) -> tuple[int, str]:
    instance = unit.partition("@")[2].removesuffix(".service")
    return (int(instance), "") if instance.isdigit() else (1 << 30, instance)


class Instances:
    """The instances of one job type."""

    def __init__(self, job_type: str, unit_dir: Path = UNIT_DIR) -> None:
        self.job_type = job_type
        self.prefix = unit_prefix(job_type)
        self.target = f"{self.prefix}.target"
        self.unit_dir = unit_dir
        self._pattern = re.compile(rf"^{re.escape(self.prefix)}@[^.]+\.service$")

    def unit(self, number: int) -> str:
        return f"{self.prefix}@{number}.service"

    def enabled(self) -> set[str]:
        wants = self.unit_dir / f"{self.target}.wants"
        return {link.name for link in wants.glob(f"{self.prefix}@*.service")
                if self._pattern.match(link.name)}

    def loaded(self) -> set[str]:
        """Instances systemd has loaded: running, failed, or merely referenced."""
        text = systemctl("list-units", "--all", "--plain", "--no-legend", "--full",
                         f"{self.prefix}@*.service")
        names = set()
        for line in text.splitlines():
            fields = [field for field in line.split() if field != "●"]
            if fields and self._pattern.match(fields[0]):
                names.add(fields[0])
        return names

    def plan(self, count: int, enabled: set[str], loaded: set[str]) -> ScalePlan:
        wanted = tuple(self.unit(number) for number in range(1, count + 1))
        surplus = (enabled | loaded) - set(wanted)
        return ScalePlan(
            wanted=wanted,
            enable=tuple(unit for unit in wanted if unit not in enabled),
            disable=tuple(sorted(enabled - set(wanted), key=_instance_order)),
            stop=tuple(sorted(surplus, key=_instance_order)))

    def apply(self, plan: ScalePlan, *, block: bool = True, start: bool = True) -> None:
        """Enable/disable, stop the surplus, then start the wanted ones (and the target).

        With block=False (gear-scale@.service, which runs inside a start of the target)
        the jobs are only queued, and the target is not started again.
        """
        wait = () if block else ("--no-block",)
        if plan.enable:
            systemctl("enable", *plan.enable)
        if plan.disable:
            systemctl("disable", *plan.disable)
        if plan.stop:
            systemctl("stop", *wait, *plan.stop)
        # A failed (or start-limited) instance starts again only once its failure is reset.
        systemctl("reset-failed", f"{self.prefix}@*.service")
        if start and plan.wanted:
            systemctl("start", *wait, *((self.target,) if block else ()), *plan.wanted)
