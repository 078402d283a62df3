"""Job-state backends for tests: a database of its own per test on the shared PostgreSQL.

The state-store suite runs on every backend in STATE_BACKENDS; the consumer and client
tests run on the one $GEAR_TEST_STATE_BACKEND names (sqlite by default), so `make test`
runs them once per backend without a copy of any test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

#: The shared server of these machines (trust auth). Tests only create and drop
#: databases of their own on it.
SHARED_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
STATE_BACKENDS = ("sqlite", "postgresql")
ENV_BACKEND = "GEAR_TEST_STATE_BACKEND"


def chosen_backend() -> str:
    backend = os.environ.get(ENV_BACKEND, "sqlite")
    if backend not in STATE_BACKENDS:
        raise ValueError(f"${ENV_BACKEND} must be one of {STATE_BACKENDS}, got {backend!r}")
    return backend


@contextmanager
def scratch_database(server: str = SHARED_POSTGRES) -> Iterator[str]:
    """A new database `gq_<random>` on `server`, dropped afterwards; yields its URL."""
    name = f"gq_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
