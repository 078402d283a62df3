"""`gearqueue doctor`: broker reachable, queues as configured, limits the broker allows.

Exit code 0 when nothing failed (warnings are printed, not fatal), 1 when a check
failed; 2 for a broken gear.ini, as everywhere.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import exitcodes
from ..config import load_settings
from .doctor_checks import Level, diagnose


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("doctor", help="check the broker, the queues and the "
                                   "limits against gear.ini (changes nothing)")
    parser.add_argument("job_types", metavar="TYPE", nargs="*",
                        help="job types to check (default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    failed = False
    for finding in diagnose(settings, args.job_types or list(settings.services)):
        failed |= finding.level is Level.FAIL
        if args.json:
            print(json.dumps({"level": finding.level.value, "subject": finding.subject,
                              "message": finding.message}))
        else:
            print(f"{finding.level.value.upper():5} {finding.subject:28} {finding.message}",
                  flush=True)
    return exitcodes.JOB_FAILED if failed else exitcodes.OK
