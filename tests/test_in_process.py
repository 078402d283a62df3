"""queue_enabled = 0: the same validation and job code in the caller, no broker at all."""

from __future__ import annotations

import pytest

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import InvalidMessage
from gearqueue.state import JobStatus

NO_BROKER = {"url": "amqp://guest:guest@127.0.0.1:1/%2F"}


@pytest.fixture
def client(make_config):
    settings = load_settings(make_config(rabbitmq=NO_BROKER,
                                         echo_service={"queue_enabled": 0}))
    with Client(settings) as client:
        yield client


def test_success_is_replied_and_stored(client: Client) -> None:
    job_id = client.submit("echo", {"data": {"a": 1}})
    record = client.status("echo", job_id)
    assert record.status is JobStatus.SUCCEEDED
    assert record.result == {"success": 1, "echo": {"a": 1}, "attempt": 1}
    assert client.call("echo", {"data": 2}) == {"success": 1, "echo": 2, "attempt": 1}


@pytest.mark.parametrize("fail", ["permanent", "transient", "crash"])
def test_failures_are_final_in_process(client: Client, fail: str) -> None:
    job_id = "in-process-" + fail
    reply = client.call("echo", {"data": 1, "fail": fail}, job_id=job_id)
    assert reply["success"] == -1
    record = client.status("echo", job_id)
    assert record.status is JobStatus.FAILED and record.attempts == 1
    if fail == "crash":  # never kills the caller
        assert "needs a consumer" in reply["message"]


def test_bad_payload_fails_with_the_same_messages_as_the_consumer(client: Client) -> None:
    reply = client.call("echo", {"data": 1, "sleep": "long"})
    assert reply == {"success": -1, "message": "field 'sleep' must be an integer or a "
                                               "number, got str 'long'"}
    with pytest.raises(InvalidMessage, match="not JSON-serialisable"):
        client.submit("echo", {"data": object()})
    with pytest.raises(InvalidMessage, match="payload must be a JSON object"):
        client.submit("echo", [1, 2])  # type: ignore[arg-type]
