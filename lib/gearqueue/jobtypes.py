"""The job types gearqueue knows, by name, without importing their (heavy) modules.

Config validation needs the names (one `[<name>_service]` section each) and the consumer
needs the module; ProjectR's module pulls in rpy2, which the web API and the echo
consumer must not pay for. So the registry is names and import paths only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .jobs.base import Job

#: job type name -> "module:attribute" of its `Job` class.
JOB_CLASSES: dict[str, str] = {
    "echo": "gearqueue.jobs.echo:EchoJob",
    "projectr": "gearqueue.jobs.projectr:ProjectRJob",
    "dataset_import": "gearqueue.jobs.dataset_import:DatasetImportJob",
    "export": "gearqueue.jobs.export:ExportJob",
}

JOB_TYPES: tuple[str, ...] = tuple(JOB_CLASSES)


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
