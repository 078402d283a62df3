"""Where a consumer's metrics go: an HTTP endpoint on 127.0.0.1, or a textfile.

Ports: a job type has a block of ports from its first (`metrics_port_of`); instance N
listens on first + N - 1, a consumer started by hand (instance 0) on the first. A port
that is taken is not a reason to stop taking jobs: the consumer logs a warning naming
the port and tries again every RETRY_BIND_SECONDS, and serves as soon as it is free.

A textfile (`[metrics] textfile_dir`) is rewritten atomically at most every
TEXTFILE_EVERY_SECONDS and once more at exit, with gear_consumer_up 0, so that
node_exporter never reads half a file and a stopped consumer says so.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from ..config import Settings
from ..config_checks import metrics_port_of
from ..files import write_atomically
from ..log import fields

log = logging.getLogger(__name__)

ADDRESS = "127.0.0.1"
RETRY_BIND_SECONDS = 10.0
TEXTFILE_EVERY_SECONDS = 5.0


class MetricsOutput(Protocol):
    def open(self, registry: CollectorRegistry) -> None: ...
    def tick(self, registry: CollectorRegistry) -> None: ...
    def close(self, registry: CollectorRegistry) -> None: ...


def instance_port(first: int, instance: str) -> int | None:
    """The port of `instance` in a block starting at `first`; None for an instance
    that is not a number (metrics need one)."""
    if not instance.isdigit():
        return None
    number = int(instance)
    return first if number == 0 else first + number - 1


def metrics_output_for(settings: Settings, job_type: str, instance: str,
                       identifier: str) -> MetricsOutput | None:
    """The output gear.ini asks for, or None (metrics off)."""
    if settings.metrics.textfile_dir is not None:
        return Textfile(settings.metrics.textfile_dir / f"{identifier}.prom")
    first = metrics_port_of(settings, job_type)
    if not first:
        return None
    port = instance_port(first, instance)
    if port is None or port > 65535:
        log.warning("metrics: instance %r has no port in %s's block from %d; not serving "
                    "metrics", instance, job_type, first)
        return None
    return HttpEndpoint(port)


class HttpEndpoint:
    """prometheus_client's HTTP server (a daemon thread) on ADDRESS:port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: Any = None
        #: When `open` last tried (None: not yet asked to).
        self._tried: float | None = None
        self._warned = False

    def open(self, registry: CollectorRegistry) -> None:
        if self._server is not None:
            return
        self._tried = time.monotonic()
        try:
            self._server, _thread = start_http_server(self.port, ADDRESS, registry)
        except OSError as error:
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "metrics: cannot listen on %s:%d (%s: another consumer or "
                    "program has it, or two job types' ports overlap); jobs go on, "
                    "retrying every %g s", ADDRESS, self.port, error.strerror or error,
                    RETRY_BIND_SECONDS, extra=fields(metrics_port=self.port))
            return
        log.info("metrics on http://%s:%d/metrics", ADDRESS, self.port,
                 extra=fields(metrics_port=self.port))

    def tick(self, registry: CollectorRegistry) -> None:
        if self._server is None and self._tried is not None \
                and time.monotonic() - self._tried >= RETRY_BIND_SECONDS:
            self.open(registry)

    def close(self, registry: CollectorRegistry) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


#: node_exporter reads the file as its own user, a member of the folder's group (gear):
#: group-readable (the units' UMask=0027 leaves 0640).
TEXTFILE_MODE = 0o644


class Textfile:
    """`<textfile_dir>/<identifier>.prom` for node_exporter's textfile collector."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written = 0.0
        self._warned = False

    def open(self, registry: CollectorRegistry) -> None:
        self._write(registry)

    def tick(self, registry: CollectorRegistry) -> None:
        if self._written and time.monotonic() - self._written >= TEXTFILE_EVERY_SECONDS:
            self._write(registry)

    def close(self, registry: CollectorRegistry) -> None:
        self._write(registry)

    def _write(self, registry: CollectorRegistry) -> None:
        self._written = time.monotonic()
        try:
            write_atomically(self.path, generate_latest(registry), mode=TEXTFILE_MODE)
        except OSError as error:
            if not self._warned:
                log.warning("metrics: cannot write %s: %s; jobs go on", self.path, error,
                            extra=fields(path=str(self.path)))
            self._warned = True
        else:
            if self._warned:
                log.info("metrics: writing %s again", self.path)
            self._warned = False
