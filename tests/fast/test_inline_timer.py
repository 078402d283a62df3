"""The inline time limit's timer: nothing fires outside a job, even at the edge."""

from __future__ import annotations

import signal
import time

import pytest

from gearqueue.errors import SoftTimeLimitExceeded
from gearqueue.worker.inline import JobTimer


@pytest.fixture
def alarm_handler_restored():
    previous = signal.getsignal(signal.SIGALRM)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_an_alarm_as_the_job_ends_leaves_no_limit_armed(alarm_handler_restored,
                                                        monkeypatch) -> None:
    timer = JobTimer(0.05, 0.1)
    real_setitimer = signal.setitimer

    def alarm_first(which: int, seconds: float, *args: float) -> tuple[float, float]:
        if seconds == 0:  # the job's end: its alarm lands just before it is disarmed
            signal.raise_signal(signal.SIGALRM)
        return real_setitimer(which, seconds, *args)

    monkeypatch.setattr(signal, "setitimer", alarm_first)
    with timer.during_job():
        pass  # a job that ended in time
    monkeypatch.setattr(signal, "setitimer", real_setitimer)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    time.sleep(0.15)  # no hard limit fires later, outside any job


def test_a_job_past_its_soft_limit_is_stopped_and_nothing_stays_armed(
        alarm_handler_restored) -> None:
    timer = JobTimer(0.05, 0.1)
    with pytest.raises(SoftTimeLimitExceeded), timer.during_job():
        time.sleep(1)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
