"""Advisory file locks (flock) that a killed process cannot leave behind.

The kernel drops a flock when its holder dies, even by SIGKILL, so unlike gEAR's
"the lock file exists" convention there is no stale lock to detect. Lock files are never
deleted: deleting one while another process waits on it would let a third process lock
a new file of the same name at the same time.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import TransientJobError

log = logging.getLogger(__name__)


@contextmanager
def exclusive(path: Path, *, purpose: str) -> Iterator[bool]:
    """Hold an exclusive lock on `path`; yields True if another holder had to be waited for."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664)
    except OSError as error:
        raise TransientJobError(f"cannot create lock file for {purpose}: {error}") from None
    try:
        waited = False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the lock on %s (%s)", path, purpose)
            waited = True
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield waited
    finally:
        os.close(descriptor)  # releases the lock
