"""The blocking consumer: one AMQP connection on the main thread, jobs in the executor.

The loop in `serve` is the whole life of a consumer instance: take a delivery, hand it
to the executor child, keep the connection alive (heartbeats, acks, watchdog) while the
child works, then settle the outcome. Reconnects use capped exponential backoff with
full jitter; the executor child survives a reconnect, so R stays loaded.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from . import settle
from .backoff import full_jitter
from .config import Settings
from .envelope import Envelope, decode_payload, envelope_of
from .errors import (
    BrokerUnavailable,
    ExecutorCrashed,
    HardTimeLimitExceeded,
    InvalidMessage,
    MemoryLimitExceeded,
    TopologyMismatch,
)
from .executor import Executor, ExecutorDied
from .log import fields
from .notify import Notifier
from .outcome import Outcome
from .runner import record_failure, stored_outcome
from .session import Delivery, Session
from .state import StateStore
from .stop import StopRequest

log = logging.getLogger(__name__)

#: How often the main loop turns while a job runs: heartbeats, watchdog, limits.
JOB_POLL_SECONDS = 0.2
IDLE_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Job:
    """One delivery on its way through the executor child."""

    delivery: Delivery
    envelope: Envelope
    payload: dict[str, Any]
    fresh: bool


@dataclass(frozen=True)
class Batch:
    """Jobs handed to the child together, in delivery order."""

    jobs: list[Job]
    session: Session
    #: time.time() when handed over: a state record updated since is from this batch.
    handed_at: float
    started: float


#: A settled-to-be job: its outcome and how long it ran (seconds).
Done = tuple[Job, Outcome, float]


class Consumer:
    def __init__(self, settings: Settings, job_type: str, *, identifier: str,
                 stop: StopRequest | None = None, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.service = settings.service(job_type)
        self.identifier = identifier
        self.stop = stop or StopRequest()
        self.notifier = notifier or Notifier()
        self.store = StateStore(settings.paths.state_dir, job_type)
        self.executor = Executor(settings, job_type, identifier)
        self.session: Session | None = None
        self._last_start = 0.0
        #: A batch the child already runs while the previous one is settled.
        self._next: Batch | None = None

    # --- life cycle ------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped. Raises ConfigError/TopologyMismatch/ExecutorStartFailed."""
        self.store.check_writable()
        self.store.import_record_files()
        self.notifier.status("starting: loading the executor")
        self.executor.start(idle=self.notifier.watchdog)
        failures = 0
        try:
            while not self.stop.requested:
                try:
                    lost = self.session.url if self.session is not None else None
                    self.session = Session(self.settings, self.service, self.identifier,
                                           avoid=lost)
                except TopologyMismatch:
                    raise
                except BrokerUnavailable as error:
                    failures += 1
                    delay = full_jitter(failures, 0.5, self.settings.rabbitmq.reconnect_max_delay)
                    log.warning("broker unavailable (attempt %d), retrying in %.1f s: %s",
                                failures, delay, error)
                    self.notifier.status(f"reconnecting to broker (attempt {failures})")
                    self._sleep(delay)
                    continue
                failures = 0
                log.info("consuming from '%s' (prefetch %d)", self.service.queue,
                         self.service.prefetch, extra=fields(queue=self.service.queue))
                self.notifier.ready("idle")
                try:
                    self._serve(self.session)
                except BrokerUnavailable as error:
                    if not self.stop.requested:
                        log.warning("lost the broker: %s; reconnecting", error)
                finally:
                    self._drain_next()
                    self.session.close()
        finally:
            self.notifier.stopping()
            self.executor.shutdown()
            log.info("stopped")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.requested and time.monotonic() < deadline:
            self.notifier.watchdog()
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))

    def _serve(self, session: Session) -> None:
        while not self.stop.requested or self._next is not None:
            if self._next is not None:  # started already: it is the current batch
                batch, self._next = self._next, None
                self._finish(batch)
                continue
            if session.pending:
                self._take(session)
                continue
            if session.cancelled:  # after settling what it had: nothing is abandoned
                raise BrokerUnavailable("consumer cancelled by the broker")
            self.notifier.status("idle")
            self.notifier.watchdog()
            session.pump(IDLE_POLL_SECONDS)
        session.stop_consuming()
        session.pump(0)

    # --- deliveries --------------------------------------------------------------------

    def _take(self, session: Session) -> None:
        """Run the deliveries the session holds: a batch of those that decode, or settle
        the first one that does not."""
        delivery = session.pending.popleft()
        try:
            first = self._job_of(delivery)
        except InvalidMessage as error:
            self._reject(delivery, error)
            return
        if not self.executor.running:
            self.executor.start(idle=self._keep_alive)
        self._respect_rate_limit()
        self._finish(self._start_batch(session, first))

    def _job_of(self, delivery: Delivery) -> Job:
        payload = decode_payload(delivery.properties, delivery.body,
                                 self.service.max_message_bytes)
        return Job(delivery, envelope_of(delivery.properties, delivery.body), payload,
                   fresh=not (delivery.redelivered or delivery.retried))

    def _start_batch(self, session: Session, first: Job) -> Batch:
        """Hand the child `first` and the deliveries after it that decode, in one message.

        One message there and one back for the whole batch: with prefetch > 1 the
        process wake-ups, pickling and the ack are paid per batch, not per job. Each
        job still has its attempt and its result stored by the child, in order.
        """
        limit = 1 if self.service.rate_limit else min(self.service.prefetch,
                                                      self.executor.allowance())
        jobs = [first]
        while session.pending and len(jobs) < limit:
            try:
                job = self._job_of(session.pending[0])
            except InvalidMessage:
                break  # rejected in its turn
            session.pending.popleft()
            jobs.append(job)
        self.executor.submit([(job.envelope.job_id, job.payload, job.fresh) for job in jobs])
        return Batch(jobs, session, time.time(), time.monotonic())

    def _start_next_early(self, session: Session) -> None:
        """Hand the next deliveries to the child now, before this batch is settled.

        The child then runs them while this thread replies and acks, instead of the two
        taking turns. Only deliveries that can run as they are: they decode, no rate
        limit or recycling is due, no stop was asked for. Their attempts and results
        are stored by the child as always; this batch's replies and acks still follow
        its stored results.
        """
        if (not session.pending or self.stop.requested or self.service.rate_limit
                or not self.executor.running or self.executor.needs_recycling()):
            return
        try:
            first = self._job_of(session.pending[0])
        except InvalidMessage:
            return  # rejected in its turn, on the usual path
        session.pending.popleft()
        self._next = self._start_batch(session, first)

    def _drain_next(self) -> None:
        """The session died with a batch started early: let it finish (its results are
        stored; the redelivered messages reply from them), then forget it."""
        batch, self._next = self._next, None
        if batch is not None:
            with contextlib.suppress(BrokerUnavailable):
                self._wait(batch)

    # --- one batch -----------------------------------------------------------------------

    def _finish(self, batch: Batch) -> None:
        """Wait for a batch, then settle it: next copies and replies job by job, in
        order, then one ack for all of them."""
        result = self._wait(batch)
        if result is None:  # immediate stop: the messages went back to the queue
            return
        done, unstarted = result
        if not unstarted:
            self._start_next_early(batch.session)
        session = self.session_for(batch.jobs[0].delivery)
        for job, outcome, _ in done:
            settle.hand_on(session, self.service, job.delivery, job.envelope, outcome)
        for job in unstarted:  # stopping: given back untouched
            session.requeue(job.delivery)
        if done:
            session.ack(done[-1][0].delivery, multiple=len(done) > 1)
        for job, outcome, seconds in done:
            self._log_outcome(job.envelope, outcome, seconds)
        self._recycle_if_needed()

    def _wait(self, batch: Batch) -> tuple[list[Done], list[Job]] | None:
        """Keep the connection and the limits while the child runs the batch.

        Returns the finished jobs with their outcomes and the jobs never started (a
        stop was asked for), or None after an immediate stop.
        """
        service = self.service
        broker_lost: BrokerUnavailable | None = None
        while True:
            try:
                finished = self.executor.poll(JOB_POLL_SECONDS)
            except ExecutorDied as died:
                return self._split(batch, died.done, ExecutorCrashed(str(died)))
            if finished is not None:
                if broker_lost is not None:
                    raise broker_lost  # results are stored; the redeliveries reply from them
                done = [(job, outcome, seconds)
                        for job, (outcome, seconds) in zip(batch.jobs, finished, strict=False)]
                return done, batch.jobs[len(done):]
            current = batch.jobs[max(self.executor.current, 0)].envelope.job_id
            elapsed = self.executor.elapsed()
            status = f"job {current} running {elapsed:.0f} s"
            if self.stop.requested:  # SIGTERM: say so now, not only once the job is done
                self.executor.stop_after_current()
                self.notifier.stopping(f"{status}, stopping after it")
            else:
                self.notifier.status(status)
            self.notifier.watchdog()
            if self.stop.immediate:
                self.executor.kill()
                if broker_lost is None:
                    for job in batch.jobs:
                        batch.session.requeue(job.delivery)
                return None
            if broker_lost is None:
                try:
                    batch.session.pump(0)
                except BrokerUnavailable as error:
                    log.warning("lost the broker during job %s; letting it finish: %s",
                                current, error)
                    broker_lost = error
            if service.soft_time_limit and elapsed > service.soft_time_limit:
                self.executor.signal_soft_limit()
            killed_for: HardTimeLimitExceeded | MemoryLimitExceeded | None = None
            rss = self.executor.rss_mb() if service.max_memory_mb else 0.0
            if service.time_limit and elapsed > service.time_limit:
                killed_for = HardTimeLimitExceeded(
                    f"job ran past time_limit ({service.time_limit:g} s) and was killed")
            elif rss > 2 * service.max_memory_mb > 0:
                killed_for = MemoryLimitExceeded(
                    f"executor RSS {rss:.0f} MiB passed twice max_memory_mb "
                    f"({service.max_memory_mb} MiB) and it was killed")
            if killed_for is not None:
                index = max(self.executor.current, 0)
                self.executor.kill()
                return self._split(batch, index, killed_for)

    def _split(self, batch: Batch, index: int, error: ExecutorCrashed | HardTimeLimitExceeded
               | MemoryLimitExceeded) -> tuple[list[Done], list[Job]]:
        """The child is gone in the middle of a batch, at job `index`.

        Jobs before it finished and stored their outcomes; so may the job at it, just
        before the child died (its record says). Otherwise that job failed with
        `error`, recorded here since the child cannot. The jobs after it never started.
        """
        seconds = time.monotonic() - batch.started
        done: list[Done] = []
        for job in batch.jobs[:index + 1]:
            job_id = job.envelope.job_id
            outcome = stored_outcome(self.store.get(job_id), batch.handed_at)
            done.append((job, outcome or self._failed_outside(job_id, error), seconds))
        return done, batch.jobs[index + 1:]

    def _reject(self, delivery: Delivery, error: InvalidMessage) -> None:
        """A message that cannot become a job: a clear error in its reply and its state,
        dead-lettered; the consumer goes on."""
        envelope = envelope_of(delivery.properties, delivery.body)
        attempt = self._attempts_so_far(envelope.job_id) + 1
        outcome = record_failure(self.store, self.service.max_retries, envelope.job_id,
                                 Outcome.failure(error, settle.failure_reply(error), attempt))
        settle.settle(self.session_for(delivery), self.service, delivery, envelope, outcome)
        self._log_outcome(envelope, outcome, 0.0)

    def _log_outcome(self, envelope: Envelope, outcome: Outcome, seconds: float) -> None:
        described = settle.describe(outcome, self.service.max_retries)
        duration_ms = round(seconds * 1000)
        log.info("job %s %s (attempt %d, %d ms)", envelope.job_id, described,
                 outcome.attempt, duration_ms, extra=fields(
                     job_id=envelope.job_id, job_type=self.service.job_type,
                     queue=self.service.queue, attempt=outcome.attempt,
                     duration_ms=duration_ms, outcome=described))

    def session_for(self, delivery: Delivery) -> Session:
        """The session to settle on; BrokerUnavailable if the delivery's session died."""
        if self.session is not delivery.session or not delivery.session.alive:
            raise BrokerUnavailable("the session that received this job is gone")
        return delivery.session

    def _failed_outside(self, job_id: str, error: ExecutorCrashed | HardTimeLimitExceeded
                        | MemoryLimitExceeded) -> Outcome:
        """Record a failure the child could not record itself (it is dead)."""
        log.warning("job %s: %s", job_id, error.message, extra=fields(job_id=job_id))
        attempt = max(self._attempts_so_far(job_id), 1)
        return record_failure(self.store, self.service.max_retries, job_id,
                              Outcome.failure(error, settle.failure_reply(error), attempt))

    def _keep_alive(self) -> None:
        self.notifier.watchdog()
        if self.session is not None and self.session.alive:
            self.session.pump(0)

    def _respect_rate_limit(self) -> None:
        if self.service.rate_limit:
            wait = self._last_start + 1 / self.service.rate_limit - time.monotonic()
            while wait > 0 and not self.stop.immediate:
                self._keep_alive()
                time.sleep(min(wait, JOB_POLL_SECONDS))
                wait = self._last_start + 1 / self.service.rate_limit - time.monotonic()
        self._last_start = time.monotonic()

    def _recycle_if_needed(self) -> None:
        if self._next is not None:  # the child is busy; it is recycled after that batch
            return
        reason = self.executor.needs_recycling()
        if not reason:
            self.executor.prepare_successor()
        else:
            log.info("recycling the executor child: %s", reason)
            self.executor.stop()
            self.executor.start(idle=self._keep_alive)

    def _attempts_so_far(self, job_id: str) -> int:
        record = self.store.get(job_id)
        return record.attempts if record else 0
