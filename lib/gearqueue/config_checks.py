"""Checks of settings that span several keys or sections, and the values they derive.

Kept apart from config.py, which parses and types gear.ini key by key: what is here
needs whole settings (the metric ports of every job type, a job type's time limits
against the broker's heartbeat), and the runtime asks the same functions for the values
(an instance's port, an inline job's time limit), so the check and the use cannot
disagree. Each check raises ConfigError naming the file, section and key.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .defaults import service_section
from .errors import ConfigError
from .jobtypes import JOB_TYPES

if TYPE_CHECKING:
    from .config import MetricsSettings, ServiceSettings, Settings

#: Ports of one job type's instances: a type's block (instances 1 to 100).
METRIC_PORTS_PER_TYPE = 100


def metrics_port_of(settings: Settings, job_type: str) -> int:
    """The metrics port of `job_type`'s instance 1 (and of a consumer started by hand),
    or 0 when its metrics are not served over HTTP."""
    service = settings.service(job_type)
    if service.metrics_port:
        return service.metrics_port
    if not settings.metrics.port:
        return 0
    return settings.metrics.port + METRIC_PORTS_PER_TYPE * JOB_TYPES.index(job_type)


def check_metric_ports(metrics: MetricsSettings, services: Mapping[str, ServiceSettings],
                       path: Path) -> None:
    """The ports of two types' blocks must not overlap, nor pass 65535."""
    blocks: list[tuple[int, str]] = []
    for index, name in enumerate(JOB_TYPES):
        first = services[name].metrics_port or (
            metrics.port + METRIC_PORTS_PER_TYPE * index if metrics.port else 0)
        if first:
            blocks.append((first, name))
    blocks.sort()
    for (first, name), (following, other) in itertools.pairwise(blocks):
        if following - first < services[name].workers:
            raise ConfigError(
                f"metrics ports of {name} ({first}-{first + services[name].workers - 1}, "
                f"workers = {services[name].workers}) overlap those of {other} (from "
                f"{following}): set metrics_port of one of them apart",
                path=str(path), section=service_section(other), key="metrics_port")
    for first, name in blocks:
        if first + max(services[name].workers, 1) - 1 > 65535:
            key = "metrics_port" if services[name].metrics_port else "port"
            section = service_section(name) if services[name].metrics_port else "metrics"
            raise ConfigError(f"metrics ports of {name} pass 65535 (from {first})",
                              path=str(path), section=section, key=key)



def check_isolation(service: ServiceSettings, isolation: str, heartbeat: int,
                    path: Path) -> None:
    """ConfigError unless `service` can run with `isolation` (its own key's value or
    its job type's default).

    An inline job runs on the consumer's main thread, where heartbeats, acks and the
    watchdog are served between jobs only: it must end well inside the heartbeat, so
    its time limit (time_limit, or inline_time_limit when that is 0) must be under half
    the heartbeat interval. Its memory cannot be given back, so max_memory_mb is
    refused.
    """
    if isolation != "inline":
        return
    section = service_section(service.job_type)
    limit = inline_limit(service, heartbeat)
    if heartbeat and limit >= heartbeat / 2:
        key = "time_limit" if service.time_limit else "inline_time_limit"
        raise ConfigError(
            f"isolation = inline needs a time limit under half the heartbeat ({heartbeat} "
            f"s in [rabbitmq]): an inline job blocks the consumer's heartbeats while it "
            f"runs; got {limit:g} s (lower it, or set isolation = process)",
            path=str(path), section=section, key=key)
    if service.max_memory_mb:
        raise ConfigError("isolation = inline cannot give memory back (no child to "
                          "recycle): set max_memory_mb = 0 or isolation = process",
                          path=str(path), section=section, key="max_memory_mb")


#: An inline job's limit when neither time_limit nor inline_time_limit is set and
#: heartbeats are off (heartbeat = 0).
INLINE_LIMIT_WITHOUT_HEARTBEAT = 15.0


def inline_limit(service: ServiceSettings, heartbeat: int) -> float:
    """The hard time limit of an inline job: time_limit, else inline_time_limit, else a
    quarter of the heartbeat interval."""
    return (service.time_limit or service.inline_time_limit
            or (heartbeat / 4 if heartbeat else INLINE_LIMIT_WITHOUT_HEARTBEAT))
