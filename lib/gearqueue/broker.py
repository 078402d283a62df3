"""Connecting to RabbitMQ: parameters from settings, one place where pika errors convert.

Everything else in gearqueue catches `BrokerError` subclasses only. Reconnecting is the
caller's loop (with `backoff.full_jitter`); `connect` itself tries each configured URL
once, so several URLs (the nodes of a cluster) fail over between brokers.

Where a connect starts: at a random node, then round the list. Each process draws on
its own, so a fleet of consumers and web API processes spreads over the cluster with no
coordination and no state kept anywhere, instead of all of them sitting on the first
node, overloading it and all failing over together when it goes. The node a process
just lost is tried last (`avoid`): a node that is down may cost a connect timeout,
which would come straight on top of the failover time.

pika logs each failed connect, and each lost connection, as a cascade of ERROR lines
ending in a traceback; those are held back here (on the calling thread only) and said
once instead: one WARNING per node that refused or did not answer, one INFO naming the
node connected to; a lost connection is the caller's one BrokerUnavailable line.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import ssl
import threading
import time
from collections.abc import Iterator

import pika
import pika.exceptions as pe

from .backoff import full_jitter
from .config import Settings, mask_url
from .errors import (
    BrokerDown,
    BrokerUnavailable,
    PublishNacked,
    TopologyMismatch,
    UnroutableError,
)
from .log import fields

log = logging.getLogger(__name__)

#: pika errors after which a new connection may help.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pe.AMQPConnectionError, pe.ConnectionClosed, pe.StreamLostError,
    pe.ChannelWrongStateError, pe.ChannelClosed, pe.ConnectionWrongStateError,
    OSError,
)


def connection_parameters(settings: Settings, job_type: str,
                          name: str = "gearqueue") -> list[pika.URLParameters]:
    """pika parameters for every configured URL, with our heartbeat, timeouts and TLS."""
    rabbit = settings.rabbitmq
    result = []
    for url in settings.broker_urls(job_type):
        params = pika.URLParameters(url)
        params.heartbeat = rabbit.heartbeat
        params.socket_timeout = rabbit.socket_timeout
        params.stack_timeout = rabbit.socket_timeout * 3
        params.blocked_connection_timeout = rabbit.blocked_connection_timeout or None
        params.connection_attempts = 1
        params.client_properties = {"connection_name": name}
        if url.startswith("amqps://"):
            context = ssl.create_default_context(cafile=rabbit.ca_file or None)
            if not rabbit.tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if rabbit.cert_file:
                context.load_cert_chain(rabbit.cert_file, rabbit.key_file or None)
            params.ssl_options = pika.SSLOptions(context, params.host)
        result.append(params)
    return result


#: The pika loggers that report a failed connect or a lost connection.
PIKA_LOGGERS = (
    "pika.adapters.utils.io_services_utils", "pika.adapters.utils.connection_workflow",
    "pika.adapters.base_connection", "pika.adapters.blocking_connection", "pika.connection",
    "pika.channel",
)


def connect_order(urls: tuple[str, ...], avoid: str | None = None) -> list[str]:
    """The URLs in the order to try: from a random one round the list, `avoid` last."""
    start = random.randrange(len(urls))
    order = [*urls[start:], *urls[:start]]
    if avoid in order and len(order) > 1:
        order.remove(avoid)
        order.append(avoid)
    return order


def connect(settings: Settings, job_type: str, name: str = "gearqueue", *,
            avoid: str | None = None) -> pika.BlockingConnection:
    """Open a connection to a broker of the list; BrokerUnavailable if none answers.

    `avoid`: the URL of a broker just lost, tried last. `connected_url` tells which
    one the connection went to.
    """
    urls = settings.broker_urls(job_type)
    parameters = dict(zip(urls, connection_parameters(settings, job_type, name),
                          strict=True))
    failed: list[str] = []
    for url in connect_order(urls, avoid):
        try:
            with pika_errors_said_by_us():
                connection = pika.BlockingConnection(parameters[url])
        except pe.ProbableAuthenticationError as error:
            reason = f"refused the login ({describe_connect_error(error)})"
        except CONNECTION_ERRORS as error:
            reason = f"unreachable ({describe_connect_error(error)})"
        else:
            after = f" after {len(failed)} failed" if failed else ""
            log.info("connected to broker %s as %s%s", mask_url(url), name, after,
                     extra=fields(broker=mask_url(url)))
            return connection
        failed.append(f"{mask_url(url)} {reason}")
        if len(urls) > 1:
            left = len(urls) - len(failed)
            log.warning("broker %s %s; %s", mask_url(url), reason,
                        f"trying the next of {left}" if left else "no broker left to try",
                        extra=fields(broker=mask_url(url)))
    raise BrokerUnavailable("no broker reachable: " + "; ".join(failed))


#: Backoff between a client's connect rounds while the broker is down (seconds).
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 0.2, 2.0


def connect_retrying(settings: Settings, job_type: str, name: str, *, seconds: float,
                     what: str) -> pika.BlockingConnection:
    """`connect`, tried again with capped, full-jitter backoff for up to `seconds`; then
    BrokerDown, saying what failed, at which URLs (masked) and what to check.

    The bound is on starting a round: a round begun just before it may still take up to
    `socket_timeout` per unreachable URL (a refused connect is immediate).
    """
    deadline = time.monotonic() + seconds
    rounds = 0
    while True:
        rounds += 1
        try:
            return connect(settings, job_type, name)
        except BrokerUnavailable as error:
            last = error
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, full_jitter(rounds, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS)))
    source = ("[rabbitmq] url" if settings.rabbitmq.urls
              else f"[{job_type}_service] queue_host ([rabbitmq] url is empty)")
    tried = f"for {seconds:g} s ({rounds} tries)" if rounds > 1 else "once"
    raise BrokerDown(
        f"{what}: RabbitMQ did not answer, tried {tried}: {last}. Check that RabbitMQ "
        f"is running (`systemctl status rabbitmq-server`, `rabbitmq-diagnostics ping`) "
        f"and that {source} in {settings.source} names it, with the right user and "
        f"password") from None


def connected_url(connection: pika.BlockingConnection, urls: tuple[str, ...]) -> str:
    """Which of `urls` an open connection goes to (its host and port)."""
    params = connection._impl.params  # type: ignore[attr-defined]

    def identity(candidate: pika.connection.Parameters) -> tuple[object, ...]:
        # Credentials and vhost too: two URLs may name one node as different users.
        return (candidate.host, candidate.port, candidate.virtual_host,
                candidate.credentials)

    for url in urls:
        if identity(pika.URLParameters(url)) == identity(params):
            return url
    return urls[0]


def describe_connect_error(error: BaseException) -> str:
    """pika's connect errors in one line (their str() is often empty)."""
    return "; ".join(str(arg) or repr(arg) for arg in error.args) or type(error).__name__


