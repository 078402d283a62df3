"""Failures the consumer records itself, for jobs whose executor cannot: the child died
(a crash, a hard time or memory limit) or the message never became a job.

The child records every outcome it reaches; these are the ones it cannot, so they are
counted here with the same rule (`runner.record_failure`): the attempt that was
running counts, retries are due until max_retries, then the job's final-failure hook.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..config import ServiceSettings, Settings
from ..errors import (
    ExecutorCrashed,
    HardTimeLimitExceeded,
    InvalidMessage,
    MemoryLimitExceeded,
)
from ..jobs import load_job
from ..jobs.base import Job
from ..log import fields
from ..state import StateStore
from .channel import Delivery
from .inflight import BatchResult, InFlightBatch
from .outcome import Outcome
from .runner import record_failure
from .settlement import Settled

log = logging.getLogger(__name__)

ChildGone = ExecutorCrashed | HardTimeLimitExceeded | MemoryLimitExceeded


class OutsideFailures:
    def __init__(self, settings: Settings, service: ServiceSettings, store: StateStore
                 ) -> None:
        self.settings = settings
        self.service = service
        self.store = store

    def split(self, batch: InFlightBatch, index: int, error: ChildGone) -> BatchResult:
        """The child is gone in the middle of a batch, at job `index`.

        Jobs before it finished; their outcomes are stored unless the batch's commit
        was still to come (runner.py), and then they go back to the queue untouched, to
        run again as redeliveries (their first attempt counted). The job at it may have
        stored its outcome just before the child died (its record says); otherwise it
        failed with `error`, recorded here since the child cannot. The jobs after it
        never started.
        """
        seconds = time.monotonic() - batch.started
        settled: list[Settled] = []
        unstarted: list[Delivery] = []
        for position, job in enumerate(batch.jobs[:index + 1]):
            job_id = job.envelope.job_id
            outcome = Outcome.from_record(self.store.get(job_id), reused=False,
                                          since=batch.handed_at)
            if outcome is None and position < index:
                unstarted.append(job.delivery)
                continue
            settled.append(Settled(job.delivery, job.envelope,
                                   outcome or self.child_gone(job_id, job.payload, error),
                                   seconds))
        return BatchResult(settled, unstarted + [job.delivery
                                                 for job in batch.jobs[index + 1:]])

    def child_gone(self, job_id: str, payload: dict[str, Any], error: ChildGone) -> Outcome:
        """Record the failure of the job the dead child was running."""
        log.warning("job %s: %s", job_id, error.message, extra=fields(job_id=job_id))
        attempt = max(self._attempts_so_far(job_id), 1)
        return record_failure(self.store, job_id, Outcome.failure(
            error, attempt, max_retries=self.service.max_retries), job=self._job_hooks(),
            payload=payload)

    def rejected(self, job_id: str, error: InvalidMessage) -> Outcome:
        """Record a message that cannot become a job (StateStoreUnavailable if the
        store cannot take it)."""
        attempt = self._attempts_so_far(job_id) + 1
        return record_failure(self.store, job_id, Outcome.failure(
            error, attempt, max_retries=self.service.max_retries), job=self._job_hooks())

    def _job_hooks(self) -> Job[Any]:
        """The job type's object here in the consumer, for its final-failure hook only
        (the child has its own); built on demand, as failures are rare."""
        return load_job(self.service.job_type)(self.settings)

    def _attempts_so_far(self, job_id: str) -> int:
        record = self.store.get(job_id)
        return record.attempts if record else 0
