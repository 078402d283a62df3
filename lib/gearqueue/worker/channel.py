"""A consumer's broker channel: one connection, its AMQP channels, and the ways out of it.

- `consume` channel: basic.qos + basic.consume, acks and nacks.
- `confirm` channel: publisher confirms + mandatory, for retries and dead letters, so a
  message is acked only after the broker took its next copy.
- `replies` channel: fire-and-forget replies; a reply to a requester that is gone may
  close this channel, which is then reopened, and never costs the job its ack.

Delivery tags belong to an AMQP channel: a `Delivery` remembers its `Channel`, and
acking one from a dead one is skipped (the broker redelivers it; the state record
answers). Deliveries wait in the channel in order until the loop takes them
(`peek`, `next_delivery`); at a stop the ones not taken are given back.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import pika
from pika.spec import Basic, BasicProperties

from .. import message, topology
from ..broker import close_quietly, connect, connected_url, converted_errors, server_version
from ..config import ServiceSettings, Settings
from ..errors import BrokerUnavailable

log = logging.getLogger(__name__)


#: x-consumer-timeout is this much above time_limit, so our own hard limit acts first.
CONSUMER_TIMEOUT_MARGIN = 60.0
#: The first broker release that takes x-consumer-timeout as a consumer argument.
CONSUMER_TIMEOUT_SINCE = (3, 12)


def consumer_arguments(service: ServiceSettings, version: tuple[int, ...]
                       ) -> dict[str, Any] | None:
    """basic.consume arguments: x-consumer-timeout where the broker supports it.

    The broker closes the channel of a delivery unacked for longer than its
    consumer_timeout (30 min by default), and the job is delivered again. With a
    time_limit, a 3.12+ broker is told to wait until just past it. Older ones do not
    know the argument, so it is not sent to them: there the broker-wide value must
    be above the longest time_limit (install.sh sets it; `gearqueue doctor` checks).
    """
    if service.time_limit and version >= CONSUMER_TIMEOUT_SINCE:
        return {"x-consumer-timeout": int((service.time_limit + CONSUMER_TIMEOUT_MARGIN) * 1000)}
    return None


@dataclass(frozen=True)
class Delivery:
    channel: Channel
    delivery_tag: int
    redelivered: bool
    properties: BasicProperties
    body: bytes

    @property
    def retried(self) -> bool:
        """True when we republished this message ourselves after a failed attempt."""
        return message.is_retry(self.properties)


class Channel:
    def __init__(self, settings: Settings, service: ServiceSettings, name: str, *,
                 avoid: str | None = None) -> None:
        """`avoid`: the broker URL of the channel before, lost: tried last."""
        self.service = service
        self._pending: deque[Delivery] = deque()
        self._cancelled = False
        self.connection = connect(settings, service.job_type, name, avoid=avoid)
        #: The broker URL (of [rabbitmq] url's list) this channel is connected to.
        self.url = connected_url(self.connection, settings.broker_urls(service.job_type))
        try:
            with converted_errors("opening channels"):
                self.consume_channel = self.connection.channel()
                topology.declare(self.consume_channel, service)
                self.consume_channel.basic_qos(prefetch_count=service.prefetch)
                self.confirm_channel = self.connection.channel()
                self.confirm_channel.confirm_delivery()
                self.replies = self.connection.channel()
                self.consume_channel.add_on_cancel_callback(self._on_cancel)
                self._arguments = consumer_arguments(service,
                                                     server_version(self.connection))
                self.consumer_tag: str | None = None
                self.resume()
        except BaseException:
            close_quietly(self.connection)
            raise

    def _on_message(self, channel: Any, method: Basic.Deliver, properties: BasicProperties,
                    body: bytes) -> None:
        assert method.delivery_tag is not None  # the broker always sends one (None: a default)
        self._pending.append(Delivery(self, method.delivery_tag, method.redelivered,
                                      properties, body))

    def _on_cancel(self, frame: Any) -> None:
        log.warning("broker cancelled our consumer on '%s' (queue deleted or moved); "
                    "reconnecting", self.service.queue)
        self._cancelled = True

    # --- deliveries in ---------------------------------------------------------------

    def peek(self) -> Delivery | None:
        """The next delivery not taken yet, left in place (None if there is none)."""
        return self._pending[0] if self._pending else None

    def next_delivery(self) -> Delivery | None:
        """Take the next delivery (None if there is none); the taker settles it."""
        return self._pending.popleft() if self._pending else None

    @property
    def cancelled(self) -> bool:
        """The broker cancelled our consumer: nothing more will arrive on this channel."""
        return self._cancelled

    def pump(self, seconds: float) -> None:
        """Serve heartbeats, flush acks, take deliveries: for up to `seconds`.

        A broker-sent Basic.Cancel does not raise here: the channel still works, so the
        job that runs when it comes is settled on it (reply, ack) instead of being
        abandoned; the consumer loop subscribes again once idle (see `cancelled`).
        """
        with converted_errors("talking to the broker"):
            self.connection.process_data_events(time_limit=seconds)
        if not self.consume_channel.is_open or not self.confirm_channel.is_open:
            raise BrokerUnavailable("channel closed by the broker (see the broker log, "
                                    "e.g. consumer_timeout)")

    @property
    def alive(self) -> bool:
        return self.connection.is_open and self.consume_channel.is_open

    def _owns(self, delivery: Delivery) -> bool:
        if delivery.channel is self and self.alive:
            return True
        log.warning("not acking delivery %s from a closed session; the broker will "
                    "redeliver it", delivery.delivery_tag)
        return False

    def ack(self, delivery: Delivery, *, multiple: bool = False) -> None:
        """Ack a delivery; with `multiple`, every unacked one up to it on this channel too
        (one frame for a whole batch)."""
        if self._owns(delivery):
            with converted_errors("acking"):
                self.consume_channel.basic_ack(delivery.delivery_tag, multiple=multiple)

    def requeue(self, delivery: Delivery) -> None:
        if self._owns(delivery):
            with converted_errors("requeueing"):
                self.consume_channel.basic_nack(delivery.delivery_tag, requeue=True)

    def stop_consuming(self) -> None:
        """Cancel the consumer and give back every delivery not started yet.

        Also how a consumer pauses (its job-state store is down): the broker hands the
        queue to other consumers, and this connection, its heartbeats and the unacked
        deliveries of the current batch stay as they are until `resume`.
        """
        if self.consumer_tag is not None:
            with converted_errors("cancelling the consumer"):
                self.consume_channel.basic_cancel(self.consumer_tag)
            self.consumer_tag = None
        self.give_back_unstarted()

    def resume(self) -> None:
        """basic.consume (again, after `stop_consuming`): deliveries come in."""
        if self.consumer_tag is None:
            with converted_errors("consuming"):
                self.consumer_tag = self.consume_channel.basic_consume(
                    self.service.queue, self._on_message, auto_ack=False,
                    arguments=self._arguments)

    def give_back_unstarted(self) -> None:
        """Requeue every delivery not taken yet, in order."""
        while self._pending:
            self.requeue(self._pending.popleft())

    def publish_confirmed(self, exchange: str, routing_key: str, body: bytes,
                          properties: BasicProperties) -> None:
        """Publish and wait for the broker's confirm; raises PublishError or BrokerUnavailable."""
        with converted_errors(f"publishing to '{routing_key}'"):
            self.confirm_channel.basic_publish(exchange, routing_key, body, properties,
                                               mandatory=True)

    def reply(self, reply_to: str, correlation_id: str | None, reply: dict[str, Any]) -> None:
        """Send a reply; a lost reply is logged, never fatal (the job state has it)."""
        try:
            if not self.replies.is_open:
                self.replies = self.connection.channel()
            self.replies.basic_publish("", reply_to, message.encode_reply(reply),
                                       message.reply_properties(correlation_id))
        except pika.exceptions.AMQPError as error:
            log.warning("could not send the reply to %s: %s", reply_to, error)

    def close(self) -> None:
        close_quietly(self.connection)