class _HeldBack(logging.Filter):
    """Holds back WARNING+ records of this thread; other threads' pass through."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread or record.levelno < logging.WARNING:
            return True
        self.records.append(record)
        return False


@contextlib.contextmanager
def pika_errors_said_by_us() -> Iterator[None]:
    """Hold back pika's WARNING and ERROR lines (and tracebacks) on this thread while a
    broker operation runs. If it raises, gearqueue says what happened in one line (the
    error converted here, or `connect`'s WARNING), so they are dropped; if it does not,
    they are logged after all, and nothing pika had to say is lost."""
    held_back = _HeldBack()
    loggers = [logging.getLogger(name) for name in PIKA_LOGGERS]
    for logger in loggers:
        logger.addFilter(held_back)
    try:
        yield
    except BaseException:
        held_back.records.clear()
        raise
    finally:
        for logger in loggers:
            logger.removeFilter(held_back)
        for record in held_back.records:
            logging.getLogger(record.name).handle(record)


def server_version(connection: pika.BlockingConnection) -> tuple[int, ...]:
    """The broker's version from the connection handshake, e.g. (3, 10, 8); () if unknown.

    Features differ by version (x-consumer-timeout needs 3.12), and the handshake is
    the one place every client sees it, without management rights.
    """
    # pika keeps the handshake's server properties on the adapter, with no public accessor.
    impl = connection._impl  # type: ignore[attr-defined]
    raw = (impl.server_properties or {}).get("version", "")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    numbers = []
    for part in text.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


@contextlib.contextmanager
def converted_errors(what: str) -> Iterator[None]:
    """Turn pika's exceptions into gearqueue's, naming what we were doing (pika's own
    lines about it are not repeated: `pika_errors_said_by_us`)."""
    try:
        with pika_errors_said_by_us():
            yield
    except pe.UnroutableError as error:
        raise UnroutableError(f"{what}: message was returned as unroutable "
                              f"(no queue bound): {error}") from None
    except pe.NackError as error:
        raise PublishNacked(f"{what}: broker refused the message: {error}") from None
    except pe.ChannelClosedByBroker as error:
        if error.reply_code == 406:
            raise TopologyMismatch(f"{what}: {error.reply_text}") from None
        raise BrokerUnavailable(f"{what}: channel closed by broker: {error.reply_code} "
                                f"{error.reply_text}") from None
    except CONNECTION_ERRORS as error:
        raise BrokerUnavailable(f"{what}: {type(error).__name__} {error}") from None


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a connection that may already be dead; never raise."""
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except Exception:
        log.debug("closing a broken connection failed", exc_info=True)
