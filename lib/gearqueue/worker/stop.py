"""SIGTERM/SIGINT: the first asks for a graceful stop, the second for an immediate one.

Graceful: stop taking messages, let the current job finish, store it, reply, ack, exit 0.
Immediate: kill the executor child, requeue the current message, exit 0. Under systemd
the pair matches `KillMode=mixed` + `TimeoutStopSec=`: SIGTERM to the consumer only,
SIGKILL to all once the timeout passes.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)


class StopRequest:
    def __init__(self) -> None:
        self.graceful = False
        self.immediate = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.graceful:
            self.immediate = True
            log.warning("%s again: stopping now, the current job goes back to the queue", name)
        else:
            self.graceful = True
            log.info("%s: finishing the current job, then stopping", name)

    @property
    def requested(self) -> bool:
        return self.graceful
