"""The one table `make bench` prints (and docs/performance.md shows): figures, ratios, targets."""

from __future__ import annotations

from typing import Any

#: (label, numerator system, denominator system, target ratio at prefetch 1 and 10).
THROUGHPUT_RATIOS = (
    ("gearqueue inline / raw pika", "gear_inline", "raw", (0.8, 0.8)),
    ("gearqueue process / raw pika", "gear_process", "raw", (0.5, 0.8)),
    ("gearqueue inline / Celery prefork x2", "gear_inline", "celery_prefork2", (2.0, 2.0)),
    ("gearqueue inline / Dramatiq 1x1", "gear_inline", "dramatiq_1x1", (1.2, 1.2)),
    # Like for like: the peers storing every result too (issue 14), in both modes.
    *((f"gearqueue {mode} / Celery prefork x2 + results", f"gear_{mode}",
       "celery_prefork2_results", (2.0, 2.0)) for mode in ("inline", "process")),
    *((f"gearqueue {mode} / Dramatiq 1x1 + Results", f"gear_{mode}",
       "dramatiq_1x1_results", (2.0, 2.0)) for mode in ("inline", "process")),
)
#: Client.call() against each consumer: latency.py's caller keys.
CALLERS = (("raw", "raw pika direct reply-to echo"),
           ("call_inline", "Client.call(), isolation = inline"),
           ("call_process", "Client.call(), isolation = process"))
#: The columns of the guarantees table: (key in each [1] entry's "guarantees", header).
GUARANTEES = (
    ("ack_after_work", "ack after work"),
    ("result_stored", "result stored durably"),
    ("exactly_once_effect", "exactly-once effect / dedupe"),
    ("crash_loop_guard", "crash-loop guard"),
)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "MISSED"


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    throughput = results.get("throughput", {})
    for prefetch in ("1", "10"):
        if prefetch not in throughput:
            continue
        figures = throughput[prefetch]
        for entry in figures.values():
            note = entry.get("note", "")
            if entry.get("cpu_us_per_job") is not None:
                note += f"; {entry['cpu_us_per_job']:.0f} us consumer CPU a job"
            rows.append((f"[1] {entry['label']}, prefetch {prefetch}",
                         f"{_fmt(entry.get('jobs_per_s'))} jobs/s", note))
        for label, top, bottom, targets in THROUGHPUT_RATIOS:
            target = targets[0 if prefetch == "1" else 1]
            a, b = figures.get(top, {}).get("jobs_per_s"), figures.get(bottom, {}).get(
                "jobs_per_s")
            if a is None and b is None:
                continue
            ratio = a / b if a and b else None
            note = f"target >= {target}x: {_verdict(ratio, target)}"
            cpu_a, cpu_b = (figures.get(key, {}).get("cpu_us_per_job") for key in (top, bottom))
            if cpu_a and cpu_b:  # the same ratio from the CPU a job costs: steadier
                note += f"; by consumer CPU a job {cpu_b / cpu_a:.2f}x"
            rows.append((f"[1] {label}, prefetch {prefetch}", f"{_fmt(ratio, 2)}x", note))
    publish = results.get("publish")
    if publish:
        one, many = publish["one_by_one"]["jobs_per_s"], publish["submit_many"]["jobs_per_s"]
        rows.append(("[2] submit() one by one, confirms", f"{_fmt(one)} jobs/s", ""))
        rows.append(("[2] submit_many(), streaming confirms", f"{_fmt(many)} jobs/s", ""))
        rows.append(("[2] submit_many / submit", f"{_fmt(many / one, 1)}x",
                     f"target >= 10x: {_verdict(many / one, 10)}"))
    latency = results.get("latency")
    if latency:
        for key, label in CALLERS:
            if key not in latency:
                continue
            entry = latency[key]
            rows.append((f"[3] {label} p50 / p95 / p99",
                         f"{entry['p50_ms']:.2f} / {entry['p95_ms']:.2f} / "
                         f"{entry['p99_ms']:.2f} ms", f"{entry['samples']} calls"))
        for key, label in CALLERS[1:]:
            if key not in latency:
                continue
            gap = latency[key]["p50_ms"] - latency["raw"]["p50_ms"]
            rows.append((f"[3] {label} p50 - raw p50", f"{gap:+.2f} ms",
                         f"target <= 0.5 ms: {_verdict(gap, 0.5, higher_is_better=False)}"))
    for entry in results.get("startup", []):
        if "error" in entry:
            rows.append((f"[4] {entry['job_type']} consumer start to READY", "n/a",
                         entry["error"][:80]))
            continue
        rows.append((f"[4] {entry['job_type']} consumer start to READY",
                     f"{entry['ready_s']:.2f} s",
                     f"target <= 2 s: {_verdict(entry['ready_s'], 2.0, False)}"))
        rows.append((f"[4] {entry['job_type']} idle RSS, consumer + executor child",
                     f"{entry['idle_rss_mb']:.0f} MiB",
                     f"+ {entry['resource_tracker_rss_mb']:.0f} MiB resource tracker"))
    rows += _projectr_rows(results.get("projectr"))
    return rows


