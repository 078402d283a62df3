"""Bad messages: a clear error in the reply and the job state, the message in the dead
queue, and the consumer still consuming. One consumer serves the whole module."""

from __future__ import annotations

import json
import time

import pytest
from amqp import PlainPublisher
from consumers import ConsumerProcess

from gearqueue.config import load_settings
from gearqueue.state import JobStatus, open_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["inline", "process"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """An echo consumer of each isolation in turn (inline: echo's own default)."""
    folder = tmp_path_factory.mktemp("bad-input")
    queue = f"t{time.time_ns()}.echo_jobs"
    config = folder / "gear.ini"
    config.write_text(
        "[rabbitmq]\nurl = amqp://guest:guest@127.0.0.1:5672/%2F\n"
        "[paths]\nstate_dir = var/state\n"
        f"[echo_service]\nqueue = {queue}\nmax_message_bytes = 2000\n"
        f"isolation = {request.param}\n")
    consumer = ConsumerProcess(config).start()
    publisher = PlainPublisher(queue)
    yield config, publisher, consumer
    publisher.close()
    consumer.stop()


CASES = {
    "not-json": (b"{'data': 1}", {}, "message body is not JSON"),
    "not-utf8": (b'{"data": "\xff"}', {}, "message body is not UTF-8"),
    "not-an-object": (b"[1, 2]", {}, "message body must be a JSON object, got list"),
    "pickle": (b"\x80\x04K\x07.", {"content_type": "application/x-python-serialize"},
               "content type 'application/x-python-serialize' is not accepted"),
    "missing-field": (b'{"sleep": 0}', {}, "missing field 'data'"),
    "extra-field": (b'{"data": 1, "colour": "red"}', {}, "unknown field(s) 'colour'"),
    "mistyped-field": (b'{"data": 1, "sleep": "long"}', {},
                       "field 'sleep' must be an integer or a number, got str"),
    "bad-choice": (b'{"data": 1, "fail": "sometimes"}', {},
                   "field 'fail' must be one of permanent, transient, crash"),
    "too-large": (json.dumps({"data": "x" * 3000}).encode(), {},
                  "message body is 3012 bytes, over the limit of 2000"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_message_gets_a_clear_error_and_is_dead_lettered(served, case: str) -> None:
    config, publisher, consumer = served
    body, properties, wanted = CASES[case]
    message_id = f"bad-{case}-{time.time_ns()}"
    dead_before = publisher.depth(publisher.queue + ".dead")
    publisher.publish(body, case, message_id=message_id, **properties)
    publisher.wait_replies(1, timeout=20)
    reply = publisher.replies.pop(case)[0]
    assert reply["success"] == -1
    assert wanted in reply["message"]
    record = open_store(load_settings(config), "echo").require(message_id)
    assert record.status is JobStatus.FAILED and record.attempts == 1
    assert wanted in record.error["message"]
    assert publisher.depth(publisher.queue + ".dead") == dead_before + 1
    dead = _take_dead(publisher, message_id)
    assert dead[1] == body
    assert wanted in dead[0].headers["x-gear-error-message"]
    _still_consuming(publisher, consumer)


def test_a_message_without_reply_to_is_dead_lettered_silently(served) -> None:
    config, publisher, consumer = served
    message_id = f"no-reply-{time.time_ns()}"
    publisher.publish(b"not json", "no-reply", reply=False, message_id=message_id)
    store = open_store(load_settings(config), "echo")
    deadline = time.monotonic() + 20
    while (record := store.get(message_id)) is None or record.status is not JobStatus.FAILED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "not JSON" in record.error["message"]
    assert _take_dead(publisher, message_id, timeout=10)[1] == b"not json"
    _still_consuming(publisher, consumer)


def _take_dead(publisher: PlainPublisher, message_id: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = publisher.get(publisher.queue + ".dead")
        if got is not None and got[0].message_id == message_id:
            return got
        if got is None:
            time.sleep(0.05)
    raise AssertionError(f"{message_id} not in the dead queue")


def _still_consuming(publisher: PlainPublisher, consumer: ConsumerProcess) -> None:
    publisher.publish({"data": "alive"}, "alive")
    publisher.wait_replies(1, timeout=20)
    assert publisher.replies.pop("alive") == [{"success": 1, "echo": "alive", "attempt": 1}]
    assert consumer.process is not None and consumer.process.poll() is None

