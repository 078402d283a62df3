"""The consumer's main loop: one broker channel on the main thread, jobs in the child.

`Consumer.run` is the whole life of a consumer instance: connect (reconnects use
capped exponential backoff with full jitter; the executor child survives them, so R
stays loaded), then `serve`: take deliveries, hand them to the executor child in
batches, keep the connection, the watchdog and the limits while the child works, and
carry out the settlement of each batch (`settlement.plan`) against the channel.

When the job-state store fails (`StateStoreUnavailable`, met by the child or by this
process), no attempt can be counted and no result stored, so nothing can be settled:
the batch in hand is given back to the queue untouched (a plan of give-backs, no ack)
and the loop waits for the store (worker/store_wait.py): its consumer cancelled, its
connection, heartbeats and watchdog kept, the store probed with capped, jittered
back-off; then it consumes again. The jobs given back are run, or replied to from
their stored results, when they come back; none of them has an attempt counted by the
outage (except the one that was running, which did start).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from ..backoff import full_jitter
from ..config import Settings
from ..errors import (
    BrokerUnavailable,
    ExecutorCrashed,
    ExecutorDied,
    InvalidMessage,
    PublishError,
    StateStoreUnavailable,
    TopologyMismatch,
)
from ..log import fields
from ..message import decode_payload, envelope_of
from ..state import open_store
from ..state.migrate import import_record_files
from . import settlement, testhook
from .channel import Channel, Delivery
from .child import Finished, JobOrder
from .executor import JobExecutor, executor_for
from .inflight import BatchResult, InFlight, InFlightBatch
from .limits import Kill, Limits, SignalSoftLimit
from .notify import Notifier
from .observers import ConsumerObserver, Observers
from .outside import OutsideFailures
from .settlement import Ack, GiveBack, Plan, Publish, Reply, Settled
from .stop import StopRequest
from .store_wait import StoreWait

log = logging.getLogger(__name__)

#: How often the main loop turns while a job runs: heartbeats, watchdog, limits.
JOB_POLL_SECONDS = 0.2
IDLE_POLL_SECONDS = 1.0
class Consumer:
    def __init__(self, settings: Settings, job_type: str, *, identifier: str,
                 stop: StopRequest | None = None, notifier: Notifier | None = None,
                 executor: JobExecutor | None = None,
                 open_channel: Callable[[], Channel] | None = None,
                 observers: list[ConsumerObserver] | None = None) -> None:
        """`executor` and `open_channel` are for tests that drive the loop in-process
        (a warm child shared by several, a channel that records what it is asked).
        `observers` hear of its life (worker/observers.py): status, metrics, events."""
        self.settings = settings
        self.service = settings.service(job_type)
        self.identifier = identifier
        self.stop = stop or StopRequest()
        self.notifier = notifier or Notifier()
        self.store = open_store(settings, job_type)
        self.limits = Limits(self.service)
        self.executor: JobExecutor = executor or executor_for(
            settings, self.service, identifier, keep_alive=self._keep_alive_during_batch,
            stop_requested=lambda: self.stop.requested)
        self.job_log = settlement.JobLog(self.service)
        self.observers = Observers(observers or ())
        self.outside = OutsideFailures(settings, self.service, self.store)
        self.store_wait = StoreWait(self.service, self.store, self.stop, tick=self._tick,
                                    say=self._waiting, poll_seconds=JOB_POLL_SECONDS)
        # The broker of the channel before (lost, or cancelled us) is tried last.
        self._open_channel = open_channel or (
            lambda: Channel(self.settings, self.service, self.identifier,
                            avoid=getattr(self.channel, "url", None)))
        self.channel: Channel | None = None
        self._last_start = 0.0
        #: A batch the child already runs while the previous one is settled.
        self._next: InFlightBatch | None = None

    # --- life cycle ------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped. Raises ConfigError/TopologyMismatch/ExecutorStartFailed."""
        self.store.check_writable()
        import_record_files(self.store, self.settings.paths.state_dir / self.service.job_type)
        self.notifier.status("starting: loading the executor")
        self.executor.start(idle=self._starting)
        self.observers.started(self.executor)
        failures = 0
        try:
            while not self.stop.requested:
                try:
                    channel = self._open_channel()
                except TopologyMismatch:
                    raise
                except BrokerUnavailable as error:
                    failures += 1
                    delay = full_jitter(failures, 0.5, self.settings.rabbitmq.reconnect_max_delay)
                    log.warning("broker unavailable (attempt %d), retrying in %.1f s: %s",
                                failures, delay, error)
                    self.observers.disconnected(error)
                    self._waiting(f"reconnecting to broker (attempt {failures})")
                    self._sleep(delay)
                    continue
                failures = 0
                log.info("consuming from '%s' (prefetch %d)", self.service.queue,
                         self.service.prefetch, extra=fields(queue=self.service.queue))
                self.notifier.ready("idle")
                self.observers.consuming(channel)
                try:
                    self.serve(channel)
                except BrokerUnavailable as error:
                    if not self.stop.requested:
                        log.warning("lost the broker: %s; reconnecting", error)
                        self.observers.disconnected(error)
                finally:
                    channel.close()
        finally:
            self.notifier.stopping()
            self.observers.stopping()
            self.executor.shutdown()
            self.job_log.flush()
            self.observers.stopped()
            log.info("stopped")

    def serve(self, channel: Channel) -> None:
        """Consume from `channel` until a stop is asked for (then give back what was not
        started), or until it fails (BrokerUnavailable)."""
        self.channel = channel
        try:
            while not self.stop.requested or self._next is not None:
                if self._next is not None:  # started already: it is the current batch
                    batch, self._next = self._next, None
                    self._finish(batch)
                    continue
                if channel.peek() is not None:
                    self._take(channel)
                    continue
                if channel.cancelled:  # after settling what it had: nothing is abandoned
                    raise BrokerUnavailable("consumer cancelled by the broker")
                self.notifier.status("idle")
                self._tick()
                channel.pump(IDLE_POLL_SECONDS)
            channel.stop_consuming()
            channel.pump(0)
        finally:
            self._drain_next()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.requested and time.monotonic() < deadline:
            self._tick()
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))

    # --- deliveries --------------------------------------------------------------------

    def _take(self, channel: Channel) -> None:
        """Run the deliveries the channel holds: a batch of those that decode, or settle
        the first one that does not."""
        delivery = channel.next_delivery()
        assert delivery is not None
        try:
            first = self._in_flight(delivery)
        except InvalidMessage as error:
            self._reject(delivery, error)
            return
        if not self.executor.running:
            self.executor.start(idle=self._starting)
        self._respect_rate_limit()
        self._finish(self._start_batch(channel, first))

    def _in_flight(self, delivery: Delivery) -> InFlight:
        payload = decode_payload(delivery.properties, delivery.body,
                                 self.service.max_message_bytes)
        return InFlight(delivery, envelope_of(delivery.properties, delivery.body), payload,
                        fresh=not (delivery.redelivered or delivery.retried))

    def _start_batch(self, channel: Channel, first: InFlight) -> InFlightBatch:
        """Hand the child `first` and the deliveries after it that decode, in one message.

        One message there and one back for the whole batch: with batch_size > 1 the
        process wake-ups, pickling and the ack are paid per batch, not per job. Each
        job still has its attempt and its result stored by the child, in order.
        """
        limit = 1 if self.service.rate_limit else min(
            self.service.jobs_per_batch, self.limits.allowance(self.executor.jobs_done))
        jobs = [first]
        while len(jobs) < limit and (delivery := channel.peek()) is not None:
            try:
                job = self._in_flight(delivery)
            except InvalidMessage:
                break  # rejected in its turn
            channel.next_delivery()
            jobs.append(job)
        handed_at = time.time()  # before: a fast child may store a result at once
        self.executor.submit([JobOrder(job.envelope.job_id, job.payload, job.fresh)
                              for job in jobs])
        self.observers.batch_started([job.envelope.job_id for job in jobs])
        return InFlightBatch(jobs, channel, handed_at, time.monotonic())

    def _start_next_early(self, channel: Channel) -> None:
        """Hand the next deliveries to the child now, before this batch is settled.

        The child then runs them while this thread replies and acks, instead of the two
        taking turns. Only deliveries that can run as they are: they decode, no rate
        limit or recycling is due, no stop was asked for. Their attempts and results
        are stored by the child as always; this batch's replies and acks still follow
        its stored results.
        """
        delivery = channel.peek()
        if (delivery is None or self.stop.requested or self.service.rate_limit
                or not self.executor.running or self._recycling() is not None):
            return
        try:
            first = self._in_flight(delivery)
        except InvalidMessage:
            return  # rejected in its turn, on the usual path
        channel.next_delivery()
        self._next = self._start_batch(channel, first)

    def _drain_next(self) -> None:
        """The channel died with a batch started early: let it finish (its results are
        stored; the redelivered messages reply from them), then forget it."""
        batch, self._next = self._next, None
        if batch is not None:
            with contextlib.suppress(BrokerUnavailable):
                self._wait(batch)

    # --- one batch -----------------------------------------------------------------------

    def _finish(self, batch: InFlightBatch) -> None:
        """Wait for a batch, then settle it."""
        try:
            result = self._wait(batch)
        except StateStoreUnavailable as fault:  # the child's store, or ours (outside.py)
            result = BatchResult.given_back([job.delivery for job in batch.jobs], fault)
        if result is None:  # immediate stop: the messages went back to the queue
            return
        if not result.unstarted:
            self._start_next_early(batch.channel)
        self._settle(result)
        self._recycle_if_needed()

    def _settle(self, result: BatchResult) -> None:
        """One plan, carried out, logged; after a store fault, a plan of give-backs
        (consuming paused first, so the broker does not hand them straight back), and
        then no job until the store answers."""
        first = result.settled[0].delivery if result.settled else result.unstarted[0]
        channel = self._channel_of(first)
        if result.store_fault is not None:
            channel.stop_consuming()
        done = settlement.plan(self.service, result.settled, result.unstarted)
        self._carry_out(channel, done)
        self.job_log.settled(done)
        if done.settled:
            self.observers.settled(done.settled)
        if result.store_fault is not None:
            self.store_wait.until_it_answers(channel, result.store_fault,
                                             len(result.unstarted))

    def _wait(self, batch: InFlightBatch) -> BatchResult | None:
        """Keep the connection, the watchdog and the limits while the child runs the batch.

        Returns what became of its jobs, or None after an immediate stop.
        """
        broker_lost: BrokerUnavailable | None = None
        while True:
            try:
                finished = self.executor.poll(JOB_POLL_SECONDS)
            except ExecutorDied as died:
                return self.outside.split(batch, died.done, ExecutorCrashed(str(died)))
            except StateStoreUnavailable:
                if broker_lost is not None:
                    raise broker_lost from None  # redelivered anyway, after the reconnect
                raise
            if finished is not None:
                if broker_lost is not None:
                    raise broker_lost  # results are stored; the redeliveries reply from them
                return self._finished(batch, finished)
            current = batch.jobs[max(self.executor.current, 0)].envelope.job_id
            elapsed = self.executor.elapsed()
            self._report(f"job {current} running {elapsed:.0f} s")
            self.observers.job_running(current, elapsed)
            if self.stop.immediate:
                self.executor.kill()
                if broker_lost is None:
                    for job in batch.jobs:
                        batch.channel.requeue(job.delivery)
                return None
            if broker_lost is None:
                broker_lost = self._pump_during(batch.channel, current)
            action = self.limits.during_job(elapsed, self._rss())
            if isinstance(action, SignalSoftLimit):
                self.executor.signal_soft_limit()
            elif isinstance(action, Kill):
                index = max(self.executor.current, 0)
                self.executor.kill()
                return self.outside.split(batch, index, action.error)

    def _report(self, status: str) -> None:
        """STATUS and WATCHDOG while a job runs; after SIGTERM, say so now, not only
        once the job is done (and start no further job of the batch)."""
        if self.stop.requested:
            self.executor.stop_after_current()
            self.notifier.stopping(f"{status}, stopping after it")
            self.observers.stopping()
        else:
            self.notifier.status(status)
        self.notifier.watchdog()

    def _waiting(self, reason: str) -> None:
        self.notifier.status(reason)
        self.observers.waiting(reason)

    @staticmethod
    def _pump_during(channel: Channel, current: str) -> BrokerUnavailable | None:
        """Heartbeats while the child works; a lost broker lets the job finish (its
        result is stored, and its redelivery replies from it)."""
        try:
            channel.pump(0)
        except BrokerUnavailable as error:
            log.warning("lost the broker during job %s; letting it finish: %s",
                        current, error)
            return error
        return None

    @staticmethod
    def _finished(batch: InFlightBatch, finished: list[Finished]) -> BatchResult:
        """The child sent back the first len(finished) jobs; the rest never started."""
        settled = [Settled(job.delivery, job.envelope, done.outcome, done.seconds)
                   for job, done in zip(batch.jobs, finished, strict=False)]
        return BatchResult(settled, [job.delivery for job in batch.jobs[len(settled):]])

    def _reject(self, delivery: Delivery, error: InvalidMessage) -> None:
        """A message that cannot become a job: a clear error in its reply and its state,
        dead-lettered; the consumer goes on."""
        envelope = envelope_of(delivery.properties, delivery.body)
        try:
            outcome = self.outside.rejected(envelope.job_id, error)
        except StateStoreUnavailable as fault:
            self._settle(BatchResult.given_back([delivery], fault))
            return
        self._settle(BatchResult([Settled(delivery, envelope, outcome, 0.0)], []))

    @staticmethod
    def _carry_out(channel: Channel, plan: Plan) -> None:
        """The steps of a settlement plan, in order, on the channel the jobs came from."""
        for step in plan.steps:
            if isinstance(step, Publish):
                try:
                    channel.publish_confirmed(step.exchange, step.routing_key, step.body,
                                              step.properties)
                except PublishError as error:
                    # Not acked: the message comes back after the reconnect, and its
                    # state record makes the repeat harmless.
                    raise BrokerUnavailable(f"could not hand the job on: {error}") from error
            elif isinstance(step, Reply):
                channel.reply(step.reply_to, step.correlation_id, step.reply)
            elif isinstance(step, GiveBack):
                channel.requeue(step.delivery)
            elif isinstance(step, Ack):
                testhook.reached(testhook.AFTER_REPLY)
                channel.ack(step.delivery, multiple=step.multiple)

    def _channel_of(self, delivery: Delivery) -> Channel:
        """The channel to settle on; BrokerUnavailable if the delivery's channel died."""
        if self.channel is not delivery.channel or not delivery.channel.alive:
            raise BrokerUnavailable("the session that received this job is gone")
        return delivery.channel

    # --- between batches -------------------------------------------------------------

    def _keep_alive_during_batch(self) -> None:
        """Between the jobs of an inline batch: a lost broker lets the batch finish
        (its results are stored, and their redeliveries reply from them)."""
        with contextlib.suppress(BrokerUnavailable):
            self._keep_alive()

    def _tick(self) -> None:
        """A sign of life while no job runs: the watchdog, the observers' idle tick."""
        self.notifier.watchdog()
        self.observers.idle()

    def _starting(self) -> None:
        """While the executor (re)starts: the connection, the watchdog, signs of life."""
        self._keep_alive()
        self.observers.idle()

    def _keep_alive(self) -> None:
        self.notifier.watchdog()
        if self.channel is not None and self.channel.alive:
            self.channel.pump(0)

    def _respect_rate_limit(self) -> None:
        if self.service.rate_limit:
            wait = self._last_start + 1 / self.service.rate_limit - time.monotonic()
            while wait > 0 and not self.stop.immediate:
                self._keep_alive()
                time.sleep(min(wait, JOB_POLL_SECONDS))
                wait = self._last_start + 1 / self.service.rate_limit - time.monotonic()
        self._last_start = time.monotonic()

    def _rss(self) -> float:
        return self.executor.rss_mb() if self.limits.watches_memory else 0.0

    def _recycling(self) -> str | None:
        recycle = self.limits.recycling(self.executor.jobs_done, self._rss())
        return recycle.reason if recycle is not None else None

    def _recycle_if_needed(self) -> None:
        if self._next is not None:  # the child is busy; it is recycled after that batch
            return
        reason = self._recycling()
        if reason is None:
            if self.limits.successor_due(self.executor.jobs_done):
                self.executor.start_successor()
        else:
            log.info("recycling the executor child: %s", reason)
            self.executor.stop()
            self.executor.start(idle=self._starting)
