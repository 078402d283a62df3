"""Every finished attempt, announced on the events exchange (`[rabbitmq] events_exchange`).

An observer (worker/observers.py): `settled` runs after the batch's replies and its ack,
so an event can never delay, fail or repeat a job. Routing keys, one per attempt:

- `<job_type>.succeeded`: the job succeeded (also a redelivery answered from its stored
  success: `"replayed": true`);
- `<job_type>.failed`: this attempt failed and a retry follows (`"outcome": "retrying"`);
- `<job_type>.dead_lettered`: the job failed for good and went to `<queue>.dead` (also a
  redelivery answered from its stored final failure: `"replayed": true`).

Events are at least once, like the jobs: a replayed job's event may be the second for
that job (its first delivery's consumer may have died after the ack was sent, before
the event), so a subscriber that counts jobs keys them by `job_id`. `gearqueue dead
replay` publishes nothing itself: the job runs again and its consumer announces it.

Why it cannot get in the way: the events go out on a channel of their own on the
consumer's connection, without publisher confirms and without `mandatory` (an event
no one subscribed to is normal), and are only buffered here: they leave with the
loop's next socket write (its next pump, within JOB_POLL_SECONDS, or the next ack), so
an event costs the main thread its encoding and no system call, and waits for nothing.
What stops an event stops only events, each counted in `failed`:
- the connection is blocked by a broker resource alarm: the events are skipped (a
  publish would make the broker stop reading the connection, acks included);
- the broker closes the channel (the exchange is missing: 404, or refused: 403, or of
  another type: 406). It does so asynchronously, so the events of the round it came
  in on are counted as lost; the channel is reopened (and the exchange declared
  again) at most every REOPEN_SECONDS, and the events in between are counted;
- a full exchange (a bound queue at max-length with reject-publish) drops an
  unconfirmed message silently: that is not seen here (docs/operations.md, Events).
Problems are logged once at WARNING, then at most every LOG_EVERY_SECONDS (with how
many there were in between), and pika's own line about our channel is held back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from ..config import ServiceSettings
from ..errors import BrokerError
from ..log import fields
from ..topology import declare_events_exchange
from .observers import ConsumerObserver
from .settlement import Settled, Verdict

if TYPE_CHECKING:
    from .channel import Channel

log = logging.getLogger(__name__)

#: The last word of each verdict's routing key.
EVENT_OF = {
    Verdict.SUCCEEDED: "succeeded", Verdict.REPLAYED: "succeeded",
    Verdict.RETRYING: "failed",
    Verdict.FAILED: "dead_lettered", Verdict.REPLAYED_FAILURE: "dead_lettered",
}
#: A reply whose JSON is at most this long rides in the event (else `reply_bytes` only).
REPLY_LIMIT_BYTES = 1024
#: An error message is cut to this many characters (the full one is in the job state).
MESSAGE_LIMIT = 500
REOPEN_SECONDS = 5.0
LOG_EVERY_SECONDS = 60.0


def event_time(now: float) -> str:
    """The `time` of an event: UTC, ISO 8601 to the millisecond."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def event_of(job: Settled, service: ServiceSettings, *, host: str, instance: str,
             when: str) -> tuple[str, bytes]:
    """The routing key and the JSON body of one settled attempt's event.

    The reply is encoded once: spliced in as it is when small, else only its size.
    """
    outcome = job.outcome
    name = EVENT_OF[job.verdict]
    event: dict[str, Any] = {
        "event": name, "job_id": job.envelope.job_id, "job_type": service.job_type,
        "queue": service.queue, "outcome": job.verdict.value, "attempt": outcome.attempt,
        "replayed": outcome.reused, "duration": round(job.seconds, 6), "time": when,
        "host": host, "instance": instance,
    }
    if not outcome.succeeded:
        event["error"] = {"class": outcome.error_class,
                          "message": (outcome.message or "")[:MESSAGE_LIMIT]}
    reply = json.dumps(outcome.reply, separators=(",", ":"), default=str)
    if len(reply) > REPLY_LIMIT_BYTES:
        event["reply_bytes"] = len(reply)
        text = json.dumps(event, separators=(",", ":"))
    else:
        text = json.dumps(event, separators=(",", ":"))[:-1] + ',"reply":' + reply + "}"
    return f"{service.job_type}.{name}", text.encode()


class _OwnChannelClose(logging.Filter):
    """Holds back pika's WARNING about the broker closing our events channel (ours says
    it, rate-limited); every other record passes."""

    def __init__(self) -> None:
        super().__init__()
        self.channel: Any = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (self.channel is not None and len(args) == 3 and args[2] is self.channel
                    and str(record.msg).startswith("Received remote Channel.Close"))


