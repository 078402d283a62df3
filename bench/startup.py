"""Item 4: worker start to READY, and the memory of an idle worker.

A consumer is started the way systemd starts it, with $NOTIFY_SOCKET pointing at a
datagram socket this benchmark binds; the clock runs from the moment the process is
spawned to the READY=1 it sends (after its executor child is warm: for ProjectR that
includes loading R and limma, and after it consumes). Memory: the resident set of the
consumer and its executor child after two idle seconds (multiprocessing's small
resource-tracker helper is reported apart).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import (
    PYTHON,
    ROOT,
    broker,
    gear_queues,
    median,
    start,
    stop,
    unique_tag,
    write_gear_ini,
)

log = logging.getLogger(__name__)

IDLE_SECONDS = 2.0


def _rss_mb(process: subprocess.Popen[bytes]) -> tuple[float, float]:
    """(consumer + executor child, resource tracker) resident MiB."""
    worker, helper = 0, 0
    root = psutil.Process(process.pid)
    for member in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            rss = member.memory_info().rss
            if "resource_tracker" in " ".join(member.cmdline()):
                helper += rss
            else:
                worker += rss
    return worker / 2**20, helper / 2**20


def _start_once(job_type: str, folder: Path, queue: str, timeout: float
                ) -> tuple[float, float, float]:
    notify_path = folder / "notify.sock"
    with contextlib.suppress(FileNotFoundError):
        notify_path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    config = write_gear_ini(folder, {job_type: queue})
    started = time.monotonic()
    process = start([PYTHON, str(ROOT / "listeners" / f"{job_type}_consumer.py"), "--config",
                     str(config)], folder / f"{job_type}.log", {"NOTIFY_SOCKET": str(notify_path)})
    try:
        deadline = started + timeout
        while True:
            listener.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = listener.recv(4096).decode(errors="replace")
            except TimeoutError:
                raise RuntimeError(f"{job_type} consumer sent no READY=1 within {timeout:g} s; "
                                   f"log:\n{(folder / f'{job_type}.log').read_text()[-2000:]}"
                                   ) from None
            if "READY=1" in message.splitlines():
                ready = time.monotonic() - started
                break
        time.sleep(IDLE_SECONDS)
        worker, helper = _rss_mb(process)
    finally:
        stop(process)
        listener.close()
    return ready, worker, helper


def measure(job_type: str, repetitions: int, timeout: float = 120.0) -> dict[str, object]:
    tag = unique_tag()
    queue = f"{tag}.{job_type}"
    runs = []
    with tempfile.TemporaryDirectory(prefix=f"{tag}-") as temp, broker() as admin:
        try:
            for _ in range(repetitions):
                runs.append(_start_once(job_type, Path(temp), queue, timeout))
        finally:
            admin.delete_own_queues(tag, gear_queues(queue))
    ready = median(run[0] for run in runs)
    log.info("%s: READY after %.2f s, idle RSS %.0f MiB", job_type, ready,
             median(run[1] for run in runs))
    return {"job_type": job_type, "ready_s": ready, "ready_runs": [run[0] for run in runs],
            "idle_rss_mb": median(run[1] for run in runs),
            "resource_tracker_rss_mb": median(run[2] for run in runs)}
