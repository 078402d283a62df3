"""The per-job lock of the state store: one holder per job id, across processes and threads,
on every backend."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from gearqueue.state import StateStore

HOLDER = """
import sys, time
from gearqueue.config import load_settings
from gearqueue.state import open_store
with open_store(load_settings(sys.argv[1]), "echo").locked(sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def time_to_lock(store: StateStore, job_id: str) -> float:
    started = time.monotonic()
    with store.locked(job_id):
        return time.monotonic() - started


def hold(config: Path, job_id: str, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(config), job_id,
                               str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_job_locked_by_another_process_waits_and_other_jobs_do_not(
        store: StateStore, state_config: Path) -> None:
    holder = hold(state_config, "job-a", 1.0)
    try:
        assert time_to_lock(store, "job-b") < 0.2
        assert time_to_lock(store, "job-a") > 0.5  # waited for the holder to finish
    finally:
        holder.wait(10)


def test_a_lock_dies_with_its_holder(store: StateStore, state_config: Path) -> None:
    holder = hold(state_config, "job-a", 60)
    holder.kill()
    holder.wait(10)
    assert time_to_lock(store, "job-a") < 0.2


def test_two_threads_of_one_process_exclude_each_other(store: StateStore) -> None:
    inside = threading.Event()
    waited: list[float] = []

    def second() -> None:
        inside.wait(5)
        waited.append(time_to_lock(store, "job-a"))

    thread = threading.Thread(target=second)
    thread.start()
    with store.locked("job-a"):
        inside.set()
        time.sleep(0.5)
    thread.join(10)
    assert waited and waited[0] > 0.3
