"""`gearqueue scale TYPE [N]`: enable and start, or stop and disable, consumer instances.

gear.ini is the one source of truth for how many instances run: `scale TYPE N` saves N
as the type's `workers` and applies it at once; `scale TYPE` applies what gear.ini says
(0 when queue_enabled = 0, since the web API then runs the jobs itself). The latter is
what gear-scale@TYPE.service runs each time TYPE-consumer.target starts or restarts, so
editing gear.ini and restarting the target has the same effect.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import exitcodes
from ..config import load_settings, service_section
from ..errors import ConfigError
from . import scale_inifile
from .scale_units import Instances, job_type_of


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "scale", help="run N consumer instances of a job type (systemd; saved in gear.ini)")
    parser.add_argument("job_type", metavar="TYPE",
                        help="projectr, dataset-import, export or echo")
    parser.add_argument("count", metavar="N", nargs="?", type=_count,
                        help="instances wanted, saved as the type's `workers` in gear.ini "
                        "(default: apply gear.ini's workers; 0 if queue_enabled = 0)")
    parser.add_argument("--no-block", action="store_true",
                        help="queue the starts and stops without waiting for them "
                        "(gear-scale@.service runs inside a start of the target)")
    parser.add_argument("--no-start", action="store_true",
                        help="enable and disable only (and stop surplus instances); start "
                        "nothing (install.sh)")
    parser.set_defaults(run=run)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("N must be 0 or more")
    return value


def run(args: argparse.Namespace) -> int:
    job_type = job_type_of(args.job_type)
    settings = load_settings(args.config)
    service = settings.service(job_type)
    section = service_section(job_type)
    if args.count is None:
        count = service.workers if service.queue_enabled else 0
        if not service.queue_enabled:
            print(f"{job_type}: queue_enabled = 0, so no consumers (the web API runs "
                  "these jobs in its own process)")
    else:
        count = args.count
        if count and not service.queue_enabled:
            raise ConfigError("queueing is off for this type, so consumers would get no "
                              "jobs; set queue_enabled = 1 first", path=str(settings.source),
                              section=section, key="queue_enabled")
        if count != service.workers:
            scale_inifile.set_value(settings.source, section, "workers", str(count))
            load_settings(settings.source)  # the edit must leave a valid file
            print(f"{job_type}: workers = {count} saved in {settings.source}")

    instances = Instances(job_type)
    plan = instances.plan(count, instances.enabled(), instances.loaded())
    instances.apply(plan, block=not args.no_block, start=not args.no_start)
    for unit in plan.enable:
        print(f"enabled {unit}")
    for unit in plan.stop:
        print(f"stopped {unit}" + (" and disabled it" if unit in plan.disable else ""))
    span = f"@1..{count}" if count > 1 else ("@1" if count else "none")
    verb = "enabled" if args.no_start else ("starting" if args.no_block else "running")
    print(f"{instances.prefix}: {count} instance(s) {verb} ({span})")
    return exitcodes.OK
