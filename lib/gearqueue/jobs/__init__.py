"""One module per job type; each defines a `Job` subclass (see `base.py`).

`load_job` imports one type's module when a consumer starts: the registry of names
(`gearqueue.jobtypes`) stays below config and imports none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..jobtypes import JOB_CLASSES, JOB_TYPES

if TYPE_CHECKING:
    from .base import Job


def load_job(job_type: str) -> type[Job]:
    """Import and return the `Job` class of `job_type`."""
    try:
        target = JOB_CLASSES[job_type]
    except KeyError:
        raise ConfigError(
            f"unknown job type '{job_type}' (known: {', '.join(JOB_TYPES)})"
        ) from None
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
