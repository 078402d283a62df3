"""Run one job under its lock with its state record: the heart of exactly-once effect.

Used in the executor child (queue_enabled = 1) and in the caller's process
(queue_enabled = 0), so both paths validate, count attempts and store results the
same way. Order matters: the attempt is counted and stored *before* the job runs, so
a job that kills its process is still counted; the result is stored *before* the
reply and the ack, so a redelivery finds it. `StateStoreUnavailable` is never an
outcome: nothing can be recorded for a job whose store failed, so it leaves `execute`
as the error it is (the consumer gives the job back and waits for the store).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ..config import ServiceSettings, Settings
from ..errors import AttemptsExhausted, StateStoreUnavailable
from ..jobs import load_job
from ..jobs.base import Job, JobContext
from ..log import fields
from ..state import JobRecord, JobStatus, StateStore, open_store
from .outcome import Outcome, as_job_error

log = logging.getLogger(__name__)

Guard = Callable[[], contextlib.AbstractContextManager[None]]


def record_failure(store: StateStore, job_id: str, outcome: Outcome, *,
                   job: Job[Any] | None = None,
                   payload: Mapping[str, Any] | None = None) -> Outcome:
    """Store a failed attempt: retrying if another attempt is due, else failed for good.

    Also used by the consumer for what happens outside the child: crashes, time limits
    and messages rejected before a job could start. A final failure is then told to
    `job` (Job.on_final_failure), the one place every dead-lettered job passes.
    """
    store.failed(job_id, outcome.attempt, outcome.error_record(), outcome.reply,
                 retrying=outcome.retrying)
    if job is not None and not outcome.retrying:
        try:
            job.on_final_failure(job_id, payload, outcome)
        except Exception:  # a hook must not change the job's outcome
            log.exception("on_final_failure of job %s failed", job_id,
                          extra=fields(job_id=job_id))
    return outcome


class JobRunner:
    def __init__(self, settings: Settings, service: ServiceSettings, *, isolated: bool,
                 guard: Guard = contextlib.nullcontext) -> None:
        """`isolated`: True in an executor child. In-process (False) there is no queue to
        retry through, so a failed attempt is final."""
        self.settings = settings
        self.service = service
        self.job: Job[Any] = load_job(service.job_type)(settings)
        self.store = open_store(settings, service.job_type)
        self.isolated = isolated
        self.guard = guard
        self.max_retries = self.service.max_retries if isolated else 0
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
            attempt = 1 if restart or record is None else record.attempts + 1
            if attempt > self.service.max_retries + 1:
                last = (record.error or {}).get("message") if record else None
                error = AttemptsExhausted(f"gave up after {attempt - 1} attempts"
                                          + (f"; last error: {last}" if last else ""))
                return record_failure(self.store, job_id, Outcome.failure(
                    error, attempt - 1, max_retries=self.max_retries), job=self.job,
                    payload=payload)
            running = self.store.begin_attempt(job_id, attempt, self.worker, restart=restart)
            return self._run(running, payload)

    def _run(self, running: JobRecord, payload: Mapping[str, Any]) -> Outcome:
        job_id, attempt = running.job_id, running.attempts
        context = JobContext(
            job_id=job_id, job_type=self.service.job_type, attempt=attempt,
            settings=self.settings, isolated=self.isolated,
            log=logging.LoggerAdapter(log, fields(job_id=job_id, attempt=attempt,
                                                  job_type=self.service.job_type)),
            confirm_lock=lambda: self.store.confirm_locked(job_id))
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
            return record_failure(self.store, job_id, Outcome.failure(
                job_error, attempt, max_retries=self.max_retries, traceback=text),
                job=self.job, payload=payload)
        self.store.succeeded(job_id, reply)
        return Outcome.success(reply, attempt)

    def _replay(self, record: JobRecord) -> Outcome:
        log.info("job already %s; replying from its stored record", record.status.value,
                 extra=fields(job_id=record.job_id, job_type=self.service.job_type,
                              outcome="replayed"))
        outcome = Outcome.from_record(record, reused=True)
        assert outcome is not None  # a succeeded or failed record
        return outcome
