"""Do R, limma and rpy2 load where the executor runs ProjectR jobs?

The check starts a child as the consumer starts its executor: the same python (under
systemd, the one in the unit's ExecStart; else this one) with the same environment
(the unit's Environment= lines over ours; else ours) and, when doctor runs as root,
as the unit's User=/Group= (setpriv), and runs rprobe.py in it, which loads rpy2,
starts R, loads limma and nnls and starts ProjectR's R engine. A failure names what did
not load and how to install it. The unit's sandbox (MemoryDenyWriteExecute, ...) is
not reproduced: rpy2's API mode, which install.sh builds, needs none of what it forbids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .findings import Finding, fail, info, ok
from .units import UnitCode

PROBE = Path(__file__).with_name("rprobe.py")
PROBE_TIMEOUT = 120.0
#: The job types whose executor starts R.
R_JOB_TYPES = ("projectr",)

FIXES = {
    "rpy2": "re-run install.sh: it builds rpy2 from source in API mode into the venv "
            "(needs r-base-dev: apt-get install r-base-dev)",
    "R": "apt-get install r-base-core, and let R_HOME be R's home (/usr/lib/R; the units "
         "set Environment=R_HOME=/usr/lib/R)",
    "limma": "apt-get install r-bioc-limma",
    "nnls": "apt-get install r-cran-nnls",
    "engine": "re-run install.sh, so the venv's gearqueue is whole (see the message)",
}


def probe_r(python: str, environ: Mapping[str, str], where: str,
            as_user: Sequence[str] = ()) -> Iterator[Finding]:
    subject = "projectr R"
    try:
        result = subprocess.run([*as_user, python, str(PROBE)], capture_output=True, text=True,
                                timeout=PROBE_TIMEOUT, env=dict(environ), check=False,
                                cwd="/")
    except (OSError, subprocess.TimeoutExpired) as error:
        yield fail(subject, f"the executor's python {python} could not be run: {error}",
                   "re-run install.sh (it makes the venv)")
        return
    steps = {}
    for line in result.stdout.splitlines():
        try:
            step = json.loads(line)
            steps[step["step"]] = step
        except (ValueError, KeyError, TypeError):
            continue
    r_home = environ.get("R_HOME", "unset")
    if "R-starting" in steps and "R" not in steps:
        # R ended the process while starting (an R fatal error): its last words say why.
        last = [line for line in result.stderr.strip().splitlines() if line.strip()][-1:]
        yield fail(subject, f"R does not start in the executor's environment ({where}, "
                   f"R_HOME={r_home}): exit {result.returncode}: "
                   f"{last[0] if last else 'no message'}", FIXES["R"])
        return
    failed = [step for step in steps.values() if not step["ok"]]
    for step in failed:
        name = step["step"]
        what = {"rpy2": "rpy2 does not import", "R": "R does not start",
                "limma": "R package limma does not load",
                "nnls": "R package nnls does not load",
                "engine": "ProjectR's R engine does not start"}.get(name, name)
        detail = f": {step['detail']}" if step["detail"] else ""
        yield fail(subject, f"{what} in the executor's environment ({where}, "
                   f"R_HOME={r_home}){detail}", FIXES.get(name, FIXES["engine"]))
    if failed:
        return
    if result.returncode != 0 or "engine" not in steps:
        tail = result.stderr.strip().splitlines()[-1:]
        yield fail(subject, f"the R check ended with exit {result.returncode} in the "
                   f"executor's environment ({where}): {tail[0] if tail else 'no message'}",
                   FIXES["engine"])
        return
    yield ok(subject, f"rpy2, {steps['R']['detail']}, limma and nnls load in the "
             f"executor's environment ({where}); {steps['engine']['detail']}")


def check_r(job_type: str, unit: UnitCode | None, environ: Mapping[str, str] = os.environ
            ) -> Iterator[Finding]:
    """The R check of `job_type`, as its executor would load R."""
    if job_type not in R_JOB_TYPES:
        return
    if unit is None:
        yield from probe_r(sys.executable, environ, f"{sys.executable}, this environment")
        return
    if not Path(unit.python).exists():
        yield fail("projectr R", f"the units' python {unit.python} does not exist",
                   "re-run install.sh (production mode)")
        return
    as_user: list[str] = []
    whom = ""
    if unit.user and os.geteuid() == 0:
        as_user = ["setpriv", f"--reuid={unit.user}", f"--regid={unit.group or unit.user}",
                   "--init-groups", "--"]
        whom = f" as user {unit.user}"
    yield info("projectr R", f"checked with the unit's python {unit.python} and its "
               f"Environment= lines{whom}")
    yield from probe_r(unit.python, {**environ, **unit.environment},
                       f"{unit.python}, the unit's environment", as_user)
