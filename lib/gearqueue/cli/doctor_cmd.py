"""`gearqueue doctor`: the broker, the queues, the limits, R, the units and their code,
checked against gear.ini (changes nothing).

Exit code 0 when there is no finding, 1 when there is one or more (each printed with
its fix); 2 for a broken gear.ini, as everywhere. `ok` and `info` lines never change
the exit code (see doctor/findings.py).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import exitcodes
from ..config import load_settings
from .doctor import diagnose


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("doctor", help="check the broker, queues, limits, R, "
                                   "units and their code against gear.ini (changes nothing; "
                                   "exit 1 if anything needs fixing)")
    parser.add_argument("job_types", metavar="TYPE", nargs="*",
                        help="job types to check (default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    findings = 0
    for finding in diagnose(settings, args.job_types or list(settings.services)):
        findings += finding.is_finding
        if args.json:
            print(json.dumps({"level": finding.level.value, "subject": finding.subject,
                              "message": finding.message, "fix": finding.fix}), flush=True)
            continue
        print(f"{finding.level.value.upper():5} {finding.subject:28} {finding.message}",
              flush=True)
        if finding.fix:
            print(f"{'':5} {'':28} fix: {finding.fix}", flush=True)
    if not args.json:
        print(f"{findings} finding(s)" if findings else "no findings", flush=True)
    return exitcodes.JOB_FAILED if findings else exitcodes.OK
