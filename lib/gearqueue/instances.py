"""A consumer instance's live status file: where it is, what it says, when it is stale.

Each consumer writes one small JSON file, `<state_dir>/instances/<identifier>.json`,
about once a second (worker/instance_status.py), and `gearqueue status` reads them
(cli/status_instances.py). The file is the consumer's own word on what it does; the
broker only knows that a connection holds a consumer, which stays true while the
process is hung. So a file whose heartbeat is older than its `stale_after` is shown
as not responding, however many consumers the broker counts.

The files are per host (state_dir is local): another host's instances are seen in the
broker's consumer count only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .config import Settings

#: The folder under [paths] state_dir.
FOLDER = "instances"
FORMAT = 1

#: States a consumer reports (its `state` field).
STARTING, IDLE, RUNNING = "starting", "idle", "running"
RECONNECTING, WAITING_FOR_DB, STOPPING, STOPPED = (
    "reconnecting", "waiting for the state database", "stopping", "stopped")
#: Said by the reader, never written: the heartbeat is older than `stale_after`.
NOT_RESPONDING = "not responding"


@dataclass
class InstanceRecord:
    """What one instance says of itself (times are Unix seconds)."""

    identifier: str
    job_type: str
    instance: str
    host: str
    pid: int
    started_at: float
    state: str
    heartbeat_at: float
    #: Seconds after `heartbeat_at` by which the next one is due at the latest; past
    #: it the instance is not responding. The writer knows its longest silent stretch
    #: (an inline job blocks its loop for up to its time limit).
    stale_after: float
    job_id: str | None = None
    job_since: float | None = None
    jobs_done: int = 0
    jobs_failed: int = 0
    executor_pid: int | None = None
    executor_rss_mb: float | None = None
    detail: str = ""
    format: int = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> InstanceRecord:
        """ValueError if the text is not a status file of this format."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not an instance status file of format 1")
        known = {field.name for field in fields(cls)}
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except TypeError as error:
            raise ValueError(f"missing fields: {error}") from None

    def silent_for(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.heartbeat_at

    def responding(self, now: float | None = None, stale_after: float = 0.0) -> bool:
        """False when the heartbeat is overdue (`stale_after`: 0 for the writer's own)."""
        return self.silent_for(now) <= (stale_after or self.stale_after)

    def alive(self) -> bool:
        """Its process still exists (on this host): a stale file of a killed one is not."""
        if self.host != os.uname().nodename:
            return True  # cannot tell from here
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def folder(settings: Settings) -> Path:
    return settings.paths.state_dir / FOLDER


def path_of(settings: Settings, identifier: str) -> Path:
    return folder(settings) / f"{identifier}.json"


def read_all(settings: Settings, job_type: str | None = None) -> list[InstanceRecord]:
    """The status files of this host (of one job type), unreadable ones left out."""
    records = []
    try:
        paths = sorted(folder(settings).glob("*.json"))
    except OSError:
        return []
    for path in paths:
        try:
            record = InstanceRecord.from_json(path.read_bytes())
        except (OSError, ValueError):
            continue
        if job_type is None or record.job_type == job_type:
            records.append(record)
    return records


def as_dict(record: InstanceRecord) -> dict[str, Any]:
    return asdict(record)
