"""How a job's progress is shown while `submit --wait` or `watch` waits: a rich bar on a
terminal, else plain lines ("job X: 40/100 samples projected (running)").

Both go to stderr, so stdout holds only the reply (a script's `| jq` keeps working).
A view is shown a job-state record each time it changes, and closed once at the end.
"""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

from ..state import JobRecord

AUTO, BAR, PLAIN, OFF = "auto", "bar", "plain", "off"
MODES = (AUTO, BAR, PLAIN, OFF)


class ProgressView(Protocol):
    def show(self, record: JobRecord) -> None: ...

    def close(self) -> None: ...


def describe(record: JobRecord) -> str:
    """One line of a record: `job X: 40/100 chunk (running)`."""
    progress = f"{record.progress.describe()} " if record.progress is not None else ""
    attempt = f", attempt {record.attempts}" if record.attempts > 1 else ""
    return f"job {record.job_id}: {progress}({record.status.value}{attempt})"


class PlainView:
    """A line each time what it says changes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last = ""

    def show(self, record: JobRecord) -> None:
        line = describe(record)
        if line != self._last:
            print(line, file=self.stream, flush=True)
            self._last = line

    def close(self) -> None:
        pass


class BarView:
    """One rich progress bar: done/total (a moving bar while the total is not known),
    phase, status, and the time in this phase (each phase starts its bar again)."""

    def __init__(self, job_id: str, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                             BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[phase]}"),
                             TextColumn("[dim]{task.fields[status]}"), TimeElapsedColumn(),
                             console=Console(file=stream), transient=False)
        self._task = self._bar.add_task(f"job {job_id}", total=None, phase="",
                                        status="waiting")
        self._phase: str | None = None
        self._bar.start()

    def show(self, record: JobRecord) -> None:
        progress = record.progress
        status = record.status.value + (f" (attempt {record.attempts})"
                                         if record.attempts > 1 else "")
        if progress is None:
            self._bar.update(self._task, status=status)
            return
        if progress.phase != self._phase:  # a new phase: its own bar and time
            self._phase = progress.phase
            self._bar.reset(self._task, total=progress.total, completed=progress.done,
                            phase=progress.phase, status=status)
            return
        self._bar.update(self._task, total=progress.total, completed=progress.done,
                         phase=progress.phase, status=status)

    def close(self) -> None:
        self._bar.stop()


class NoView:
    def show(self, record: JobRecord) -> None:
        pass

    def close(self) -> None:
        pass


def view_for(job_id: str, mode: str = AUTO, stream: TextIO | None = None) -> ProgressView:
    """The view `mode` asks for; `auto`: a bar on a terminal, else plain lines."""
    stream = sys.stderr if stream is None else stream
    if mode == OFF:
        return NoView()
    if mode == BAR or (mode == AUTO and stream.isatty()):
        return BarView(job_id, stream)
    return PlainView(stream)
