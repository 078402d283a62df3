"""Tools of the chaos suite: consumer fleets to kill, a publisher that collects replies,
and a ledger that reads what each job left behind (state record, side-effect mark)."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
from consumers import ConsumerProcess

from gearqueue import topology
from gearqueue.config import load_settings
from gearqueue.jobs.echo import MARKS_FOLDER
from gearqueue.state import JobRecord, JobStatus, StateStore, open_store

READY_LINE = "consuming from"
CHILD_READY = re.compile(r"executor child (\d+) ready")


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               tick: Callable[[], None] | None = None, poll: float = 0.1) -> float:
    """Wait for `condition`; return the seconds it took; AssertionError naming `what`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        if tick is not None:
            tick()
        time.sleep(poll)
    return time.monotonic() - started


class Fleet:
    """Consumer processes (listeners/<type>_consumer.py) that a test kills and restarts."""

    def __init__(self) -> None:
        self.consumers: list[ConsumerProcess] = []
        self.kills = 0
        self.terms = 0

    def start(self, config: Path, instance: str, job_type: str = "echo",
              prefix: tuple[str, ...] = ()) -> ConsumerProcess:
        consumer = ConsumerProcess(config, job_type, instance, prefix=prefix).start(wait=True)
        self.consumers.append(consumer)
        return consumer

    @staticmethod
    def readiness(consumer: ConsumerProcess) -> int:
        """How many times this consumer (over its restarts) started consuming."""
        return consumer.log().count(READY_LINE)

    @staticmethod
    def child_pid(consumer: ConsumerProcess) -> int | None:
        """The pid of the consumer's current executor child, from its log."""
        found = CHILD_READY.findall(consumer.log())
        return int(found[-1]) if found else None

    def kill(self, consumer: ConsumerProcess) -> None:
        """SIGKILL, the way the OOM killer or a power cut ends a process."""
        consumer.signal(signal.SIGKILL)
        consumer.wait(10)
        self.kills += 1

    def terminate(self, consumer: ConsumerProcess, timeout: float = 60.0) -> int:
        """SIGTERM (systemctl stop) and wait for the graceful exit; the exit code."""
        consumer.signal(signal.SIGTERM)
        self.terms += 1
        return consumer.wait(timeout)

    def restart(self, consumer: ConsumerProcess, wait: bool = True,
                timeout: float = 30.0) -> None:
        before = self.readiness(consumer)
        consumer.start(wait=False)
        if wait:
            consumer.wait_for_log(READY_LINE, timeout=timeout, count=before + 1)

    def alive(self, consumer: ConsumerProcess) -> bool:
        return consumer.process is not None and consumer.process.poll() is None

    def stop_all(self) -> None:
        for consumer in self.consumers:
            consumer.stop()


class Feeder:
    """Publishes like a web API (persistent, confirmed, mandatory) and collects replies.

    The queues are declared with gearqueue's own topology, so quorum queues work too.
    """

    def __init__(self, url: str, config: Path, job_type: str = "echo") -> None:
        self.service = load_settings(config).service(job_type)
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        topology.declare(self.channel, self.service)
        self.channel.confirm_delivery()
        self.reply_queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.replies: dict[str, list[dict[str, Any]]] = {}
        self.channel.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.replies.setdefault(properties.correlation_id, []).append(json.loads(body))

    def publish(self, job_id: str, payload: dict[str, Any], reply: bool = True) -> None:
        self.channel.basic_publish("", self.service.queue, json.dumps(payload).encode(),
                                   pika.BasicProperties(
                                       delivery_mode=2, content_type="application/json",
                                       message_id=job_id, correlation_id=job_id,
                                       reply_to=self.reply_queue if reply else None),
                                   mandatory=True)

    def pump(self, seconds: float = 0.0) -> None:
        self.connection.process_data_events(time_limit=seconds)

    def wait_replies(self, job_ids: Iterable[str], timeout: float = 30.0,
                     linger: float = 0.5) -> None:
        """Until every job has a reply, then `linger` more seconds to catch duplicates.

        A job's state is stored before its reply is sent: a test that saw the state
        must still wait for the reply."""
        wanted = list(job_ids)
        wait_until(lambda: all(job_id in self.replies for job_id in wanted), timeout,
                   f"replies to {len(wanted)} jobs", tick=lambda: self.pump(0.05), poll=0.0)
        self.pump(linger)

    def depth(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def dead_letters(self) -> list[tuple[Any, bytes]]:
        """Every message of the dead queue, left in place (fetched, then given back)."""
        channel = self.connection.channel()
        messages = []
        while True:
            method, properties, body = channel.basic_get(topology.dead_queue(self.service))
            if method is None:
                break
            messages.append((properties, body))
        channel.close()  # unacked -> requeued
        return messages

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@dataclass
class Ledger:
    """What the jobs left behind: state records and echo side-effect marks."""

    store: StateStore
    marks_dir: Path

    @classmethod
    def of(cls, config: Path, job_type: str = "echo") -> Ledger:
        settings = load_settings(config)
        return cls(open_store(settings, job_type),
                   settings.paths.exports_dir / MARKS_FOLDER)

    def records(self, job_ids: Iterable[str]) -> dict[str, JobRecord | None]:
        return {job_id: self.store.get(job_id) for job_id in job_ids}

    def count(self, job_ids: Iterable[str], *statuses: JobStatus) -> int:
        return sum(1 for record in self.records(job_ids).values()
                   if record is not None and record.status in statuses)

    def marks(self) -> dict[str, int]:
        """job id -> attempt that made its side effect (one file per job id, O_EXCL)."""
        if not self.marks_dir.exists():
            return {}
        return {path.name: int(path.read_text() or 0) for path in self.marks_dir.iterdir()
                if ".again." not in path.name}

    def reruns(self) -> list[tuple[str, int, int]]:
        """(job id, attempt, earlier attempt) of runs that found their effect already made."""
        if not self.marks_dir.exists():
            return []
        found = []
        for path in self.marks_dir.glob("*.again.*"):
            job_id, _, attempt = path.name.rpartition(".again.")
            found.append((job_id, int(attempt), int(path.read_text() or 0)))
        return found
