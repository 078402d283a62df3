"""Connecting to RabbitMQ: parameters from settings, one place where pika errors convert.

Everything else in gearqueue catches `BrokerError` subclasses only. Reconnecting is the
caller's loop (with `backoff.full_jitter`); `connect` itself tries each configured URL
once, in order, so several URLs fail over between brokers.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import ssl
from collections.abc import Iterator

import pika
import pika.exceptions as pe

from .config import Settings, mask_url
from .errors import (
    BrokerUnavailable,
    PublishNacked,
    TopologyMismatch,
    UnroutableError,
)

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


def connect(settings: Settings, job_type: str, name: str = "gearqueue"
            ) -> pika.BlockingConnection:
    """Open a connection to the first broker that answers; BrokerUnavailable if none does."""
    errors = []
    for url, params in zip(settings.broker_urls(job_type),
                           connection_parameters(settings, job_type, name), strict=True):
        try:
            return pika.BlockingConnection(params)
        except pe.ProbableAuthenticationError as error:
            errors.append(f"{mask_url(url)}: authentication refused ({error})")
        except CONNECTION_ERRORS as error:
            errors.append(f"{mask_url(url)}: {type(error).__name__} {error}")
    raise BrokerUnavailable("no broker reachable: " + "; ".join(errors))


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
    """Turn pika's exceptions into gearqueue's, naming what we were doing."""
    try:
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
