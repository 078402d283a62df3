"""`gearqueue doctor`: what would make jobs fail, found before they do.

Each check yields a `Finding` (ok, info, warn, fail). Nothing here changes the broker:
queues are looked at with passive declares, and a queue that exists is declared again
with our arguments only to learn whether they match (an equal declare is a no-op; a
different one is refused with PRECONDITION_FAILED and changes nothing).

The broker's consumer_timeout (30 min by default) closes the channel of a delivery
unacked for longer, and the job is delivered again: a job allowed to run longer than
that (time_limit 0, or above it) is warned about, unless the broker is 3.12+, where
the consumer asks for its own x-consumer-timeout. AMQP does not expose the value, so
it is read with `rabbitmqctl environment` when the broker runs on this host (and the
node found there listens on the configured port); otherwise the default is assumed.

Every node of the cluster behind [rabbitmq] url is listed with its state (running,
alarms, partitions) and a fix for each problem: gearqueue.cluster_status.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlparse

import pika
import pika.exceptions as pe

from .. import topology
from ..broker import close_quietly, connect, connected_url, server_version
from ..cluster_status import cluster_findings
from ..config import ServiceSettings, Settings, mask_url
from ..errors import BrokerUnavailable, ConfigError, StateStoreUnavailable
from ..state import open_store
from ..worker.channel import CONSUMER_TIMEOUT_MARGIN, CONSUMER_TIMEOUT_SINCE, consumer_arguments

DEFAULT_CONSUMER_TIMEOUT_MS = 1_800_000
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")


class Level(str, Enum):
    OK = "ok"
    INFO = "info"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str
    message: str


@dataclass(frozen=True)
class ConsumerTimeout:
    #: Milliseconds; None when the broker has it switched off.
    milliseconds: int | None
    #: Where the value comes from (or why it is assumed).
    source: str


def read_consumer_timeout(url: str, environ: Mapping[str, str] = os.environ
                          ) -> ConsumerTimeout:
    """The broker's consumer_timeout via `rabbitmqctl environment`, else the default."""
    parsed = urlparse(url)
    port = parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
    assumed = "assumed: the default"
    if (parsed.hostname or "") not in LOCAL_HOSTS:
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS, f"{assumed} (remote broker)")
    ctl = shutil.which("rabbitmqctl", path=environ.get("PATH"))
    if ctl is None:
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS, f"{assumed} (no rabbitmqctl)")
    try:
        result = subprocess.run([ctl, "-q", "environment"], capture_output=True, text=True,
                                timeout=30, check=False, env=dict(environ))
    except (OSError, subprocess.TimeoutExpired) as error:
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS, f"{assumed} ({error})")
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()[:1]
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS,
                               f"{assumed} (rabbitmqctl: {reason[0] if reason else 'failed'})")
    listeners = re.search(r"\{tcp_listeners,\[(.*?)\]\}", result.stdout, re.S)
    if listeners and not re.search(rf"\b{port}\}}", listeners.group(1)):
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS,
                               f"{assumed} (the local node rabbitmqctl reaches does not "
                               f"listen on {port})")
    found = re.search(r"\{consumer_timeout,\s*(\d+|undefined|false)\}", result.stdout)
    if found is None:
        return ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_MS, "default (not set on the node)")
    value = found.group(1)
    return ConsumerTimeout(int(value) if value.isdigit() else None, "rabbitmqctl environment")


def _minutes(milliseconds: float) -> str:
    seconds = milliseconds / 1000
    return f"{seconds / 60:g} min" if seconds >= 120 else f"{seconds:g} s"


