"""Are a job type's queues declared as gear.ini says (type, durability, arguments)?

With the management API, each queue's record is read (GET /api/queues/<vhost>/<name>)
and compared. Without it, a passive declare tells whether the queue exists, and a
declare with our arguments whether they match: an equal declare is a no-op, a
different one is refused with PRECONDITION_FAILED (406) and changes nothing, and the
queue exists by then, so nothing is ever created. Nothing here changes the broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions as pe

from ... import topology
from ...config import ServiceSettings, Settings
from ...management import ManagementApi, ManagementUnavailable, NotFound
from ..scale_units import unit_prefix
from .findings import Finding, fail, info, ok


@dataclass(frozen=True)
class QueueSpec:
    """A queue as the consumer declares it (topology.declare)."""

    name: str
    durable: bool
    arguments: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.arguments.get("x-queue-type", "classic"))


@dataclass
class QueueSeen:
    exists: bool = False
    consumers: int = 0
    ready: int = 0
    #: The management API's record of the queue, when it was read from there.
    record: dict[str, Any] = field(default_factory=dict)


def expected_queues(service: ServiceSettings) -> list[QueueSpec]:
    queues = [QueueSpec(service.queue, service.queue_durable,
                        topology.main_queue_arguments(service))]
    queues += [QueueSpec(topology.retry_queue(service, attempt), True,
                         topology.retry_queue_arguments(service))
               for attempt in range(1, service.max_retries + 1)]
    queues.append(QueueSpec(topology.dead_queue(service), True,
                            topology.dead_queue_arguments(service)))
    return queues


def start_hint(settings: Settings, service: ServiceSettings) -> str:
    return (f"start a consumer (it declares the queues): systemctl start "
            f"{unit_prefix(service.job_type)}.target (or listeners/{service.job_type}"
            f"_consumer.py --config {settings.source})")


def _mismatch_fix(spec: QueueSpec, vhost: str) -> str:
    where = f" -p {vhost}" if vhost != "/" else ""
    return (f"the broker never changes a queue's declaration: stop its consumers, move "
            f"or drain its jobs, `rabbitmqctl delete_queue {spec.name}{where}`, and start "
            f"a consumer to declare it as gear.ini says; or change gear.ini back to what "
            f"the queue was declared with")


def _differences(spec: QueueSpec, record: dict[str, Any]) -> list[str]:
    differences = []
    if record.get("type", "classic") != spec.type:
        differences.append(f"type {record.get('type')} (gear.ini: {spec.type})")
    if bool(record.get("durable")) != spec.durable:
        differences.append(f"durable {bool(record.get('durable'))} (gear.ini: "
                           f"{spec.durable})")
    have = {k: v for k, v in (record.get("arguments") or {}).items() if k != "x-queue-type"}
    want = {k: v for k, v in spec.arguments.items() if k != "x-queue-type"}
    for key in sorted(set(have) | set(want)):
        if have.get(key) != want.get(key):
            differences.append(f"{key} {have.get(key, 'unset')} (gear.ini: "
                               f"{want.get(key, 'unset')})")
    return differences


def _live_counts(connection: pika.BlockingConnection, name: str) -> QueueSeen:
    """Consumers and ready jobs now (a passive declare): the API's counts are
    statistics, up to collect_statistics_interval (5 s) old."""
    channel = connection.channel()
    try:
        frame = channel.queue_declare(name, passive=True)
        return QueueSeen(True, frame.method.consumer_count, frame.method.message_count)
    except pe.ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return QueueSeen()
        raise
    finally:
        if channel.is_open:
            channel.close()


def check_with_api(api: ManagementApi, connection: pika.BlockingConnection, spec: QueueSpec
                   ) -> tuple[Finding | None, QueueSeen]:
    """(a mismatch finding or None, what was seen) from the queue's API record."""
    try:
        record = api.queue(spec.name)
    except NotFound:
        return None, QueueSeen()
    seen = _live_counts(connection, spec.name)
    seen.record = record
    differences = _differences(spec, record)
    if differences:
        return fail(spec.name, "declared otherwise than gear.ini says (management API): "
                    + "; ".join(differences), _mismatch_fix(spec, api.vhost)), seen
    return None, seen


