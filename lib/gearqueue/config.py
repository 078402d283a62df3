"""gear.ini -> typed, validated, immutable settings.

Parsing is strict so that operators find their mistakes at start-up, not at 3 a.m.:
unknown sections and keys, wrong types and a missing file all raise one `ConfigError`
naming the file, section and key. Values are taken literally (no `%` interpolation),
because AMQP URLs carry percent-encoded vhosts and passwords.
"""

from __future__ import annotations

import configparser
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import defaults, gear_ini
from .config_checks import check_isolation, check_metric_ports
from .defaults import Key, service_section
from .errors import ConfigError
from .jobtypes import JOB_TYPES

log = logging.getLogger(__name__)

#: contract values: this project's own topology, or gEAR's (see gear_ini, docs/projectr.md).
GEARQUEUE, GEAR = "gearqueue", "gear"


@dataclass(frozen=True)
class RabbitSettings:
    urls: tuple[str, ...]
    heartbeat: int
    socket_timeout: float
    blocked_connection_timeout: float
    reconnect_max_delay: float
    ca_file: str
    cert_file: str
    key_file: str
    tls_verify: bool
    connect_retry_seconds: float
    #: Empty: no events.
    events_exchange: str
    management_port: int = 15672


@dataclass(frozen=True)
class PathSettings:
    state_dir: Path
    datasets_dir: Path
    carts_dir: Path
    projections_dir: Path
    uploads_dir: Path
    exports_dir: Path


@dataclass(frozen=True)
class StateSettings:
    #: Empty: SQLite under paths.state_dir; else a postgresql:// URL.
    url: str = ""


@dataclass(frozen=True)
class MetricsSettings:
    #: 0: no HTTP endpoint (unless a job type's metrics_port is set).
    port: int = 0
    #: Write <identifier>.prom here instead of serving (node_exporter's textfile collector).
    textfile_dir: Path | None = None


@dataclass(frozen=True)
class StatusSettings:
    #: 0: each instance's own figure (gearqueue.instances).
    stale_after: float = 0.0


@dataclass(frozen=True)
class ServiceSettings:
    job_type: str
    contract: str
    #: Resolved: an empty queue_durable follows the contract.
    queue_durable: bool
    queue_enabled: bool
    queue_host: str
    queue: str
    prefetch: int
    batch_size: int
    #: "process", "inline", or "" for the job type's own (see `config_checks.check_isolation`).
    isolation: str
    inline_time_limit: float
    log_quick_jobs_ms: int
    workers: int
    max_retries: int
    retry_backoff: float
    retry_backoff_max: float
    time_limit: float
    soft_time_limit: float
    max_memory_mb: int
    max_jobs_per_child: int
    rate_limit: float
    max_message_bytes: int
    queue_type: str
    max_length: int
    max_priority: int
    message_ttl: int
    reply_timeout: float
    #: "none" or "inline": what submit/call do when the broker is down.
    fallback: str
    #: This type's first metrics port as given (0: derived, see `config_checks.metrics_port_of`).
    metrics_port: int = 0

    @property
    def jobs_per_batch(self) -> int:
        """How many deliveries at most go to the executor child at once: batch_size,
        never more than the prefetch that holds them (0: prefetch)."""
        return min(self.batch_size or self.prefetch, self.prefetch)


@dataclass(frozen=True)
class Settings:
    source: Path
    rabbitmq: RabbitSettings
    paths: PathSettings
    services: Mapping[str, ServiceSettings] = field(default_factory=dict)
    state: StateSettings = field(default_factory=StateSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    status: StatusSettings = field(default_factory=StatusSettings)

    def service(self, job_type: str) -> ServiceSettings:
        try:
            return self.services[job_type]
        except KeyError:
            raise ConfigError(f"unknown job type '{job_type}' "
                              f"(known: {', '.join(self.services)})") from None

    def broker_urls(self, job_type: str) -> tuple[str, ...]:
        """The broker URLs for `job_type`: [rabbitmq] url, else its section's queue_host."""
        if self.rabbitmq.urls:
            return self.rabbitmq.urls
        host = self.service(job_type).queue_host
        return (f"amqp://guest:guest@{host}:5672/%2F",)


def find_config(explicit: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] = os.environ) -> Path:
    """The gear.ini to use: --config, then $GEAR_INI, then ./gear.ini, /etc/gear/gear.ini."""
    if explicit:
        return Path(explicit)
    if environ.get(defaults.ENV_CONFIG):
        return Path(environ[defaults.ENV_CONFIG])
    for candidate in defaults.SEARCH_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(
        f"no gear.ini found: give --config PATH, set ${defaults.ENV_CONFIG}, or create one of "
        f"{', '.join(defaults.SEARCH_PATHS)} (see gear.ini.example)"
    )


def load_settings(explicit: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] = os.environ) -> Settings:
    """Find, read and validate gear.ini."""
    path = find_config(explicit, environ)
    parser = configparser.RawConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), strict=True,
        default_section="\x00no-defaults",
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read: {error}", path=str(path)) from None
    except configparser.Error as error:
        raise ConfigError(f"not a valid ini file: {error}", path=str(path)) from None
    return _build_settings(path, parser, environ)


