"""What a web API imports: submit a job, call it and wait for the reply, read its state.

With `queue_enabled = 1` a job is published persistent, as JSON, with message_id,
correlation_id, publisher confirms and `mandatory` (so "no queue" is an error, not a
silent loss). With `queue_enabled = 0` the same validation and job code run in the
caller's process and no broker is contacted at all.

When queueing is on and no broker answers, a connect is retried for `[rabbitmq]
connect_retry_seconds` (capped backoff), then `BrokerDown` names the URLs, masked, and
what to check. After that, each submit tries once (no wait) until a connect succeeds
again, so a web API does not wait the whole bound on every request while the broker is
down. With `fallback = inline` in the job type's section, the job runs here instead,
on the same path as `queue_enabled = 0` (`_run_in_process`), logged at WARNING and
counted in `Client.fallbacks`. The fallback is taken only when the broker cannot be
reached before anything is published; a connection lost during a publish still raises
(the job may be queued).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from . import topology
from .broker import close_quietly, connect_retrying, connection_parameters, converted_errors
from .bulk import OutgoingMessage, publish_batch
from .config import Settings, mask_url
from .errors import (
    BatchPublishError,
    BrokerDown,
    BrokerUnavailable,
    InvalidMessage,
    PublishError,
    PublishNacked,
    QueueFull,
    ReplyTimeout,
    StateStoreUnavailable,
    UnroutableError,
)
from .log import fields
from .message import SAFE_ID, encode_payload, job_properties
from .state import JobRecord, StateStore, open_store
from .worker.runner import JobRunner

log = logging.getLogger(__name__)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class Client:
    def __init__(self, settings: Settings, name: str = "gearqueue-client") -> None:
        self.settings = settings
        self.name = name
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._declared: set[str] = set()
        self._replies: dict[str, dict[str, Any]] = {}
        self._consuming_replies = False
        #: call()'s channel: no confirm mode; and the ids of requests it got back.
        self._rpc: BlockingChannel | None = None
        self._returned: set[str] = set()
        self._runners: dict[str, JobRunner] = {}
        #: One state store per job type for the client's life: a store keeps what it
        #: opened (folders made, its database connection) for the next job.
        self._stores: dict[str, StateStore] = {}
        #: Jobs run in-process because the broker was down (`fallback = inline`).
        self.fallbacks = 0
        #: The last connect ended in BrokerDown: the next ones try once, with no wait.
        self._broker_down = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        close_quietly(self._connection)
        self._connection = self._channel = None
        self._declared.clear()
        self._consuming_replies = False
        self._rpc = None

    # --- public API ------------------------------------------------------------------

    def submit(self, job_type: str, payload: dict[str, Any], *, job_id: str | None = None,
               priority: int | None = None) -> str:
        """Queue a job and return its id (with queueing off: run it now, return its id)."""
        job_id = self._job_id(job_id)
        body = self._encode(job_type, payload)
        if not self.settings.service(job_type).queue_enabled or \
                self._unreachable(job_type, [job_id]):
            self._run_in_process(job_type, job_id, payload)
            return job_id
        created = self._record_queued(job_type, job_id)
        with self._refused_unless_queued(job_type, job_id, created):
            self._publish(job_type, job_id, body, priority=priority)
        return job_id

    def submit_many(self, job_type: str, payloads: list[dict[str, Any]]) -> list[str]:
        """Queue many jobs with streaming publisher confirms; return their ids in order.

        Every payload is validated before anything is published. The batch goes out on a
        connection of its own (gearqueue.bulk), far faster than `submit` in a loop,
        which waits for each confirm. BatchPublishError, with a report naming the jobs
        that were nacked, unroutable or unconfirmed, if any job was not queued.
        """
        service = self.settings.service(job_type)
        bodies = [self._encode(job_type, payload) for payload in payloads]
        job_ids = [self._job_id(None) for _ in bodies]
        # _unreachable connects and declares the topology once, so the batch is routable.
        if not service.queue_enabled or self._unreachable(job_type, job_ids):
            for job_id, payload in zip(job_ids, payloads, strict=True):
                self._run_in_process(job_type, job_id, payload)
            return job_ids
        # Fresh random ids: nothing to read, nobody reading yet; one commit for all.
        self._store(job_type).queued_many(job_ids)
        now = int(time.time())
        messages = [OutgoingMessage(job_id, body, job_properties(job_type, job_id, timestamp=now))
                    for job_id, body in zip(job_ids, bodies, strict=True)]
        report = publish_batch(connection_parameters(self.settings, job_type, self.name),
                               "", service.queue, messages)
        if not report.ok:
            raise BatchPublishError(f"{job_type}: {report.describe(service.queue)}", report)
        return job_ids

    def call(self, job_type: str, payload: dict[str, Any], *, timeout: float | None = None,
             job_id: str | None = None) -> dict[str, Any]:
        """Run a job and return its reply; ReplyTimeout if none comes within `timeout`."""
        job_id = self._job_id(job_id)
        service = self.settings.service(job_type)
        body = self._encode(job_type, payload)
        if not service.queue_enabled or self._unreachable(job_type, [job_id]):
            return self._run_in_process(job_type, job_id, payload)
        timeout = service.reply_timeout if timeout is None else timeout
        if service.max_length:
            created = self._record_queued(job_type, job_id)
            # A full queue refuses with a nack (QueueFull), which only a confirm tells.
            channel = self._channel_for(job_type)
            if not self._consuming_replies:
                with converted_errors("listening for replies"):
                    channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
                self._consuming_replies = True
            with self._refused_unless_queued(job_type, job_id, created):
                self._publish(job_type, job_id, body, reply_to=DIRECT_REPLY_TO)
            return self._await_reply(job_type, job_id, timeout)
        # Unconfirmed: an unroutable request comes back while the reply is awaited. The
        # queued record is written after the publish, while the request travels: the
        # insert never overwrites a record the consumer wrote first (state/store.py).
        self._publish_request(job_type, job_id, body)
        try:
            created = self._record_queued(job_type, job_id)
        except StateStoreUnavailable as error:
            # The job is on its way: raising now would only make the caller send it
            # again. Its consumer records it; this call still gets its reply.
            log.warning("call(): the queued record of %s job %s could not be written; "
                        "waiting for its reply anyway: %s", job_type, job_id, error,
                        extra=fields(job_id=job_id, job_type=job_type))
            created = False
        with self._refused_unless_queued(job_type, job_id, created):
            return self._await_reply(job_type, job_id, timeout)

    def status(self, job_type: str, job_id: str) -> JobRecord:
        """The stored state of a job (UnknownJob if none): its status, attempts, result,
        and `progress` (done, total, phase: the last the running attempt reported, kept
        once it ends; None for a job that reports none or ended within half a second)."""
        return self._store(job_type).require(job_id)

    # --- internals -------------------------------------------------------------------

    @staticmethod
    def _job_id(job_id: str | None) -> str:
        if job_id is None:
            return uuid.uuid4().hex
        if not SAFE_ID.match(job_id):
            raise InvalidMessage(f"job id {job_id!r} is not a safe id")
        return job_id

    def _encode(self, job_type: str, payload: dict[str, Any]) -> bytes:
        return encode_payload(payload, self.settings.service(job_type).max_message_bytes)

    def _run_in_process(self, job_type: str, job_id: str,
                        payload: dict[str, Any]) -> dict[str, Any]:
        runner = self._runners.get(job_type)
        if runner is None:
            runner = self._runners[job_type] = JobRunner(
                self.settings, self.settings.service(job_type), isolated=False)
        return runner.execute(job_id, payload, fresh=True).reply

    def _unreachable(self, job_type: str, job_ids: list[str]) -> bool:
        """Connect (and declare the topology) before anything is recorded or published.
        True when the broker is down and the job type falls back to running in-process
        (logged and counted); BrokerDown when it is down and it does not."""
        try:
            self._channel_for(job_type)
        except BrokerDown as error:
            if self.settings.service(job_type).fallback != "inline":
                raise
            self.fallbacks += len(job_ids)
            urls = ", ".join(mask_url(url) for url in self.settings.broker_urls(job_type))
            what = f"job {job_ids[0]}" if len(job_ids) == 1 else f"{len(job_ids)} jobs"
            log.warning("broker down: running %s %s in-process (fallback = inline): %s",
                        job_type, what, error, extra=fields(
                            job_id=job_ids[0] if len(job_ids) == 1 else None,
                            job_type=job_type, fallback="inline", fallbacks=self.fallbacks,
                            broker=urls))
            return True
        return False

    def _store(self, job_type: str) -> StateStore:
        store = self._stores.get(job_type)
        if store is None:
            store = self._stores[job_type] = open_store(self.settings, job_type)
        return store

    def _record_queued(self, job_type: str, job_id: str) -> bool:
        """Record the job as queued unless it has a record; True if this created it."""
        return self._store(job_type).queued(job_id)

    @contextlib.contextmanager
    def _refused_unless_queued(self, job_type: str, job_id: str, created: bool
                               ) -> Iterator[None]:
        """A publish the broker refused (full queue, nack, unroutable) is not queued:
        the record this call created says so, rather than 'queued' for ever. (After
        BrokerUnavailable it may have been queued, so the record is left alone.)"""
        try:
            yield
        except PublishError as error:
            if created:
                self._store(job_type).refused(job_id, error)
            raise

    def _channel_for(self, job_type: str) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            try:
                self._connection = connect_retrying(
                    self.settings, job_type, self.name, what=f"cannot queue the {job_type} job",
                    seconds=0 if self._broker_down
                    else self.settings.rabbitmq.connect_retry_seconds)
            except BrokerDown:
                self._broker_down = True
                raise
            self._broker_down = False
            with converted_errors("opening a channel"):
                self._channel = self._connection.channel()
                self._channel.confirm_delivery()
        if job_type not in self._declared:
            topology.declare(self._channel, self.settings.service(job_type))
            self._declared.add(job_type)
        return self._channel

    def _publish(self, job_type: str, job_id: str, body: bytes, *,
                 reply_to: str | None = None, priority: int | None = None) -> None:
        service = self.settings.service(job_type)
        properties = job_properties(job_type, job_id, reply_to=reply_to, priority=priority)
        for attempt in (1, 2):
            channel = self._channel_for(job_type)
            try:
                with converted_errors(f"publishing {job_type} job {job_id}"):
                    channel.basic_publish("", service.queue, body, properties, mandatory=True)
                return
            except PublishNacked as error:
                if service.max_length:
                    raise QueueFull(f"queue '{service.queue}' is full (max_length "
                                    f"{service.max_length}); job {job_id} was not queued"
                                    ) from error
                raise
            except BrokerUnavailable:
                self.close()
                if attempt == 2 or reply_to:
                    raise

    def _publish_request(self, job_type: str, job_id: str, body: bytes) -> None:
        """Publish a call() request on the RPC channel: mandatory, persistent, no confirm.

        The reply confirms the request; waiting for the broker's confirm first (for a
        persistent message that is its next fsync, 3-5 ms) only delayed every call. An
        unroutable request still comes back (mandatory) and call() raises for it.
        """
        self._channel_for(job_type)  # the connection, and the topology declared once
        if self._rpc is None or not self._rpc.is_open:
            assert self._connection is not None
            with converted_errors("opening the RPC channel"):
                self._rpc = self._connection.channel()
                self._rpc.add_on_return_callback(self._on_return)
                self._rpc.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        properties = job_properties(job_type, job_id, reply_to=DIRECT_REPLY_TO)
        with converted_errors(f"publishing {job_type} job {job_id}"):
            self._rpc.basic_publish("", self.settings.service(job_type).queue, body,
                                    properties, mandatory=True)

    def _await_reply(self, job_type: str, job_id: str, timeout: float) -> dict[str, Any]:
        """Serve the connection until the reply to `job_id` is in; UnroutableError if the
        request came back instead, ReplyTimeout after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        assert self._connection is not None
        while job_id not in self._replies:
            if job_id in self._returned:
                self._returned.discard(job_id)
                raise UnroutableError(f"{job_type} job {job_id} was returned as unroutable "
                                      f"(no queue '{self.settings.service(job_type).queue}')")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplyTimeout(f"no reply to {job_type} job {job_id} within {timeout:g} s "
                                   "(it may still run: see `gearqueue status`)")
            with converted_errors("waiting for the reply"):
                self._connection.process_data_events(time_limit=min(remaining, 1.0))
        return self._replies.pop(job_id)

    def _on_return(self, channel: Any, method: Any, properties: pika.BasicProperties,
                   body: bytes) -> None:
        self._returned.add(properties.message_id or "")

    def _on_reply(self, channel: Any, method: Any, properties: pika.BasicProperties,
                  body: bytes) -> None:
        job_id = properties.correlation_id or ""  # no job has the empty id
        try:
            self._replies[job_id] = json.loads(body)
        except (ValueError, TypeError):
            self._replies[job_id] = {
                "success": -1, "message": f"unreadable reply: {body[:200]!r}"}
