"""`gearqueue status` as text: a line of queue figures per job type, then its instances.

Plain text with fixed columns, the same on a terminal, in a pipe and under `--watch`
(which redraws it in place with rich's Live), so what an operator pastes into a ticket
reads as it did on the screen.
"""

from __future__ import annotations

from typing import Any

from ..state import Progress

COLUMNS = (("INSTANCE", 8), ("STATE", 15), ("JOB", 32), ("FOR", 7), ("PROGRESS", 16),
           ("UPTIME", 8),
           ("RSS", 8), ("DONE", 6), ("FAILED", 6), ("UNIT", 18))


def duration(seconds: float | None) -> str:
    """12 s, 4m05s, 3h02m, 2d04h."""
    if seconds is None:
        return "-"
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def progress_cell(progress: dict[str, Any] | None) -> str:
    """`40/100 step` (what Progress.describe says), `-` when the job reported none."""
    if not progress:
        return "-"
    return Progress.from_json(progress).describe()


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def queue_line(row: dict[str, Any]) -> str:
    head = f"{row['job_type']}  queue {row['queue']}"
    if row.get("error"):
        return f"{head}: {row['error']}"
    if not row.get("queue_exists", True):
        return (f"{head}: the queue does not exist on the broker (no consumer or client "
                f"has declared it yet)" + ("" if row["queue_enabled"] else "; queueing off"))
    consumers = _cell(row.get("consumers"))
    health = []
    if row.get("instances") is not None:
        health.append(f"{row['responding']} responding here")
        if row["not_responding"]:
            health.append(f"{row['not_responding']} NOT RESPONDING")
        if row["failed_units"]:
            health.append(f"{row['failed_units']} unit(s) FAILED")
    return (f"{head}  ready {_cell(row.get('ready'))}  unacked {_cell(row.get('unacked'))}  "
            f"retrying {_cell(row.get('retrying'))}  dead {_cell(row.get('dead'))}  "
            f"consumers {consumers}" + (f" ({', '.join(health)})" if health else "")
            + ("" if row["queue_enabled"] else "  (queueing off)"))


def instance_lines(views: list[dict[str, Any]]) -> list[str]:
    if not views:
        return ["  (no instance on this host)"]
    header = "  " + " ".join(f"{name:{width}}" for name, width in COLUMNS) + " STATUS"
    lines = [header.rstrip()]
    for view in views:
        rss = view.get("executor_rss_mb")
        cells = (view["instance"], view["state"], _cell(view.get("job_id")),
                 duration(view.get("job_seconds")) if view.get("job_id") else "-",
                 progress_cell(view.get("progress")),
                 duration(view.get("uptime_seconds")),
                 f"{rss:.0f} MB" if rss else "-", _cell(view.get("jobs_done")),
                 _cell(view.get("jobs_failed")), _cell(view.get("unit_state")))
        line = "  " + " ".join(f"{_fit(str(cell), width):{width}}"
                               for cell, (_, width) in zip(cells, COLUMNS, strict=True))
        said = view.get("status_line") or ""
        detail = view.get("detail") or ""
        notes = " | ".join(text for text in (said, detail) if text)
        lines.append(f"{line} {notes}".rstrip())
    return lines


def render(rows: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for row in rows:
        lines.append(queue_line(row))
        if row.get("instances") is not None:
            lines += instance_lines(row["instances"])
        if row.get("warning"):
            lines.append(f"  ! {row['warning']}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
