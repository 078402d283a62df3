"""The nodes of the RabbitMQ cluster behind [rabbitmq] url, for `gearqueue doctor`.

AMQP tells a client nothing about the other nodes, so they are read from the
management API (`/api/nodes`, port 15672 on the broker's host, with the URL's
credentials) when the plugin is on, else from `rabbitmqctl cluster_status --formatter
json` when the broker runs on this host. Either source must show an AMQP listener on a
configured port: the API or node found there may belong to another broker. A lone broker is a
cluster of one node and is listed the same way.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

MANAGEMENT_PORT = 15672
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
                        timeout: float = 5.0) -> ClusterStatus:
    """The cluster's nodes, from the first source that answers; ClusterStatusUnknown."""
    urls = tuple(urls)
    reasons = []
    for url in urls:
        try:
            return ClusterStatus(_from_management(url, amqp_ports(urls), timeout),
                                 "management API")
        except (OSError, ValueError, KeyError) as error:
            reasons.append(f"management API of {urlparse(url).hostname}: "
                           f"{getattr(error, 'reason', error)}")
    try:
        return ClusterStatus(_from_rabbitmqctl(urls, environ), "rabbitmqctl cluster_status")
    except ClusterStatusUnknown as error:
        reasons.append(str(error))
    raise ClusterStatusUnknown("; ".join(reasons))


def _from_management(url: str, ports: set[int], timeout: float) -> tuple[NodeState, ...]:
    """The nodes from /api/nodes, once /api/overview shows an AMQP listener on one of
    `ports` (the API on that host may belong to another broker)."""
    overview = _get_json(url, "/api/overview", timeout)
    served = {int(listener.get("port", 0)) for listener in overview.get("listeners") or ()
              if str(listener.get("protocol", "")).startswith("amqp")}
    if not ports & served:
        raise ValueError(f"it serves another broker (AMQP on {sorted(served)})")
    nodes: list[dict[str, Any]] = _get_json(url, "/api/nodes", timeout)
    return tuple(NodeState(
        name=node["name"], running=bool(node.get("running")),
        alarms=tuple(alarm for alarm, key in (("memory", "mem_alarm"),
                                              ("disk", "disk_free_alarm")) if node.get(key)),
        partitions=tuple(node.get("partitions") or ())) for node in nodes)


def _get_json(url: str, path: str, timeout: float) -> Any:
    parsed = urlparse(url)
    scheme = "https" if parsed.scheme == "amqps" else "http"
    request = urllib.request.Request(f"{scheme}://{parsed.hostname}:{MANAGEMENT_PORT}{path}")
    credentials = f"{unquote(parsed.username or 'guest')}:{unquote(parsed.password or 'guest')}"
    request.add_header("Authorization",
                       "Basic " + base64.b64encode(credentials.encode()).decode())
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def amqp_ports(urls: Iterable[str]) -> set[int]:
    return {urlparse(url).port or (5671 if url.startswith("amqps") else 5672)
            for url in urls}


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


#: (level, subject, message) with level one of doctor's: "ok", "info", "warn", "fail".
Finding = tuple[str, str, str]

ALARM_FIXES = {
    "memory": "publishers on every node are blocked; free memory on that host or raise "
              "vm_memory_high_watermark",
    "disk": "publishers on every node are blocked; free disk space under its data folder "
            "or lower disk_free_limit",
}


def cluster_findings(urls: Iterable[str], environ: Mapping[str, str] = os.environ
                     ) -> list[Finding]:
    """One finding per node of the cluster (running, alarms, partitions), each with its
    fix; or one saying why the nodes could not be listed."""
    try:
        status = read_cluster_status(urls, environ)
    except ClusterStatusUnknown as error:
        return [("info", "cluster", f"nodes not listed ({error}); enable the "
                 "rabbitmq_management plugin, or run doctor on a node's host")]
    findings: list[Finding] = []
    for node in status.nodes:
        subject = f"node {node.name}"
        if not node.running:
            findings.append(("fail", subject, f"not running ({status.source}): start it "
                             "(systemctl start rabbitmq-server on its host); if it is gone "
                             f"for good, rabbitmqctl forget_cluster_node {node.name}"))
            continue
        problems = [f"{alarm} alarm: {ALARM_FIXES.get(alarm, 'see the node log')}"
                    for alarm in node.alarms]
        if node.partitions:
            problems.append(f"partitioned from {', '.join(node.partitions)}: restart the "
                            "nodes of the smaller side once the network is back, and set "
                            "cluster_partition_handling = pause_minority")
        if problems:
            findings.append(("fail", subject, "; ".join(problems)))
        else:
            findings.append(("ok", subject, f"running, no alarms, no partitions "
                             f"({status.source})"))
    return findings
