"""Issue 15 item 4, end to end: a real echo consumer (inline, prefetch 10) drains N
jobs with events on and off, in alternating rounds. Reports jobs/s and, less sensitive
to a shared machine's load, the consumer process's CPU (user + system) per job.
`--subscriber` binds a queue to the events exchange (the broker then stores them too).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pika

from bench.common import (
    PYTHON,
    ROOT,
    broker_params,
    cpu_seconds,
    gear_queues,
    start,
    stop,
    unique_tag,
)
from gearqueue.client import Client
from gearqueue.config import load_settings

EXCHANGE = "bench.events"


def config(folder: Path, queue: str, events: bool) -> Path:
    path = folder / f"{queue}.ini"
    path.write_text(f"[rabbitmq]\nurl = amqp://guest:guest@127.0.0.1:5672/%2F\n"
                    f"events_exchange = {EXCHANGE if events else ''}\n"
                    f"[paths]\nstate_dir = {folder}/state-{queue}\n"
                    f"[echo_service]\nqueue = {queue}\nisolation = inline\nprefetch = 10\n")
    return path


def one_round(folder: Path, events: bool, jobs: int) -> tuple[float, float]:
    queue = f"{unique_tag()}.echo_jobs"
    path = config(folder, queue, events)
    log = folder / f"{queue}.log"
    consumer = start([PYTHON, str(ROOT / "listeners" / "echo_consumer.py"), "--config",
                      str(path)], log)
    try:
        while "consuming from" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        with Client(load_settings(path)) as client:
            warm = client.submit_many("echo", [{"data": 1}] * 200)
            while client.status("echo", warm[-1]).status.value != "succeeded":
                time.sleep(0.01)
            started, cpu = time.monotonic(), cpu_seconds(consumer.pid)
            ids = client.submit_many("echo", [{"data": n} for n in range(jobs)])
            while client.status("echo", ids[-1]).status.value != "succeeded":
                time.sleep(0.01)
            rate = jobs / (time.monotonic() - started)
            time.sleep(0.3)  # the last acks
            return rate, (cpu_seconds(consumer.pid) - cpu) / jobs * 1e6
    finally:
        stop(consumer)
        with pika.BlockingConnection(broker_params()) as connection:
            channel = connection.channel()
            for name in gear_queues(queue):
                channel.queue_delete(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--subscriber", action="store_true")
    args = parser.parse_args()
    connection = pika.BlockingConnection(broker_params())
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    if args.subscriber:
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, EXCHANGE, routing_key="#")
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for events in (True, False):
                results[events].append(one_round(Path(folder), events, args.jobs))
                if args.subscriber:
                    channel.queue_purge(queue)
    for events, rows in results.items():
        rates, cpus = zip(*rows, strict=True)
        print(f"events {'on ' if events else 'off'}: {statistics.median(rates):6.0f} jobs/s "
              f"({', '.join(f'{r:.0f}' for r in rates)}); consumer CPU "
              f"{statistics.median(cpus):4.0f} us/job ({', '.join(f'{c:.0f}' for c in cpus)})")
    channel.exchange_delete(EXCHANGE)
    connection.close()


if __name__ == "__main__":
    main()
