"""Fixtures of the chaos suite: one private RabbitMQ node for the package, configs on it.

The node is started once (about 5 s) and shared by the chaos tests; each test still has
its own queues and data folders (make_config), and a test that reconfigures the node at
run time puts the setting back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from private_broker import PrivateBroker

from .harness import Fleet


@pytest.fixture(scope="package")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path_factory.mktemp("private-broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def broker(private_broker: PrivateBroker) -> PrivateBroker:
    """The private node, started again if a test left it down."""
    if not private_broker.running:
        private_broker.start()
    return private_broker


@pytest.fixture
def chaos_config(make_config, broker: PrivateBroker) -> Callable[..., Path]:
    """make_config with the private broker's URL (keys as in make_config)."""

    def make(**sections: dict[str, object]) -> Path:
        rabbitmq = {"url": broker.url, **sections.pop("rabbitmq", {})}
        return make_config(rabbitmq=rabbitmq, **sections)

    return make


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    """Consumer processes of a test, stopped (SIGTERM, then SIGKILL) afterwards."""
    group = Fleet()
    yield group
    group.stop_all()
