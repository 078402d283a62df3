"""The broker's management API (rabbitmq_management), read by `gearqueue doctor`.

It is reached on each broker's host at `[rabbitmq] management_port` (15672 by default;
0: never), with the AMQP URL's credentials. An API found there may belong to another
broker, so `/api/overview` must show an AMQP listener on one of the configured ports
before anything else is believed (`serves`).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlparse

DEFAULT_PORT = 15672


class ManagementUnavailable(Exception):
    """The API did not answer, refused us, or serves another broker (the message says)."""


class NotFound(ManagementUnavailable):
    """The API answered 404: the object (a queue) does not exist."""


def amqp_ports(urls: Iterable[str]) -> set[int]:
    return {urlparse(url).port or (5671 if url.startswith("amqps") else 5672)
            for url in urls}


class ManagementApi:
    """GETs against the management API of the broker behind one AMQP URL."""

    def __init__(self, url: str, port: int = DEFAULT_PORT, timeout: float = 5.0) -> None:
        parsed = urlparse(url)
        scheme = "https" if parsed.scheme == "amqps" else "http"
        self.base = f"{scheme}://{parsed.hostname}:{port}"
        self.vhost = unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"
        credentials = f"{unquote(parsed.username or 'guest')}:" \
                      f"{unquote(parsed.password or 'guest')}"
        self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        self.timeout = timeout

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.base + path)
        request.add_header("Authorization", self._authorization)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise NotFound(f"{self.base}{path}: 404") from None
            raise ManagementUnavailable(f"{self.base}: HTTP {error.code} {error.reason}"
                                        ) from None
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise ManagementUnavailable(f"{self.base}: {reason}") from None

    def serves(self, ports: set[int]) -> dict[str, Any]:
        """/api/overview, if it shows an AMQP listener on one of `ports`."""
        overview: dict[str, Any] = self.get("/api/overview")
        served = {int(listener.get("port", 0)) for listener in overview.get("listeners") or ()
                  if str(listener.get("protocol", "")).startswith("amqp")}
        if not ports & served:
            raise ManagementUnavailable(f"{self.base} serves another broker (AMQP on "
                                        f"{sorted(served)})")
        return overview

    def queue(self, name: str) -> dict[str, Any]:
        """/api/queues/<vhost>/<name>: type, durable, arguments, consumers, policy."""
        result: dict[str, Any] = self.get(
            f"/api/queues/{quote(self.vhost, safe='')}/{quote(name, safe='')}")
        return result
