"""What runs in the executor child: a loop that takes batches of jobs and runs them.

The child dies with its parent (PR_SET_PDEATHSIG), ignores SIGINT/SIGTERM (the parent
decides when it stops), and turns SIGUSR1 into SoftTimeLimitExceeded inside the job.
Which job of a batch it runs, and since when, it writes to shared memory (`Progress`)
for the parent, which reads it without waking the child.

The pipe protocol is the small frozen dataclasses below: the parent sends `RunBatch`
or `Stop`; the child answers `ChildReady` or `ChildFailed` once, at start, then one
`BatchDone` per `RunBatch`, or `StoreFailed` when the job-state store failed during it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..config import ServiceSettings, Settings
from ..errors import SoftTimeLimitExceeded, StateStoreUnavailable
from ..log import setup_logging
from . import testhook
from .outcome import Outcome
from .runner import JobRunner

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class JobOrder:
    """One job for the child. `fresh`: neither a redelivery nor a retry of it."""

    job_id: str
    payload: dict[str, Any]
    fresh: bool


@dataclass(frozen=True)
class Finished:
    """One job back from the child: its outcome and the seconds it took."""

    outcome: Outcome
    seconds: float


@dataclass(frozen=True)
class RunBatch:
    """Parent -> child: run these in order (stopping early if asked to, see Progress)."""

    jobs: list[JobOrder]


@dataclass(frozen=True)
class Stop:
    """Parent -> child: exit now (sent only while it is idle)."""


@dataclass(frozen=True)
class ChildReady:
    """Child -> parent, once: warmed up, ready for batches."""

    pid: int


@dataclass(frozen=True)
class ChildFailed:
    """Child -> parent, once, instead of ChildReady: it could not start."""

    detail: str


@dataclass(frozen=True)
class BatchDone:
    """Child -> parent: the jobs it ran of a batch, in order; fewer than were sent when
    it was asked to stop (the rest never started)."""

    outcomes: list[Finished]


@dataclass(frozen=True)
class StoreFailed:
    """Child -> parent, instead of BatchDone: the job-state store failed during the
    batch. Nothing of it is settled: a job's result may still have been on its way to
    the store with the next write (or the batch's unlock), so every job of the batch
    goes back to the queue, and those whose results were stored reply from them when
    they come back. The child stays up (R stays loaded); its store reconnects."""

    detail: str


#: Slots of the shared `Progress` array.
_INDEX, _STARTED, _STOP = range(3)


class Progress:
    """Shared memory between the consumer and its child about the batch in hand.

    The child writes the index of the job it starts and when (CLOCK_MONOTONIC, one
    clock for every process) before it runs it, so after the child dies, jobs below
    the index are done (their records are stored), the job at it was running, and
    the ones above never started. The parent writes the stop flag: finish the
    current job, start no further one.
    """

    def __init__(self, context: Any) -> None:
        self.slots = context.RawArray("d", 3)
        self.reset()

    def reset(self) -> None:
        self.slots[_INDEX], self.slots[_STARTED], self.slots[_STOP] = -1.0, 0.0, 0.0

    def begin(self, index: int) -> None:
        self.slots[_STARTED] = time.monotonic()
        self.slots[_INDEX] = float(index)

    @property
    def index(self) -> int:
        return int(self.slots[_INDEX])

    @property
    def started(self) -> float:
        return self.slots[_STARTED]

    def ask_to_stop(self) -> None:
        self.slots[_STOP] = 1.0

    @property
    def stop_asked(self) -> bool:
        return bool(self.slots[_STOP])


class SoftLimitSignal:
    """SIGUSR1 -> SoftTimeLimitExceeded, but only while a job's own code runs."""

    def __init__(self) -> None:
        self.armed = False
        signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.armed:
            self.armed = False
            raise SoftTimeLimitExceeded("soft time limit exceeded (soft_time_limit)")

    @contextlib.contextmanager
    def during_job(self) -> Iterator[None]:
        self.armed = True
        try:
            yield
        finally:
            self.armed = False


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def child_main(conn: Connection, settings: Settings, service: ServiceSettings,
               identifier: str, progress: Progress) -> None:
    """Entry point of the executor child (spawned: a fresh interpreter)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(identifier)
    soft_limit = SoftLimitSignal()
    try:
        runner = JobRunner(settings, service, isolated=True, guard=soft_limit.during_job)
        runner.warm_up()
    except Exception as error:
        log.exception("executor child failed to start")
        conn.send(ChildFailed(f"{type(error).__name__}: {error}"))
        return
    conn.send(ChildReady(os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if not isinstance(message, RunBatch):
            return  # Stop
        try:
            outcomes = _run_batch(runner, message, progress)
            testhook.reached(testhook.AFTER_STORE)
            conn.send(BatchDone(outcomes))
        except StateStoreUnavailable as error:
            log.warning("the job-state store failed during a batch; giving it back: %s",
                        error)
            conn.send(StoreFailed(str(error)))


def _run_batch(runner: JobRunner, message: RunBatch, progress: Progress) -> list[Finished]:
    outcomes = []
    with runner.store.batch(order.job_id for order in message.jobs):  # one commit
        for index, order in enumerate(message.jobs):
            if progress.stop_asked:
                break
            progress.begin(index)
            started = time.monotonic()
            outcome = runner.execute(order.job_id, order.payload, fresh=order.fresh)
            outcomes.append(Finished(outcome, time.monotonic() - started))
    return outcomes
