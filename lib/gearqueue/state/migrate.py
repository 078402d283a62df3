"""Moving job records from an older store into a store of today.

A job that succeeded before the move must still be found when its message is
redelivered after it, or it would run twice; so a move copies every record, and a
record the target already has is newer and wins (`StateStore.adopt`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from ..errors import ConfigError
from .records import JobRecord
from .store import StateStore

log = logging.getLogger(__name__)


def import_record_files(store: StateStore, root: Path) -> int:
    """Move records of the file-per-job store under `root` into `store` (a consumer's
    start-up); the number imported.

    Before the database, each record was `<root>/<id[:2]>/<id>.json`. Each file is
    removed once its record is committed, so an interrupted import resumes.
    """
    try:
        imported = sum(_import_folder(store, entry.path) for entry in os.scandir(root)
                       if entry.is_dir() and len(entry.name) == 2)
    except FileNotFoundError:
        return 0
    except OSError as error:
        raise ConfigError(f"cannot import the job records in {root}: {error}",
                          section="paths", key="state_dir") from None
    if imported:
        log.info("imported %d job records of the file-per-job store into %r",
                 imported, store)
    return imported


def _import_folder(store: StateStore, folder: str) -> int:
    """One bucket folder of the old store, in one commit; the number of records."""
    done, records = [], []
    for entry in os.scandir(folder):
        if not entry.name.endswith(".tmp"):  # .tmp: a write the old store never finished
            try:
                with open(entry.path, "rb") as stream:
                    records.append(JobRecord.from_json(json.loads(stream.read())))
            except (OSError, ValueError, TypeError, KeyError) as error:
                log.warning("left %s in place: not a job record (%s)", entry.path, error)
                continue
        done.append(entry.path)
    store.adopt(records)
    for path in done:
        os.unlink(path)
    with contextlib.suppress(OSError):  # not empty: what was left in place
        os.rmdir(folder)
    return len(records)


def copy_records(source: StateStore, target: StateStore, batch: int = 1000) -> tuple[int, int]:
    """Copy every record of `source` into `target`, `batch` per commit; (copied, kept):
    a record `target` has already is kept, so running it again changes nothing."""
    copied = seen = 0
    pending: list[JobRecord] = []
    for record in source.records():
        pending.append(record)
        if len(pending) == batch:
            copied += target.adopt(pending)
            seen += len(pending)
            pending = []
    if pending:
        copied += target.adopt(pending)
        seen += len(pending)
    return copied, seen - copied
