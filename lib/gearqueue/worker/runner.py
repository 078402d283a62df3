"""Run one job under its lock with its state record: the heart of exactly-once effect.

Used in the executor child, in the consumer itself (isolation = inline) and in the
caller's process (queue_enabled = 0), so every path validates, counts attempts and
stores results the same way. Order matters: the result is stored *before* the reply and
the ack, so a redelivery finds it; and every attempt that may run again is counted:

- A message delivered for the first time (not redelivered, no x-gear-attempt header)
  whose job has no stored attempt (none, or the client's `queued` record) cannot have
  run before, so with `isolation = inline` (short jobs) its attempt 1 is recorded
  together with its result: one write a job. In an executor child (`process`: long
  jobs, whose record must say `running` while they run) it is recorded before the run.
  If it kills its process, its message comes back redelivered, and then:
- a redelivered or retried message always records its attempt *before* it runs;
  inline, an earlier attempt that left no record counts as one in its number (only
  recorded attempts use up retries, since a message given back unstarted is
  redelivered too): a message that kills its consumer is counted from its second
  delivery on, and is dead-lettered after max_retries + 1 crashes, as before. In an
  executor child a delivery that left no record never started, and counts for nothing.

In a batch, the result of a fresh job that ran under `HOLD_RESULT_SECONDS` waits for
the batch's one commit (store.batch); a redelivered job's is committed at once, so a
job that crashes the batch again and again cannot take the others' attempts with it.
`StateStoreUnavailable` is never an
outcome: nothing can be recorded for a job whose store failed, so it leaves `execute`
as the error it is (the consumer gives the job back and waits for the store).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..config import ServiceSettings, Settings
from ..errors import AttemptsExhausted, StateStoreUnavailable
from ..jobs import load_job
from ..jobs.base import Job, JobContext
from ..log import fields
from ..state import JobRecord, JobStatus, Progress, StateStore, open_store
from ..state.store import AttemptRecord
from . import testhook
from .outcome import Outcome, as_job_error
from .progress import ProgressReporter

log = logging.getLogger(__name__)

Guard = Callable[[], contextlib.AbstractContextManager[None]]

#: A fresh job that ran longer than this has its result committed at once, not with
#: its batch: a crash later in the batch would make it run again (docs/performance.md).
HOLD_RESULT_SECONDS = 0.05


def record_failure(store: StateStore, job_id: str, outcome: Outcome, *,
                   job: Job[Any] | None = None,
                   payload: Mapping[str, Any] | None = None,
                   worker: str | None = None) -> Outcome:
    """Store a failed attempt: retrying if another attempt is due, else failed for good.

    Also used by the consumer for what happens outside the child: crashes, time limits
    and messages rejected before a job could start. A final failure is then told to
    `job` (Job.on_final_failure), the one place every dead-lettered job passes.
    """
    store.failed(job_id, outcome.attempt, outcome.error_record(), outcome.reply,
                 retrying=outcome.retrying, worker=worker)
    if job is not None and not outcome.retrying:
        try:
            job.on_final_failure(job_id, payload, outcome)
        except Exception:  # a hook must not change the job's outcome
            log.exception("on_final_failure of job %s failed", job_id,
                          extra=fields(job_id=job_id))
    return outcome


class JobRunner:
    def __init__(self, settings: Settings, service: ServiceSettings, *, isolated: bool,
                 guard: Guard = contextlib.nullcontext, consumer: bool | None = None) -> None:
        """`isolated`: True in an executor child. `consumer`: run by a consumer (in its
        child or inline), so a failure is retried through the queue; in-process in the
        caller (False, the default unless isolated) a failed attempt is final."""
        self.settings = settings
        self.service = service
        self.job: Job[Any] = load_job(service.job_type)(settings)
        self.store = open_store(settings, service.job_type)
        self.isolated = isolated
        self.consumer = isolated if consumer is None else consumer
        self.guard = guard
        self.max_retries = self.service.max_retries if self.consumer else 0
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def warm_up(self) -> None:
        self.job.warm_up()

    def execute(self, job_id: str, payload: Mapping[str, Any], *, fresh: bool) -> Outcome:
        """Run the job once, or replay what an earlier delivery of it stored.

        `fresh` is False for a redelivery or a retry of the same message: then a stored
        final failure is replayed and attempts keep counting. A fresh publish of a job
        that failed for good starts over (its input may have been fixed since).
        """
        with self.store.locked(job_id):
            record = self.store.get(job_id)
            rerun = fresh and self.job.reruns_fresh_duplicates
            if record is not None and record.status is JobStatus.SUCCEEDED and not rerun:
                return self._replay(record)
            restart = record is not None and record.status in (
                (JobStatus.FAILED, JobStatus.SUCCEEDED) if rerun else (JobStatus.FAILED,))
            if record is not None and restart and not fresh:
                return self._replay(record)
            unrun = record is None or (record.status is JobStatus.QUEUED
                                       and record.attempts == 0)
            if fresh and unrun and not self.isolated:
                # No earlier attempt can have run: recorded with the result. Not in an
                # executor child: its jobs are the long ones, whose record must say
                # `running` while they run (status, watch, the operator's tools).
                return self._run(job_id, 1, payload, began=False)
            recorded = 0 if restart or record is None else record.attempts
            # Inline, a redelivery's earlier attempt may have run and left no record (a
            # first delivery is recorded with its result): it counts as one in the
            # attempt's number. In an executor child every attempt is recorded before it
            # runs, so one that left no record never started (given back by a stop, a
            # crash earlier in its batch, a store outage) and counts for nothing. Only
            # recorded attempts use up retries either way: a message given back
            # unstarted must not be dead-lettered without having run.
            unrecorded = 0 if fresh or self.isolated else 1
            attempt = max(recorded, unrecorded) + 1
            if recorded + 1 > self.service.max_retries + 1:
                last = (record.error or {}).get("message") if record else None
                error = AttemptsExhausted(f"gave up after {recorded} attempts"
                                          + (f"; last error: {last}" if last else ""))
                outcome = record_failure(self.store, job_id, Outcome.failure(
                    error, recorded, max_retries=self.max_retries), job=self.job,
                    payload=payload)
                self.store.flush()
                return outcome
            self.store.begin_attempt(job_id, attempt, self.worker, restart=restart)
            outcome = self._run(job_id, attempt, payload, began=True)
            self.store.flush()  # a redelivered job's result never waits for its batch
            return outcome

    def _run(self, job_id: str, attempt: int, payload: Mapping[str, Any], *,
             began: bool) -> Outcome:
        """Run attempt `attempt`; `began`: it was recorded before, else it is recorded
        with its outcome (or with its first progress, as running)."""
        reporter = self._reporter(job_id, attempt, began=began)
        context = JobContext(
            job_id=job_id, job_type=self.service.job_type, attempt=attempt,
            settings=self.settings, isolated=self.isolated, consumer=self.consumer,
            log=logging.LoggerAdapter(log, fields(job_id=job_id, attempt=attempt,
                                                  job_type=self.service.job_type)),
            confirm_lock=lambda: self.store.confirm_locked(job_id),
            progress=reporter.report)
        started = time.monotonic()
        testhook.reached(testhook.BEFORE_RUN)
        try:
            with self.guard():
                reply = self.job.run(self.job.validate(payload), context)
        except (KeyboardInterrupt, SystemExit):
            raise
        except StateStoreUnavailable:
            # The store failed (the job's lock went with its connection): nothing can
            # be recorded, so the attempt is not settled as a failure; the consumer
            # gives the job back and waits for the store (worker/loop.py).
            raise
        except BaseException as error:  # noqa: BLE001 - every failure has an outcome
            job_error, text = as_job_error(error)
            outcome = record_failure(self.store, job_id, Outcome.failure(
                job_error, attempt, max_retries=self.max_retries, traceback=text),
                job=self.job, payload=payload, worker=None if began else self.worker)
        else:
            testhook.reached(testhook.MID_RUN)
            reporter.finish()
            self.store.succeeded(job_id, reply, attempt=None if began else AttemptRecord(
                attempt, self.worker))
            outcome = Outcome.success(reply, attempt)
        if time.monotonic() - started > HOLD_RESULT_SECONDS:
            self.store.flush()  # too costly to run again after a crash later in the batch
        return outcome

    def _reporter(self, job_id: str, attempt: int, *, began: bool) -> ProgressReporter:
        """The job's throttled progress; an attempt not recorded yet is recorded, as
        running, with its first progress (so a long inline job says so while it runs)."""
        unrecorded = [] if began else [AttemptRecord(attempt, self.worker)]

        def write(progress: Progress) -> None:
            self.store.progressed(job_id, progress,
                                  attempt=unrecorded.pop() if unrecorded else None)

        return ProgressReporter(f"{self.service.job_type} job {job_id}", write)

    def _replay(self, record: JobRecord) -> Outcome:
        log.info("job already %s; replying from its stored record", record.status.value,
                 extra=fields(job_id=record.job_id, job_type=self.service.job_type,
                              outcome="replayed"))
        outcome = Outcome.from_record(record, reused=True)
        assert outcome is not None  # a succeeded or failed record
        return outcome
