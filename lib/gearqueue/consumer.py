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
from .runner import record_failure
from .session import Delivery, Session
from .state import StateStore
from .stop import StopRequest

log = logging.getLogger(__name__)

#: How often the main loop turns while a job runs: heartbeats, watchdog, limits.
JOB_POLL_SECONDS = 0.2
IDLE_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class EarlyStart:
    """A delivery whose job the executor child already runs while the previous one settles."""

    delivery: Delivery
    envelope: Envelope
    fresh: bool
    started: float


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
        self._early: EarlyStart | None = None

    # --- life cycle ------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped. Raises ConfigError/TopologyMismatch/ExecutorStartFailed."""
        self.store.check_writable()
        self.notifier.status("starting: loading the executor")
        self.executor.start(idle=self.notifier.watchdog)
        failures = 0
        try:
            while not self.stop.requested:
                try:
                    self.session = Session(self.settings, self.service, self.identifier)
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
                    self._finish_early_start()
                    self.session.close()
        finally:
            self.notifier.stopping()
            self.executor.stop()
            log.info("stopped")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.requested and time.monotonic() < deadline:
            self.notifier.watchdog()
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))

    def _serve(self, session: Session) -> None:
        while not self.stop.requested or self._early is not None:
            if self._early is not None:  # started already: it is the current job
                early, self._early = self._early, None
                self._handle(early.delivery, early)
                continue
            if session.pending:
                self._handle(session.pending.popleft())
                continue
            if session.cancelled:  # after settling what it had: nothing is abandoned
                raise BrokerUnavailable("consumer cancelled by the broker")
            self.notifier.status("idle")
            self.notifier.watchdog()
            session.pump(IDLE_POLL_SECONDS)
        session.stop_consuming()
        session.pump(0)

    # --- one delivery ----------------------------------------------------------------

    def _handle(self, delivery: Delivery, early: EarlyStart | None = None) -> None:
        envelope = early.envelope if early else envelope_of(delivery.properties, delivery.body)
        fresh = early.fresh if early else not (delivery.redelivered or delivery.retried)
        started = early.started if early else time.monotonic()
        job_fields = fields(job_id=envelope.job_id, job_type=self.service.job_type,
                            queue=self.service.queue)
        try:
            payload = None if early else decode_payload(
                delivery.properties, delivery.body, self.service.max_message_bytes)
        except InvalidMessage as error:
            attempt = self._attempts_so_far(envelope.job_id) + 1
            outcome = record_failure(self.store, self.service.max_retries, envelope.job_id,
                                     Outcome.failure(error, settle.failure_reply(error), attempt))
        else:
            if early is None:
                self._respect_rate_limit()
            outcome = self._run_in_executor(envelope.job_id, payload, fresh, delivery)
            if outcome is None:  # immediate stop: the message went back to the queue
                return
            self._start_next_early(delivery.session)
        duration_ms = round((time.monotonic() - started) * 1000)
        settle.settle(self.session_for(delivery), self.service, delivery, envelope, outcome)
        described = settle.describe(outcome, self.service.max_retries)
        log.info("job %s %s (attempt %d, %d ms)", envelope.job_id, described,
                 outcome.attempt, duration_ms, extra={**job_fields, **fields(
                     attempt=outcome.attempt, duration_ms=duration_ms, outcome=described)})
        self._recycle_if_needed()

    def session_for(self, delivery: Delivery) -> Session:
        """The session to settle on; BrokerUnavailable if the delivery's session died."""
        if self.session is not delivery.session or not delivery.session.alive:
            raise BrokerUnavailable("the session that received this job is gone")
        return delivery.session

    def _start_next_early(self, session: Session) -> None:
        """Hand the next delivery to the child now, before this job is replied to and acked.

        With prefetch > 1 the child then runs job N+1 while this thread settles job N,
        instead of the two taking turns. Only a delivery that can run as it is: it
        decodes, no rate limit or recycling is due, no stop was asked for. Job N+1's
        attempt and result are stored by the child as always; job N's reply and ack
        still follow its stored result.
        """
        if (not session.pending or self.stop.requested or self.service.rate_limit
                or not self.executor.running or self.executor.needs_recycling()):
            return
        delivery = session.pending[0]
        try:
            payload = decode_payload(delivery.properties, delivery.body,
                                     self.service.max_message_bytes)
        except InvalidMessage:
            return  # rejected in its turn, on the usual path
        session.pending.popleft()
        envelope = envelope_of(delivery.properties, delivery.body)
        fresh = not (delivery.redelivered or delivery.retried)
        self.executor.submit(envelope.job_id, payload, fresh)
        self._early = EarlyStart(delivery, envelope, fresh, time.monotonic())

    def _finish_early_start(self) -> None:
        """The session died with a job started early: let it finish (its result is
        stored; the redelivered message replies from it), then forget it."""
        early, self._early = self._early, None
        if early is not None:
            with contextlib.suppress(BrokerUnavailable):
                self._run_in_executor(early.envelope.job_id, None, early.fresh,
                                      early.delivery)

    def _run_in_executor(self, job_id: str, payload: dict[str, object] | None, fresh: bool,
                         delivery: Delivery) -> Outcome | None:
        """Run a job (payload None: the child already runs it) and return its outcome."""
        if payload is not None:
            if not self.executor.running:
                self.executor.start(idle=self._keep_alive)
            self.executor.submit(job_id, payload, fresh)
        service = self.service
        broker_lost: BrokerUnavailable | None = None
        while True:
            try:
                outcome = self.executor.poll(JOB_POLL_SECONDS)
            except ExecutorDied as error:
                return self._failed_outside(job_id, ExecutorCrashed(str(error)))
            if outcome is not None:
                if broker_lost is not None:
                    raise broker_lost  # result is stored; the redelivery replies from it
                return outcome
            elapsed = self.executor.elapsed()
            status = f"job {job_id} running {elapsed:.0f} s"
            if self.stop.requested:  # SIGTERM: say so now, not only once the job is done
                self.notifier.stopping(f"{status}, stopping after it")
            else:
                self.notifier.status(status)
            self.notifier.watchdog()
            if self.stop.immediate:
                self.executor.kill()
                if broker_lost is None:
                    delivery.session.requeue(delivery)
                return None
            if broker_lost is None:
                try:
                    delivery.session.pump(0)
                except BrokerUnavailable as error:
                    log.warning("lost the broker during job %s; letting it finish: %s",
                                job_id, error)
                    broker_lost = error
            if service.soft_time_limit and elapsed > service.soft_time_limit:
                self.executor.signal_soft_limit()
            if service.time_limit and elapsed > service.time_limit:
                self.executor.kill()
                return self._failed_outside(job_id, HardTimeLimitExceeded(
                    f"job ran past time_limit ({service.time_limit:g} s) and was killed"))
            rss = self.executor.rss_mb() if service.max_memory_mb else 0.0
            if rss > 2 * service.max_memory_mb > 0:
                self.executor.kill()
                return self._failed_outside(job_id, MemoryLimitExceeded(
                    f"executor RSS {rss:.0f} MiB passed twice max_memory_mb "
                    f"({service.max_memory_mb} MiB) and it was killed"))

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
        if self._early is not None:  # the child is busy; it is recycled after that job
            return
        reason = self.executor.needs_recycling()
        if reason:
            log.info("recycling the executor child: %s", reason)
            self.executor.stop()
            self.executor.start(idle=self._keep_alive)

    def _attempts_so_far(self, job_id: str) -> int:
        record = self.store.get(job_id)
        return record.attempts if record else 0
