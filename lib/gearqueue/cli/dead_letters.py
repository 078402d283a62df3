"""The dead-letter queue of a job type: read it, replay from it, purge it.

The rule of every operation here: nothing is removed before it is safely elsewhere.
Messages are taken with basic.get *without* ack; one is acked (removed from `Q.dead`)
only after the broker confirmed its copy in the main queue (replay) or because the
operator asked for it to go (purge). Whatever is not acked goes back to the dead
queue when the connection closes, whatever happens in between (crash, broker error,
Ctrl-C). A crash after the confirm and before the ack leaves a copy in both queues;
replaying it again is harmless, since the state record answers for a finished job.

Replay resets the job's attempts in its state record first (the message is then a
fresh publish: no x-gear-* headers), so a job that used up its retries gets them all
again, and so does one that the broker dead-lettered itself (quorum delivery-limit).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from .. import message, topology
from ..broker import close_quietly, connect, converted_errors
from ..config import Settings
from ..errors import NotInDeadQueue, PublishError
from ..state import JobRecord, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """One message of a dead queue, as the runtime (or the broker) left it there."""

    job_id: str
    delivery_tag: int
    properties: pika.BasicProperties
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def error_class(self) -> str | None:
        value = self.headers.get(message.ERROR_CLASS)
        if value is None and "x-death" in self.headers:
            return f"broker: {self.headers.get('x-first-death-reason', 'dead-lettered')}"
        return value

    @property
    def error_message(self) -> str:
        return str(self.headers.get(message.ERROR_MESSAGE) or "")

    @property
    def traceback(self) -> str:
        return str(self.headers.get(message.TRACEBACK) or "")

    @property
    def attempts(self) -> int | None:
        value = self.headers.get(message.ATTEMPTS)
        return int(value) if value is not None else None

    @property
    def failed_at(self) -> float | None:
        """When it was dead-lettered: our header, else the broker's x-death, else publish."""
        if self.headers.get(message.FAILED_AT) is not None:
            return float(self.headers[message.FAILED_AT])
        deaths = self.headers.get("x-death") or []
        if deaths and isinstance(deaths[0], dict) and deaths[0].get("time") is not None:
            moment = deaths[0]["time"]
            if isinstance(moment, datetime.datetime):
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=datetime.timezone.utc)
                return moment.timestamp()
            return float(moment)
        return float(self.properties.timestamp) if self.properties.timestamp else None

    def age(self, now: float | None = None) -> float | None:
        return None if self.failed_at is None else (now or time.time()) - self.failed_at

    def payload(self) -> Any:
        """The body as JSON if it is JSON, else as text (bad input lands here too)."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return self.body.decode("utf-8", errors="replace")


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class DeadQueue:
    """`<queue>.dead` of one job type, over a connection per operation."""

    def __init__(self, settings: Settings, job_type: str) -> None:
        self.settings = settings
        self.service = settings.service(job_type)
        self.queue = topology.dead_queue(self.service)
        self.store = open_store(settings, job_type)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[pika.BlockingConnection]:
        """A connection of its own: closing it gives back every message not acked."""
        connection = connect(self.settings, self.service.job_type, "gearqueue-dead")
        try:
            with converted_errors(f"declaring the queues of '{self.service.queue}'"):
                topology.declare(connection.channel(), self.service)
            yield connection
        finally:
            close_quietly(connection)

    @contextlib.contextmanager
    def _channel(self) -> Iterator[BlockingChannel]:
        with self._connection() as connection:
            with converted_errors("opening a channel"):
                channel = connection.channel()
            yield channel

    def _take_all(self, channel: BlockingChannel) -> list[DeadLetter]:
        """Every message there now, held unacked on `channel` (in queue order)."""
        with converted_errors(f"reading '{self.queue}'"):
            count = channel.queue_declare(self.queue, passive=True).method.message_count
            letters = []
            for _ in range(count):
                method, properties, body = channel.basic_get(self.queue, auto_ack=False)
                if method is None:
                    break
                # A Get-Ok always has these; pika's None is for Get-Empty (method None).
                assert method.delivery_tag is not None and properties is not None
                assert body is not None
                letters.append(DeadLetter(message.job_id_of(properties, body),
                                          method.delivery_tag,
                                          properties, body))
        return letters

    def letters(self) -> list[DeadLetter]:
        """The dead letters, oldest first, all left in place."""
        with self._channel() as channel:
            return self._take_all(channel)

    def show(self, job_id: str) -> DeadLetter:
        for letter in self.letters():
            if letter.job_id == job_id:
                return letter
        raise NotInDeadQueue(f"no {self.service.job_type} job '{job_id}' in '{self.queue}'")

    def replay(self, job_ids: Collection[str] | None) -> ReplayReport:
        """Republish dead letters to the main queue (all if `job_ids` is None).

        Each is acked from the dead queue only after the broker confirmed its copy.
        A PublishError stops the replay; what was not replayed stays dead.
        """
        report = ReplayReport()
        with self._connection() as connection:
            with converted_errors("opening channels"):
                reader = connection.channel()
                writer = connection.channel()
                writer.confirm_delivery()
            letters = self._take_all(reader)
            wanted = None if job_ids is None else set(job_ids)
            for letter in letters:
                if wanted is not None and letter.job_id not in wanted:
                    continue
                self._replay_one(reader, writer, letter)
                report.replayed.append(letter.job_id)
            if wanted is not None:
                report.missing = sorted(wanted - set(report.replayed))
        return report

    def _replay_one(self, reader: BlockingChannel, writer: BlockingChannel,
                    letter: DeadLetter) -> None:
        replaced = self._reset_attempts(letter.job_id)
        try:
            with converted_errors(f"replaying {letter.job_id} to '{self.service.queue}'"):
                writer.basic_publish("", self.service.queue, letter.body,
                                     message.replay_properties(letter.properties, letter.job_id),
                                     mandatory=True)
        except PublishError:
            if replaced is not None:  # still dead: its record says so again
                self.store.restore(replaced)
            raise
        with converted_errors(f"removing {letter.job_id} from '{self.queue}'"):
            reader.basic_ack(letter.delivery_tag)
        log.info("replayed dead job %s to '%s'", letter.job_id, self.service.queue)

    def _reset_attempts(self, job_id: str) -> JobRecord | None:
        """Queued again with no attempts counted; returns the record it replaced, if any.

        A job that succeeded meanwhile (through another copy of its message) keeps its
        record: the replayed copy is then answered from it, never run a second time.
        """
        return self.store.reset_for_replay(job_id)

    def purge(self, older_than: float | None = None, now: float | None = None
              ) -> tuple[list[str], int]:
        """Remove dead letters (those dead longer than `older_than` seconds, if given).

        Returns (ids removed, number kept). A letter whose age is unknown is kept when
        an age is asked for.
        """
        removed: list[str] = []
        kept = 0
        with self._channel() as channel:
            for letter in self._take_all(channel):
                age = letter.age(now)
                if older_than is not None and (age is None or age < older_than):
                    kept += 1
                    continue
                with converted_errors(f"removing {letter.job_id} from '{self.queue}'"):
                    channel.basic_ack(letter.delivery_tag)
                removed.append(letter.job_id)
        log.info("purged %d dead %s jobs, kept %d", len(removed), self.service.job_type, kept)
        return removed, kept

