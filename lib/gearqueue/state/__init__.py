"""The job-state store: where every guarantee of a job lives (see store.py).

`open_store(settings, job_type)` is the one way to get a store; the backend is chosen
by the settings. Embedded SQLite under `state_dir` is the default, for one machine.
"""

from __future__ import annotations

from ..config import Settings
from .records import JobRecord, JobStatus
from .sqlite import SqliteStore
from .store import StateStore

__all__ = ["JobRecord", "JobStatus", "StateStore", "open_store"]


def open_store(settings: Settings, job_type: str) -> StateStore:
    """The state store of `job_type` that `settings` name (nothing is opened yet)."""
    return SqliteStore(settings.paths.state_dir, job_type)
