"""`gearqueue watch JOB_ID`: follow a job submitted elsewhere until it ends.

Reads the job-state store (as `Client.status` does): queued, running with its progress,
retrying, and at the end the reply, on stdout, with the exit code `submit --wait` would
have given (0 success, 1 failed). The progress goes to stderr (cli/progress_view.py).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import exitcodes
from ..config import Settings, load_settings
from ..errors import UnknownJob
from ..message import SAFE_ID
from ..state import JobRecord, StateStore, open_store
from .progress_follow import POLL, follow_to_end
from .progress_view import AUTO, MODES, view_for


def register(subparsers: Any) -> None:
    watch = subparsers.add_parser("watch", help="follow a job's progress until it ends; "
                                  "print its reply")
    watch.add_argument("job_id", metavar="JOB_ID")
    watch.add_argument("--type", dest="job_type", help="its job type (default: look in "
                       "every configured type's state store)")
    watch.add_argument("--timeout", type=float, help="give up after this many seconds "
                       "(exit 3; default: wait until it ends)")
    watch.add_argument("--progress", choices=MODES, default=AUTO,
                       help="bar, plain lines, or off (default: a bar on a terminal)")
    watch.add_argument("--interval", type=float, default=POLL, help=argparse.SUPPRESS)
    watch.set_defaults(run=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    if not SAFE_ID.match(args.job_id):
        raise UnknownJob(f"job id {args.job_id!r} is not a safe id")
    settings = load_settings(args.config)
    store = find_store(settings, args.job_id, args.job_type)
    try:
        record = follow_to_end(store, args.job_id, view_for(args.job_id, args.progress),
                               timeout=args.timeout, poll=args.interval)
    finally:
        store.close()
    reply = reply_of(record)
    print(json.dumps(reply))
    return exitcodes.OK if reply.get("success", 0) > 0 else exitcodes.JOB_FAILED


def find_store(settings: Settings, job_id: str, job_type: str | None) -> StateStore:
    """The store of `job_type`, else of the configured type that has a record of the job."""
    types = [job_type] if job_type else list(settings.services)
    for name in types:
        store = open_store(settings, name)
        if store.get(job_id) is not None:
            return store
        store.close()
    raise UnknownJob(f"no state recorded for job '{job_id}' in the state store of "
                     + (f"job type {job_type}" if job_type else
                        f"any configured job type ({', '.join(types)})"))


def reply_of(record: JobRecord) -> dict[str, Any]:
    """What the job replied (its stored result); for a publish the broker refused,
    which has none, its error as a failure reply."""
    if record.result is not None:
        return record.result
    error = record.error or {}
    return {"success": -1, "message": error.get("message") or f"job {record.status.value}"}