def check_time_limit(service: ServiceSettings, version: tuple[int, ...],
                     timeout: ConsumerTimeout) -> Finding:
    """Will the broker take a job back (consumer_timeout) before it can finish?"""
    subject = service.job_type
    arguments = consumer_arguments(service, version)
    if arguments:
        return Finding(Level.OK, subject, f"consumers ask for x-consumer-timeout "
                       f"{_minutes(arguments['x-consumer-timeout'])} (time_limit + "
                       f"{CONSUMER_TIMEOUT_MARGIN:g} s)")
    if timeout.milliseconds is None:
        return Finding(Level.OK, subject, f"the broker's consumer_timeout is off "
                       f"({timeout.source})")
    broker_limit = f"the broker's consumer_timeout ({_minutes(timeout.milliseconds)}, " \
                   f"{timeout.source})"
    newer = "; RabbitMQ {}.{}+ would take x-consumer-timeout".format(*CONSUMER_TIMEOUT_SINCE)
    if not service.time_limit:
        return Finding(Level.WARN, subject, f"no time_limit: a job running longer than "
                       f"{broker_limit} loses its channel and is delivered again; set "
                       f"time_limit, or raise consumer_timeout above the longest job{newer}")
    if service.time_limit * 1000 + CONSUMER_TIMEOUT_MARGIN * 1000 >= timeout.milliseconds:
        return Finding(Level.WARN, subject, f"time_limit {service.time_limit:g} s reaches "
                       f"{broker_limit}: the broker would take the job back before "
                       f"time_limit stops it; raise consumer_timeout above "
                       f"{service.time_limit + CONSUMER_TIMEOUT_MARGIN:g} s or lower "
                       f"time_limit{newer}")
    return Finding(Level.OK, subject, f"time_limit {service.time_limit:g} s is below "
                   f"{broker_limit}")


def _check_queue(connection: pika.BlockingConnection, name: str,
                 arguments: dict[str, Any] | None, durable: bool = True
                 ) -> tuple[Finding, Any]:
    """(finding, declare-ok frame or None) for one queue, changing nothing."""
    channel = connection.channel()
    try:
        try:
            frame = channel.queue_declare(name, passive=True)
        except pe.ChannelClosedByBroker as error:
            if error.reply_code == 404:
                return Finding(Level.WARN, name, "missing"), None
            raise
        try:
            channel.queue_declare(name, durable=durable, arguments=arguments or None)
        except pe.ChannelClosedByBroker as error:
            if error.reply_code == 406:
                return Finding(Level.FAIL, name, f"declared with other arguments than "
                               f"gear.ini asks for: {error.reply_text}"), frame
            raise
        return Finding(Level.OK, name, "declared as configured"), frame
    finally:
        if channel.is_open:
            channel.close()


def _check_gear_exchange(connection: pika.BlockingConnection) -> Finding:
    """gEAR's publisher needs the exchange; it never declares it (contract = gear)."""
    name = topology.GEAR_EXCHANGE
    channel = connection.channel()
    try:
        channel.exchange_declare(name, passive=True)
    except pe.ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return Finding(Level.WARN, name, "gEAR's exchange is missing: gEAR's web API "
                           "fails with 404 NOT_FOUND until a consumer declares it")
        raise
    finally:
        if channel.is_open:
            channel.close()
    return Finding(Level.OK, name, "gEAR's exchange exists")


def check_service(connection: pika.BlockingConnection, service: ServiceSettings
                  ) -> Iterator[Finding]:
    """Topology, consumers and dead letters of one job type."""
    missing = []
    findings = []
    frames = {}
    yield Finding(Level.INFO, service.job_type, topology.describe_contract(service))
    queues: list[tuple[str, dict[str, Any] | None, bool]] = [
        (service.queue, topology.main_queue_arguments(service), service.queue_durable)]
    queues += [(topology.retry_queue(service, attempt), topology.retry_queue_arguments(service),
                True) for attempt in range(1, service.max_retries + 1)]
    queues.append((topology.dead_queue(service), topology.dead_queue_arguments(service), True))
    for name, arguments, durable in queues:
        finding, frames[name] = _check_queue(connection, name, arguments, durable)
        if frames[name] is None:
            missing.append(name)
        elif finding.level is not Level.OK or name == service.queue:
            findings.append(finding)
    if service.contract == "gear":
        yield _check_gear_exchange(connection)
    if missing:
        yield Finding(Level.WARN, service.job_type, f"missing: {', '.join(missing)} (declared "
                      "by the first consumer or submit)")
    yield from findings
    main, dead = frames[service.queue], frames[topology.dead_queue(service)]
    if main is not None:
        ready, consumers = main.method.message_count, main.method.consumer_count
        yield Finding(Level.OK if consumers else Level.WARN, service.queue,
                      f"{consumers} consumer(s), {ready} job(s) waiting")
    if dead is not None and dead.method.message_count:
        yield Finding(Level.WARN, topology.dead_queue(service),
                      f"{dead.method.message_count} dead job(s): gearqueue dead list "
                      f"{service.job_type}")
    if service.max_length and service.max_retries:
        yield Finding(Level.INFO, service.queue, "max_length counts waiting jobs only: a "
                      "retry whose delay ends while the queue is full is dropped by the "
                      "broker (its state stays 'retrying'); see docs/failure-handling.md")


