"""Publish many messages with streaming publisher confirms (behind `Client.submit_many`).

pika's BlockingChannel in confirm mode waits for the broker's confirm after every
`basic_publish`: one network round trip (and, for persistent messages, one fsync
batch of the broker) per message. Here the messages go out on a SelectConnection
channel in confirm mode with up to `window` of them unconfirmed at a time, and the
broker's acks and nacks (often `multiple=True`) are counted as they stream back, so a
batch costs about one round trip per window instead of one per message.

Every message is accounted for in the `BatchReport`: confirmed (queued), nacked (the
broker refused it, e.g. a full queue with reject-publish), unroutable (returned by the
`mandatory` flag: no queue), unconfirmed (published but the connection went before its
confirm: it may or may not be queued) or unsent (never published).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
from pika.connection import Parameters
from pika.frame import Method
from pika.spec import Basic, BasicProperties

from .errors import DuplicateJobIds

log = logging.getLogger(__name__)

#: Unconfirmed messages in flight at most; bounds memory in pika and in the broker.
DEFAULT_WINDOW = 1000


@dataclass(frozen=True)
class OutgoingMessage:
    job_id: str
    body: bytes
    properties: BasicProperties


@dataclass
class BatchReport:
    """What became of each message of a batch, by job id, in publish order."""

    confirmed: list[str] = field(default_factory=list)
    nacked: list[str] = field(default_factory=list)
    unroutable: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)
    #: Why the batch stopped early (connection refused or lost, timeout), if it did.
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.nacked or self.unroutable or self.unconfirmed or self.unsent)

    def describe(self, queue: str) -> str:
        """One sentence an operator can act on, naming the first ids of each group."""
        total = sum(map(len, (self.confirmed, self.nacked, self.unroutable,
                              self.unconfirmed, self.unsent)))
        parts = []
        for ids, what in (
            (self.nacked, "refused by the broker (nack; is the queue full?)"),
            (self.unroutable, f"unroutable (returned: no queue '{queue}')"),
            (self.unconfirmed, "not confirmed before the connection ended (may be queued)"),
            (self.unsent, "not sent"),
        ):
            if ids:
                shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
                parts.append(f"{len(ids)} {what}: {shown}")
        text = f"{total - len(self.confirmed)} of {total} jobs not queued: " + "; ".join(parts)
        return f"{text} ({self.error})" if self.error else text


class _BatchRun:
    """One attempt on one connection; drives a SelectConnection until the batch is settled."""

    def __init__(self, parameters: Parameters, exchange: str, routing_key: str,
                 messages: Sequence[OutgoingMessage], window: int, timeout: float) -> None:
        self.exchange, self.routing_key = exchange, routing_key
        self.messages = messages
        self.window = window
        self.timeout = timeout
        self.state: list[str] = ["unsent"] * len(messages)
        self.index_of = {message.job_id: index for index, message in enumerate(messages)}
        #: delivery tag -> message index, in tag order (tags count publishes from 1).
        self.pending: dict[int, int] = {}
        self.sent = 0
        self.opened = False
        self.error: str | None = None
        self.channel: Any = None
        self.connection = pika.SelectConnection(
            parameters, on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_connection_closed)

    def run(self) -> None:
        self.connection.ioloop.call_later(self.timeout, self._on_timeout)
        self.connection.ioloop.start()

    # --- connection and channel --------------------------------------------------------

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, connection: pika.SelectConnection, error: BaseException) -> None:
        self.error = f"{type(error).__name__} {error}"
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: pika.SelectConnection,
                              reason: BaseException) -> None:
        if not self._settled() and self.error is None:
            self.error = f"connection closed: {reason}"
        connection.ioloop.stop()

    def _on_channel_open(self, channel: Any) -> None:
        self.channel = channel
        self.opened = True
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._publish_more())

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if not self._settled() and self.error is None:
            self.error = f"channel closed: {reason}"
        self._close()

    def _on_timeout(self) -> None:
        if not self._settled():
            self.error = f"timed out after {self.timeout:g} s waiting for confirms"
            self._close()

    def _close(self) -> None:
        if self.connection.is_open:
            self.connection.close()
        elif self.connection.is_closed:
            self.connection.ioloop.stop()

    # --- publishing and confirms -------------------------------------------------------

    def _publish_more(self) -> None:
        while self.sent < len(self.messages) and len(self.pending) < self.window:
            message = self.messages[self.sent]
            self.channel.basic_publish(self.exchange, self.routing_key, message.body,
                                       message.properties, mandatory=True)
            self.state[self.sent] = "unconfirmed"
            self.sent += 1
            self.pending[self.sent] = self.sent - 1
        if self._settled():
            self._close()

    def _on_return(self, channel: Any, method: Basic.Return, properties: BasicProperties,
                   body: bytes) -> None:
        # The broker sends basic.return before the basic.ack of the same message.
        index = self.index_of.get(properties.message_id or "")
        if index is not None:
            self.state[index] = "unroutable"

    def _on_confirm(self, frame: Method) -> None:
        method = frame.method
        nacked = isinstance(method, Basic.Nack)
        if method.multiple:
            tags = list(itertools.takewhile(lambda tag: tag <= method.delivery_tag,
                                            self.pending))
        else:
            tags = [method.delivery_tag] if method.delivery_tag in self.pending else []
        for tag in tags:
            index = self.pending.pop(tag)
            if self.state[index] == "unconfirmed":
                self.state[index] = "nacked" if nacked else "confirmed"
        self._publish_more()

    def _settled(self) -> bool:
        return self.sent == len(self.messages) and not self.pending

    def report(self) -> BatchReport:
        report = BatchReport(error=None if self._settled() else self.error)
        for message, state in zip(self.messages, self.state, strict=True):
            getattr(report, state).append(message.job_id)
        return report


def publish_batch(parameters: Sequence[Parameters], exchange: str,
                  routing_key: str, messages: Sequence[OutgoingMessage], *,
                  window: int = DEFAULT_WINDOW, timeout: float = 60.0) -> BatchReport:
    """Publish `messages` (persistent, mandatory) and account for every one of them.

    Each broker in `parameters` is tried in order until one accepts the connection;
    a connection lost halfway is not retried (the report says which jobs are unknown).
    """
    if len({message.job_id for message in messages}) != len(messages):
        raise DuplicateJobIds("job ids in a batch must be unique")
    if not messages:
        return BatchReport()
    run: _BatchRun | None = None
    errors = []
    for params in parameters:
        run = _BatchRun(params, exchange, routing_key, messages, window, timeout)
        run.run()
        if run.opened:
            break
        errors.append(f"{params.host}:{params.port}: {run.error}")
        log.warning("batch publish: %s; trying the next broker", errors[-1])
    if run is None:
        return BatchReport(unsent=[message.job_id for message in messages],
                           error="no broker configured")
    report = run.report()
    if not run.opened and errors:
        report.error = "no broker reachable: " + "; ".join(errors)
    return report
