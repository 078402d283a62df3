"""The inline executor: a job type's jobs in the consumer's own process, with no hop.

For short jobs (echo) the executor child costs more than the job: two process
wake-ups, pickling both ways, a second interpreter. `InlineExecutor` has the executor
child's interface (`executor.JobExecutor`), so the loop, the limits and the settlement
do not know which one runs the jobs: `submit` takes a batch, and `poll` runs it, there
and then, on the main thread, and returns its outcomes.

What the child gave and inline has otherwise:
- Time limits: an interval timer (SIGALRM) raises SoftTimeLimitExceeded and then
  HardTimeLimitExceeded inside the job, so a limit is enforced without a process to
  kill. A job hung in C code, where no Python signal handler runs, is past what this
  can stop: the consumer then stops pinging the systemd watchdog (WatchdogSec), which
  kills it, and the job comes back redelivered and counted like any crash.
- Heartbeats and the watchdog: served between jobs (`keep_alive`), and a job must
  end well within a heartbeat (config_checks.check_isolation refuses a longer time limit).
- Crashes: a job that kills the process (segfault, os._exit, kill -9) kills the
  consumer; its message is redelivered to the restarted one (or another), whose
  runner counts the attempt before running it (runner.py): the crash-loop guard and
  dead-lettering work as with a child.
- No memory limit: nothing can give a leak back (max_memory_mb is refused).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence

import psutil

from ..config import ServiceSettings, Settings
from ..config_checks import inline_limit
from ..errors import ExecutorStartFailed, HardTimeLimitExceeded, SoftTimeLimitExceeded
from . import testhook
from .child import Finished, JobOrder
from .runner import JobRunner

log = logging.getLogger(__name__)

#: Inside a batch, heartbeats and the watchdog are served after a job when this long
#: has passed since they last were (a pump costs tens of microseconds: not every job).
KEEP_ALIVE_SECONDS = 1.0


class JobTimer:
    """SIGALRM inside a job: SoftTimeLimitExceeded at soft_time_limit, then
    HardTimeLimitExceeded at the hard limit; nothing outside a job."""

    def __init__(self, soft: float, hard: float) -> None:
        self.soft, self.hard = soft, hard
        self._phase: str | None = None
        signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: object) -> None:
        if self._phase == "soft":
            self._phase = "hard"
            signal.setitimer(signal.ITIMER_REAL, max(self.hard - self.soft, 0.001))
            raise SoftTimeLimitExceeded("soft time limit exceeded (soft_time_limit)")
        if self._phase == "hard":
            self._phase = None
            raise HardTimeLimitExceeded(
                f"job ran past its time limit ({self.hard:g} s) and was stopped")

    @contextlib.contextmanager
    def during_job(self) -> Iterator[None]:
        self._phase = "soft" if self.soft else "hard"
        signal.setitimer(signal.ITIMER_REAL, self.soft or self.hard)
        try:
            yield
        finally:
            # Phase first: an alarm that lands between the two lines then does nothing,
            # instead of raising out of here and leaving the hard timer armed.
            self._phase = None
            signal.setitimer(signal.ITIMER_REAL, 0)


class InlineExecutor:
    """Runs a batch's jobs in this process when the loop polls for them."""

    def __init__(self, settings: Settings, service: ServiceSettings, identifier: str, *,
                 keep_alive: Callable[[], None] = lambda: None,
                 stop_requested: Callable[[], bool] = lambda: False) -> None:
        """`keep_alive`: serve heartbeats and the watchdog between jobs of a batch;
        `stop_requested`: start no further job of the batch (SIGTERM)."""
        self.settings = settings
        self.service = service
        self.identifier = identifier
        self._keep_alive = keep_alive
        self._stop_requested = stop_requested
        self._runner: JobRunner | None = None
        self._orders: list[JobOrder] = []
        self._stop_asked = False
        #: Jobs done since the last start: always 0, there is no child to recycle.
        self.jobs_done = 0
        self.current = -1
        self._started = 0.0

    def start(self, idle: Callable[[], None]) -> None:
        """Load and warm up the job type here, once (a restart after `stop` keeps it)."""
        if self._runner is not None:
            return
        soft = self.service.soft_time_limit
        timer = JobTimer(soft, inline_limit(self.service, self.settings.rabbitmq.heartbeat))
        try:
            runner = JobRunner(self.settings, self.service, isolated=False, consumer=True,
                               guard=timer.during_job)
            runner.warm_up()
        except Exception as error:
            log.exception("the job type could not be loaded inline")
            raise ExecutorStartFailed(f"could not load the job type inline: "
                                      f"{type(error).__name__}: {error}") from error
        self._runner = runner
        log.info("running %s jobs inline (time limit %g s)", self.service.job_type,
                 timer.hard)

    def start_successor(self) -> None:
        """Nothing to start ahead: there is no child."""

    def submit(self, jobs: Sequence[JobOrder]) -> None:
        """Take a batch; it runs at the next `poll`."""
        assert jobs
        self._orders = list(jobs)
        self._stop_asked = False
        self.current = -1

    def poll(self, timeout: float) -> list[Finished] | None:
        """Run the batch now, in order, and return its outcomes (fewer when a stop was
        asked for between jobs); the results are committed before it returns."""
        runner = self._runner
        assert runner is not None
        orders, self._orders = self._orders, []
        finished: list[Finished] = []
        kept_alive = time.monotonic()
        with runner.store.batch(order.job_id for order in orders):
            for index, order in enumerate(orders):
                if self._stop_asked or (index and self._stop_requested()):
                    break
                self.current, self._started = index, time.monotonic()
                outcome = runner.execute(order.job_id, order.payload, fresh=order.fresh)
                done = time.monotonic()
                finished.append(Finished(outcome, done - self._started))
                if done - kept_alive > KEEP_ALIVE_SECONDS and index + 1 < len(orders):
                    self._keep_alive()
                    kept_alive = time.monotonic()
        testhook.reached(testhook.AFTER_STORE)
        return finished

    def elapsed(self) -> float:
        return time.monotonic() - self._started if self.current >= 0 else 0.0

    def stop_after_current(self) -> None:
        self._stop_asked = True

    def signal_soft_limit(self) -> None:
        """The timer does it inside the job."""

    @property
    def pid(self) -> int:
        return os.getpid()

    def rss_mb(self) -> float:
        """This process's own (for status and metrics; max_memory_mb is refused for
        inline jobs, so the limits never ask)."""
        try:
            return float(psutil.Process().memory_info().rss) / 2**20
        except psutil.Error:
            return 0.0

    def kill(self) -> None:
        """Nothing to kill: a job past its limit was stopped by its timer."""
        self._orders = []

    def stop(self) -> None:
        """Nothing to stop; the job type stays loaded."""

    def shutdown(self) -> None:
        if self._runner is not None:
            self._runner.store.close()

    @property
    def running(self) -> bool:
        return self._runner is not None

    def __repr__(self) -> str:
        return f"InlineExecutor({self.service.job_type!r})"
