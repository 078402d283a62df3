"""The job types gearqueue knows, by name, without importing their (heavy) modules.

Config validation needs the names (one `[<name>_service]` section each) and the consumer
needs the module; ProjectR's module pulls in rpy2, which the web API and the echo
consumer must not pay for. So the registry is names and import paths only, and refers
to no job code: `gearqueue.jobs.load_job` is what imports a type's module.
"""

from __future__ import annotations

#: job type name -> "module:attribute" of its `Job` class.
JOB_CLASSES: dict[str, str] = {
    "echo": "gearqueue.jobs.echo:EchoJob",
    "projectr": "gearqueue.jobs.projectr:ProjectRJob",
    "dataset_import": "gearqueue.jobs.dataset_import:DatasetImportJob",
    "export": "gearqueue.jobs.export:ExportJob",
}

JOB_TYPES: tuple[str, ...] = tuple(JOB_CLASSES)
