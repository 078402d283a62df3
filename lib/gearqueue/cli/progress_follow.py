"""Following a job's state record for `submit --wait` and `watch`: poll it, show each
change in a view, and tell when the job has ended.

The store is the one every consumer writes (progress is throttled there to ~2 writes a
second), so polling it a few times a second shows everything there is to see.
"""

from __future__ import annotations

import threading
import time

from ..errors import ReplyTimeout
from ..state import JobRecord, JobStatus, StateStore
from .progress_view import ProgressView

#: Seconds between two reads of the record.
POLL = 0.25
ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED)


class Follower:
    """Shows the job's record in `view` from a thread of its own, while the caller waits
    for the reply some other way (`submit --wait` waits on the broker)."""

    def __init__(self, store: StateStore, job_id: str, view: ProgressView,
                 poll: float = POLL) -> None:
        self.store, self.job_id, self.view, self.poll = store, job_id, view, poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Follower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        record = self._read()  # the final state, progress included
        if record is not None:
            self.view.show(record)
        self.view.close()

    def _read(self) -> JobRecord | None:
        try:
            return self.store.get(self.job_id)
        except Exception:  # noqa: BLE001 - a view never fails the wait for the reply
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            record = self._read()
            if record is not None:
                self.view.show(record)


def follow_to_end(store: StateStore, job_id: str, view: ProgressView, *,
                  timeout: float | None = None, poll: float = POLL) -> JobRecord:
    """Show the record until the job succeeded or failed for good (a retrying job is
    still waited for); its last record. ReplyTimeout after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            record = store.require(job_id)
            view.show(record)
            if record.status in ENDED:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise ReplyTimeout(f"{store.job_type} job {job_id} did not end within "
                                   f"{timeout:g} s (it is {record.status.value})")
            time.sleep(poll)
    finally:
        view.close()
