"""Shared fixtures: a gear.ini of its own per test, against the real broker on 127.0.0.1.

Every test gets unique queue names, so tests never see each other's messages on the
shared broker, and its own data folders under tmp_path.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from private_postgres import PrivatePostgres
from state_backends import STATE_BACKENDS, chosen_backend, scratch_database

from gearqueue.config import Settings, load_settings
from gearqueue.jobtypes import JOB_TYPES
from gearqueue.state import StateStore, open_store

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

ConfigFactory = Callable[..., Path]

#: rpy2 rewrites LD_LIBRARY_PATH to Debian's library folders when R starts. The R engine
#: puts it back; this guards tests that start R through rpy2 directly, so processes they
#: start later do not load Debian's libraries ("undefined symbol: _PyModule_Add").
_LIBRARY_PATH_AT_START = os.environ.get("LD_LIBRARY_PATH")


@pytest.fixture(autouse=True)
def _library_path_as_at_start() -> Iterator[None]:
    _restore_library_path()
    yield
    _restore_library_path()


def _restore_library_path() -> None:
    if _LIBRARY_PATH_AT_START is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = _LIBRARY_PATH_AT_START


@pytest.fixture
def make_config(tmp_path: Path, request: pytest.FixtureRequest) -> ConfigFactory:
    """Write a gear.ini for this test and return its path.

    Keyword arguments set keys: `echo_service={"prefetch": 10}` (echo's isolation is
    `process`, or each of both for a test that takes the `isolation` fixture), `rabbitmq={...}`,
    `paths={...}`. Queues are named `t<random>.<type>_jobs`. The job-state store is
    that of $GEAR_TEST_STATE_BACKEND (SQLite by default; `state={"url": ...}` sets it).
    """
    tag = f"t{uuid.uuid4().hex[:10]}"
    # echo runs in its executor child unless the test asks for both (`isolation`):
    # tests of the child itself (long jobs, memory limits) stay on `process`.
    isolation = (request.getfixturevalue("isolation") if "isolation" in request.fixturenames
                 else "process")
    # Only tests that run consumers or clients get a database (the `state_url` fixture);
    # a store-suite test brings its own through `state={...}`.
    state = request.getfixturevalue("state_url") if chosen_backend() != "sqlite" else ""

    def make(name: str = "gear.ini", **sections: dict[str, object]) -> Path:
        content: dict[str, dict[str, object]] = {
            "rabbitmq": {"url": BROKER_URL, "heartbeat": 10, "reconnect_max_delay": 2},
            "paths": {key: f"var/{key.removesuffix('_dir')}" for key in (
                "state_dir", "datasets_dir", "carts_dir", "projections_dir", "uploads_dir",
                "exports_dir")},
        }
        if state:
            content["state"] = {"url": state}
        for job_type in JOB_TYPES:
            content[f"{job_type}_service"] = {"queue": f"{tag}.{job_type}_jobs",
                                              "retry_backoff": 0.2}
        content["echo_service"]["isolation"] = isolation
        for section, values in sections.items():
            content.setdefault(section, {}).update(values)
        lines = []
        for section, values in content.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {value}" for key, value in values.items()]
            lines.append("")
        path = tmp_path / name
        path.write_text("\n".join(lines))
        return path

    return make


@pytest.fixture(params=["process", "inline"])
def isolation(request: pytest.FixtureRequest) -> str:
    """Run a runtime test in both isolations: make_config sets echo's to this."""
    return str(request.param)


@pytest.fixture
def settings(make_config: ConfigFactory) -> Settings:
    return load_settings(make_config())


@pytest.fixture
def state_url() -> Iterator[str]:
    """`[state] url` for this test by $GEAR_TEST_STATE_BACKEND: empty (SQLite), or a
    PostgreSQL database of its own on the shared server, dropped after the test."""
    if chosen_backend() == "sqlite":
        yield ""
        return
    with scratch_database() as url:
        yield url


@pytest.fixture(params=STATE_BACKENDS)
def state_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def state_config(state_backend: str, make_config: ConfigFactory) -> Iterator[Path]:
    """A gear.ini whose job-state store is of each backend in turn."""
    if state_backend == "sqlite":
        yield make_config()
        return
    with scratch_database() as url:
        yield make_config(state={"url": url})


@pytest.fixture
def store(state_config: Path) -> Iterator[StateStore]:
    """The echo job type's state store of `state_config`, closed after the test."""
    opened = open_store(load_settings(state_config), "echo")
    yield opened
    opened.close()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own, which it may stop and start."""
    server = PrivatePostgres().start()
    yield server
    server.destroy()


@pytest.fixture
def start_consumer(request: pytest.FixtureRequest):
    """Start consumer processes that are stopped (SIGTERM, then SIGKILL) after the test."""
    from consumers import ConsumerProcess

    started: list[ConsumerProcess] = []

    def start(config: Path, job_type: str = "echo", instance: str = "1",
              wait: bool = True, env: dict[str, str] | None = None) -> ConsumerProcess:
        consumer = ConsumerProcess(config, job_type, instance, env).start(wait=wait)
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        consumer.stop()
