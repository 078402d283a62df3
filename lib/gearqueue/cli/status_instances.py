"""Each consumer instance of a job type, from its status file and its systemd unit.

The broker counts connections that hold a consumer; it goes on counting a hung
process, and it knows nothing of a unit that failed. So an instance's health is
decided here, from what the instance itself last wrote (gearqueue.instances) and what
systemd says, in this order:
- its unit failed → "failed" (with systemd's reason: exit-code, watchdog, ...);
- its unit waits to be restarted by systemd → "restarting";
- its unit is inactive, or its file says stopped → "stopped";
- its file's process is gone (this host) → "gone" (killed without a clean exit);
- its file's heartbeat is overdue → "not responding" (hung?), whatever the broker says;
- otherwise what the file says: starting, idle, running, reconnecting, waiting for
  the state database, stopping; a running unit with no file yet: its systemd state.

The progress of the job an instance runs is not in its file (the job reports it to its
state record, throttled, from wherever it runs): `with_progress` reads it there, one
record per instance that runs a job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .. import instances
from ..errors import StateStoreUnavailable
from ..instances import InstanceRecord
from ..state import JobRecord
from .status_units import UnitState

FAILED, STOPPED, GONE, RESTARTING = "failed", "stopped", "gone", "restarting"
#: The states of an instance that is working (or about to): counted as healthy.
HEALTHY = (instances.STARTING, instances.IDLE, instances.RUNNING, instances.STOPPING)


@dataclass
class InstanceView:
    instance: str
    state: str
    healthy: bool
    unit: str | None = None
    unit_state: str | None = None
    status_line: str | None = None
    restarts: int | None = None
    host: str | None = None
    pid: int | None = None
    job_id: str | None = None
    job_seconds: float | None = None
    #: The running job's last reported progress ({done, total, phase}), from its record.
    progress: dict[str, Any] | None = None
    uptime_seconds: float | None = None
    executor_pid: int | None = None
    executor_rss_mb: float | None = None
    jobs_done: int | None = None
    jobs_failed: int | None = None
    heartbeat_age: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def instance_views(records: list[InstanceRecord], units: list[UnitState] | None, *,
                   stale_after: float = 0.0, now: float | None = None) -> list[InstanceView]:
    """One view per instance known to either side, ordered by instance number."""
    now = time.time() if now is None else now
    by_instance = {record.instance: record for record in records}
    unit_of = {unit.instance: unit for unit in units or ()}
    views = [_view(name, by_instance.get(name), unit_of.get(name), stale_after, now)
             for name in sorted(by_instance.keys() | unit_of.keys(), key=_order)]
    # A file of a stopped instance that systemd forgot (reset, unloaded) says little:
    # kept only while it is recent, or with no systemd to ask.
    return [view for view in views if not (
        units is not None and view.unit is None and view.state == STOPPED
        and (view.heartbeat_age or 0) > 3600)]


def with_progress(views: list[InstanceView],
                  read: Callable[[str], JobRecord | None]) -> None:
    """Each running job's progress from its state record (`read`: the store's `get`).

    A store that does not answer costs the progress, not the status: the views say so
    in their detail, and the rest of the table is still true."""
    for view in views:
        if view.job_id is None:
            continue
        try:
            record = read(view.job_id)
        except StateStoreUnavailable as error:
            view.detail = "; ".join(text for text in (view.detail,
                                    f"progress unknown: {error}") if text)
            continue
        if record is not None and record.progress is not None:
            view.progress = record.progress.to_json()


def _view(name: str, record: InstanceRecord | None, unit: UnitState | None,
          stale_after: float, now: float) -> InstanceView:
    view = InstanceView(instance=name, state="unknown", healthy=False)
    if unit is not None:
        view.unit, view.unit_state = unit.unit, f"{unit.active}/{unit.sub}"
        view.status_line, view.restarts = unit.status_text or None, unit.restarts
    if record is not None:
        view.host, view.pid = record.host, record.pid
        view.uptime_seconds = now - record.started_at
        view.executor_pid, view.executor_rss_mb = record.executor_pid, record.executor_rss_mb
        view.jobs_done, view.jobs_failed = record.jobs_done, record.jobs_failed
        view.heartbeat_age = round(record.silent_for(now), 1)
        if record.job_id is not None and record.job_since is not None:
            view.job_id, view.job_seconds = record.job_id, now - record.job_since
    view.state, view.detail = _state(record, unit, stale_after, now)
    view.healthy = view.state in HEALTHY
    if not view.healthy and view.state != instances.NOT_RESPONDING:
        view.job_id = view.job_seconds = view.uptime_seconds = None
        view.executor_pid = view.executor_rss_mb = None
    return view


def _state(record: InstanceRecord | None, unit: UnitState | None, stale_after: float,
           now: float) -> tuple[str, str]:
    if unit is not None and unit.failed:
        return FAILED, f"systemd: {unit.result or 'failed'}"
    if unit is not None and unit.active in ("inactive", "deactivating") and (
            record is None or record.state == instances.STOPPED or not record.alive()):
        return STOPPED, ""
    if unit is not None and unit.active == "activating" and not unit.main_pid:
        return RESTARTING, f"systemd: {unit.sub} (after {unit.result or 'a stop'})"
    if record is None:
        if unit is not None and unit.active == "active":
            return instances.STARTING, "no status file yet"
        return unit.active if unit is not None else "unknown", ""
    if unit is not None and unit.main_pid and unit.main_pid != record.pid:
        # The unit runs a new process that has not written yet (restarted).
        return instances.STARTING, f"restarted as pid {unit.main_pid}, no status yet"
    if record.state == instances.STOPPED:
        return STOPPED, ""
    if not record.alive():
        return GONE, f"process {record.pid} is gone (killed?); last said {record.state}"
    if not record.responding(now, stale_after):
        return (instances.NOT_RESPONDING,
                f"no heartbeat for {record.silent_for(now):.0f} s (hung?); last said "
                f"{record.state}")
    return record.state, record.detail


def _order(instance: str) -> tuple[int, str]:
    return (int(instance), "") if instance.isdigit() else (1 << 30, instance)
