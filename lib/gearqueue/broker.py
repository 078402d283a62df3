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

import functools
import itertools
import logging
import random
import ssl
import threading
import time

import pika
import pika.exceptions as pe

from .backoff import full_jitter
from .config import Settings, mask_url
from .errors import (
    BrokerDown,
    BrokerError,
    BrokerUnavailable,
    PublishNacked,
    TopologyMismatch,
    UnroutableError,
)
from .log import fields
from .wire import coalesce_frames

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
    coalesce_frames()  # one send() per socket write, not per frame (gearqueue/wire.py)
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
    """Holds back WARNING+ records of a thread while it is inside `pika_errors_said_by_us`;
    every other record, and every other thread's, passes through.

    One instance sits on each pika logger for the life of the process (`_held_back`):
    installing and removing filters around every broker call took six logger look-ups
    and twelve filter-list changes, each under logging's lock, about 10 us a call and
    four calls a job (docs/performance.md).
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        holding: list[list[logging.LogRecord]] | None = getattr(self._local, "holding", None)
        if not holding or record.levelno < logging.WARNING:
            return True
        holding[-1].append(record)
        return False

    def begin(self) -> list[logging.LogRecord]:
        """Start holding back this thread's records; the list they go to."""
        holding = getattr(self._local, "holding", None)
        if holding is None:
            holding = self._local.holding = []
        records: list[logging.LogRecord] = []
        holding.append(records)
        return records

    def end(self, records: list[logging.LogRecord], *, said: bool) -> None:
        """Stop holding back; unless gearqueue `said` what happened, log them after all."""
        self._local.holding.pop()
        if not said:
            for record in records:
                logging.getLogger(record.name).handle(record)


@functools.cache
def _held_back() -> _HeldBack:
    """The one filter on the pika loggers, installed on first use (the logging tree is
    process-wide by nature, so this is too)."""
    held_back = _HeldBack()
    for name in PIKA_LOGGERS:
        logging.getLogger(name).addFilter(held_back)
    return held_back


class pika_errors_said_by_us:
    """Hold back pika's WARNING and ERROR lines (and tracebacks) on this thread while a
    broker operation runs. If it raises, gearqueue says what happened in one line (the
    error converted here, or `connect`'s WARNING), so they are dropped; if it does not,
    they are logged after all, and nothing pika had to say is lost.

    A class, not a generator: it wraps every ack, reply and publish (see _HeldBack)."""

    __slots__ = ("_records",)

    def __enter__(self) -> None:
        self._records = _held_back().begin()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> None:
        _held_back().end(self._records, said=kind is not None)


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


class converted_errors:
    """Turn pika's exceptions into gearqueue's, naming what we were doing (pika's own
    lines about it are not repeated: `pika_errors_said_by_us`). A class, not a
    generator, for the same reason."""

    __slots__ = ("_said", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self._said = pika_errors_said_by_us()

    def __enter__(self) -> None:
        self._said.__enter__()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> None:
        self._said.__exit__(kind, error, traceback)
        if error is not None:
            converted = _converted(self.what, error)
            if converted is not None:
                raise converted from None


def _converted(what: str, error: BaseException) -> BrokerError | None:
    """gearqueue's error for a pika error met while doing `what`; None for any other."""
    if isinstance(error, pe.UnroutableError):
        return UnroutableError(f"{what}: message was returned as unroutable "
                               f"(no queue bound): {error}")
    if isinstance(error, pe.NackError):
        return PublishNacked(f"{what}: broker refused the message: {error}")
    if isinstance(error, pe.ChannelClosedByBroker):
        if error.reply_code == 406:
            return TopologyMismatch(f"{what}: {error.reply_text}")
        return BrokerUnavailable(f"{what}: channel closed by broker: {error.reply_code} "
                                 f"{error.reply_text}")
    if isinstance(error, CONNECTION_ERRORS):
        return BrokerUnavailable(f"{what}: {type(error).__name__} {error}")
    return None


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a connection that may already be dead; never raise."""
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except Exception:
        log.debug("closing a broken connection failed", exc_info=True)
