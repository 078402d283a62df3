"""gEAR's job status file: how gEAR's web page learns that a projection is done.

gEAR's web API (IGS/gEAR www/api/resources/projectr.py) expects no reply from the
queue. Before publishing it writes `<projections>/job_status/job_<projection_id>.json`
as pending; the browser then polls `ProjectRStatus`, which reads that file as JSON and
deletes it once it says complete. gEAR's own consumer rewrites it as the job goes, so
under contract = gear this worker does too, in gEAR's format: one JSON object,
`{"status": ..., "result": {...}, "error": ...}` (status pending / running / complete /
failed; error null unless failed), written with json.dump's default separators.

Unlike gEAR (which rewrites the file in place), the file is replaced atomically, so the
poller never reads half of it. It is created with the umask's permissions, as gEAR's
open() does, because the web server must read it and delete it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..errors import TransientJobError

STATUS_FOLDER = "job_status"
PENDING, RUNNING, COMPLETE, FAILED = "pending", "running", "complete", "failed"


def status_file(projections_dir: Path, projection_id: str) -> Path:
    return projections_dir / STATUS_FOLDER / f"job_{projection_id}.json"


def status_document(status: str, result: dict[str, Any], error: str | None = None
                    ) -> dict[str, Any]:
    """gEAR's status object, keys in gEAR's order."""
    return {"status": status, "result": result, "error": error}


def write_status(projections_dir: Path, projection_id: str, status: str,
                 result: dict[str, Any], error: str | None = None) -> Path:
    """Replace the status file of `projection_id` (its folder is made if missing)."""
    path = status_file(projections_dir, projection_id)
    text = json.dumps(status_document(status, result, error)).encode("utf-8")
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            os.write(handle, text)
        finally:
            os.close(handle)
        os.replace(temp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise TransientJobError(f"cannot write gEAR's status file {path}: {error}") from None
    return path
