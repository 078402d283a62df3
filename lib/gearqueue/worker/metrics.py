"""The observer that counts a consumer's jobs for Prometheus (prometheus_client).

Each consumer has a registry of its own (never prometheus_client's global one: no
module-level state, and nothing of another consumer in a test's process), served over
HTTP or written to a textfile by worker/metrics_output.py. Every series has the labels
`job_type` and `instance` (systemd's %i; Prometheus keeps its own `instance`, the
scraped host:port, and stores this one as `exported_instance`).

What a job costs here: a counter, a histogram bucket and a clock read; the executor's
RSS is read only when the metrics are (at a scrape, or a textfile write).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .observers import ConsumerObserver, ExecutorView
from .settlement import Settled, Verdict

if TYPE_CHECKING:
    from .channel import Channel
    from .metrics_output import MetricsOutput

#: Job durations span milliseconds (echo) to hours (a large projection).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)
LABELS = ("job_type", "instance")


class ConsumerMetrics(ConsumerObserver):
    """gear_* metrics of one consumer. `event_failed()` is for the events publisher:
    an event that could not be published (its job is not affected)."""

    def __init__(self, job_type: str, instance: str,
                 output: MetricsOutput | None = None) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.output = output
        values = (job_type, instance)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=registry)

        jobs = Counter("gear_jobs", "Jobs settled, by verdict: succeeded, replayed (a "
                       "stored success answered again), replayed-failure, retrying (sent "
                       "to a retry queue), failed (dead-lettered).",
                       (*LABELS, "verdict"), registry=registry)
        self._jobs = {verdict: jobs.labels(*values, verdict.value) for verdict in Verdict}
        self._duration = Histogram(
            "gear_job_duration_seconds", "Seconds a job ran (its attempt, in the executor).",
            LABELS, buckets=DURATION_BUCKETS, registry=registry).labels(*values)
        self._retries = counter("gear_retries", "Jobs republished to a retry queue "
                                "(a transient failure with attempts left).").labels(*values)
        self._dead = counter("gear_dead_letters", "Jobs published to the dead-letter "
                             "queue (permanent failure, or out of attempts).").labels(*values)
        self._reconnects = counter("gear_reconnects", "Times the consumer consumed again "
                                   "after losing the broker.").labels(*values)
        self._events_failed = counter(
            "gear_events_failed", "Job events that could not be published to the events "
            "exchange (the jobs were settled all the same).").labels(*values)
        self._last_success = gauge("gear_last_success_timestamp_seconds",
                                   "Unix time the last job succeeded.").labels(*values)
        self._rss = gauge("gear_executor_rss_bytes", "Resident memory of the process that "
                          "runs the jobs (the executor child; inline: the consumer)."
                          ).labels(*values)
        self._connected = gauge("gear_broker_connected", "1 while consuming from the "
                                "broker.").labels(*values)
        self._up = gauge("gear_consumer_up", "1 while the consumer runs; 0 in the last "
                         "textfile of one that stopped.").labels(*values)
        gauge("gear_consumer_start_time_seconds", "Unix time the consumer started."
              ).labels(*values).set(time.time())
        self._up.set(1)
        self._consumed_before = False

    # --- hooks -------------------------------------------------------------------------

    def started(self, executor: ExecutorView) -> None:
        self._rss.set_function(lambda: executor.rss_mb() * 2**20)
        if self.output is not None:
            self.output.open(self.registry)

    def consuming(self, channel: Channel) -> None:
        if self._consumed_before:
            self._reconnects.inc()
        self._consumed_before = True
        self._connected.set(1)

    def disconnected(self, error: Exception) -> None:
        self._connected.set(0)

    def settled(self, jobs: Sequence[Settled]) -> None:
        succeeded = False
        for job in jobs:
            verdict = job.verdict
            self._jobs[verdict].inc()
            self._duration.observe(job.seconds)
            if verdict is Verdict.RETRYING:
                self._retries.inc()
            elif verdict is Verdict.FAILED:
                self._dead.inc()
            elif verdict is Verdict.SUCCEEDED:
                succeeded = True
        if succeeded:
            self._last_success.set(time.time())
        self._tick()

    def idle(self) -> None:
        self._tick()

    def job_running(self, job_id: str, elapsed: float) -> None:
        self._tick()

    def stopped(self) -> None:
        self._up.set(0)
        self._connected.set(0)
        if self.output is not None:
            self.output.close(self.registry)

    # --- for other observers -------------------------------------------------------------

    def event_failed(self, count: int = 1) -> None:
        """Count events the events publisher could not publish."""
        self._events_failed.inc(count)

    def _tick(self) -> None:
        if self.output is not None:
            self.output.tick(self.registry)