def _projectr_rows(projectr: Any) -> list[tuple[str, str, str]]:
    """ProjectR figures from bench_projectr.py's JSON: one row per method and size,
    seconds against NumPy's QR least squares and peak RSS against the dense input."""
    if projectr is None:
        return []
    if "error" in projectr:
        return [("[5] ProjectR (bench_projectr.py)", "n/a", str(projectr["error"])[:100])]
    records = projectr.get("results", [])
    qr = {record["samples"]: record["seconds"] for record in records
          if record.get("method") == "numpy_qr" and "seconds" in record}
    genes, patterns = projectr.get("genes"), projectr.get("patterns")
    rows = []
    for record in records:
        label = (f"[5] ProjectR nmf {genes} x {record.get('samples')} x {patterns}, "
                 f"{record.get('method')}")
        if "seconds" not in record:
            rows.append((label, "failed", str(record.get("error", ""))[-80:]))
            continue
        base = qr.get(record["samples"])
        ratio = f"{record['seconds'] / base:.2f}x NumPy QR" if base else ""
        rss = record["peak_rss_bytes"] / record["input_bytes"]
        rows.append((label, f"{record['seconds']:.2f} s",
                     f"{ratio}; peak RSS {record['peak_rss_bytes'] / 2**30:.2f} GiB = "
                     f"{rss:.2f}x input"))
    return rows


def _guarantee_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per [1] system (the same at both prefetches): what it promises a job."""
    rows: dict[str, tuple[str, ...]] = {}
    for figures in results.get("throughput", {}).values():
        for key, entry in figures.items():
            if key not in rows and "guarantees" in entry:
                rows[key] = (entry["label"], *(entry["guarantees"].get(name, "")
                                               for name, _ in GUARANTEES))
    return list(rows.values())


def _markdown(header: tuple[str, ...], rows: list[tuple[str, ...]],
              right: tuple[int, ...] = ()) -> str:
    """A Markdown table (readable as plain text too); columns in `right` right-aligned."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in
              range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(f"{cell:>{width}}" if column in right else
                                 f"{cell:<{width}}" for column, (cell, width) in
                                 enumerate(zip(row, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (width + 1) + ":" if column in right else
                          "-" * (width + 2) for column, width in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def table(results: dict[str, Any]) -> str:
    """The figures, then (if [1] ran) what each [1] row guarantees."""
    text = _markdown(("figure", "value", "notes"), _rows(results), right=(1,))
    guarantees = _guarantee_rows(results)
    if guarantees:
        text += "\n\nWhat each [1] row guarantees a job:\n\n" + _markdown(
            ("[1] system", *(header for _, header in GUARANTEES)), guarantees)
    return text
