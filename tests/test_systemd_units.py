"""The unit files in systemd/ and the pieces of `gearqueue scale` that need no systemd.

What they do under a real systemd is tests/test_systemd_fleet.py; here: the four
consumer templates stay one template, placeholders are exactly what install.sh fills,
the restart policy matches the exit codes, and gear.ini edits keep the operator's file.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gearqueue import exitcodes
from gearqueue.cli import scale_inifile
from gearqueue.cli.scale_units import Instances, job_type_of
from gearqueue.config import load_settings
from gearqueue.errors import ConfigError
from gearqueue.jobtypes import JOB_TYPES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"


def template(job_type: str) -> str:
    return (UNITS / f"{job_type.replace('_', '-')}-consumer@.service").read_text()


def settings_of(unit: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("job_type", [t for t in JOB_TYPES if t != "echo"])
def test_each_consumer_template_is_the_echo_template_with_its_own_type(job_type: str) -> None:
    name = job_type.replace("_", "-")
    as_echo = template(job_type)
    for own, echo in ((f"{job_type}_consumer.py", "echo_consumer.py"),
                      (f"gear-scale@{name}", "gear-scale@echo"),
                      (f"{name}-consumer", "echo-consumer"),
                      (f"gearqueue {name} consumer", "gearqueue echo consumer"),
                      (f"one {name} consumer", "one echo consumer")):
        as_echo = as_echo.replace(own, echo)
    assert as_echo == template("echo")


def test_every_job_type_has_a_template_and_a_target_in_the_group() -> None:
    for job_type in JOB_TYPES:
        name = job_type.replace("_", "-")
        target = (UNITS / f"{name}-consumer.target").read_text()
        assert "PartOf=gear-consumers.target" in target
        assert "WantedBy=gear-consumers.target" in target
        assert f"Wants=gear-scale@{name}.service" in target
        unit = settings_of(template(job_type))
        assert unit["PartOf"] == unit["WantedBy"] == [f"{name}-consumer.target"]
        assert unit["SyslogIdentifier"] == [f"{name}-consumer-%i"]


def test_placeholders_are_exactly_the_ones_install_sh_fills() -> None:
    used = set()
    for path in UNITS.iterdir():
        used |= set(re.findall(r"@GEAR_[A-Z_]+@", path.read_text()))
    filled = set(re.findall(r"s\|(@GEAR_[A-Z_]+@)\|", (ROOT / "install.sh").read_text()))
    assert used == filled == {"@GEAR_PREFIX@", "@GEAR_CONFIG@", "@GEAR_RW_PATHS@"}


def test_the_restart_policy_matches_the_consumers_exit_codes_and_stop_signals() -> None:
    unit = settings_of(template("projectr"))
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == [str(exitcodes.CONFIG)]
    # SIGTERM to the consumer only (it finishes its job; the executor ignores SIGTERM).
    assert unit["KillMode"] == ["mixed"]
    assert int(unit["TimeoutStopSec"][0]) >= 300
    assert int(unit["WatchdogSec"][0]) >= 30  # longer than a connect attempt blocks
    assert unit["User"] == ["gear"] and unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == ["@GEAR_RW_PATHS@"]


# --- gear.ini edits ------------------------------------------------------------------------


def test_setting_workers_in_the_commented_example_keeps_every_comment(tmp_path: Path) -> None:
    path = tmp_path / "gear.ini"
    shutil.copy(ROOT / "gear.ini.example", path)
    path.chmod(0o640)
    original = path.read_text().splitlines()
    scale_inifile.set_value(path, "projectr_service", "workers", "4")
    edited = path.read_text().splitlines()
    assert [line for line in edited if line not in original] == ["workers = 4"]
    assert len(edited) == len(original) + 1
    assert edited[edited.index("workers = 4") - 1].startswith("; workers =")
    settings = load_settings(path)
    assert settings.service("projectr").workers == 4
    assert settings.service("echo").workers == 2
    assert path.stat().st_mode & 0o777 == 0o640


def test_setting_a_key_replaces_its_active_line_or_adds_the_section(tmp_path: Path) -> None:
    path = tmp_path / "gear.ini"
    path.write_text("[echo_service]\nworkers = 2 ; two\nprefetch = 3\n[paths]\n")
    scale_inifile.set_value(path, "echo_service", "workers", "0")
    scale_inifile.set_value(path, "export_service", "workers", "5")
    assert path.read_text() == ("[echo_service]\nworkers = 0\nprefetch = 3\n[paths]\n"
                                "\n[export_service]\nworkers = 5\n")


# --- scale plans -----------------------------------------------------------------------------


def test_a_scale_plan_enables_the_first_n_and_stops_every_other_instance() -> None:
    instances = Instances("dataset_import")
    unit = instances.unit
    plan = instances.plan(3, enabled={unit(1), unit(2), unit(5)},
                          loaded={unit(1), unit(2), unit(5), unit(7),
                                  "dataset-import-consumer@test.service"})
    assert plan.wanted == (unit(1), unit(2), unit(3))
    assert plan.enable == (unit(3),)
    assert plan.disable == (unit(5),)
    assert plan.stop == (unit(5), unit(7), "dataset-import-consumer@test.service")


def test_scaling_to_zero_disables_and_stops_everything() -> None:
    instances = Instances("echo")
    plan = instances.plan(0, enabled={instances.unit(1), instances.unit(2)},
                          loaded={instances.unit(2)})
    assert plan.wanted == plan.enable == ()
    assert plan.disable == plan.stop == (instances.unit(1), instances.unit(2))


def test_job_types_are_named_as_in_systemd_or_as_in_gear_ini() -> None:
    assert job_type_of("dataset-import") == job_type_of("dataset_import") == "dataset_import"
    assert job_type_of("projectr-consumer") == "projectr"
    with pytest.raises(ConfigError, match="unknown job type 'nope'"):
        job_type_of("nope")
