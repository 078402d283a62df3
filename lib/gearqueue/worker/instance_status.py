"""The observer that keeps this instance's live status file (gearqueue.instances).

The hooks only change a few fields in memory; the file is rewritten (atomically, no
fsync: it is rebuilt within a second after a crash anyway) when something changed or
a heartbeat is due, at most every WRITE_EVERY_SECONDS. So a job costs a counter and a
clock read, not a file write, however short it is, and a long job shows within a
second of its start. The loop ticks (`idle`, `job_running`) at least every second
whatever it does, so a file that stops changing means a loop that stopped turning.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import instances
from ..config import Settings
from ..config_checks import inline_limit
from ..files import write_atomically
from ..instances import InstanceRecord
from ..log import fields
from .observers import ConsumerObserver, ExecutorView
from .settlement import Settled, Verdict

if TYPE_CHECKING:
    from .channel import Channel

log = logging.getLogger(__name__)

WRITE_EVERY_SECONDS = 1.0
#: A heartbeat older than this (plus an inline job's time limit) is overdue: ten of
#: the loop's one-second ticks missed.
STALE_AFTER_SECONDS = 10.0
#: While starting, an inline job type loads in the loop itself (no ticks).
STARTING_STALE_AFTER_SECONDS = 120.0

_FAILED = (Verdict.FAILED, Verdict.RETRYING, Verdict.REPLAYED_FAILURE)


class InstanceStatus(ConsumerObserver):
    def __init__(self, settings: Settings, job_type: str, instance: str, identifier: str,
                 *, inline: bool) -> None:
        self.path = instances.path_of(settings, identifier)
        self._stale_after = STALE_AFTER_SECONDS + (
            inline_limit(settings.service(job_type), settings.rabbitmq.heartbeat)
            if inline else 0.0)
        now = time.time()
        self.record = InstanceRecord(
            identifier=identifier, job_type=job_type, instance=instance,
            host=os.uname().nodename, pid=os.getpid(), started_at=now,
            state=instances.STARTING, heartbeat_at=now,
            stale_after=STARTING_STALE_AFTER_SECONDS)
        self._executor: ExecutorView | None = None
        self._written = 0.0
        self._dirty = True
        self._warned = False
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as error:
            log.warning("cannot create %s for the live status: %s; `gearqueue status` "
                        "will not see this instance", self.path.parent, error)
        self._write()

    # --- hooks -------------------------------------------------------------------------

    def started(self, executor: ExecutorView) -> None:
        self._executor = executor
        self._set_state(instances.IDLE)

    def consuming(self, channel: Channel) -> None:
        self._set_state(instances.IDLE)

    def disconnected(self, error: Exception) -> None:
        self._set_state(instances.RECONNECTING, str(error))

    def waiting(self, reason: str) -> None:
        state = (instances.RECONNECTING if reason.startswith("reconnecting")
                 else instances.WAITING_FOR_DB)
        self._set_state(state, reason)

    def batch_started(self, job_ids: Sequence[str]) -> None:
        record = self.record
        record.state, record.detail = instances.RUNNING, ""
        record.job_id, record.job_since = job_ids[0], time.time()
        self._dirty = True
        self._tick()

    def job_running(self, job_id: str, elapsed: float) -> None:
        record = self.record
        if record.job_id != job_id:
            record.job_id, record.job_since = job_id, time.time() - elapsed
            self._dirty = True
        self._tick()

    def settled(self, jobs: Sequence[Settled]) -> None:
        record = self.record
        record.jobs_done += len(jobs)
        record.jobs_failed += sum(job.verdict in _FAILED for job in jobs)
        if record.job_id in {job.envelope.job_id for job in jobs}:
            record.state, record.job_id, record.job_since = instances.IDLE, None, None
        self._dirty = True
        self._tick()

    def idle(self) -> None:
        record = self.record
        if record.state == instances.RUNNING:  # nothing runs when the loop idles
            record.state, record.job_id, record.job_since = instances.IDLE, None, None
            self._dirty = True
        self._tick()

    def stopping(self) -> None:
        self._set_state(instances.STOPPING)

    def stopped(self) -> None:
        record = self.record
        record.state, record.job_id, record.job_since = instances.STOPPED, None, None
        self._write()

    # --- the file ----------------------------------------------------------------------

    def _set_state(self, state: str, detail: str = "") -> None:
        record = self.record
        if state not in (instances.RUNNING, instances.STOPPING):
            record.job_id, record.job_since = None, None
        if (record.state, record.detail) != (state, detail):
            record.state, record.detail = state, detail
            self._dirty = True
        self._tick(force=self._dirty)

    def _tick(self, force: bool = False) -> None:
        """Write if due: a second since the last write, or a change of state now."""
        now = time.monotonic()
        if now - self._written >= WRITE_EVERY_SECONDS or (force and self._dirty):
            self._write()

    def _write(self) -> None:
        record = self.record
        record.heartbeat_at = time.time()
        if record.state != instances.STARTING:
            record.stale_after = self._stale_after
        executor = self._executor
        if executor is not None:
            record.executor_pid = executor.pid
            rss = executor.rss_mb()
            record.executor_rss_mb = round(rss, 1) if rss else None
        self._written, self._dirty = time.monotonic(), False
        try:
            write_atomically(self.path, record.to_json())
        except OSError as error:
            if not self._warned:  # once: the folder is gone or full; jobs go on
                self._warned = True
                log.warning("cannot write the live status %s: %s", self.path, error,
                            extra=fields(path=str(self.path)))
        else:
            self._warned = False
