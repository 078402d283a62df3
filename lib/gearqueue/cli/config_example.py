"""Render gear.ini.example from the key table in `defaults.py`.

The committed gear.ini.example is this rendering (a test keeps them equal), so the
example can never drift from what the code accepts.
"""

from __future__ import annotations

import textwrap

from ..defaults import (
    METRICS_KEYS,
    PATH_KEYS,
    RABBITMQ_KEYS,
    SERVICE_KEYS,
    STATE_KEYS,
    STATUS_KEYS,
    Key,
)
from ..jobtypes import JOB_TYPES

HEADER = """\
; gear.ini - gearqueue configuration. Every key is listed, commented out, with its
; default; uncomment what you change. Values are literal (no % interpolation).
; Looked for in: --config PATH, $GEAR_INI, ./gear.ini, /etc/gear/gear.ini.
; Unknown sections or keys are errors: `gearqueue check-config` validates this file.
"""


def _value(key: Key, job_type: str | None) -> str:
    default = key.default
    if default is None:  # follows another key (its doc says which)
        return ""
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, str) and job_type:
        return default.format(job_type=job_type)
    return str(default)


def _section(name: str, keys: tuple[Key, ...], job_type: str | None = None,
             intro: str | None = None) -> list[str]:
    lines = [f"[{name}]"]
    if intro:
        lines += [f"; {line}" for line in textwrap.wrap(intro, 86)]
    for key in keys:
        lines += [f"; {line}" for line in textwrap.wrap(key.doc, 86)]
        lines.append(f"; {key.name} = {_value(key, job_type)}")
    return [*lines, ""]


def render_example() -> str:
    lines = [HEADER]
    lines += _section("rabbitmq", RABBITMQ_KEYS)
    lines += _section("paths", PATH_KEYS)
    lines += _section("state", STATE_KEYS)
    lines += _section("metrics", METRICS_KEYS)
    lines += _section("status", STATUS_KEYS)
    for job_type in JOB_TYPES:
        lines += _section(f"{job_type}_service", SERVICE_KEYS, job_type,
                          intro=f"The {job_type} job type (queue {job_type}_jobs).")
    return "\n".join(lines).rstrip() + "\n"
