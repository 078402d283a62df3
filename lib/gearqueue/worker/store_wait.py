"""Waiting out a job-state store that failed, with the broker connection kept.

When the store fails (`StateStoreUnavailable`), no attempt can be counted and no
result stored, so the consumer takes no job until the store answers: its consumer is
cancelled (the broker hands the queue to other consumers, or keeps it), its
connection, heartbeats and watchdog are served, and the store is probed with capped,
full-jitter back-off, so a fleet that lost the same database does not come back at
one instant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..backoff import full_jitter
from ..config import ServiceSettings
from ..errors import StateStoreUnavailable
from ..log import fields
from ..state import StateStore
from .channel import Channel
from .stop import StopRequest

log = logging.getLogger(__name__)

#: Back-off of the probes: full jitter, from 0.5 s, capped.
STORE_PROBE_BASE_SECONDS = 0.5
STORE_PROBE_MAX_SECONDS = 10.0


class StoreWait:
    def __init__(self, service: ServiceSettings, store: StateStore, stop: StopRequest, *,
                 tick: Callable[[], None], say: Callable[[str], None],
                 poll_seconds: float) -> None:
        """`tick`: the watchdog and the observers' idle tick; `say`: the status line;
        `poll_seconds`: the longest the channel is pumped between two ticks."""
        self.service = service
        self.store = store
        self.stop = stop
        self.tick = tick
        self.say = say
        self.poll_seconds = poll_seconds

    def until_it_answers(self, channel: Channel, fault: StateStoreUnavailable,
                         given_back: int) -> None:
        """Take no job until the store answers again (or a stop is asked); then
        consume again on `channel`."""
        queue = self.service.queue
        log.warning("the job-state store failed; gave back %d job(s), taking none until "
                    "it answers: %s", given_back, fault, extra=fields(queue=queue))
        attempt = 0
        while not self.stop.requested:
            attempt += 1
            self.say(f"waiting for the state database (attempt {attempt}): "
                     f"{self.store.where}")
            self._pump_for(channel, full_jitter(attempt, STORE_PROBE_BASE_SECONDS,
                                                STORE_PROBE_MAX_SECONDS))
            if self.stop.requested:
                return
            try:
                self.store.probe()
            except StateStoreUnavailable as error:
                log.info("waiting for the state database (attempt %d): %s", attempt, error)
                continue
            log.info("the state database answers again (attempt %d); consuming from '%s'",
                     attempt, queue, extra=fields(queue=queue))
            channel.resume()
            return

    def _pump_for(self, channel: Channel, seconds: float) -> None:
        """Serve heartbeats and the watchdog for `seconds` (less if a stop is asked)."""
        deadline = time.monotonic() + seconds
        while not self.stop.requested:
            self.tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            channel.pump(min(left, self.poll_seconds))
