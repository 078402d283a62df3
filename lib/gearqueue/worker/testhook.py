"""Test hooks, off unless asked for: hang the main loop, or kill -9 at a job's step.

The systemd watchdog must kill a consumer whose main loop hangs (and only then), and a
test has to be able to make one hang on demand. With GEAR_TEST_HANG_ON_SIGUSR2=1 in the
environment (tests/test_systemd_fleet.py sets it through a unit drop-in), SIGUSR2 makes
the main thread sleep forever inside the signal handler: no more WATCHDOG pings,
heartbeats or acks, exactly like a real hang. Without the variable nothing is installed
and SIGUSR2 keeps its default action.

The failure tests kill a consumer at each step of a job's life (`reached`, with
GEAR_TEST_KILL_AT naming the step), in either isolation, to show that nothing is lost
and no effect is made twice.
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
    mark_consumer(environ)
    if environ.get(HANG_ENV) != "1":
        return
    log.warning("test hook armed: SIGUSR2 will hang the main loop (%s=1)", HANG_ENV)
    signal.signal(signal.SIGUSR2, _hang)


def _hang(signum: int, frame: object) -> None:
    log.warning("test hook: SIGUSR2, the main loop hangs now")
    while True:
        time.sleep(3600)


# --- kill -9 at a named step of a job's life ---------------------------------------------

#: GEAR_TEST_KILL_AT=<point>: the consumer is killed (SIGKILL, it and its executor child)
#: the first time a job reaches <point>; once only, if GEAR_TEST_KILL_ONCE names a file
#: to create (the kill happens only if it did not exist yet). Off unless set.
KILL_AT_ENV = "GEAR_TEST_KILL_AT"
KILL_ONCE_ENV = "GEAR_TEST_KILL_ONCE"

#: The job holds its lock (a redelivered one has its attempt recorded); it has not run.
BEFORE_RUN = "before_run"
#: The job has run and made its effect; its result is not stored yet.
MID_RUN = "mid_run"
#: The batch's results are committed; no reply was sent.
AFTER_STORE = "after_store"
#: The replies are sent; the ack is not.
AFTER_REPLY = "after_reply"
KILL_POINTS = (BEFORE_RUN, MID_RUN, AFTER_STORE, AFTER_REPLY)


def reached(point: str, environ: Mapping[str, str] = os.environ) -> None:
    """Kill the consumer here if the test asked for it (a dictionary look-up if not)."""
    if environ.get(KILL_AT_ENV) != point:
        return
    once = environ.get(KILL_ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return
    log.warning("test hook: killing the consumer at %s", point)
    consumer = os.environ.get(_CONSUMER_PID_ENV)
    if consumer and int(consumer) != os.getpid():  # in the executor child: the parent too
        os.kill(int(consumer), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


#: Set by `install` in the consumer, inherited by its executor child.
_CONSUMER_PID_ENV = "GEAR_TEST_CONSUMER_PID"


def mark_consumer(environ: Mapping[str, str] = os.environ) -> None:
    """In the consumer, when a kill point is armed: its pid, for the child's kills."""
    if environ.get(KILL_AT_ENV):
        os.environ[_CONSUMER_PID_ENV] = str(os.getpid())