class EventPublisher(ConsumerObserver):
    """Publishes one event per settled attempt; `published` and `failed` count them."""

    def __init__(self, exchange: str, service: ServiceSettings, *, host: str,
                 instance: str, clock: Callable[[], float] = time.monotonic,
                 count_failed: Callable[[int], None] = lambda count: None) -> None:
        """`count_failed(n)`: told of every n events lost or skipped (the metrics'
        gear_events_failed_total)."""
        self.exchange = exchange
        self._count_failed = count_failed
        self.service = service
        self.host = host
        self.instance = instance
        self.clock = clock
        #: Events handed to the broker, and events lost or skipped (for metrics).
        self.published = 0
        self.failed = 0
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._blocked = False
        self._reopen_at = 0.0
        self._closed_reason = ""
        #: Events published in the last round: lost if the broker closes the channel.
        self._last_round = 0
        self._reopened = False
        self._next_warning = 0.0
        self._unsaid = 0
        self._quiet = _OwnChannelClose()

    # --- hooks ---------------------------------------------------------------------

    def consuming(self, channel: Channel) -> None:
        connection = channel.connection
        self._connection, self._channel, self._blocked = connection, None, False
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        logging.getLogger("pika.channel").addFilter(self._quiet)
        self._reopened = False
        self._open()

    def disconnected(self, error: Exception) -> None:
        self._connection = self._channel = None

    def idle(self) -> None:
        self._notice_close()

    def settled(self, jobs: Sequence[Settled]) -> None:
        why_not = self._why_not()
        if why_not is not None:
            self._lose(len(jobs), why_not)
            return
        assert self._channel is not None
        self._last_round = 0
        now = time.time()
        when = event_time(now)
        for index, job in enumerate(jobs):
            key, body = event_of(job, self.service, host=self.host,
                                 instance=self.instance, when=when)
            properties = pika.BasicProperties(
                content_type="application/json", app_id="gearqueue", type=key,
                delivery_mode=pika.DeliveryMode.Transient, message_id=job.envelope.job_id,
                timestamp=int(now))
            try:
                # On the adapter's channel: the frames are buffered, and go out with the
                # loop's next socket write (its next pump or ack), instead of a poll
                # of the socket per event here (BlockingChannel.basic_publish flushes).
                self._channel._impl.basic_publish(  # type: ignore[attr-defined]
                    self.exchange, key, body, properties)
            except (pe.AMQPError, OSError) as error:
                self._failed(len(jobs) - index)
                self._closed_reason = self._closed_reason or f"{type(error).__name__} {error}"
                self._notice_close()
                return
            self.published += 1
            self._last_round += 1

    def stopped(self) -> None:
        logging.getLogger("pika.channel").removeFilter(self._quiet)
        self._connection = self._channel = None

    # --- the channel -----------------------------------------------------------------

    def _why_not(self) -> str | None:
        """None if events can go out now (reopening the channel if it is time); else why."""
        if self._connection is None or not self._connection.is_open:
            return "no connection to the broker"
        if self._blocked:
            return "the connection is blocked by a broker resource alarm (skipped)"
        self._notice_close()
        if self._channel is None and self.clock() >= self._reopen_at:
            self._open()
        if self._channel is None:
            return f"the events channel is closed ({self._closed_reason})"
        return None

    def _open(self) -> None:
        assert self._connection is not None
        self._closed_reason = ""
        try:
            try:
                channel = self._connection.channel()
            except (pe.AMQPError, OSError) as error:
                raise BrokerError(f"opening a channel: {type(error).__name__} {error}"
                                  ) from None
            declare_events_exchange(channel, self.exchange)
        except BrokerError as error:
            self._closed_reason = str(error)
            self._reopen_at = self.clock() + REOPEN_SECONDS
            self._problem(f"cannot open the events channel: {error}; trying again in "
                          f"{REOPEN_SECONDS:g} s")
            return
        # pika gives the broker's reason for closing a channel only on its adapter.
        channel._impl.add_on_close_callback(self._on_close)  # type: ignore[attr-defined]
        self._quiet.channel = channel._impl  # type: ignore[attr-defined]
        self._channel = channel
        self._last_round = 0
        if self._reopened:
            log.info("events channel reopened; publishing to '%s' again (%d events "
                     "failed so far)", self.exchange, self.failed,
                     extra=fields(exchange=self.exchange, events_failed=self.failed))
        self._reopened = True

    def _notice_close(self) -> None:
        """Count and say a channel the broker closed; its reopening is due in a while."""
        if self._channel is None or self._channel.is_open:
            return
        lost = max(self._last_round, 1)
        self._failed(lost)
        self._channel = None
        self._reopen_at = self.clock() + REOPEN_SECONDS
        reason = self._closed_reason or "no reason given"
        self._problem(f"the broker closed the events channel ({reason}); {lost} event(s) "
                      f"of the last round lost, reopening in {REOPEN_SECONDS:g} s")

    def _on_close(self, channel: Any, reason: Exception) -> None:
        if isinstance(reason, pe.ChannelClosedByBroker):
            self._closed_reason = f"{reason.reply_code} {reason.reply_text}"
        elif not self._closed_reason:
            self._closed_reason = f"{type(reason).__name__} {reason}"

    def _on_blocked(self, connection: Any, frame: Any) -> None:
        self._blocked = True

    def _on_unblocked(self, connection: Any, frame: Any) -> None:
        self._blocked = False

    # --- saying so -----------------------------------------------------------------

    def _failed(self, count: int) -> None:
        self.failed += count
        self._count_failed(count)

    def _lose(self, count: int, why: str) -> None:
        self._failed(count)
        self._problem(f"{why}: {count} event(s) not published")

    def _problem(self, text: str) -> None:
        """WARNING once, then at most every LOG_EVERY_SECONDS (DEBUG in between)."""
        now = self.clock()
        if now < self._next_warning:
            self._unsaid += 1
            log.debug("events to '%s': %s", self.exchange, text)
            return
        since = f" ({self._unsaid} more since the last such line)" if self._unsaid else ""
        log.warning("events to '%s': %s%s; jobs are not affected (%d events failed so far)",
                    self.exchange, text, since, self.failed,
                    extra=fields(exchange=self.exchange, events_failed=self.failed))
        self._next_warning = now + LOG_EVERY_SECONDS
        self._unsaid = 0
