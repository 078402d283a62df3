"""One send() for what pika has queued for the socket, not one per AMQP frame.

pika's plaintext transport keeps each frame it is given as a buffer of its own and
sends them one `send()` at a time (`_AsyncPlaintextTransport._produce`), so a published
message (method, header and body frames) costs three system calls, and a reply, an ack
and an event queued together seven. On the VMs this runs on a system call on a TCP
socket costs tens of microseconds (the kernel hands the bytes to the receiver at once
on loopback), which made these sends the largest single cost of a quick job after
the state commit (docs/performance.md, "System calls a job costs").

`coalesce_frames` makes the transport join what it has queued, up to JOIN_LIMIT bytes,
into one buffer before each send. The bytes on the wire are the same, in the same
order; only the number of writes changes. It replaces one method of pika's class, for
the whole process, once (`functools.cache`), and only where the method is the one it
was written against (pika 1.3 to 1.4: `_tx_buffers`, `_tx_buffered_byte_count`,
`_sigint_safe_send`); with any other pika it leaves pika as it is. TLS connections
use another transport class and are not touched.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from typing import Any

from pika.adapters.utils import io_services_utils

log = logging.getLogger(__name__)

#: Buffers are joined while their total stays under this (a large body is sent as is:
#: joining it would copy it for nothing).
JOIN_LIMIT = 128 * 1024

_TRANSPORT = getattr(io_services_utils, "_AsyncPlaintextTransport", None)


def _joined_produce(self: Any) -> None:
    """`_produce` of pika's plaintext transport, sending joined buffers."""
    buffers: deque[bytes] = self._tx_buffers
    while buffers:
        if len(buffers) > 1 and len(buffers[0]) < JOIN_LIMIT:
            parts = [buffers.popleft()]
            size = len(parts[0])
            while buffers and size + len(buffers[0]) <= JOIN_LIMIT:
                size += len(buffers[0])
                parts.append(buffers.popleft())
            buffers.appendleft(b"".join(parts))
        sent = self._sigint_safe_send(self._sock, buffers[0])
        chunk = buffers.popleft()
        if sent < len(chunk):
            buffers.appendleft(chunk[sent:])
        self._tx_buffered_byte_count -= sent


def _understood(transport: Any) -> bool:
    """The plaintext transport's `_produce` is pika's own, of the shape written for."""
    produce = getattr(transport, "_produce", None)
    if produce is _joined_produce:
        return True
    code = getattr(produce, "__code__", None)
    return code is not None and {"_tx_buffers", "_sigint_safe_send",
                                 "_tx_buffered_byte_count"} <= set(code.co_names)


@functools.cache
def coalesce_frames() -> bool:
    """Install the joined send once per process; True if it is in place."""
    if _TRANSPORT is None or not _understood(_TRANSPORT):
        log.debug("pika's transport is not the one gearqueue knows: frames are sent "
                  "one by one, as pika does")
        return False
    _TRANSPORT._produce = _joined_produce
    return True