def check_with_amqp(connection: pika.BlockingConnection, spec: QueueSpec, vhost: str
                    ) -> tuple[Finding | None, QueueSeen]:
    """The same through AMQP: a passive declare, then a declare with our arguments."""
    channel = connection.channel()
    try:
        try:
            frame = channel.queue_declare(spec.name, passive=True)
        except pe.ChannelClosedByBroker as error:
            if error.reply_code == 404:
                return None, QueueSeen()
            raise
        seen = QueueSeen(True, frame.method.consumer_count, frame.method.message_count)
        try:
            channel.queue_declare(spec.name, durable=spec.durable,
                                  arguments=spec.arguments or None)
        except pe.ChannelClosedByBroker as error:
            if error.reply_code == 406:
                return fail(spec.name, f"declared with other arguments than gear.ini asks "
                            f"for: {error.reply_text}", _mismatch_fix(spec, vhost)), seen
            raise
        return None, seen
    finally:
        if channel.is_open:
            channel.close()


def _check_gear_exchange(connection: pika.BlockingConnection, settings: Settings,
                         service: ServiceSettings) -> Finding:
    """gEAR's publisher needs the exchange; it never declares it (contract = gear)."""
    name = topology.GEAR_EXCHANGE
    channel = connection.channel()
    try:
        channel.exchange_declare(name, passive=True)
    except pe.ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return fail(name, "gEAR's exchange is missing: gEAR's web API fails with 404 "
                        "NOT_FOUND until a consumer declares it", start_hint(settings, service))
        raise
    finally:
        if channel.is_open:
            channel.close()
    return ok(name, "gEAR's exchange exists")


def check_service(connection: pika.BlockingConnection, settings: Settings,
                  service: ServiceSettings, api: ManagementApi | None, vhost: str
                  ) -> tuple[list[Finding], dict[str, QueueSeen]]:
    """Topology, consumers and dead letters of one job type, and what was seen of each
    queue (its API record is where a per-queue consumer timeout shows)."""
    findings = [info(service.job_type, topology.describe_contract(service))]
    seen: dict[str, QueueSeen] = {}
    mismatches = []
    for spec in expected_queues(service):
        finding: Finding | None = None
        try:
            if api is None:
                raise ManagementUnavailable("not in use")
            finding, seen[spec.name] = check_with_api(api, connection, spec)
        except ManagementUnavailable:
            finding, seen[spec.name] = check_with_amqp(connection, spec, vhost)
        if finding is not None:
            mismatches.append(finding)
    if service.contract == "gear":
        findings.append(_check_gear_exchange(connection, settings, service))
    missing = [name for name, queue in seen.items() if not queue.exists]
    if missing:
        findings.append(fail(service.job_type, f"missing queue(s): {', '.join(missing)}",
                             start_hint(settings, service)))
    findings += mismatches
    main = seen[service.queue]
    if main.exists and not any(f.subject == service.queue for f in mismatches):
        findings.append(ok(service.queue, "declared as configured"))
    if main.exists and main.consumers:
        findings.append(ok(service.queue, f"{main.consumers} consumer(s), {main.ready} "
                           "job(s) waiting"))
    elif main.exists:
        findings.append(fail(service.queue, f"no consumer: {main.ready} job(s) waiting, "
                             "and none will run", start_hint(settings, service)))
    dead = seen[topology.dead_queue(service)]
    if dead.exists and dead.ready:
        findings.append(info(topology.dead_queue(service), f"{dead.ready} dead job(s): "
                             f"gearqueue dead list {service.job_type}"))
    if service.max_length and service.max_retries:
        findings.append(info(service.queue, "max_length counts waiting jobs only: a retry "
                             "whose delay ends while the queue is full is dropped by the "
                             "broker (its state stays 'retrying'); see "
                             "docs/failure-handling.md"))
    return findings, seen
