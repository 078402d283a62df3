"""What a consumer tells the world besides its replies: the seam for status, metrics, events.

The loop calls one `Observers` at a few points of its life; each observer (the live
status file, the Prometheus metrics, the events exchange) is a subclass of
`ConsumerObserver` that overrides the hooks it needs. As in Dramatiq's middleware, the
hooks do nothing by default and are called in one place, which logs a failing hook
instead of letting it change what happens to a job: an observer can never lose, delay
or repeat a job. `settled` is called after a batch's plan is carried out (acked), so
nothing an observer does delays an ack.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ..log import fields

if TYPE_CHECKING:
    from ..config import Settings
    from .channel import Channel
    from .settlement import Settled

log = logging.getLogger(__name__)


class ExecutorView(Protocol):
    """What an observer may read of whatever runs the jobs (the executor child, or the
    consumer itself for inline jobs): read-only, cheap, never a way to change a job."""

    @property
    def pid(self) -> int | None:
        """The process that runs the jobs (None between two children)."""

    def rss_mb(self) -> float:
        """Its resident memory, MiB (0 when unknown)."""


class ConsumerObserver:
    """Do-nothing hooks; override the ones you need. Called on the consumer's main
    thread, so they must return quickly (no blocking I/O over the network)."""

    def started(self, executor: ExecutorView) -> None:
        """The executor is up (once, before the first connect); `executor` stays valid
        across recycling (it shows the current child)."""

    def consuming(self, channel: Channel) -> None:
        """Connected (again) and consuming on `channel`."""

    def disconnected(self, error: Exception) -> None:
        """The broker was lost or could not be reached; a reconnect follows."""

    def batch_started(self, job_ids: Sequence[str]) -> None:
        """These jobs were handed to the executor, in order."""

    def job_running(self, job_id: str, elapsed: float) -> None:
        """A tick while `job_id` runs (about every JOB_POLL_SECONDS)."""

    def settled(self, jobs: Sequence[Settled]) -> None:
        """These jobs were settled: their replies sent and their messages acked."""

    def idle(self) -> None:
        """A tick while no job runs: about every IDLE_POLL_SECONDS while consuming, more
        often while the executor starts, the loop waits to reconnect or waits for the
        state database. A sign of life, not a state (see `waiting`)."""

    def waiting(self, reason: str) -> None:
        """Taking no job for now: reconnecting, or waiting for the state database."""

    def stopping(self) -> None:
        """A stop was asked for: the job running (if any) is the last one."""

    def stopped(self) -> None:
        """The consumer is exiting (cleanly): release what the observer holds."""


class Observers(ConsumerObserver):
    """Every observer of one consumer, called in order; a hook that raises is logged
    (once per observer and hook, then at DEBUG) and the others still run."""

    def __init__(self, observers: Sequence[ConsumerObserver] = ()) -> None:
        self.observers = list(observers)
        self._failed: set[tuple[int, str]] = set()

    def _each(self, hook: str, *args: object) -> None:
        for index, observer in enumerate(self.observers):
            try:
                getattr(observer, hook)(*args)
            except Exception:
                key = (index, hook)
                level = logging.DEBUG if key in self._failed else logging.WARNING
                self._failed.add(key)
                log.log(level, "observer %s failed in %s; the job is not affected",
                        type(observer).__name__, hook, exc_info=True,
                        extra=fields(observer=type(observer).__name__))

    def started(self, executor: ExecutorView) -> None:
        self._each("started", executor)

    def consuming(self, channel: Channel) -> None:
        self._each("consuming", channel)

    def disconnected(self, error: Exception) -> None:
        self._each("disconnected", error)

    def batch_started(self, job_ids: Sequence[str]) -> None:
        self._each("batch_started", job_ids)

    def job_running(self, job_id: str, elapsed: float) -> None:
        self._each("job_running", job_id, elapsed)

    def settled(self, jobs: Sequence[Settled]) -> None:
        self._each("settled", jobs)

    def idle(self) -> None:
        self._each("idle")

    def waiting(self, reason: str) -> None:
        self._each("waiting", reason)

    def stopping(self) -> None:
        self._each("stopping")

    def stopped(self) -> None:
        self._each("stopped")


def observers_for(settings: Settings, job_type: str, instance: str,
                  identifier: str) -> list[ConsumerObserver]:
    """The observers gear.ini turns on for one consumer instance (`instance`: systemd's
    %i, "0" for a consumer started by hand). Each is built here, in the order called.

    The live status file is always kept; metrics when [metrics] asks for them (the
    `metrics` object is there for the events publisher too: `metrics.event_failed()`).
    """
    from .executor import isolation_of
    from .instance_status import InstanceStatus
    from .metrics import ConsumerMetrics
    from .metrics_output import metrics_output_for

    status = InstanceStatus(settings, job_type, instance, identifier,
                            inline=isolation_of(settings.service(job_type)) == "inline")
    output = metrics_output_for(settings, job_type, instance, identifier)
    metrics = ConsumerMetrics(job_type, instance, output)
    observers: list[ConsumerObserver] = [status, metrics]
    if settings.rabbitmq.events_exchange:
        from .events import EventPublisher  # imported here: it subclasses ConsumerObserver

        observers.append(EventPublisher(settings.rabbitmq.events_exchange,
                                        settings.service(job_type),
                                        host=socket.gethostname(), instance=instance,
                                        count_failed=metrics.event_failed))
    return observers
