"""A test hook, off unless asked for: SIGUSR2 hangs the consumer's main loop for good.

The systemd watchdog must kill a consumer whose main loop hangs (and only then), and a
test has to be able to make one hang on demand. With GEAR_TEST_HANG_ON_SIGUSR2=1 in the
environment (tests/test_systemd_fleet.py sets it through a unit drop-in), SIGUSR2 makes
the main thread sleep forever inside the signal handler: no more WATCHDOG pings,
heartbeats or acks, exactly like a real hang. Without the variable nothing is installed
and SIGUSR2 keeps its default action.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

HANG_ENV = "GEAR_TEST_HANG_ON_SIGUSR2"


def install(environ: Mapping[str, str] = os.environ) -> None:
    if environ.get(HANG_ENV) != "1":
        return
    log.warning("test hook armed: SIGUSR2 will hang the main loop (%s=1)", HANG_ENV)
    signal.signal(signal.SIGUSR2, _hang)


def _hang(signum: int, frame: object) -> None:
    log.warning("test hook: SIGUSR2, the main loop hangs now")
    while True:
        time.sleep(3600)
