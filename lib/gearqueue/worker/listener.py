"""What every `listeners/<type>_consumer.py` runs: parse args, set up, consume, exit.

Exit codes (gearqueue.exitcodes): 0 after a requested stop, 2 for a configuration
error (systemd's RestartPreventExitStatus), 1 for anything else (restart may help).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import exitcodes
from ..codeversion import record_running_code
from ..config import load_settings
from ..errors import ConfigError, GearError, TopologyMismatch
from ..log import setup_logging
from . import testhook
from .executor import stop_resource_tracker
from .loop import Consumer
from .observers import observers_for
from .stop import StopRequest

log = logging.getLogger(__name__)


def run_consumer(job_type: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=f"Consume and run {job_type} jobs from RabbitMQ (one instance).")
    parser.add_argument("--config", help="gear.ini (default: $GEAR_INI, ./gear.ini, "
                        "/etc/gear/gear.ini)")
    parser.add_argument("--instance", default=os.environ.get("GEAR_INSTANCE", "0"),
                        help="instance name, for logs (systemd passes %%i)")
    args = parser.parse_args(argv)
    identifier = f"{job_type.replace('_', '-')}-consumer-{args.instance}"
    setup_logging(identifier)
    stop = StopRequest()
    stop.install()
    testhook.install()  # no-op unless a test sets GEAR_TEST_HANG_ON_SIGUSR2=1
    try:
        settings = load_settings(args.config)
        record_running_code(settings.paths.state_dir, identifier)
        consumer = Consumer(settings, job_type, identifier=identifier, stop=stop,
                            observers=observers_for(settings, job_type, args.instance,
                                                        identifier))
        consumer.run()
    except (ConfigError, TopologyMismatch) as error:
        log.error("configuration error: %s", error)
        return exitcodes.CONFIG
    except GearError as error:
        log.error("%s: %s", type(error).__name__, error)
        return 1
    finally:
        stop_resource_tracker()
    return exitcodes.OK


def main(job_type: str) -> None:
    sys.exit(run_consumer(job_type))
