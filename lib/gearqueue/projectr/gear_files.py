"""gEAR's names for a projection's files, and gEAR's lock, so both sides see each other.

gEAR (www/api/resources/projectr.py in IGS/gEAR) names the p-values
`by_dataset/<dataset_id>/<projection_id>_pval.csv` and, while it computes a projection,
holds `by_dataset/<dataset_id>/<projection_id>.csv.lock`: it opens the file "w+",
writes its pid, takes `fcntl.flock(LOCK_EX)` (blocking), and when done closes the file
and then deletes it. Its in-process path (queue_enabled = 0) and this worker must
exclude each other on that file, so `gear_lock` takes the same flock on the same name.

Because gEAR deletes the file, a flock may be granted on a file that is no longer (or
no longer the one) at that name; the lock is then taken again on the new file, the
usual open-lock-stat loop. We delete the file while still holding it, so no one can be
granted the old one after us. One race is gEAR's own and stays: gEAR closes before it
deletes, so a process granted the lock in between may hold a file that gEAR then
deletes (two gEAR processes have the same race with each other).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..files import lock_waiting, open_lock_file
from .outputs import ProjectionFiles


@dataclass(frozen=True)
class GearProjectionFiles(ProjectionFiles):
    """The layout of ProjectionFiles with gEAR's p-value and lock file names."""

    @property
    def pval_csv(self) -> Path:
        return self.dataset_dir / f"{self.projection_id}_pval.csv"

    @property
    def lock(self) -> Path:
        return self.dataset_dir / f"{self.projection_id}.csv.lock"


@contextlib.contextmanager
def gear_lock(path: Path, *, purpose: str) -> Iterator[bool]:
    """Hold gEAR's lock file `path`; yields True if another holder had to be waited for."""
    waited = False
    while True:
        descriptor = open_lock_file(path, purpose=purpose, mode=0o666)
        try:
            waited = lock_waiting(descriptor, path, purpose=purpose) or waited
            if not _still_named(descriptor, path):
                continue  # the holder deleted it: lock the file now at that name
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())  # as gEAR writes its pid
            try:
                yield waited
            finally:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # while still held, as explained above
            return
        finally:
            os.close(descriptor)


def _still_named(descriptor: int, path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
