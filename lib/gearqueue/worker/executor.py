"""The executor: a child process that runs jobs, so the consumer's main thread never does.

Why a process, not a thread: R (through rpy2) holds the GIL and is not thread-safe, a
segfault or R fatal error must not take the AMQP connection with it, a hard time limit
needs something that can be killed, and memory can only be given back by ending a
process. The child is started once and reused (R loads once), and recycled when the
policy in `limits.py` says so (`max_jobs_per_child`, `max_memory_mb`).

Jobs are handed over in batches (the deliveries the consumer holds, up to
`batch_size`): one pipe message there and one back per batch, instead of two process
wake-ups per job. Which job of the batch runs, since when, and whether to stop after it
is in a few words of shared memory (`Progress`), which the parent reads on every turn
of its loop without waking the child, and which tells it, if the child dies, which
jobs were done, which one killed it, and which never started.

This module is the parent's side; `child.py` is what runs in the child, and defines
the messages of the pipe between them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.resource_tracker
import os
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

import psutil

from ..config import ServiceSettings, Settings
from ..config_checks import check_isolation
from ..errors import ExecutorDied, ExecutorStartFailed, StateStoreUnavailable
from ..jobs.base import INLINE
from .child import (
    BatchDone,
    ChildFailed,
    ChildReady,
    Finished,
    JobOrder,
    Progress,
    RunBatch,
    Stop,
    StoreFailed,
    child_main,
)

log = logging.getLogger(__name__)


class Executor:
    """Parent-side handle of the executor child."""

    def __init__(self, settings: Settings, service: ServiceSettings, identifier: str) -> None:
        self.settings = settings
        self.service = service
        self.identifier = identifier
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Connection | None = None
        #: The next child, started ahead of recycling (`prepare_successor`).
        self._successor: tuple[Any, Connection] | None = None
        self._progress = Progress(self._context)
        self.jobs_done = 0
        self._batch_size = 0
        self._soft_signalled: int | None = None

    def start(self, idle: Callable[[], None]) -> None:
        """Start the child (or adopt the successor) and wait until it is warm, calling
        `idle` meanwhile."""
        successor, self._successor = self._successor, None
        process, conn = successor or self._spawn()
        try:
            self._await_ready(process, conn, idle)
        except BaseException:
            with contextlib.suppress(OSError):
                process.kill()
            conn.close()
            raise
        self._process, self._conn, self.jobs_done = process, conn, 0

    def start_successor(self) -> None:
        """Start the child that will replace this one, unless one is started already.

        `start` after `stop` then adopts a warm child instead of waiting for a new
        interpreter to start and load its libraries (R: most of a second).
        """
        if self._successor is not None or self._process is None:
            return
        log.info("starting the next executor child ahead of recycling (%d of %d jobs "
                 "done)", self.jobs_done, self.service.max_jobs_per_child)
        self._successor = self._spawn()

    def _spawn(self) -> tuple[Any, Connection]:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=child_main, name=f"{self.identifier}-executor",
            args=(child_end, self.settings, self.service, self.identifier, self._progress),
            daemon=True)
        process.start()
        child_end.close()
        return process, parent_end

    @staticmethod
    def _await_ready(process: Any, conn: Connection, idle: Callable[[], None]) -> None:
        while not conn.poll(0.1):
            idle()
            if not process.is_alive():
                raise ExecutorStartFailed(f"executor child exited with code {process.exitcode} "
                                          "while starting")
        try:
            answer: ChildReady | ChildFailed = conn.recv()
        except (EOFError, OSError):
            raise ExecutorStartFailed("executor child died while starting") from None
        if not isinstance(answer, ChildReady):
            raise ExecutorStartFailed(f"executor child could not start: {answer.detail}")
        log.info("executor child %s ready", answer.pid)

    def submit(self, jobs: Sequence[JobOrder]) -> None:
        """Hand the child a batch of jobs to run in order."""
        assert self._conn is not None and jobs
        self._progress.reset()
        self._conn.send(RunBatch(list(jobs)))
        self._batch_size = len(jobs)
        self._soft_signalled = None

    def poll(self, timeout: float) -> list[Finished] | None:
        """The outcomes of the batch if it finished within `timeout`, in order; fewer than
        its jobs when the child was asked to stop (the rest never started).
        ExecutorDied if the child died; StateStoreUnavailable if the job-state store
        failed during the batch (none of it is settled; the child is still up)."""
        assert self._conn is not None
        try:
            if self._conn.poll(timeout):
                done: BatchDone | StoreFailed = self._conn.recv()
                self._batch_size = 0
                if isinstance(done, StoreFailed):
                    raise StateStoreUnavailable(done.detail)
                self.jobs_done += len(done.outcomes)
                return done.outcomes
        except (EOFError, OSError):
            pass
        else:
            if self._process.is_alive():
                return None
        index = max(self._progress.index, 0)
        self._process.join(1)
        code = self._process.exitcode
        self._reset()
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        raise ExecutorDied(f"executor child died during the job ({how})", index)

    @property
    def current(self) -> int:
        """Index in the batch of the job the child runs (-1 before the first starts)."""
        return self._progress.index

    def elapsed(self) -> float:
        """Seconds the current job has been running (0 when none has started)."""
        if not self._batch_size or self._progress.index < 0:
            return 0.0
        return time.monotonic() - self._progress.started

    def stop_after_current(self) -> None:
        """Let the child finish the job it runs and start none of the batch after it."""
        self._progress.ask_to_stop()

    def signal_soft_limit(self) -> None:
        """SIGUSR1 once per job: the child turns it into SoftTimeLimitExceeded."""
        if self._soft_signalled != self.current and self._process is not None:
            self._soft_signalled = self.current
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGUSR1)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def rss_mb(self) -> float:
        if self._process is None:
            return 0.0
        try:
            return psutil.Process(self._process.pid).memory_info().rss / 2**20
        except psutil.Error:
            return 0.0

    def kill(self) -> None:
        """Kill the child now (time limit, memory, forced stop)."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._reset()

    def stop(self) -> None:
        """Ask an idle child to exit; kill it if it does not."""
        if self._process is None:
            return
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            assert self._conn is not None
            self._conn.send(Stop())
        self._process.join(5)
        self.kill()

    def shutdown(self) -> None:
        """Stop the child and any successor started for it: the consumer is exiting."""
        self.stop()
        successor, self._successor = self._successor, None
        if successor is not None:
            process, conn = successor
            with contextlib.suppress(OSError, EOFError, BrokenPipeError):
                conn.send(Stop())
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
            conn.close()

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn, self._batch_size = None, None, 0

    @property
    def running(self) -> bool:
        return self._process is not None


