"""A job's progress, throttled into its state record: `JobContext.progress`.

A job may report as often as it likes (per chunk, per block of rows); what reaches the
store is at most one write every INTERVAL seconds, plus one at once when the phase
changes, plus the last value when the job ends, and nothing at all for a job that ends
within its first INTERVAL (a quick job costs no extra write). A call that writes
nothing is a few checks and a clock read: well under a microsecond
(docs/operations.md, Progress, has the figures).

Bad values are a bug in the job, and raise InvalidProgress (permanent: the same code
would repeat it) at the call: done and total are integers (numpy's too), done >= 0,
total None (not known yet) or >= done; total 0 with done 0 is "nothing to do".
A phase longer than MAX_PHASE characters is cut.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable

from ..errors import InvalidProgress
from ..state import Progress

#: Seconds between two writes of the same phase (about twice a second).
INTERVAL = 0.5
MAX_PHASE = 80

#: Writes a progress to the store (the runner binds the job id and its attempt).
Write = Callable[[Progress], None]


class ProgressReporter:
    """The throttle between a job and its record; one per attempt."""

    __slots__ = ("_clock", "_due", "_grace", "_interval", "_job", "_latest", "_write",
                 "_written", "_written_phase", "writes")

    def __init__(self, job: str, write: Write, *, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._job = job
        self._write = write
        self._clock = clock
        self._interval = interval
        now = clock()
        #: Nothing is written before this (a quick job writes nothing).
        self._grace = self._due = now + interval
        self._latest: tuple[int, int | None, str] | None = None
        self._written: tuple[int, int | None, str] | None = None
        self._written_phase: str | None = None
        #: How many writes were made (tests, the figures).
        self.writes = 0

    def report(self, done: int, total: int | None = None, phase: str = "") -> None:
        """JobContext.progress (a bound method: a third cheaper to call than __call__)."""
        if (done.__class__ is not int or done < 0 or phase.__class__ is not str
                or (total is not None and (total.__class__ is not int or done > total))):
            done, total, phase = self._checked(done, total, phase)
        self._latest = (done, total, phase)
        now = self._clock()
        if now < self._due and (now < self._grace or phase == self._written_phase):
            return
        self._store(now)

    def finish(self) -> None:
        """The job ended: its last progress is written if an earlier one was and it
        differs (a job that never wrote keeps its record free of progress)."""
        if self._written is not None and self._latest != self._written:
            self._store(self._clock())

    def _store(self, now: float) -> None:
        latest = self._latest
        assert latest is not None
        done, total, phase = latest
        self._write(Progress(done, total, phase[:MAX_PHASE]))
        self._written = latest
        self._written_phase = phase
        self._due = now + self._interval
        self.writes += 1

    def _checked(self, done: object, total: object, phase: object
                 ) -> tuple[int, int | None, str]:
        """The slow path: integers of other types converted, impossible values refused
        with what the job reported."""
        told = f"{self._job} reported progress done={done!r} total={total!r}"
        try:
            if isinstance(done, bool) or isinstance(total, bool):
                raise TypeError
            count = operator.index(done)  # type: ignore[arg-type]
            limit = None if total is None else operator.index(total)  # type: ignore[arg-type]
        except TypeError:
            raise InvalidProgress(f"{told}: done and total must be integers "
                                  "(total may be None: not known)") from None
        if not isinstance(phase, str):
            raise InvalidProgress(f"{told} phase={phase!r}: the phase must be text")
        if count < 0 or (limit is not None and limit < 0):
            raise InvalidProgress(f"{told}: counts cannot be negative")
        if limit is not None and count > limit:
            raise InvalidProgress(f"{told}: done cannot exceed total")
        return count, limit, phase
