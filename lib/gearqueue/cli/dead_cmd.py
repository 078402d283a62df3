"""`gearqueue dead list|show|replay|purge`: the dead-letter queues (issue 5).

Thin on purpose: the AMQP work, and the rule that nothing is removed before it is
safely elsewhere, live in gearqueue.cli.dead_letters.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from .. import exitcodes, message
from ..config import load_settings
from ..jobtypes import JOB_TYPES
from .dead_letters import DeadLetter, DeadQueue

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '2h', '7d', '1w' -> seconds."""
    match = DURATION.match(text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 7d)")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


def register(subparsers: Any) -> None:
    dead = subparsers.add_parser("dead", help="inspect, replay or purge dead-lettered jobs")
    commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="dead jobs: id, error, attempts, age")
    listing.add_argument("job_type", metavar="TYPE", choices=JOB_TYPES)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=run_list)

    show = commands.add_parser("show", help="one dead job: headers, body, traceback")
    show.add_argument("job_type", metavar="TYPE", choices=JOB_TYPES)
    show.add_argument("job_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="as one JSON object")
    show.set_defaults(run=run_show)

    replay = commands.add_parser(
        "replay", help="republish dead jobs to their queue with their attempts reset "
        "(each removed from the dead queue only once the broker confirmed its copy)")
    replay.add_argument("job_type", metavar="TYPE", choices=JOB_TYPES)
    replay.add_argument("job_ids", metavar="ID", nargs="*", help="job ids to replay")
    replay.add_argument("--all", action="store_true", help="every dead job of TYPE")
    replay.set_defaults(run=run_replay)

    purge = commands.add_parser("purge", help="delete dead jobs for good")
    purge.add_argument("job_type", metavar="TYPE", choices=JOB_TYPES)
    purge.add_argument("--older-than", type=parse_duration, metavar="DURATION",
                       help="only those dead for longer (e.g. 7d, 12h, 30m)")
    purge.set_defaults(run=run_purge)


def _queue(args: argparse.Namespace) -> DeadQueue:
    return DeadQueue(load_settings(args.config), args.job_type)


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def summary(letter: DeadLetter) -> dict[str, Any]:
    return {"job_id": letter.job_id, "error_class": letter.error_class,
            "error": letter.error_message, "attempts": letter.attempts,
            "failed_at": letter.failed_at, "age_seconds": letter.age()}


def run_list(args: argparse.Namespace) -> int:
    letters = _queue(args).letters()
    if args.json:
        for letter in letters:
            print(json.dumps(summary(letter)))
        return exitcodes.OK
    print(f"{'ID':34} {'ATTEMPTS':>8} {'AGE':>5}  ERROR")
    for letter in letters:
        error = f"{letter.error_class or '?'}: {letter.error_message}".replace("\n", " ")
        attempts = "?" if letter.attempts is None else str(letter.attempts)
        print(f"{letter.job_id:34} {attempts:>8} {human_age(letter.age()):>5}  "
              f"{error[:100]}")
    print(f"({len(letters)} dead)", file=sys.stderr)
    return exitcodes.OK


def run_show(args: argparse.Namespace) -> int:
    letter = _queue(args).show(args.job_id)
    headers = {key: value if isinstance(value, (int, float, str, bool, type(None)))
               else str(value) for key, value in sorted(letter.headers.items())}
    if args.json:
        print(json.dumps({**summary(letter), "headers": headers, "body": letter.payload(),
                          "traceback": letter.traceback}))
        return exitcodes.OK
    print(f"job {letter.job_id} (dead {human_age(letter.age())} ago)")
    print("headers:")
    for key, value in headers.items():
        if key != message.TRACEBACK:
            print(f"  {key}: {value}")
    print("body:")
    body = letter.payload()
    print("  " + (json.dumps(body, indent=2).replace("\n", "\n  ")
                  if not isinstance(body, str) else body))
    print("traceback:")
    print("  " + (letter.traceback.rstrip().replace("\n", "\n  ") or "(none)"))
    return exitcodes.OK


def run_replay(args: argparse.Namespace) -> int:
    if args.all == bool(args.job_ids):
        print("gearqueue: dead replay: give job ids or --all (not both)", file=sys.stderr)
        return exitcodes.CONFIG
    report = _queue(args).replay(None if args.all else args.job_ids)
    for job_id in report.replayed:
        print(f"replayed {job_id}")
    for job_id in report.missing:
        print(f"gearqueue: not in the dead queue: {job_id}", file=sys.stderr)
    print(f"({len(report.replayed)} replayed)", file=sys.stderr)
    return exitcodes.CONFIG if report.missing else exitcodes.OK


def run_purge(args: argparse.Namespace) -> int:
    removed, kept = _queue(args).purge(args.older_than)
    for job_id in removed:
        print(f"purged {job_id}")
    print(f"({len(removed)} purged, {kept} kept)", file=sys.stderr)
    return exitcodes.OK
