"""`gearqueue events [PATTERN]`: tail the events of finished jobs (worker/events.py).

An exclusive, auto-delete, server-named queue is bound to `[rabbitmq] events_exchange`
with the pattern (topic syntax: `echo.*`, `*.dead_lettered`, `#` for all), so the tail
sees what is published from the moment it is bound, and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import exitcodes
from ..broker import close_quietly, connect, converted_errors
from ..config import Settings, load_settings
from ..errors import ConfigError
from ..topology import declare_events_exchange


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("events", help="tail the events of finished jobs")
    parser.add_argument("pattern", nargs="?", default="#",
                        help="routing key pattern <job_type>.<succeeded|failed|"
                             "dead_lettered>; * is one word, # any (default: #)")
    parser.add_argument("--json", action="store_true", help="each event's JSON, one a line")
    parser.add_argument("--count", type=int, default=0,
                        help="exit after this many events (default: run until Ctrl-C)")
    parser.set_defaults(run=run)


def describe(routing_key: str, body: bytes) -> str:
    """One line for an event: when, what, which job, which attempt, how long, where."""
    try:
        event = json.loads(body)
        line = (f"{event['time']} {routing_key:28} job {event['job_id']} attempt "
                f"{event['attempt']} {event['duration'] * 1000:.0f} ms on "
                f"{event['host']}/{event['instance']}")
    except (ValueError, KeyError, TypeError):
        return f"{routing_key} (not a gearqueue event: {body[:120]!r})"
    if event.get("replayed"):
        line += " (replayed)"
    error = event.get("error")
    if isinstance(error, dict):
        line += f": {error.get('class')}: {error.get('message')}"
    return line


def _job_type_of(pattern: str, settings: Settings) -> str:
    """The job type whose broker to use: the pattern's first word, if it names one."""
    first = pattern.split(".", 1)[0]
    return first if first in settings.services else next(iter(settings.services))


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    exchange = settings.rabbitmq.events_exchange
    if not exchange:
        raise ConfigError("events are off (empty): nothing to tail", path=str(settings.source),
                          section="rabbitmq", key="events_exchange")
    connection = connect(settings, _job_type_of(args.pattern, settings), "gearqueue-events")
    seen = 0
    try:
        with converted_errors(f"tailing '{exchange}'"):
            channel = connection.channel()
            declare_events_exchange(channel, exchange)
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, exchange, routing_key=args.pattern)
            print(f"gearqueue: tailing '{exchange}' for '{args.pattern}' (Ctrl-C to stop)",
                  file=sys.stderr, flush=True)
            for method, _properties, body in channel.consume(queue, auto_ack=True):
                print(body.decode(errors="replace") if args.json
                      else describe(method.routing_key or "", body), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        close_quietly(connection)
    return exitcodes.OK
