"""The nodes of the RabbitMQ cluster behind [rabbitmq] url, for `gearqueue doctor`.

AMQP tells a client nothing about the other nodes, so they are read from the
management API (`/api/nodes`, port 15672 on the broker's host, with the URL's
credentials) when the plugin is on, else from `rabbitmqctl cluster_status --formatter
json` when the broker runs on this host. Either source must show an AMQP listener on a
configured port: the API or node found there may belong to another broker. A lone broker is a
cluster of one node and is listed the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .management import DEFAULT_PORT, ManagementApi, ManagementUnavailable, amqp_ports

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")


@dataclass(frozen=True)
class NodeState:
    name: str
    running: bool
    #: Resource alarms in force on the node: "memory", "disk".
    alarms: tuple[str, ...]
    #: Nodes this node cannot see (a network partition).
    partitions: tuple[str, ...]


@dataclass(frozen=True)
class ClusterStatus:
    nodes: tuple[NodeState, ...]
    #: Where the states come from: "management API" or "rabbitmqctl cluster_status".
    source: str


class ClusterStatusUnknown(Exception):
    """Neither source could be read; the message says why (it is shown as is)."""


def read_cluster_status(urls: Iterable[str], environ: Mapping[str, str] = os.environ,
                        timeout: float = 5.0, management_port: int = DEFAULT_PORT
                        ) -> ClusterStatus:
    """The cluster's nodes, from the first source that answers; ClusterStatusUnknown.
    `management_port` 0: rabbitmqctl only."""
    urls = tuple(urls)
    reasons = []
    for url in urls if management_port else ():
        try:
            return ClusterStatus(_from_management(url, amqp_ports(urls), timeout,
                                                  management_port), "management API")
        except (ManagementUnavailable, KeyError) as error:
            reasons.append(f"management API of {urlparse(url).hostname}: {error}")
    try:
        return ClusterStatus(_from_rabbitmqctl(urls, environ), "rabbitmqctl cluster_status")
    except ClusterStatusUnknown as error:
        reasons.append(str(error))
    raise ClusterStatusUnknown("; ".join(reasons))


def _from_management(url: str, ports: set[int], timeout: float, port: int
                     ) -> tuple[NodeState, ...]:
    """The nodes from /api/nodes, once /api/overview shows an AMQP listener on one of
    `ports` (the API on that host may belong to another broker)."""
    api = ManagementApi(url, port, timeout)
    api.serves(ports)
    nodes: list[dict[str, Any]] = api.get("/api/nodes")
    return tuple(NodeState(
        name=node["name"], running=bool(node.get("running")),
        alarms=tuple(alarm for alarm, key in (("memory", "mem_alarm"),
                                              ("disk", "disk_free_alarm")) if node.get(key)),
        partitions=tuple(node.get("partitions") or ())) for node in nodes)


def _from_rabbitmqctl(urls: tuple[str, ...], environ: Mapping[str, str]
                      ) -> tuple[NodeState, ...]:
    if not any((urlparse(url).hostname or "") in LOCAL_HOSTS for url in urls):
        raise ClusterStatusUnknown("rabbitmqctl: the broker is not on this host")
    ctl = shutil.which("rabbitmqctl", path=environ.get("PATH"))
    if ctl is None:
        raise ClusterStatusUnknown("rabbitmqctl: not installed here")
    try:
        result = subprocess.run([ctl, "-q", "cluster_status", "--formatter", "json"],
                                capture_output=True, text=True, timeout=30, check=False,
                                env=dict(environ))
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ClusterStatusUnknown(f"rabbitmqctl: {error}") from None
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()[:1]
        raise ClusterStatusUnknown(f"rabbitmqctl: {reason[0] if reason else 'failed'}")
    return nodes_of(json.loads(result.stdout), urls)


def nodes_of(status: Mapping[str, Any], urls: tuple[str, ...]) -> tuple[NodeState, ...]:
    """NodeStates from `rabbitmqctl cluster_status --formatter json` output, if the
    cluster it describes is the one of `urls` (a listener on one of their ports)."""
    ports = amqp_ports(urls)
    listeners = status.get("listeners") or {}
    served = {int(listener.get("port", 0)) for node in listeners.values() for listener in node
              if str(listener.get("protocol", "")).startswith("amqp")}
    if not ports & served:
        raise ClusterStatusUnknown(f"rabbitmqctl: the local cluster does not listen on "
                                   f"{', '.join(map(str, sorted(ports)))}")
    running = set(status.get("running_nodes") or ())
    members = sorted(set(status.get("disk_nodes") or ()) | set(status.get("ram_nodes") or ())
                     | running)
    alarms: dict[str, list[str]] = {}
    for alarm in status.get("alarms") or ():
        # {"node": ..., "resource": "memory" | "disk", "type": "resource_limit"}
        kind = str(alarm.get("resource") or alarm.get("type", "unknown"))
        alarms.setdefault(str(alarm.get("node", "")), []).append(kind)
    partitions = status.get("partitions") or {}
    return tuple(NodeState(name=name, running=name in running,
                           alarms=tuple(alarms.get(name, ())),
                           partitions=tuple(partitions.get(name, ())))
                 for name in members)


#: (level, subject, message, fix) with level one of doctor's: "ok", "info", "fail"; the
#: fix is empty unless level is "fail".
Finding = tuple[str, str, str, str]

#: What a resource alarm does, and its fix.
ALARMS = {
    "memory": ("publishers on every node are blocked",
               "free memory on that host or raise vm_memory_high_watermark"),
    "disk": ("publishers on every node are blocked",
             "free disk space under its data folder or lower disk_free_limit"),
}


def cluster_findings(urls: Iterable[str], environ: Mapping[str, str] = os.environ,
                     management_port: int = DEFAULT_PORT) -> list[Finding]:
    """One finding per node of the cluster (running, alarms, partitions), each problem
    with its fix; or one saying why the nodes could not be listed."""
    try:
        status = read_cluster_status(urls, environ, management_port=management_port)
    except ClusterStatusUnknown as error:
        return [("info", "cluster", f"nodes not listed ({error}): they are read from the "
                 "management API, or from rabbitmqctl on a node's host", "")]
    findings: list[Finding] = []
    for node in status.nodes:
        subject = f"node {node.name}"
        if not node.running:
            findings.append(("fail", subject, f"not running ({status.source})",
                             "start it (systemctl start rabbitmq-server on its host); if "
                             f"it is gone for good, rabbitmqctl forget_cluster_node "
                             f"{node.name}"))
            continue
        problems, fixes = [], []
        for alarm in node.alarms:
            effect, fix = ALARMS.get(alarm, ("see the node log", "see the node log"))
            problems.append(f"{alarm} alarm: {effect}")
            fixes.append(fix)
        if node.partitions:
            problems.append(f"partitioned from {', '.join(node.partitions)}")
            fixes.append("restart the nodes of the smaller side once the network is back, "
                         "and set cluster_partition_handling = pause_minority")
        if problems:
            findings.append(("fail", subject, "; ".join(problems), "; ".join(fixes)))
        else:
            findings.append(("ok", subject, f"running, no alarms, no partitions "
                             f"({status.source})", ""))
    return findings
