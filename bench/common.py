"""What every benchmark shares: the broker, unique queue names, processes, statistics.

Benchmarks run against the local broker (127.0.0.1:5672) that other people use too, so
every queue they create carries a unique `bench<random>` prefix and only those queues
are ever deleted or purged (`delete_own_queues`, `purge_own_queue`); no other queue is
touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pika
import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
BROKER_URL = os.environ.get("GEAR_BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
TAG_PREFIX = "bench"


def unique_tag() -> str:
    return f"{TAG_PREFIX}{uuid.uuid4().hex[:10]}"


def broker_params() -> pika.URLParameters:
    params = pika.URLParameters(BROKER_URL)
    params.heartbeat = 60
    return params


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the value below which `fraction` of the samples lie."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


class Broker:
    """A management connection for the benchmark itself: counts consumers, deletes queues."""

    def __init__(self) -> None:
        params = broker_params()
        params.heartbeat = 0  # idle for minutes while a run goes on; nothing to keep alive
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()

    def consumers(self, queue: str) -> int:
        if not self.channel.is_open:
            self.channel = self.connection.channel()
        try:
            return self.channel.queue_declare(queue, passive=True).method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:  # not declared yet
            self.channel = self.connection.channel()
            return 0

    def delete_own_queues(self, tag: str, names: Iterable[str]) -> None:
        for name in names:
            if not name.startswith(tag):
                raise ValueError(f"refusing to delete '{name}': not a queue of this run")
            if not self.channel.is_open:
                self.channel = self.connection.channel()
            self.channel.queue_delete(name)

    def purge_own_queue(self, tag: str, name: str) -> None:
        """Empty a queue of this run (what a timed-out run left behind)."""
        if not name.startswith(tag):
            raise ValueError(f"refusing to purge '{name}': not a queue of this run")
        if not self.channel.is_open:
            self.channel = self.connection.channel()
        self.channel.queue_purge(name)

    def delete_own_exchanges(self, tag: str, names: Iterable[str]) -> None:
        for name in names:
            if not name.startswith(tag):
                raise ValueError(f"refusing to delete exchange '{name}': not of this run")
            if not self.channel.is_open:
                self.channel = self.connection.channel()
            self.channel.exchange_delete(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


@contextlib.contextmanager
def broker() -> Iterator[Broker]:
    handle = Broker()
    try:
        yield handle
    finally:
        handle.close()


def start(args: list[str], log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    """Start a process in its own process group, output to `log`."""
    with open(log, "ab") as stream:
        return subprocess.Popen(args, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def install_debian_package(package: str, why: str) -> None:
    """Debian's `package`, for the benchmark only (apt-get, as install.sh does)."""
    if os.geteuid() != 0:
        raise RuntimeError(f"{package} is not installed: apt-get install {package} "
                           f"(as root), {why}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and all its children, live or reaped.

    Unlike jobs/s, the CPU a consumer spends per job barely moves when other processes
    load the machine, so it compares systems even on a shared, noisy host.
    """
    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = each.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total / 2**20


def write_gear_ini(folder: Path, queues: dict[str, str], prefetch: int = 1,
                   isolation: str = "") -> Path:
    """A gear.ini for a benchmark: its own queues (job type -> queue) and state folder;
    `isolation` for every job type (empty: each type's own)."""
    from gearqueue.defaults import PATH_KEYS

    lines = ["[rabbitmq]", f"url = {BROKER_URL}", "heartbeat = 30", "", "[paths]"]
    for key in PATH_KEYS:
        path = folder / key.name.removesuffix("_dir")
        path.mkdir(parents=True, exist_ok=True)
        lines.append(f"{key.name} = {path}")
    lines.append("")
    for job_type, queue in queues.items():
        lines += [f"[{job_type}_service]", f"queue = {queue}", f"prefetch = {prefetch}"]
        lines += [f"isolation = {isolation}", ""] if isolation else [""]
    path = folder / f"gear-{isolation}.ini" if isolation else folder / "gear.ini"
    path.write_text("\n".join(lines))
    return path


def gear_queues(queue: str, max_retries: int = 3) -> list[str]:
    """Every queue gearqueue declares for one job type (main, retries, dead)."""
    return [queue, f"{queue}.dead", *(f"{queue}.retry.{n}" for n in range(1, max_retries + 1))]
