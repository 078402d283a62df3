"""A consumer on the PostgreSQL store while its database is down for seconds: it takes no
jobs and burns no attempts, keeps its AMQP connection (heartbeats served) and says it is
waiting for the state database; once the database is back, every job succeeds once."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import psutil
import pytest
from chaos.harness import Ledger, wait_until
from conftest import BROKER_URL
from consumers import ConsumerProcess
from private_postgres import PrivatePostgres

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.state import JobStatus

pytestmark = pytest.mark.slow

#: Down for longer than two heartbeat intervals: a consumer that served none would be
#: dropped by the broker while it waits.
HEARTBEAT = 2
OUTAGE_SECONDS = 8.0


class NotifySocket:
    """The socket systemd gives a service in $NOTIFY_SOCKET: what the consumer says.

    Read all the time, as systemd does: a sender blocks once ten datagrams wait."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(0.2)
        self.messages: list[str] = []
        self._open = True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while self._open:
            try:
                self.messages.append(self.socket.recv(4096).decode())
            except TimeoutError:
                continue

    def statuses(self) -> list[str]:
        return [line.removeprefix("STATUS=") for message in list(self.messages)
                for line in message.splitlines() if line.startswith("STATUS=")]

    def close(self) -> None:
        self._open = False
        self._reader.join(5)
        self.socket.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def amqp_ports(pid: int) -> set[int]:
    """The local ports of the process's connections to the broker."""
    return {connection.laddr.port for connection in psutil.Process(pid).net_connections("tcp")
            if connection.raddr and connection.raddr.port == 5672}


def broker_peer_ports() -> set[int]:
    """The client ports of every connection the broker has (it names them, not us)."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "peer_port"],
                            check=True, capture_output=True, text=True, timeout=60).stdout
    return {int(line) for line in listed.split() if line.isdigit()}


def queue_state(queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of the queue, as the broker counts them."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        method = connection.channel().queue_declare(queue, passive=True).method
        return method.message_count, method.consumer_count
    finally:
        connection.close()


def test_a_consumer_waits_for_its_database_and_then_does_every_job_once(
        make_config, private_postgres: PrivatePostgres, notify_socket: NotifySocket) -> None:
    config = make_config(state={"url": private_postgres.url},
                         rabbitmq={"heartbeat": HEARTBEAT},
                         echo_service={"prefetch": 3})
    settings = load_settings(config)
    queue = settings.service("echo").queue
    consumer = ConsumerProcess(config, instance="pgwait")
    consumer.env["NOTIFY_SOCKET"] = str(notify_socket.path)
    ledger = Ledger.of(config)
    job_ids = [f"job-{n:02}" for n in range(12)]
    try:
        consumer.start()
        assert consumer.process is not None
        pid = consumer.process.pid
        with Client(settings) as client:
            for job_id in job_ids:
                client.submit("echo", {"data": job_id, "sleep": 0.4, "mark": True},
                              job_id=job_id)
        wait_until(lambda: ledger.count(job_ids, JobStatus.SUCCEEDED) >= 3
                   and ledger.count(job_ids, JobStatus.RUNNING) == 1, 60,
                   "some jobs done and one running")
        connection = amqp_ports(pid)
        assert connection and connection <= broker_peer_ports()

        private_postgres.stop()
        down_since = time.monotonic()
        consumer.wait_for_log("waiting for the state database (attempt 2)", timeout=30)
        masked = private_postgres.url  # no password to mask: the URL as configured
        while time.monotonic() - down_since < OUTAGE_SECONDS:
            assert consumer.process.poll() is None, consumer.log()
            time.sleep(0.2)
        ready, consumers = queue_state(queue)
        assert consumers == 0  # it stopped taking jobs; the rest wait in the queue
        assert ready >= 1
        waiting = [status for status in notify_socket.statuses()
                   if status.startswith("waiting for the state database")]
        assert f"waiting for the state database (attempt 1): {masked}" in waiting
        assert len(waiting) >= 3, waiting  # it kept probing, with back-off
        private_postgres.start()

        wait_until(lambda: ledger.count(job_ids, JobStatus.SUCCEEDED) == len(job_ids)
                   or consumer.process.poll() is not None, 90, "every job succeeded")
        log = consumer.log()
        assert consumer.process.poll() is None, log
        assert "the state database answers again" in log
        assert amqp_ports(pid) == connection  # the same TCP connection, never reopened
        assert connection <= broker_peer_ports()
        assert "reconnecting" not in log and "lost the broker" not in log, log
        assert sorted(ledger.marks()) == job_ids  # each effect made once
        assert ledger.reruns() == []
        attempts = {job_id: record.attempts
                    for job_id, record in ledger.records(job_ids).items() if record}
        # Only the job that was running when the database went away counts a second
        # attempt; the jobs given back while it was down count none.
        assert sorted(attempts.values()) in ([1] * 12, [1] * 11 + [2]), attempts
        assert " retrying (" not in log and " failed (" not in log, log
    finally:
        consumer.stop()
        ledger.store.close()
