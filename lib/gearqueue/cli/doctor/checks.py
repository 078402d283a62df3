"""`gearqueue doctor`: what would make jobs fail, found before they do.

Per job type: the job-state store; the R stack of its executor (ProjectR); its systemd
units and the code they run. Per broker: reachable; its cluster's nodes
(gearqueue.cluster_status); the management plugin; each job type's queues as gear.ini
declares them (queues.py) and its time limit against consumer_timeout (timeouts.py).
Nothing here changes the broker or a unit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from urllib.parse import unquote, urlparse

import pika.exceptions as pe

from ...broker import close_quietly, connect, connected_url, server_version
from ...cluster_status import cluster_findings
from ...config import ServiceSettings, Settings, mask_url
from ...errors import BrokerUnavailable, ConfigError, StateStoreUnavailable
from ...management import ManagementApi, ManagementUnavailable, amqp_ports
from ...state import open_store
from . import executor_env, units
from .findings import Finding, Level, fail, info, ok
from .queues import check_service
from .timeouts import check_time_limit, queue_consumer_timeout, read_consumer_timeout

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
            yield fail(job_type, str(error), "fix [state] url or [paths] state_dir in "
                       f"{settings.source} (or the database / folder it names)")
            return
        if not settings.state.url:
            yield ok(job_type, f"state_dir {settings.paths.state_dir} is writable")
            return
        from ...state.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        where = mask_url(settings.state.url)
        yield ok(job_type, f"job-state database {where} is reachable, schema version "
                 f"{store.schema_version()}")
        try:
            with store.locked(LOCK_PROBE):
                store.confirm_locked(LOCK_PROBE)
            yield ok(job_type, "job locks work (an advisory lock held on its own "
                     "connection)")
        except StateStoreUnavailable as error:
            yield fail(job_type, f"job locks do not work: {error}", "the database must "
                       "allow advisory locks on a session: connect to PostgreSQL directly "
                       "or through a pooler in session mode")
    finally:
        store.close()


def check_host(settings: Settings, service: ServiceSettings,
               environ: Mapping[str, str]) -> Iterator[Finding]:
    """Units, their code and the executor's R: what runs on this host."""
    code = None
    if units.systemd_running():
        found, code = units.check_units(settings, service)
        yield from found
        if code is not None:
            yield from units.check_code(settings, service.job_type, code)
    else:
        yield from units.check_started_by_hand(settings, service.job_type)
    yield from executor_env.check_r(service.job_type, code, environ)


def diagnose(settings: Settings, job_types: list[str],
             environ: Mapping[str, str] = os.environ) -> Iterator[Finding]:
    """Every finding for `job_types`, broker by broker."""
    if not settings.rabbitmq.heartbeat:
        yield fail("rabbitmq", "heartbeat = 0: a dead connection is only noticed by TCP, "
                   "possibly hours later", f"heartbeat = 60 in [rabbitmq] of "
                   f"{settings.source}")
    if not units.systemd_running():
        yield info("systemd", "not running here (PID 1 is not systemd): units are not "
                   "checked; consumers are started by hand or by another supervisor")
    by_broker: dict[tuple[str, ...], list[ServiceSettings]] = {}
    for job_type in job_types:
        service = settings.service(job_type)
        yield from check_state_store(settings, job_type)
        if not service.queue_enabled:
            yield info(job_type, "queue_enabled = 0: jobs run in the caller's process; no "
                       "broker or consumer needed")
            yield from executor_env.check_r(job_type, None, environ)
            continue
        yield from check_host(settings, service, environ)
        by_broker.setdefault(settings.broker_urls(job_type), []).append(service)
    for urls, services in by_broker.items():
        yield from _diagnose_broker(settings, urls, services, environ)


def check_management(settings: Settings, url: str, urls: tuple[str, ...]
                     ) -> tuple[Finding, ManagementApi | None]:
    """The management plugin: on, answering, and serving this broker."""
    port = settings.rabbitmq.management_port
    if not port:
        return info("management", "not used ([rabbitmq] management_port = 0): queues are "
                    "checked with AMQP declares"), None
    api = ManagementApi(url, port)
    try:
        overview = api.serves(amqp_ports(urls))
    except ManagementUnavailable as error:
        host = urlparse(url).hostname
        return fail("management", f"the management API does not answer for this broker "
                    f"({error})", f"rabbitmq-plugins enable rabbitmq_management on "
                    f"{host} (it listens on {port}), or set management_port in "
                    f"[rabbitmq] of {settings.source} to its port (0: do not use it)"), None
    return ok("management", f"rabbitmq_management answers at {api.base} (RabbitMQ "
              f"{overview.get('rabbitmq_version', '?')})"), api


def _diagnose_broker(settings: Settings, urls: tuple[str, ...],
                     services: list[ServiceSettings], environ: Mapping[str, str]
                     ) -> Iterator[Finding]:
    where = ", ".join(mask_url(url) for url in urls)
    try:
        connection = connect(settings, services[0].job_type, "gearqueue-doctor")
    except BrokerUnavailable as error:
        yield fail("broker", f"{where}: {error}", f"check [rabbitmq] url in "
                   f"{settings.source} (host, port, user, password, vhost), and that the "
                   "broker runs: systemctl status rabbitmq-server on its host")
        return
    try:
        version = server_version(connection)
        url = connected_url(connection, urls)
        yield ok("broker", f"{mask_url(url)}: RabbitMQ {'.'.join(map(str, version)) or '?'}")
        for level, subject, message, fix in cluster_findings(
                urls, environ, settings.rabbitmq.management_port):
            yield Finding(Level(level), subject, message, fix)
        management, api = check_management(settings, url, urls)
        yield management
        if any(service.queue_type == "quorum" for service in services) and version < (3, 8):
            yield fail("broker", "queue_type = quorum needs RabbitMQ 3.8+",
                       "upgrade RabbitMQ, or queue_type = classic in the job types' sections")
        timeout = read_consumer_timeout(url, environ)
        parsed = urlparse(url)
        vhost = unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"
        for service in services:
            try:
                found, seen = check_service(connection, settings, service, api, vhost)
            except (pe.AMQPError, OSError) as error:
                yield fail(service.job_type, f"checking queues: {error!r}",
                           "run doctor again; if it persists, see the broker's log")
                continue
            yield from found
            main = seen.get(service.queue)
            own = queue_consumer_timeout(main.record if main else None)
            yield check_time_limit(service, version, own or timeout)
    finally:
        close_quietly(connection)
