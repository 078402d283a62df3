"""One send() for what pika queued, the same bytes in the same order (gearqueue/wire.py)."""

from __future__ import annotations

from collections import deque

import pika
from pika.adapters.utils import io_services_utils

from gearqueue import wire


class Transport:
    """The attributes of pika's plaintext transport that `_produce` uses."""

    def __init__(self, chunks: list[bytes], accept: list[int] | None = None) -> None:
        self._tx_buffers = deque(chunks)
        self._tx_buffered_byte_count = sum(map(len, chunks))
        self._sock = object()
        self.sends: list[bytes] = []
        self._accept = accept or []

    def _sigint_safe_send(self, sock: object, data: bytes) -> int:
        taken = min(len(data), self._accept.pop(0)) if self._accept else len(data)
        self.sends.append(data[:taken])
        return taken


def test_queued_frames_leave_in_one_send() -> None:
    transport = Transport([b"method", b"header", b"body", b"ack"])
    wire._joined_produce(transport)
    assert transport.sends == [b"methodheaderbodyack"]
    assert transport._tx_buffered_byte_count == 0 and not transport._tx_buffers


def test_a_partial_send_keeps_the_rest_in_order() -> None:
    transport = Transport([b"aaaa", b"bbbb", b"cccc"], accept=[5, 3])
    wire._joined_produce(transport)
    assert b"".join(transport.sends) == b"aaaabbbbcccc"
    assert transport.sends[:2] == [b"aaaab", b"bbb"]
    assert transport._tx_buffered_byte_count == 0


def test_a_large_body_is_sent_as_it_is_not_copied() -> None:
    big = b"x" * (wire.JOIN_LIMIT + 1)
    transport = Transport([b"method", b"header", big, b"ack"])
    wire._joined_produce(transport)
    assert transport.sends == [b"methodheader", big, b"ack"]


def test_installed_on_pikas_plaintext_transport_only() -> None:
    assert wire.coalesce_frames()
    plaintext = io_services_utils._AsyncPlaintextTransport
    assert plaintext._produce is wire._joined_produce
    assert io_services_utils._AsyncSSLTransport._produce is not wire._joined_produce
    assert pika.__version__.startswith("1.")
