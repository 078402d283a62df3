"""Deliveries on their way through the executor, and what became of a batch of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import StateStoreUnavailable
from ..message import Envelope
from .channel import Channel, Delivery
from .settlement import Settled


@dataclass(frozen=True)
class InFlight:
    """One delivery on its way through the executor child."""

    delivery: Delivery
    envelope: Envelope
    payload: dict[str, Any]
    fresh: bool


@dataclass(frozen=True)
class InFlightBatch:
    """Deliveries handed to the child together, in delivery order."""

    jobs: list[InFlight]
    channel: Channel
    #: time.time() just before the hand-over: a state record updated since is from it.
    handed_at: float
    started: float


@dataclass(frozen=True)
class BatchResult:
    """The jobs of a batch that finished (in order), and those to give back: never
    started, or, after `store_fault`, the whole batch (nothing could be recorded)."""

    settled: list[Settled]
    unstarted: list[Delivery]
    store_fault: StateStoreUnavailable | None = None

    @classmethod
    def given_back(cls, deliveries: list[Delivery], fault: StateStoreUnavailable
                   ) -> BatchResult:
        return cls([], deliveries, fault)
