"""Unacked message counts, which AMQP itself does not report.

Asked of the management API (port 15672, the same credentials) when it answers, else of
`rabbitmqctl` when the broker runs on this host; None when neither can say.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pika

MANAGEMENT_PORT = 15672


def unacked_counts(url: str, timeout: float = 3.0) -> dict[str, int] | None:
    """{queue name: unacked messages} for the vhost of `url`, or None."""
    params = pika.URLParameters(url)
    return _from_management(params, timeout) or _from_rabbitmqctl(params, timeout)


def _from_management(params: pika.URLParameters, timeout: float) -> dict[str, int] | None:
    vhost = urllib.parse.quote(params.virtual_host, safe="")
    request = urllib.request.Request(
        f"http://{params.host}:{MANAGEMENT_PORT}/api/queues/{vhost}"
        "?columns=name,messages_unacknowledged")
    credentials = params.credentials
    if not isinstance(credentials, pika.PlainCredentials):  # EXTERNAL (TLS client certs)
        return None
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode())
    request.add_header("Authorization", f"Basic {token.decode()}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            rows = json.load(response)
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return {row["name"]: int(row.get("messages_unacknowledged") or 0) for row in rows}


def _from_rabbitmqctl(params: pika.URLParameters, timeout: float) -> dict[str, int] | None:
    if params.host not in {"localhost", "127.0.0.1", "::1"} or not shutil.which("rabbitmqctl"):
        return None
    try:
        result = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "-p", params.virtual_host, "--no-table-headers",
             "name", "messages_unacknowledged"],
            capture_output=True, text=True, timeout=timeout * 5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    counts = {}
    for line in result.stdout.splitlines():
        name, _, count = line.rpartition("\t")
        if name and count.isdigit():
            counts[name] = int(count)
    return counts
