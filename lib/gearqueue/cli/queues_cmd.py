"""`gearqueue status [TYPE]`: per job type, what waits, what runs, who consumes, what
died; and per instance on this host, what it does (cli/status_instances.py), with the
progress its job last reported (from the job's state record)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pika.exceptions

from .. import exitcodes, instances
from ..broker import close_quietly, connect, converted_errors
from ..config import ServiceSettings, Settings, load_settings
from ..errors import BrokerUnavailable
from ..instances import NOT_RESPONDING
from ..state import open_store
from ..topology import dead_queue, retry_queue
from .queues_unacked import unacked_counts
from .status_instances import FAILED, GONE, instance_views, with_progress
from .status_render import render
from .status_units import UnitState, consumer_units
from .status_watch import watch


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status", help="queues, consumers and what each instance is doing, per job type")
    parser.add_argument("job_type", nargs="?", metavar="TYPE",
                        help="only this job type (e.g. projectr)")
    parser.add_argument("--json", action="store_true", help="one JSON object per job type "
                        "and line, its instances in `instances`")
    parser.add_argument("--watch", action="store_true",
                        help="refresh until interrupted (in place on a terminal)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between refreshes with --watch (default 2)")
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
        "queue_exists": main is not None,
        "ready": main[0] if main else None,
        "unacked": unacked.get(service.queue) if unacked and main else None,
        "consumers": main[1] if main else None,
        "retrying": retrying, "dead": dead[0] if dead else None,
    }


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    job_types = _chosen(settings, args.job_type)
    if args.watch:
        return watch(lambda: status_rows(settings, job_types), args.json, args.interval)
    rows = status_rows(settings, job_types)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(render(rows), end="")
    return exitcodes.OK


def _chosen(settings: Settings, job_type: str | None) -> tuple[str, ...]:
    if job_type is None:
        return tuple(settings.services)
    return (settings.service(job_type.replace("-", "_")).job_type,)


def status_rows(settings: Settings, job_types: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per job type: the broker's figures, then each instance (status files, units)."""
    rows = []
    unacked_by_url: dict[str, dict[str, int] | None] = {}
    units = consumer_units(job_types)
    for job_type in job_types:
        service = settings.service(job_type)
        try:
            row = queue_figures(settings, service, None)
        except BrokerUnavailable as error:
            if service.queue_enabled:
                raise
            row = {"job_type": job_type, "queue": service.queue, "queue_enabled": False,
                   "error": str(error)}
        if row.get("queue_exists"):  # asked only of a broker that answers
            url = settings.broker_urls(job_type)[0]
            if url not in unacked_by_url:
                unacked_by_url[url] = unacked_counts(url)
            counts = unacked_by_url[url]
            row["unacked"] = counts.get(service.queue) if counts else None
        rows.append(row | instance_figures(settings, job_type, row, units))
    return rows


def instance_figures(settings: Settings, job_type: str, row: dict[str, Any],
                     units: dict[str, list[UnitState]] | None) -> dict[str, Any]:
    views = instance_views(instances.read_all(settings, job_type),
                           None if units is None else units.get(job_type, []),
                           stale_after=settings.status.stale_after)
    if any(view.job_id is not None for view in views):
        store = open_store(settings, job_type)
        try:
            with_progress(views, store.get)  # one read per running instance
        finally:
            store.close()
    responding = sum(view.healthy for view in views)
    not_responding = sum(view.state in (NOT_RESPONDING, GONE) for view in views)
    failed = sum(view.state == FAILED for view in views)
    figures: dict[str, Any] = {
        "systemd": units is not None, "responding": responding,
        "not_responding": not_responding, "failed_units": failed,
        "instances": [view.as_dict() for view in views]}
    consumers = row.get("consumers")
    if not_responding and consumers:
        figures["warning"] = (
            f"the broker counts {consumers} consumer(s), but {not_responding} instance(s) "
            "here do not respond: their connections still hold the queue's messages")
    return figures
