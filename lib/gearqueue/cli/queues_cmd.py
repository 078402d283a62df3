"""`gearqueue status`: per job type, what waits, what runs, who consumes, what died."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pika.exceptions

from .. import exitcodes
from ..broker import close_quietly, connect, converted_errors
from ..config import ServiceSettings, Settings, load_settings
from ..errors import BrokerUnavailable
from ..topology import dead_queue, retry_queue
from .queues_unacked import unacked_counts


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("status", help="queue depths and consumers per job type")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(run=run)


class _QueueReader:
    """Passive declares over one connection; a 404 closes only a channel, reopened here."""

    def __init__(self, settings: Settings, job_type: str) -> None:
        self.connection = connect(settings, job_type, "gearqueue-status")
        self.channel = self.connection.channel()

    def depth(self, queue: str) -> tuple[int, int] | None:
        """(messages ready, consumers) of a queue, or None if it does not exist."""
        if not self.channel.is_open:
            self.channel = self.connection.channel()
        try:
            frame = self.channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code == 404:
                return None
            raise
        return frame.method.message_count, frame.method.consumer_count

    def close(self) -> None:
        close_quietly(self.connection)


def queue_figures(settings: Settings, service: ServiceSettings,
                  unacked: dict[str, int] | None) -> dict[str, Any]:
    with converted_errors(f"reading queue '{service.queue}'"):
        reader = _QueueReader(settings, service.job_type)
        try:
            main = reader.depth(service.queue)
            dead = reader.depth(dead_queue(service))
            retrying = sum((reader.depth(retry_queue(service, n)) or (0, 0))[0]
                           for n in range(1, service.max_retries + 1))
        finally:
            reader.close()
    return {
        "job_type": service.job_type, "queue": service.queue,
        "queue_enabled": service.queue_enabled,
        "ready": main[0] if main else None,
        "unacked": unacked.get(service.queue) if unacked and main else None,
        "consumers": main[1] if main else None,
        "retrying": retrying, "dead": dead[0] if dead else None,
    }


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    rows = []
    unacked_by_url: dict[str, dict[str, int] | None] = {}
    for service in settings.services.values():
        url = settings.broker_urls(service.job_type)[0]
        if url not in unacked_by_url:
            unacked_by_url[url] = unacked_counts(url)
        try:
            rows.append(queue_figures(settings, service, unacked_by_url[url]))
        except BrokerUnavailable as error:
            if service.queue_enabled:
                raise
            rows.append({"job_type": service.job_type, "queue": service.queue,
                         "queue_enabled": False, "error": str(error)})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return exitcodes.OK
    print(f"{'TYPE':16} {'QUEUE':28} {'READY':>6} {'UNACKED':>7} {'RETRYING':>8} {'DEAD':>6} "
          f"{'CONSUMERS':>9}")
    for row in rows:
        def cell(key: str, row: dict[str, Any] = row) -> str:
            value = row.get(key)
            return "-" if value is None else str(value)
        print(f"{row['job_type']:16} {row['queue']:28} {cell('ready'):>6} {cell('unacked'):>7} "
              f"{cell('retrying'):>8} {cell('dead'):>6} {cell('consumers'):>9}"
              + ("" if row["queue_enabled"] else "  (queueing off)"))
    return exitcodes.OK
