#!/usr/bin/env python3
"""System calls a job costs, raw pika against gearqueue inline and process, side by side.

    bench/syscalls.py [--jobs 2000] [--prefetch 1,10] [--json PATH]

Jobs/s on a shared 2-core VM move by ±30 % between runs; the system calls a consumer
makes per job do not (they move by a few per cent, from the broker's timing), and on
this VM each one costs microseconds, so they say where a job's time goes in a way
that repeats. Each consumer starts on an empty queue of its own; `strace -c -f` is
attached to it (and to its executor child), N persistent echo jobs are published from
this process, each asking for a reply (direct reply-to, as `call()` does), and the
counts end when every reply is in and the jobs are acked. The counts of the
idle loop (a wake-up a second) are included; over 2,000 jobs they are noise.

Needs strace (installed with apt-get if missing, as root); `make bench` runs this as
its item "syscalls"; docs/performance.md shows a run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pika
import psutil

from bench.common import (
    BENCH,
    PYTHON,
    ROOT,
    broker,
    broker_params,
    gear_queues,
    install_debian_package,
    start,
    stop,
    unique_tag,
    wait_until,
    write_gear_ini,
)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
SYSTEMS = ("raw", "gear_inline", "gear_process")
#: A row of strace -c's summary: % time, seconds, usecs/call, calls, [errors], syscall.
_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def _consumer(system: str, queue: str, prefetch: int, folder: Path
              ) -> subprocess.Popen[bytes]:
    if system == "raw":
        return start([PYTHON, str(BENCH / "raw_consumer.py"), queue, str(prefetch)],
                     folder / "raw.log")
    isolation = system.removeprefix("gear_")
    config = write_gear_ini(folder, {"echo": queue}, prefetch=prefetch, isolation=isolation)
    return start([PYTHON, str(ROOT / "listeners" / "echo_consumer.py"), "--config",
                  str(config)], folder / f"{system}.log", {"PYTHONDONTWRITEBYTECODE": ""})


def _counts(summary: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in summary.splitlines():
        match = _ROW.match(line)
        if match and match.group(2) != "total":
            counts[match.group(2)] = int(match.group(1))
    return counts


def measure(system: str, prefetch: int, jobs: int) -> dict[str, Any]:
    """Syscalls per job of one consumer (and its executor child) draining `jobs`."""
    tag = unique_tag()
    queue = f"{tag}.{system}"
    with tempfile.TemporaryDirectory(prefix=f"{tag}-") as temp, broker() as admin:
        folder = Path(temp)
        consumer = _consumer(system, queue, prefetch, folder)
        tracer = None
        try:
            wait_until(lambda: admin.consumers(queue) >= 1, 60, f"{system} ready",
                       process=consumer)
            time.sleep(0.5)  # the executor child is up
            pids = [consumer.pid, *(child.pid for child in psutil.Process(
                consumer.pid).children(recursive=True)
                if "resource_tracker" not in " ".join(child.cmdline()))]
            output = folder / "strace.txt"
            tracer = subprocess.Popen(
                ["strace", "-c", "-f", "-o", str(output),
                 *(arg for pid in pids for arg in ("-p", str(pid)))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached
            connection = pika.BlockingConnection(broker_params())
            channel = connection.channel()
            replies: list[bytes] = []
            channel.basic_consume(DIRECT_REPLY_TO, lambda _c, _m, _p, body: replies.append(
                body), auto_ack=True)
            for index in range(jobs):
                job_id = uuid.uuid4().hex
                channel.basic_publish("", queue, json.dumps({"data": index}).encode(),
                                      pika.BasicProperties(
                                          content_type="application/json", delivery_mode=2,
                                          message_id=job_id, correlation_id=job_id,
                                          reply_to=DIRECT_REPLY_TO))
            started = time.monotonic()
            while len(replies) < jobs and time.monotonic() - started < 120:
                connection.process_data_events(time_limit=0.05)
            drained = time.monotonic() - started
            time.sleep(0.5)  # the last acks
            connection.close()
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            counts = _counts(output.read_text())
        finally:
            if tracer is not None and tracer.poll() is None:
                tracer.kill()
            stop(consumer)
            admin.delete_own_queues(tag, [queue] if system == "raw" else gear_queues(queue))
    return {"system": system, "prefetch": prefetch, "jobs": jobs, "drain_s": drained,
            "per_job": {name: count / jobs for name, count in counts.items()},
            "total_per_job": sum(counts.values()) / jobs}


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per syscall, one column per system and prefetch."""
    columns = [(entry["system"], entry["prefetch"]) for entry in results]
    per = {(entry["system"], entry["prefetch"]): entry["per_job"] for entry in results}
    names = sorted({name for entry in results for name in entry["per_job"]},
                   key=lambda name: -max(per[column].get(name, 0) for column in columns))
    header = "| syscall | " + " | ".join(f"{s} p{p}" for s, p in columns) + " |"
    lines = [header, "|---|" + "---:|" * len(columns)]
    for name in names:
        if max(per[column].get(name, 0) for column in columns) < 0.05:
            continue
        lines.append(f"| {name} | " + " | ".join(
            f"{per[column].get(name, 0):.1f}" for column in columns) + " |")
    lines.append("| **all** | " + " | ".join(
        f"**{entry['total_per_job']:.1f}**" for entry in results) + " |")
    return "\n".join(lines)


def measure_all(jobs: int, prefetches: tuple[int, ...] = (1, 10)) -> list[dict[str, Any]]:
    """Every system at every prefetch; strace installed first if it is missing."""
    if shutil.which("strace") is None:
        install_debian_package("strace", "for bench/syscalls.py")
    return [measure(system, prefetch, jobs) for prefetch in prefetches for system in SYSTEMS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--prefetch", default="1,10")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "syscalls.json")
    args = parser.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    results = measure_all(args.jobs, tuple(int(value) for value in args.prefetch.split(",")))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
