"""Helpers for the dataset_import and export tests: folders, running a job, reading text.

Input files are written with the ProjectR tests' helpers (projectr_fixtures), so the
same files feed both; text output is read back here with the csv module alone, so the
tests do not trust the parser they test.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gearqueue.config import Settings
from gearqueue.errors import JobError
from gearqueue.jobs.base import Job, JobContext
from gearqueue.worker.outcome import failure_reply

FOLDERS = ("state_dir", "datasets_dir", "carts_dir", "projections_dir", "uploads_dir",
           "exports_dir")


def make_folders(settings: Settings) -> Settings:
    for name in FOLDERS:
        getattr(settings.paths, name).mkdir(parents=True, exist_ok=True)
    return settings


def context(settings: Settings, job_type: str, job_id: str = "test-job") -> JobContext:
    return JobContext(job_id=job_id, job_type=job_type, attempt=1, settings=settings,
                      isolated=False, log=logging.LoggerAdapter(logging.getLogger("test"), {}))


def run(job: Job[Any], payload: dict[str, Any]) -> dict[str, Any]:
    """validate + run, as the runtime does; errors propagate (tests check their class)."""
    return job.run(job.validate(payload), context(job.settings, job.name))


def reply(job: Job[Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The reply the runtime would send, failures included."""
    try:
        return run(job, payload)
    except JobError as error:
        return failure_reply(error)


def read_table(path: Path, delimiter: str = ",") -> tuple[list[str], list[str], np.ndarray]:
    """(row ids, column ids, values) of an exported file; NA -> NaN."""
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream, delimiter=delimiter))
    header, body = rows[0], rows[1:]
    assert header[0] == "", header
    values = np.array([[np.nan if cell == "NA" else float(cell) for cell in row[1:]]
                       for row in body], dtype=np.float64).reshape(len(body), len(header) - 1)
    return [row[0] for row in body], header[1:], values


def hidden_files(folder: Path) -> list[str]:
    """Temp files a writer left behind (they start with a dot)."""
    return sorted(entry.name for entry in folder.iterdir() if entry.name.startswith("."))


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG, as on a full disk (RLIMIT_FSIZE)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
