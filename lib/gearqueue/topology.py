"""Queues and exchanges of a job type, declared in one place by publisher and consumer.

For a job type whose queue is `Q`:
- `Q`: durable classic queue, and by default with NO x-arguments, so that a publisher
  declaring it plainly never meets PRECONDITION_FAILED (gEAR's web API declares it
  itself, non-durable: see contract = gear below). Quorum type, max-length, priority and TTL are
  opt-in from gear.ini.
- `Q.retry.N` (N = 1..max_retries): durable holding queues with no consumer. A failed
  attempt N is republished there with a per-message `expiration` (its backoff delay);
  on expiry the broker dead-letters it back to `Q` through the default exchange. The
  delay lives on the message, not the queue, so changing retry_backoff never changes a
  queue's arguments.
- `Q.dead`: bound to the direct exchange `gear.dlx` with routing key `Q`; messages land
  there when permanently failed or out of retries, with the error in their headers.
Nothing is ever purged here.

With `queue_type = quorum` (the choice for a cluster) the retry and dead queues are
quorum queues too. A classic queue lives on one node: while that node is down, a job
waiting out its retry delay, or a dead letter waiting for replay, is out of reach, and
a failed attempt cannot be moved on at all, so its delivery loops. Quorum copies
survive the loss of a minority of nodes. The retry queues dead-letter back to `Q`
`at-least-once` (which the broker allows only with `x-overflow = reject-publish`): the
default, at-most-once, drops an expired retry if `Q` cannot take it at that moment, for
example while its leader moves, and the job would stay 'retrying' for ever.

Under `contract = gear` (gEAR's web API publishes, unchanged) the main queue is declared
as gEAR's publisher declares it, `queue_declare(Q)`: NOT durable (unless queue_durable =
1) and with no x-arguments, so neither side's declare fails whoever comes first. gEAR
publishes to the topic exchange `message` with routing key Q, which only gEAR's own
consumer declares; so it is declared here as gEAR's consumer does (topic, not durable,
not auto-delete) and Q is bound to it with routing key Q. A non-durable queue and
exchange vanish when the broker restarts; every reconnect declares them again. The
retry and dead queues are ours and stay durable.
"""

from __future__ import annotations

from typing import Any

from pika.adapters.blocking_connection import BlockingChannel

from .broker import converted_errors
from .config import ServiceSettings

DEAD_LETTER_EXCHANGE = "gear.dlx"
#: The topic exchange gEAR's publisher (lib/gearqueue.py in IGS/gEAR) publishes to.
GEAR_EXCHANGE = "message"


def retry_queue(service: ServiceSettings, attempt: int) -> str:
    return f"{service.queue}.retry.{attempt}"


def dead_queue(service: ServiceSettings) -> str:
    return f"{service.queue}.dead"


def main_queue_arguments(service: ServiceSettings) -> dict[str, Any]:
    """x-arguments of the main queue: none unless opted in (see module docstring)."""
    arguments: dict[str, Any] = {}
    if service.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
        # The runtime counts attempts itself; this is the broker-side backstop, and what
        # exceeds it is dead-lettered to Q.dead rather than dropped.
        arguments["x-delivery-limit"] = service.max_retries + 1
        arguments["x-dead-letter-exchange"] = DEAD_LETTER_EXCHANGE
        arguments["x-dead-letter-routing-key"] = service.queue
    if service.max_length:
        arguments["x-max-length"] = service.max_length
        arguments["x-overflow"] = "reject-publish"
    if service.max_priority:
        arguments["x-max-priority"] = service.max_priority
    if service.message_ttl:
        arguments["x-message-ttl"] = service.message_ttl
    return arguments


def retry_queue_arguments(service: ServiceSettings) -> dict[str, Any]:
    """x-arguments of the retry queues: dead-letter back to the main queue on expiry."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": service.queue,
    }
    if service.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
        arguments["x-dead-letter-strategy"] = "at-least-once"
        arguments["x-overflow"] = "reject-publish"
    return arguments


def dead_queue_arguments(service: ServiceSettings) -> dict[str, Any]:
    """x-arguments of the dead queue: none, or quorum type on a cluster."""
    return {"x-queue-type": "quorum"} if service.queue_type == "quorum" else {}


def describe_contract(service: ServiceSettings) -> str:
    """One line for doctor and logs: whose topology this job type's queue follows."""
    durable = "durable" if service.queue_durable else "NOT durable"
    if service.contract == "gear":
        return (f"contract = gear: queue '{service.queue}' {durable}, bound to gEAR's "
                f"topic exchange '{GEAR_EXCHANGE}' with routing key '{service.queue}'")
    return f"contract = gearqueue: queue '{service.queue}' {durable}, default exchange"


def declare(channel: BlockingChannel, service: ServiceSettings) -> None:
    """Declare the main, retry and dead queues of a job type (idempotent)."""
    with converted_errors(f"declaring queue '{service.queue}'"):
        channel.queue_declare(service.queue, durable=service.queue_durable,
                              arguments=main_queue_arguments(service) or None)
    if service.contract == "gear":
        with converted_errors(f"declaring gEAR's exchange '{GEAR_EXCHANGE}'"):
            channel.exchange_declare(GEAR_EXCHANGE, exchange_type="topic")
            channel.queue_bind(service.queue, GEAR_EXCHANGE, routing_key=service.queue)
    with converted_errors(f"declaring the retry and dead queues of '{service.queue}'"):
        for attempt in range(1, service.max_retries + 1):
            channel.queue_declare(retry_queue(service, attempt), durable=True,
                                  arguments=retry_queue_arguments(service))
        channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type="direct", durable=True)
        channel.queue_declare(dead_queue(service), durable=True,
                              arguments=dead_queue_arguments(service) or None)
        channel.queue_bind(dead_queue(service), DEAD_LETTER_EXCHANGE,
                           routing_key=service.queue)


def declare_events_exchange(channel: BlockingChannel, exchange: str) -> None:
    """Declare the events exchange (durable topic; idempotent)."""
    with converted_errors(f"declaring the events exchange '{exchange}'"):
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
