"""The consumer loop in-process: echo in a real executor child, a recording channel.

Each test reads the settlement as the list of calls the loop made on the channel:
the next copy of a message is published before its reply, the reply before the ack,
and a batch ends in one ack of its last job (multiple).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading

from gearqueue.config import Settings, StateSettings
from gearqueue.state import JobStatus, StateStore, open_store
from gearqueue.worker.executor import Executor
from gearqueue.worker.loop import Consumer
from gearqueue.worker.stop import StopRequest

from .recording_channel import Event, RecordingChannel


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def store(settings: Settings) -> StateStore:
    return open_store(settings, "echo")


def order(channel: RecordingChannel) -> list[tuple[str, str | None]]:
    return [(event.kind, event.job_id) for event in channel.events]


def replies(channel: RecordingChannel) -> dict[str | None, dict]:
    return {event.job_id: event.reply for event in channel.of("reply")
            if event.reply is not None}


def test_a_batch_publishes_then_replies_job_by_job_then_acks_once(consumer, tag) -> None:
    loop, channel = consumer()
    ids = [f"{tag}-{n}" for n in range(4)]
    channel.deliver(body(data=0), ids[0])
    channel.deliver(body(data=1, fail="transient"), ids[1])
    channel.deliver(body(data=2, fail="permanent"), ids[2])
    channel.deliver(body(data=3), ids[3])
    loop.serve(channel)  # type: ignore[arg-type]
    assert order(channel) == [
        ("reply", ids[0]),
        ("publish", ids[1]),  # retry: no reply yet
        ("publish", ids[2]), ("reply", ids[2]),  # dead letter, then its reply
        ("reply", ids[3]),
        ("ack", ids[3]),  # one ack, for all four
        ("cancel", None),
    ]
    assert channel.of("ack")[0].multiple
    retry, dead = channel.of("publish")
    assert retry.routing_key == f"{loop.service.queue}.retry.1"
    assert retry.headers["x-gear-attempt"] == 1
    assert dead.exchange == "gear.dlx" and dead.headers["x-gear-attempts"] == 1
    assert dead.headers["x-gear-error-class"] == "PermanentJobError"
    assert replies(channel)[ids[0]] == {"success": 1, "echo": 0, "attempt": 1}
    assert store(loop.settings).require(ids[1]).status is JobStatus.RETRYING


def test_a_retried_message_is_dead_lettered_when_its_retries_are_spent(consumer, tag) -> None:
    loop, channel = consumer()
    job_id = f"{tag}-flaky"
    channel.deliver(body(data=1, fail="transient"), job_id)
    channel.deliver(body(data=1, fail="transient"), job_id,
                    headers={"x-gear-attempt": 1, "x-gear-error-class": "TransientJobError"})
    loop.serve(channel)  # type: ignore[arg-type]
    first, second = channel.of("publish")
    assert first.routing_key.endswith(".retry.1") and first.headers["x-gear-attempt"] == 1
    assert second.exchange == "gear.dlx" and second.headers["x-gear-attempts"] == 2
    assert order(channel)[-3:] == [("reply", job_id), ("ack", job_id), ("cancel", None)]
    record = store(loop.settings).require(job_id)
    assert (record.status, record.attempts) == (JobStatus.FAILED, 2)


def test_a_crash_mid_batch_settles_before_fails_at_and_gives_back_after(
        process_consumer, tag) -> None:
    """In an executor child each job's attempt is stored before it runs, which commits
    the result of the job before it: after the crash, the jobs before it are settled
    from their records, the job at it fails, the ones after it go back untouched."""
    loop, channel = process_consumer()
    ids = [f"{tag}-{n}" for n in range(5)]
    for n, job_id in enumerate(ids):
        channel.deliver(body(data=n, **({"fail": "crash"} if n == 2 else {})), job_id)
    # The given-back ones would come again; here the burst ends with them given back.
    loop.serve(channel)  # type: ignore[arg-type]
    events = order(channel)
    assert events[:5] == [("reply", ids[0]), ("reply", ids[1]), ("publish", ids[2]),
                          ("requeue", ids[3]), ("requeue", ids[4])]
    assert events[5] == ("ack", ids[2]) and channel.of("ack")[0].multiple
    retry = channel.of("publish")[0]
    assert retry.headers["x-gear-error-class"] == "ExecutorCrashed"
    assert "executor child died" in retry.headers["x-gear-error-message"]
    assert replies(channel)[ids[1]] == {"success": 1, "echo": 1, "attempt": 1}
    records = store(loop.settings)
    assert [records.require(job_id).status for job_id in ids[:3]] == [
        JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.RETRYING]
    assert records.get(ids[3]) is None and records.get(ids[4]) is None  # never started
    assert channel.acked_tags() == {1, 2, 3}


def test_a_redelivered_job_after_a_crash_counts_the_attempt_that_left_no_record(
        consumer, tag) -> None:
    loop, channel = consumer()
    job_id = f"{tag}-again"
    channel.deliver(body(data=1), job_id, redelivered=True)
    loop.serve(channel)  # type: ignore[arg-type]
    assert replies(channel)[job_id] == {"success": 1, "echo": 1, "attempt": 2}
    assert store(loop.settings).require(job_id).attempts == 2


def test_a_first_delivery_is_recorded_once_with_its_result(consumer, tag) -> None:
    loop, channel = consumer()
    job_id = f"{tag}-first"
    channel.deliver(body(data=1), job_id)
    loop.serve(channel)  # type: ignore[arg-type]
    record = store(loop.settings).require(job_id)
    assert (record.status, record.attempts) == (JobStatus.SUCCEEDED, 1)
    assert record.worker and record.result == {"success": 1, "echo": 1, "attempt": 1}


def test_a_time_limit_mid_batch_fails_that_job_alone(consumer, isolation, tag) -> None:
    """process: the child is killed and the jobs after it go back untouched; inline: the
    timer raises in the job, and the batch goes on."""
    loop, channel = consumer()
    ids = [f"{tag}-{n}" for n in range(3)]
    for n, job_id in enumerate(ids):
        channel.deliver(body(data=n, **({"sleep": 20} if n == 1 else {})), job_id)
    loop.serve(channel)  # type: ignore[arg-type]
    if isolation == "process":
        assert order(channel)[:4] == [("reply", ids[0]), ("publish", ids[1]),
                                      ("requeue", ids[2]), ("ack", ids[1])]
        assert store(loop.settings).get(ids[2]) is None
    else:
        assert order(channel)[:4] == [("reply", ids[0]), ("publish", ids[1]),
                                      ("reply", ids[2]), ("ack", ids[2])]
    retry = channel.of("publish")[0]
    assert retry.headers["x-gear-error-class"] == "HardTimeLimitExceeded"


def test_an_invalid_message_among_valid_ones_is_dead_lettered_in_its_turn(
        consumer, tag) -> None:
    loop, channel = consumer()
    ids = [f"{tag}-{n}" for n in range(4)]
    for n, job_id in enumerate(ids):
        channel.deliver(b"not json" if n == 2 else body(data=n), job_id)
    loop.serve(channel)  # type: ignore[arg-type]
    assert order(channel) == [
        ("reply", ids[0]), ("reply", ids[1]), ("ack", ids[1]),  # the batch before it
        ("publish", ids[2]), ("reply", ids[2]), ("ack", ids[2]),  # it, alone
        ("reply", ids[3]), ("ack", ids[3]),  # the batch after it
        ("cancel", None),
    ]
    acks = channel.of("ack")
    assert [event.multiple for event in acks] == [True, False, False]
    dead = channel.of("publish")[0]
    assert dead.headers["x-gear-error-class"] == "InvalidMessage"
    assert "JSON" in (replies(channel)[ids[2]] or {})["message"]
    assert channel.acked_tags() == {1, 2, 3, 4}


def test_sigterm_mid_batch_finishes_the_running_job_and_gives_back_the_rest(
        consumer, tag) -> None:
    loop, channel = consumer()
    ids = [f"{tag}-{n}" for n in range(5)]
    for n, job_id in enumerate(ids):
        channel.deliver(body(data=n, sleep=0.15), job_id)
    # As a SIGTERM does, from outside the loop, while a job of the batch runs.
    sigterm = threading.Timer(0.25, lambda: setattr(loop.stop, "graceful", True))
    sigterm.start()
    loop.serve(channel)  # type: ignore[arg-type]
    sigterm.join()
    done = [job_id for job_id in ids if job_id in replies(channel)]
    given_back = [event.job_id for event in channel.of("requeue")]
    # The batch is cut after a job: a prefix is done, the rest goes back untouched.
    assert 1 <= len(done) < len(ids) and done + given_back == ids
    assert order(channel)[-1] == ("cancel", None)
    [ack] = channel.of("ack")
    assert ack.job_id == done[-1] and ack.multiple == (len(done) > 1)
    records = store(loop.settings)
    assert all(records.get(job_id) is None for job_id in given_back)
    assert all(records.require(job_id).status is JobStatus.SUCCEEDED for job_id in done)


def test_a_replayed_success_is_replied_from_its_record_not_run_again(consumer, tag) -> None:
    loop, channel = consumer()
    job_id = f"{tag}-again"
    channel.deliver(body(data="x"), job_id)
    channel.deliver(body(data="x"), job_id, redelivered=True)
    loop.serve(channel)  # type: ignore[arg-type]
    answers = [event.reply for event in channel.of("reply")]
    assert answers == [{"success": 1, "echo": "x", "attempt": 1}] * 2
    assert not channel.of("publish")


def test_the_executor_child_does_not_load_pika() -> None:
    """The child imports the runner and the outcome, never the wire or the broker code
    (pika alone is some 100 ms and 6 MiB per child start)."""
    probe = "import sys, gearqueue.worker.child; print(sorted(m for m in sys.modules " \
            "if m == 'pika' or m.startswith('pika.')))"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert found == "[]"


def test_events_are_what_the_loop_called() -> None:
    """The double itself: a multiple ack covers every tag up to it."""
    channel = RecordingChannel(StopRequest())
    channel.events += [Event("ack", "a", multiple=True, tag=3), Event("ack", "b", tag=5)]
    assert channel.acked_tags() == {1, 2, 3, 5}


def test_a_store_that_cannot_be_reached_gives_the_batch_back_and_pauses(
        fast_settings: Settings, tag: str) -> None:
    """Nothing can be recorded, so nothing is settled: no ack, no retry, no reply; the
    consumer stops consuming before it gives the batch back, then waits for the store."""
    unreachable = dataclasses.replace(
        fast_settings, state=StateSettings(url="postgresql://gear@127.0.0.1:1/gear"))
    executor = Executor(unreachable, unreachable.service("echo"), "fast-unreachable")
    stop = StopRequest()
    channel = RecordingChannel(stop)  # its idle pump (the wait) asks for the stop
    loop = Consumer(unreachable, "echo", identifier="fast-unreachable", stop=stop,
                    executor=executor, open_channel=lambda: channel)  # type: ignore[arg-type,return-value]
    ids = [f"{tag}-{n}" for n in range(3)]
    for n, job_id in enumerate(ids):
        channel.deliver(body(data=n), job_id)
    try:
        loop.serve(channel)  # type: ignore[arg-type]
    finally:
        executor.shutdown()
    assert order(channel) == [("cancel", None), *[("requeue", job_id) for job_id in ids],
                              ("cancel", None)]
    assert loop.notifier._last_status == (
        "waiting for the state database (attempt 1): postgresql://gear@127.0.0.1:1/gear")
