"""The job-state store: where every guarantee of a job lives (see store.py).

`open_store(settings, job_type)` is the one way to get a store; the backend is chosen
by the settings: embedded SQLite under `state_dir` (the default, for one machine), or
PostgreSQL at `[state] url` (several hosts; postgres.py).
"""

from __future__ import annotations

from ..config import Settings
from .records import JobRecord, JobStatus, Progress
from .sqlite import SqliteStore
from .store import StateStore

__all__ = ["JobRecord", "JobStatus", "Progress", "StateStore", "open_store"]


def open_store(settings: Settings, job_type: str) -> StateStore:
    """The state store of `job_type` that `settings` name (nothing is opened yet)."""
    if settings.state.url:
        from .postgres import PostgresStore  # psycopg only where PostgreSQL is used

        return PostgresStore(settings.state.url, job_type)
    return SqliteStore(settings.paths.state_dir, job_type)