#: The job id whose lock the doctor takes and gives back, to see that locking works.
LOCK_PROBE = "gearqueue-doctor-lock-probe"


def check_state_store(settings: Settings, job_type: str) -> Iterator[Finding]:
    """The job-state backend of `job_type`: usable; on PostgreSQL also its schema
    version and that a job lock can be taken and confirmed on its connection."""
    store = open_store(settings, job_type)
    try:
        try:
            store.check_writable()
        except ConfigError as error:
            yield Finding(Level.FAIL, job_type, str(error))
            return
        if not settings.state.url:
            yield Finding(Level.OK, job_type, f"state_dir {settings.paths.state_dir} is "
                          "writable")
            return
        from ..state.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        where = mask_url(settings.state.url)
        yield Finding(Level.OK, job_type, f"job-state database {where} is reachable, "
                      f"schema version {store.schema_version()}")
        try:
            with store.locked(LOCK_PROBE):
                store.confirm_locked(LOCK_PROBE)
            yield Finding(Level.OK, job_type, "job locks work (an advisory lock held on "
                          "its own connection)")
        except StateStoreUnavailable as error:
            yield Finding(Level.FAIL, job_type, f"job locks do not work: {error}")
    finally:
        store.close()


def diagnose(settings: Settings, job_types: list[str],
             environ: Mapping[str, str] = os.environ) -> Iterator[Finding]:
    """Every finding for `job_types`, broker by broker."""
    if not settings.rabbitmq.heartbeat:
        yield Finding(Level.WARN, "rabbitmq", "heartbeat = 0: a dead connection is only "
                      "noticed by TCP, possibly hours later")
    by_broker: dict[tuple[str, ...], list[ServiceSettings]] = {}
    for job_type in job_types:
        service = settings.service(job_type)
        yield from check_state_store(settings, job_type)
        if not service.queue_enabled:
            yield Finding(Level.INFO, job_type, "queue_enabled = 0: jobs run in the "
                          "caller's process; no broker needed")
            continue
        by_broker.setdefault(settings.broker_urls(job_type), []).append(service)
    for urls, services in by_broker.items():
        yield from _diagnose_broker(settings, urls, services, environ)


def _diagnose_broker(settings: Settings, urls: tuple[str, ...],
                     services: list[ServiceSettings], environ: Mapping[str, str]
                     ) -> Iterator[Finding]:
    where = ", ".join(mask_url(url) for url in urls)
    try:
        connection = connect(settings, services[0].job_type, "gearqueue-doctor")
    except BrokerUnavailable as error:
        yield Finding(Level.FAIL, "broker", f"{where}: {error}")
        return
    try:
        version = server_version(connection)
        url = connected_url(connection, urls)
        yield Finding(Level.OK, "broker", f"{mask_url(url)}: RabbitMQ "
                      f"{'.'.join(map(str, version)) or '?'}")
        for level, subject, message in cluster_findings(urls, environ):
            yield Finding(Level(level), subject, message)
        if any(service.queue_type == "quorum" for service in services) and version < (3, 8):
            yield Finding(Level.FAIL, "broker", "queue_type = quorum needs RabbitMQ 3.8+")
        timeout = read_consumer_timeout(url, environ)
        for service in services:
            try:
                yield from check_service(connection, service)
            except (pe.AMQPError, OSError) as error:
                yield Finding(Level.FAIL, service.job_type, f"checking queues: {error!r}")
            yield check_time_limit(service, version, timeout)
    finally:
        close_quietly(connection)
