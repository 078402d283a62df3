"""The executor: a child process that runs jobs, so the consumer's main thread never does.

Why a process, not a thread: R (through rpy2) holds the GIL and is not thread-safe, a
segfault or R fatal error must not take the AMQP connection with it, a hard time limit
needs something that can be killed, and memory can only be given back by ending a
process. The child is started once and reused (R loads once), and recycled after
`max_jobs_per_child` jobs or when its RSS passes `max_memory_mb`.

Jobs are handed over in batches (all the deliveries the consumer holds, up to its
prefetch): one pipe message there and one back per batch, instead of two process
wake-ups per job. Which job of the batch runs, since when, and whether to stop after it
is in a few words of shared memory (`Progress`), which the parent reads on every turn
of its loop without waking the child, and which tells it, if the child dies, which
jobs were done, which one killed it, and which never started.

The child dies with its parent (PR_SET_PDEATHSIG), ignores SIGINT/SIGTERM (the parent
decides when it stops), and turns SIGUSR1 into SoftTimeLimitExceeded inside the job.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import psutil

from .config import Settings
from .errors import GearError, SoftTimeLimitExceeded
from .log import setup_logging
from .outcome import Outcome
from .runner import JobRunner

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class ExecutorStartFailed(GearError):
    """The executor child could not start or warm up (e.g. R or a library is missing)."""


class ExecutorDied(GearError):
    """The executor child exited while running a batch; `done` jobs of it had finished."""

    def __init__(self, message: str, done: int) -> None:
        super().__init__(message)
        self.done = done


#: One job for the child: (job id, payload, fresh).
JobOrder = tuple[str, dict[str, Any], bool]
#: One job back from the child: its outcome and the seconds it took.
Finished = tuple[Outcome, float]

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


def child_main(conn: Connection, settings: Settings, job_type: str, identifier: str,
               progress: Progress) -> None:
    """Entry point of the executor child (spawned: a fresh interpreter)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(identifier)
    soft_limit = SoftLimitSignal()
    try:
        runner = JobRunner(settings, job_type, isolated=True, guard=soft_limit.during_job)
        runner.warm_up()
    except Exception as error:
        log.exception("executor child failed to start")
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        outcomes = []
        for index, (job_id, payload, fresh) in enumerate(message[1]):
            if progress.stop_asked:
                break
            progress.begin(index)
            started = time.monotonic()
            outcome = runner.execute(job_id, payload, fresh=fresh)
            outcomes.append((outcome, time.monotonic() - started))
        conn.send(("done", outcomes))


class Executor:
    """Parent-side handle of the executor child."""

    def __init__(self, settings: Settings, job_type: str, identifier: str) -> None:
        self.settings = settings
        self.service = settings.service(job_type)
        self.job_type = job_type
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

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

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

    def prepare_successor(self) -> None:
        """Start the child that will replace this one when it is near its job count.

        Recycling after `max_jobs_per_child` then swaps in a warm child instead of
        stopping every job until a new interpreter has started and loaded its
        libraries (R: most of a second). Recycling for memory cannot be foreseen and
        still starts the new child then.
        """
        limit = self.service.max_jobs_per_child
        if not limit or self._successor is not None or self._process is None:
            return
        if self.jobs_done >= limit - max(limit // 10, 2 * self.service.prefetch):
            log.info("starting the next executor child ahead of recycling (%d of %d jobs "
                     "done)", self.jobs_done, limit)
            self._successor = self._spawn()

    def _spawn(self) -> tuple[Any, Connection]:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=child_main, name=f"{self.identifier}-executor",
            args=(child_end, self.settings, self.job_type, self.identifier, self._progress),
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
            kind, detail = conn.recv()
        except (EOFError, OSError):
            raise ExecutorStartFailed("executor child died while starting") from None
        if kind != "ready":
            raise ExecutorStartFailed(f"executor child could not start: {detail}")
        log.info("executor child %s ready", detail)

    def submit(self, jobs: Sequence[JobOrder]) -> None:
        """Hand the child a batch of jobs to run in order."""
        assert self._conn is not None and jobs
        self._progress.reset()
        self._conn.send(("run", list(jobs)))
        self._batch_size = len(jobs)
        self._soft_signalled = None

    def allowance(self) -> int:
        """How many more jobs this child takes before it is due for recycling."""
        limit = self.service.max_jobs_per_child
        return max(limit - self.jobs_done, 1) if limit else 1 << 30

    def poll(self, timeout: float) -> list[Finished] | None:
        """The outcomes of the batch if it finished within `timeout`, in order; fewer than
        its jobs when the child was asked to stop (the rest never started).
        ExecutorDied if the child died."""
        assert self._conn is not None
        try:
            if self._conn.poll(timeout):
                _, outcomes = self._conn.recv()
                self.jobs_done += len(outcomes)
                self._batch_size = 0
                return outcomes
        except (EOFError, OSError):
            pass
        else:
            if self._process.is_alive():
                return None
        done = max(self._progress.index, 0)
        self._process.join(1)
        code = self._process.exitcode
        self._reset()
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        raise ExecutorDied(f"executor child died during the job ({how})", done)

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

    def rss_mb(self) -> float:
        if self._process is None:
            return 0.0
        try:
            return psutil.Process(self._process.pid).memory_info().rss / 2**20
        except psutil.Error:
            return 0.0

    def needs_recycling(self) -> str | None:
        """Why the child should be replaced before the next job, if it should."""
        if self.service.max_jobs_per_child and self.jobs_done >= self.service.max_jobs_per_child:
            return f"{self.jobs_done} jobs done (max_jobs_per_child)"
        rss = self.rss_mb() if self.service.max_memory_mb else 0.0
        if rss > self.service.max_memory_mb > 0:
            return f"RSS {rss:.0f} MiB over max_memory_mb"
        return None

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
            self._conn.send(("stop",))
        self._process.join(5)
        self.kill()

    def shutdown(self) -> None:
        """Stop the child and any successor started for it: the consumer is exiting."""
        self.stop()
        successor, self._successor = self._successor, None
        if successor is not None:
            process, conn = successor
            with contextlib.suppress(OSError, EOFError, BrokenPipeError):
                conn.send(("stop",))
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
