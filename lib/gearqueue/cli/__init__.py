"""The `gearqueue` command. Each subcommand lives in its own module (`<name>_cmd.py`) with
`register()`; what only that command uses sits beside it as `<name>_<what>.py`.

Exit codes are gearqueue.exitcodes: 0 ok, 1 job failed, 2 usage or config error,
3 timeout, 4 broker unavailable. Errors are handled here, once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .. import exitcodes
from ..errors import (
    BrokerDown,
    BrokerUnavailable,
    ConfigError,
    GearError,
    InvalidMessage,
    ReplyTimeout,
    UnknownJob,
)
from ..log import setup_logging
from . import (
    config_cmd,
    dead_cmd,
    doctor_cmd,
    events_cmd,
    jobs_cmd,
    queues_cmd,
    scale_cmd,
    state_cmd,
    watch_cmd,
)

#: Subcommand modules; each has register(subparsers) adding parsers with a `run` default.
COMMAND_MODULES = (config_cmd, jobs_cmd, watch_cmd, queues_cmd, events_cmd, dead_cmd, doctor_cmd,
                   scale_cmd, state_cmd)

Runner = Callable[[argparse.Namespace], int]

#: How an error ends the command: the first entry whose class matches gives the exit
#: code and the words before the message; anything else is a failure (exit 1).
ERROR_EXITS: tuple[tuple[type[GearError] | tuple[type[GearError], ...], int, str], ...] = (
    (ConfigError, exitcodes.CONFIG, "configuration error: "),
    ((InvalidMessage, UnknownJob), exitcodes.CONFIG, ""),
    (ReplyTimeout, exitcodes.TIMEOUT, "timeout: "),
    (BrokerDown, exitcodes.BROKER_UNAVAILABLE, "broker down: "),
    (BrokerUnavailable, exitcodes.BROKER_UNAVAILABLE, "broker unavailable: "),
)


def _exit_for(error: GearError) -> tuple[int, str]:
    for classes, code, prefix in ERROR_EXITS:
        if isinstance(error, classes):
            return code, prefix
    return exitcodes.JOB_FAILED, f"{type(error).__name__}: "


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gearqueue",
                                     description="Operate gearqueue job queues and workers.")
    parser.add_argument("--config", help="gear.ini (default: $GEAR_INI, ./gear.ini, "
                        "/etc/gear/gear.ini)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging("gearqueue", level="WARNING")
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # its errors reach us as ours
    run: Runner = args.run
    try:
        return run(args)
    except BrokenPipeError:  # e.g. `gearqueue check-config | head`
        return exitcodes.OK
    except GearError as error:
        code, prefix = _exit_for(error)
        print(f"gearqueue: {prefix}{error}", file=sys.stderr)
        return code
    finally:
        logging.shutdown()