def stop_resource_tracker() -> None:
    """End multiprocessing's resource tracker and wait for it, before the consumer exits.

    Starting a child with the spawn context starts the tracker too, a helper process
    that outlives nothing it tracks here (the shared words of `Progress` are an
    anonymous mapping it is never told of) and exits only once its parent has exited
    and closed its pipe. Under systemd (KillMode=mixed) the unit's remaining processes
    are killed the moment the main process exits, so that exit always lost the race and
    every clean stop was logged as `Killing process N (python) with signal SIGKILL`.
    Closing the pipe ourselves and reaping the tracker leaves nothing to kill. A later
    spawn in the same process (a test's) starts a new tracker.
    """
    tracker: Any = multiprocessing.resource_tracker._resource_tracker
    stop = getattr(tracker, "_stop", None)  # Python 3.11.7+ and 3.12
    if stop is not None:
        stop()
        return
    fd, pid = getattr(tracker, "_fd", None), getattr(tracker, "_pid", None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.close(fd)
    tracker._fd = None
    if pid is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        tracker._pid = None


class JobExecutor(Protocol):
    """What the loop asks of whatever runs its jobs: the child (`Executor`) or the
    consumer itself (`inline.InlineExecutor`). The loop never asks which."""

    jobs_done: int

    def start(self, idle: Callable[[], None]) -> None: ...
    def start_successor(self) -> None: ...
    def submit(self, jobs: Sequence[JobOrder]) -> None: ...
    def poll(self, timeout: float) -> list[Finished] | None: ...
    @property
    def current(self) -> int: ...
    def elapsed(self) -> float: ...
    def stop_after_current(self) -> None: ...
    def signal_soft_limit(self) -> None: ...
    def rss_mb(self) -> float: ...
    @property
    def pid(self) -> int | None: ...
    def kill(self) -> None: ...
    def stop(self) -> None: ...
    def shutdown(self) -> None: ...
    @property
    def running(self) -> bool: ...


def isolation_of(service: ServiceSettings) -> str:
    """`process` or `inline`: the section's `isolation`, else the job class's own."""
    if service.isolation:
        return service.isolation
    from ..jobs import load_job

    return load_job(service.job_type).isolation


def executor_for(settings: Settings, service: ServiceSettings, identifier: str, *,
                 keep_alive: Callable[[], None], stop_requested: Callable[[], bool]
                 ) -> JobExecutor:
    """The one place where `isolation` is decided: the executor child, or inline.
    ConfigError if the job type cannot run inline with these settings."""
    isolation = isolation_of(service)
    check_isolation(service, isolation, settings.rabbitmq.heartbeat, settings.source)
    if isolation == INLINE:
        from .inline import InlineExecutor

        return InlineExecutor(settings, service, identifier, keep_alive=keep_alive,
                              stop_requested=stop_requested)
    return Executor(settings, service, identifier)
