"""What the status and metrics observers cost a job: the hooks of one job (batch_started,
settled, and the loop's idle tick after it), timed in-process, without and with them.

    .venv/bin/python -m bench.observer_cost [GEAR_INI] [JOBS]

The status file is really written (throttled to one write a second, as in a consumer);
the metrics go to a textfile (written every 5 s). Prints microseconds per job.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from gearqueue.config import load_settings
from gearqueue.message import Envelope
from gearqueue.worker.instance_status import InstanceStatus
from gearqueue.worker.metrics import ConsumerMetrics
from gearqueue.worker.metrics_output import Textfile
from gearqueue.worker.observers import ConsumerObserver, Observers
from gearqueue.worker.outcome import Outcome
from gearqueue.worker.settlement import Settled


class _Executor:
    pid = 1

    @staticmethod
    def rss_mb() -> float:
        return 100.0


def per_job(observers: Observers, jobs: list[list[Settled]]) -> float:
    started = time.perf_counter()
    for batch in jobs:
        observers.batch_started([batch[0].envelope.job_id])
        observers.settled(batch)
        observers.idle()
    return (time.perf_counter() - started) / len(jobs) * 1e6


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="observer-cost-"))
    ini = folder / "gear.ini"
    ini.write_text(f"[paths]\nstate_dir = {folder}/state\n")
    settings = load_settings(sys.argv[1] if len(sys.argv) > 1 else ini, environ={})
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    jobs = [[Settled(None, Envelope(f"job-{n}", None, None),  # type: ignore[arg-type]
                     Outcome.success({"success": 1}, 1), 0.002)] for n in range(count)]
    status = InstanceStatus(settings, "echo", "1", "bench-consumer-1", inline=False)
    metrics = ConsumerMetrics("echo", "1", Textfile(folder / "bench.prom"))
    for observer in (status, metrics):
        observer.started(_Executor())
    cases: dict[str, list[ConsumerObserver]] = {
        "none": [], "status": [status], "metrics": [metrics], "both": [status, metrics]}
    for name, chosen in cases.items():
        best = min(per_job(Observers(chosen), jobs) for _ in range(3))
        print(f"{name:8} {best:6.2f} us/job")


if __name__ == "__main__":
    main()
