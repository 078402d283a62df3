"""`gearqueue dead list|show|replay|purge`: the dead-letter queues (issue 5)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Filled in by the dead-letter tooling; registers nothing yet."""
