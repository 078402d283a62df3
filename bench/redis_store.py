"""The Redis that Celery's and Dramatiq's result backends store into, for the benchmark only.

gearqueue stores every job's result; the peers' like-for-like rows do too, in Redis
(their usual result backend). `running()` uses the Redis that answers at $GEAR_BENCH_REDIS_URL
(default 127.0.0.1:6379, database 15), or starts Debian's redis-server there with no
persistence (installing the package if it is missing) and shuts it down afterwards.
Redis is a benchmark dependency only, never a test dependency.

The Redis may be shared, like the broker: every key a run stores starts with its queue's
`bench<random>` name and only those keys are deleted (`delete_own_keys`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis

from bench.common import TAG_PREFIX, install_debian_package

if TYPE_CHECKING:
    from dramatiq.results.backends import RedisBackend

log = logging.getLogger(__name__)

REDIS_URL = os.environ.get("GEAR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
#: What the benchmark starts when nothing answers: in memory only, as most Celery and
#: Dramatiq deployments run their result Redis (so not durable: see `persistence`).
SERVER_ARGS = ("--daemonize", "yes", "--save", "", "--appendonly", "no")
DEBIAN_PACKAGE = "redis-server"


def client(url: str = REDIS_URL) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2)


def answers(url: str = REDIS_URL) -> bool:
    try:
        return bool(client(url).ping())
    except redis.exceptions.RedisError:
        return False


def _install_server() -> None:
    if os.geteuid() != 0:
        raise RuntimeError(f"no Redis answers at {REDIS_URL} and redis-server is not "
                           f"installed: apt-get install {DEBIAN_PACKAGE} (as root)")
    log.info("installing %s for the result-backend peers", DEBIAN_PACKAGE)
    install_debian_package(DEBIAN_PACKAGE, "for the result-backend peers")


@contextlib.contextmanager
def running() -> Iterator[None]:
    """A Redis at REDIS_URL for the duration: the one there, or one started here."""
    if answers():
        yield
        return
    address = urlsplit(REDIS_URL)
    host, port = address.hostname or "127.0.0.1", address.port or 6379
    if host not in ("127.0.0.1", "localhost"):
        raise RuntimeError(f"no Redis answers at {REDIS_URL} (not local: not starting one)")
    if shutil.which("redis-server") is None:
        _install_server()
    log.info("starting redis-server on %s:%d (no persistence)", host, port)
    subprocess.run(["redis-server", *SERVER_ARGS, "--bind", host, "--port", str(port)],
                   check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not answers():
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server started but does not answer at {REDIS_URL}")
        time.sleep(0.05)
    try:
        yield
    finally:
        with contextlib.suppress(redis.exceptions.RedisError):
            client().shutdown(nosave=True)


def persistence() -> dict[str, str]:
    """How durable what the peers store is: Redis's RDB and AOF settings, as it runs."""
    settings = {}
    connection = client()
    for name in ("save", "appendonly", "appendfsync"):
        settings.update(connection.config_get(name))
    settings["redis_version"] = str(connection.info("server").get("redis_version", ""))
    return settings


def durability(settings: dict[str, str]) -> str:
    """One line for the guarantees table: what a stored result survives."""
    if not settings:
        return "Redis (persistence not recorded)"
    if settings.get("appendonly") == "yes":
        return (f"Redis AOF, appendfsync {settings.get('appendfsync')}: survives a Redis "
                "restart" + ("" if settings.get("appendfsync") == "always"
                             else "; a crash can lose up to ~1 s"))
    if settings.get("save"):
        return (f"Redis RDB snapshots only (save {settings['save']}): a Redis crash loses "
                "what came after the last snapshot")
    return "Redis memory only (no RDB, no AOF): NOT durable, lost when Redis stops"


def results_env(prefix: str) -> dict[str, str]:
    """The environment that turns on bench/celery_app.py's and dramatiq_app.py's result
    backend, every key under `prefix` (a queue name of this run)."""
    return {"BENCH_RESULTS_URL": REDIS_URL, "BENCH_RESULTS_PREFIX": prefix}


def dramatiq_backend(url: str, prefix: str) -> RedisBackend:
    """Dramatiq's RedisBackend with readable keys under `prefix` (for `delete_own_keys`)."""
    from dramatiq.results.backends import RedisBackend

    return RedisBackend(url=url, namespace=prefix, use_namespace_prefix_keys=True)


def delete_own_keys(prefix: str) -> int:
    """Delete the keys a run stored under `prefix`; how many there were."""
    if not prefix.startswith(TAG_PREFIX):
        raise ValueError(f"refusing to delete keys '{prefix}*': not of a benchmark run")
    connection = client()
    deleted = 0
    batch: list[bytes] = []
    for key in connection.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            deleted += connection.delete(*batch)
            batch = []
    if batch:
        deleted += connection.delete(*batch)
    return deleted