def _build_settings(path: Path, parser: configparser.RawConfigParser,
                    environ: Mapping[str, str]) -> Settings:
    known = dict(defaults.SECTION_KEYS)
    known.update({service_section(name): defaults.SERVICE_KEYS for name in JOB_TYPES})
    sections, ignored = gear_ini.fold_sections(
        ((name, dict(parser.items(name))) for name in parser.sections()), path=str(path))
    for section in sections:
        if section not in known:
            raise ConfigError(f"unknown section (known: {', '.join(known)})",
                              path=str(path), section=section)
    if ignored:
        log.info("%s: ignoring gEAR's own settings %s", path, "; ".join(ignored))

    def values(section: str, keys: tuple[Key, ...], **context: str) -> dict[str, Any]:
        given = sections.get(section, {})
        names = {key.name for key in keys}
        for name in given:
            if name not in names:
                raise ConfigError(f"unknown key (known: {', '.join(sorted(names))})",
                                  path=str(path), section=section, key=name)
        result: dict[str, Any] = {}
        for key in keys:
            if key.name in given:
                try:
                    result[key.name] = key.convert(given[key.name])
                except ValueError as error:
                    raise ConfigError(str(error), path=str(path), section=section,
                                      key=key.name) from None
            else:
                default = key.default
                result[key.name] = default.format(**context) if isinstance(default, str) \
                    else default
        return result

    rabbit = values("rabbitmq", defaults.RABBITMQ_KEYS)
    url_text = environ.get(defaults.ENV_RABBITMQ_URL) or rabbit.pop("url")
    rabbit.pop("url", None)
    urls = tuple(url.strip() for url in url_text.split(",") if url.strip())
    for url in urls:
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigError(f"not an amqp:// or amqps:// URL: {mask_url(url)!r}",
                              path=str(path), section="rabbitmq", key="url")

    state = StateSettings(**values("state", defaults.STATE_KEYS))
    if state.url and not state.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"not a postgresql:// URL: {mask_url(state.url)!r} (empty: "
                          "SQLite under [paths] state_dir)", path=str(path), section="state",
                          key="url")

    services = {}
    for name in JOB_TYPES:
        section = service_section(name)
        service_values = values(section, defaults.SERVICE_KEYS, job_type=name)
        gear = service_values["contract"] == GEAR
        if gear and "queue" not in sections.get(section, {}):
            service_values["queue"] = name  # gEAR's queue is named after the job type
        if service_values["queue_durable"] is None:
            service_values["queue_durable"] = not gear
        service = ServiceSettings(job_type=name, **service_values)
        _check_service(service, path, section)
        if service.isolation:  # a job type's own default is checked by its consumer
            check_isolation(service, service.isolation, rabbit["heartbeat"], path)
        services[name] = service

    base = path.resolve().parent
    path_values = values("paths", defaults.PATH_KEYS)
    if any(service.contract == GEAR for service in services.values()):
        given_paths = sections.get("paths", {})
        path_values.update({name: value for name, value in gear_ini.GEAR_PATHS.items()
                            if name not in given_paths})
    paths = PathSettings(**{name: base / value for name, value in path_values.items()})
    metric_values = values("metrics", defaults.METRICS_KEYS)
    textfile = metric_values["textfile_dir"]
    metrics = MetricsSettings(port=metric_values["port"],
                              textfile_dir=base / textfile if textfile else None)
    check_metric_ports(metrics, services, path)
    return Settings(source=path, rabbitmq=RabbitSettings(urls=urls, **rabbit), paths=paths,
                    services=services, state=state, metrics=metrics,
                    status=StatusSettings(**values("status", defaults.STATUS_KEYS)))


def _check_service(service: ServiceSettings, path: Path, section: str) -> None:
    if service.contract == GEAR:
        options = [key for key, value in (
            ("queue_type", service.queue_type == "quorum"), ("max_length", service.max_length),
            ("max_priority", service.max_priority), ("message_ttl", service.message_ttl))
            if value]
        if options:
            raise ConfigError(f"contract = gear cannot have {', '.join(options)}: gEAR's "
                              f"publisher declares the queue with no arguments, and the "
                              f"broker would refuse one of the two declares",
                              path=str(path), section=section, key=options[0])
    if not service.queue or len(service.queue.encode()) > 200:
        raise ConfigError("queue name must be 1 to 200 bytes", path=str(path),
                          section=section, key="queue")
    if service.max_priority > 255:
        raise ConfigError("must be at most 255", path=str(path), section=section,
                          key="max_priority")
    if service.soft_time_limit and service.time_limit and \
            service.soft_time_limit >= service.time_limit:
        raise ConfigError("must be below time_limit, so the job can clean up before the "
                          "hard kill", path=str(path), section=section, key="soft_time_limit")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and check-config."""
    url = re.sub(r"([?&]password=)[^&]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"

