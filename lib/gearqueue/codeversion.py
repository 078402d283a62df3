"""Which code a process runs: a digest of the gearqueue package's source files.

`gearqueue doctor` compares three copies: the checkout, the package installed for the
units (install.sh's venv), and what each running consumer loaded when it started. A
consumer records its digest at start in `<state_dir>/.running/<identifier>.json`
with its pid (a few milliseconds, once), so an upgrade that was installed but not
followed by a restart shows as instances running older code.

The digest covers every `.py` file of the package and the R source ProjectR loads, by
path relative to the package and content: byte-compiled caches, the install's
metadata and file times do not count, so a checkout and a copy installed from it have
the same digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .log import fields

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_SUFFIXES = (".py", ".R")
RUNNING_DIR = ".running"


def code_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """SHA-256 (first 16 hex digits) of the package's source files under `package_dir`."""
    digest = hashlib.sha256()
    files = sorted(path for path in package_dir.rglob("*")
                   if path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts
                   and path.is_file())
    for path in files:
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class RunningCode:
    pid: int
    digest: str
    package: str
    started: float


def running_file(state_dir: Path, identifier: str) -> Path:
    return state_dir / RUNNING_DIR / f"{identifier}.json"


def record_running_code(state_dir: Path, identifier: str) -> None:
    """Write this process's code digest for doctor; a failure is logged, never raised
    (a consumer must not stop over a diagnostic)."""
    path = running_file(state_dir, identifier)
    record = {"pid": os.getpid(), "digest": code_digest(), "package": str(PACKAGE_DIR),
              "started": time.time()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(path)
    except OSError as error:
        log.warning("cannot record the running code version in %s: %s", path, error,
                    extra=fields(path=str(path)))


def read_running_code(state_dir: Path, identifier: str) -> RunningCode | None:
    """What `identifier` recorded at its last start, or None (never started with this
    code, or the file is unreadable)."""
    try:
        record = json.loads(running_file(state_dir, identifier).read_text())
        return RunningCode(int(record["pid"]), str(record["digest"]),
                           str(record.get("package", "")), float(record.get("started", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
