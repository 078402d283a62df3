"""settlement.plan: what outcomes become on the wire, in which order (no child, no broker)."""

from __future__ import annotations

import json
import time

import pytest

from gearqueue import message
from gearqueue.config import ServiceSettings
from gearqueue.errors import (
    ExecutorCrashed,
    InvalidMessage,
    PermanentJobError,
    TransientJobError,
)
from gearqueue.state import JobRecord, JobStatus
from gearqueue.worker.outcome import Outcome, failure_reply
from gearqueue.worker.settlement import (
    Ack,
    GiveBack,
    Publish,
    Reply,
    Settled,
    Verdict,
    plan,
    verdict,
)
from gearqueue.worker.stop import StopRequest

from .recording_channel import RecordingChannel


@pytest.fixture
def channel() -> RecordingChannel:
    return RecordingChannel(StopRequest())


def settled(channel: RecordingChannel, job_id: str, outcome: Outcome,
            reply_to: str | None = "replies") -> Settled:
    delivery = channel.deliver(b'{"data": 1}', job_id, reply_to=reply_to)
    return Settled(delivery, message.envelope_of(delivery.properties, delivery.body),
                   outcome, 0.01)


def kinds(steps: list) -> list[str]:
    return [type(step).__name__ + (f":{step.kind}" if isinstance(step, Publish) else "")
            for step in steps]


def test_a_success_is_replied_then_acked(channel, echo_service: ServiceSettings) -> None:
    done = plan(echo_service, [settled(channel, "ok", Outcome.success({"success": 1}, 1))])
    assert kinds(done.steps) == ["Reply", "Ack"]
    reply, ack = done.steps
    assert isinstance(reply, Reply) and reply.reply == {"success": 1}
    assert reply.correlation_id == "ok" and reply.reply_to == "replies"
    assert isinstance(ack, Ack) and not ack.multiple


def test_no_reply_to_means_no_reply(channel, echo_service: ServiceSettings) -> None:
    done = plan(echo_service, [settled(channel, "quiet", Outcome.success({}, 1),
                                       reply_to=None)])
    assert kinds(done.steps) == ["Ack"]


def test_a_retry_is_published_to_its_retry_queue_before_the_ack_and_not_replied(
        channel, echo_service: ServiceSettings) -> None:
    outcome = Outcome.failure(TransientJobError("flaky"), 1, max_retries=1)
    done = plan(echo_service, [settled(channel, "flaky", outcome)])
    assert kinds(done.steps) == ["Publish:retry", "Ack"]
    publish = done.steps[0]
    assert isinstance(publish, Publish)
    assert (publish.exchange, publish.routing_key) == ("", f"{echo_service.queue}.retry.1")
    headers = publish.properties.headers
    assert headers == {"x-gear-attempt": 1, "x-gear-error-class": "TransientJobError",
                       "x-gear-error-message": "flaky"}
    # retry_backoff 0.4, attempt 1: 0.2 to 0.4 s, on the message.
    assert 200 <= int(publish.properties.expiration) <= 400
    assert publish.properties.message_id == "flaky" and publish.body == b'{"data": 1}'


def test_a_final_failure_is_dead_lettered_then_replied_then_acked(
        channel, echo_service: ServiceSettings) -> None:
    outcome = Outcome.failure(TransientJobError("flaky"), 2, max_retries=1,
                              traceback="Traceback ...")
    done = plan(echo_service, [settled(channel, "spent", outcome)])
    assert kinds(done.steps) == ["Publish:dead", "Reply", "Ack"]
    publish, reply, _ = done.steps
    assert isinstance(publish, Publish) and isinstance(reply, Reply)
    assert (publish.exchange, publish.routing_key) == ("gear.dlx", echo_service.queue)
    headers = publish.properties.headers
    assert headers["x-gear-attempts"] == 2
    assert headers["x-gear-error-class"] == "TransientJobError"
    assert headers["x-gear-traceback"] == "Traceback ..."
    assert headers["x-gear-original-queue"] == echo_service.queue
    assert headers["x-gear-job-type"] == "echo"
    assert abs(headers["x-gear-failed-at"] - time.time()) < 60
    assert json.loads(headers["x-gear-reply"]) == reply.reply == {
        "success": -1, "message": "flaky"}
    assert "x-gear-attempt" not in headers  # a new copy drops the old marks


@pytest.mark.parametrize(("error", "attempt", "expected"), [
    (TransientJobError("t"), 1, Verdict.RETRYING),
    (TransientJobError("t"), 2, Verdict.FAILED),  # max_retries 1: no retry left
    (ExecutorCrashed("crash"), 1, Verdict.RETRYING),
    (PermanentJobError("p"), 1, Verdict.FAILED),
    (InvalidMessage("bad"), 1, Verdict.FAILED),
])
def test_retry_or_dead_letter_by_attempt_and_error_class(error, attempt: int,
                                                         expected: Verdict) -> None:
    assert verdict(Outcome.failure(error, attempt, max_retries=1)) is expected


def test_a_batch_is_one_plan_ending_in_one_multiple_ack(
        channel, echo_service: ServiceSettings) -> None:
    jobs = [settled(channel, "a", Outcome.success({"n": 0}, 1)),
            settled(channel, "b", Outcome.failure(TransientJobError("t"), 1, max_retries=1)),
            settled(channel, "c", Outcome.failure(PermanentJobError("p"), 1, max_retries=1))]
    later = channel.deliver(b"{}", "d")
    done = plan(echo_service, jobs, [later])
    assert kinds(done.steps) == ["Reply", "Publish:retry", "Publish:dead", "Reply",
                                 "GiveBack", "Ack"]
    give_back, ack = done.steps[-2:]
    assert isinstance(give_back, GiveBack) and give_back.delivery is later
    assert isinstance(ack, Ack) and ack.delivery is jobs[-1].delivery and ack.multiple


def test_a_stored_record_gives_the_outcome_it_stored() -> None:
    now = time.time()
    succeeded = JobRecord("j", "echo", JobStatus.SUCCEEDED, attempts=2, result={"ok": 1},
                          updated=now)
    assert Outcome.from_record(succeeded, reused=True) == Outcome.success({"ok": 1}, 2,
                                                                           reused=True)
    retrying = JobRecord("j", "echo", JobStatus.RETRYING, attempts=1, updated=now,
                         error={"class": "ExecutorCrashed", "message": "m"})
    fresh = Outcome.from_record(retrying, reused=False)
    assert fresh is not None and fresh.retrying and fresh.error_class == "ExecutorCrashed"
    # An attempt stored before the batch was handed over is not this batch's.
    assert Outcome.from_record(retrying, reused=False, since=now + 1) is None
    running = JobRecord("j", "echo", JobStatus.RUNNING, attempts=1, updated=now)
    assert Outcome.from_record(running, reused=False) is None
    failed = JobRecord("j", "echo", JobStatus.FAILED, attempts=4, result={"success": -1})
    replayed = Outcome.from_record(failed, reused=True)
    assert replayed is not None and verdict(replayed) is Verdict.REPLAYED_FAILURE


def test_the_failure_reply_carries_the_error_reply_fields() -> None:
    assert failure_reply(PermanentJobError("no such cart", field="genecart_id")) == {
        "success": -1, "message": "no such cart", "field": "genecart_id"}
