"""`gearqueue submit` and `gearqueue ping`: jobs from the command line.

`submit --wait` waits for the reply as `Client.call` does (through the broker, or
in-process with queueing off) and meanwhile shows the job's progress from its state
record on stderr (cli/progress_follow.py): stdout holds only the reply.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

from .. import exitcodes
from ..client import Client
from ..config import load_settings
from ..errors import InvalidMessage
from ..jobtypes import JOB_TYPES
from ..state import open_store
from .progress_follow import Follower
from .progress_view import AUTO, MODES, view_for


def register(subparsers: Any) -> None:
    submit = subparsers.add_parser("submit", help="submit a job; with --wait print its reply")
    submit.add_argument("job_type", metavar="TYPE", choices=JOB_TYPES)
    submit.add_argument("--json", required=True, dest="payload", help="the job's JSON body")
    submit.add_argument("--wait", action="store_true", help="wait for and print the reply")
    submit.add_argument("--timeout", type=float, help="seconds to wait (default: "
                        "reply_timeout of the job type)")
    submit.add_argument("--job-id", help="a job id of your own (default: random)")
    submit.add_argument("--progress", choices=MODES, default=AUTO,
                        help="with --wait: a bar, plain lines, or off (default: a bar on "
                        "a terminal, else plain lines; on stderr)")
    submit.set_defaults(run=run_submit)

    ping = subparsers.add_parser("ping", help="an echo round trip through the queue")
    ping.add_argument("--timeout", type=float, default=10.0)
    ping.add_argument("--count", type=int, default=1)
    ping.set_defaults(run=run_ping)


def run_submit(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as error:
        raise InvalidMessage(f"--json is not JSON: {error}") from None
    settings = load_settings(args.config)
    with Client(settings) as client:
        if not args.wait:
            job_id = client.submit(args.job_type, payload, job_id=args.job_id)
            print(json.dumps({"job_id": job_id}))
            return exitcodes.OK
        job_id = args.job_id or uuid.uuid4().hex  # known before the call, to follow it
        store = open_store(settings, args.job_type)
        try:
            with Follower(store, job_id, view_for(job_id, args.progress)):
                reply = client.call(args.job_type, payload, timeout=args.timeout,
                                    job_id=job_id)
        finally:
            store.close()
    print(json.dumps(reply))
    return exitcodes.OK if reply.get("success", 0) > 0 else exitcodes.JOB_FAILED


def run_ping(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    with Client(settings, name="gearqueue-ping") as client:
        for _ in range(args.count):
            started = time.perf_counter()
            reply = client.call("echo", {"data": "ping"}, timeout=args.timeout)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if reply.get("echo") != "ping":
                print(f"unexpected reply: {json.dumps(reply)}", file=sys.stderr)
                return exitcodes.JOB_FAILED
            print(f"pong from echo in {elapsed_ms:.2f} ms")
    return exitcodes.OK
