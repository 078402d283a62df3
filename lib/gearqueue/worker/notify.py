"""sd_notify for the consumers: READY, STATUS, WATCHDOG, STOPPING.

Does nothing when $NOTIFY_SOCKET is absent (run by hand, in tests, in containers), so
the consumer loop calls it unconditionally. WATCHDOG pings come from the main loop,
which keeps turning while a job runs in the executor child: a long job is never killed
by the watchdog, a hung main loop is.
"""

from __future__ import annotations

import os
import time


class Notifier:
    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status = ""
        self._stopping = False
        interval_us = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        watchdog_pid = os.environ.get("WATCHDOG_PID")
        if watchdog_pid and watchdog_pid != str(os.getpid()):
            interval_us = 0
        #: Ping at half the interval systemd asked for, as sd_watchdog_enabled(3) advises.
        self._watchdog_every = interval_us / 2e6
        self._last_ping = 0.0
        if self._enabled:
            from systemd import daemon  # systemd-python
            self._send = daemon.notify
        else:
            self._send = None

    def _notify(self, message: str) -> None:
        if self._send is not None:
            self._send(message)

    def ready(self, status: str) -> None:
        self._last_status = status
        self._notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self._notify(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        """STOPPING=1 once, with a STATUS; later calls only update the STATUS."""
        if self._stopping:
            self.status(status)
            return
        self._stopping = True
        self._last_status = status
        self._notify(f"STOPPING=1\nSTATUS={status}")

    def watchdog(self) -> None:
        """Ping the watchdog, at most as often as needed."""
        if not self._watchdog_every:
            return
        now = time.monotonic()
        if now - self._last_ping >= self._watchdog_every:
            self._last_ping = now
            self._notify("WATCHDOG=1")
