"""The diagnostic echo job: proves the path end to end and lets tests inject failures.

Body: {"data": <any JSON>, "sleep": seconds (optional), "fail": null | "permanent" |
"transient" | "crash"}. `crash` kills the process it runs in with SIGKILL (the executor
child, or the consumer itself when inline), the way a segfault in R would, so the
runtime's crash path can be exercised for real.

Two optional fields exist for the failure tests (docs/echo.md):
- "mark": true gives the job a countable side effect, made the way a real job must make
  its output: once per job id, after the work, under the job's lock. It creates
  <exports_dir>/echo-marks/<job_id> exclusively (O_EXCL) holding the attempt number. A
  run that finds the mark of an earlier attempt (that attempt made its effect, then died
  before its success was stored) does not make it again and leaves
  <job_id>.again.<attempt> (holding the earlier attempt) instead, so tests can count
  such re-runs.
- "memory_mb": N allocates N MiB and keeps it until the executor child exits, the way
  a leaking library does, so `max_memory_mb` recycling and killing can be exercised.

And one for the progress path (docs/echo.md): "progress": N splits the sleep into N
steps and reports each (done of N, phase "step"), so a watcher sees a job advance.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import InvalidMessage, PermanentJobError, TransientJobError
from ..fields import get_choice, get_field, reject_unknown
from ..files import write_atomically
from .base import INLINE, Job, JobContext

FAIL_MODES = ("permanent", "transient", "crash")
#: A longer sleep is almost certainly a mistake in a diagnostic message.
MAX_SLEEP_SECONDS = 24 * 3600
#: Enough to pass any sensible max_memory_mb, small enough not to endanger the host.
MAX_MEMORY_MB = 4096
MARKS_FOLDER = "echo-marks"
#: Steps of "progress": far more than a watcher can tell apart.
MAX_PROGRESS_STEPS = 100_000


@dataclass(frozen=True)
class EchoRequest:
    data: Any
    sleep: float
    fail: str | None
    mark: bool = False
    memory_mb: int = 0
    progress: int = 0


class EchoJob(Job[EchoRequest]):
    name = "echo"
    #: A no-op job: a process hop would cost more than the job (docs/performance.md).
    isolation = INLINE

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        #: What "memory_mb" allocated; lives as long as this executor child.
        self.ballast: list[bytearray] = []

    def validate(self, payload: Mapping[str, Any]) -> EchoRequest:
        reject_unknown(payload, ("data", "sleep", "fail", "mark", "memory_mb", "progress"))
        if "data" not in payload:
            raise InvalidMessage("missing field 'data'")
        sleep = float(get_field(payload, "sleep", (int, float), required=False, default=0))
        if not 0 <= sleep <= MAX_SLEEP_SECONDS:
            raise InvalidMessage(f"field 'sleep' must be between 0 and {MAX_SLEEP_SECONDS}")
        fail = get_choice(payload, "fail", FAIL_MODES, required=False)
        mark = get_field(payload, "mark", bool, required=False, default=False)
        memory_mb = get_field(payload, "memory_mb", int, required=False, default=0)
        if not 0 <= memory_mb <= MAX_MEMORY_MB:
            raise InvalidMessage(f"field 'memory_mb' must be between 0 and {MAX_MEMORY_MB}")
        progress = get_field(payload, "progress", int, required=False, default=0)
        if not 0 <= progress <= MAX_PROGRESS_STEPS:
            raise InvalidMessage(f"field 'progress' must be between 0 and {MAX_PROGRESS_STEPS}")
        return EchoRequest(data=payload["data"], sleep=sleep, fail=fail, mark=mark,
                           memory_mb=memory_mb, progress=progress)

    def run(self, request: EchoRequest, context: JobContext) -> dict[str, Any]:
        if request.memory_mb:
            if not context.isolated:
                raise PermanentJobError("echo 'memory_mb' needs an executor child; it is not "
                                        "done in-process (queue_enabled = 0)")
            # Every byte written, so every page counts in RSS.
            self.ballast.append(bytearray(b"\x01") * (request.memory_mb * 2**20))
        if request.progress:
            for step in range(request.progress):
                context.progress(step, request.progress, "step")
                time.sleep(request.sleep / request.progress)
            context.progress(request.progress, request.progress, "step")
        elif request.sleep:
            time.sleep(request.sleep)
        if request.fail == "permanent":
            raise PermanentJobError("echo asked to fail permanently")
        if request.fail == "transient":
            raise TransientJobError("echo asked to fail transiently")
        if request.fail == "crash":
            if not context.consumer:
                raise PermanentJobError("echo 'crash' needs a consumer; it is not done "
                                        "in-process (queue_enabled = 0)")
            os.kill(os.getpid(), signal.SIGKILL)
        if request.mark:
            self._mark(context)
        return {"success": 1, "echo": request.data, "attempt": context.attempt}

    def _mark(self, context: JobContext) -> None:
        context.confirm_lock()  # a job whose lock is gone makes no effect
        folder = self.settings.paths.exports_dir / MARKS_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        mark = folder / context.job_id
        try:
            handle = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            write_atomically(folder / f"{context.job_id}.again.{context.attempt}",
                             mark.read_bytes())
            return
        with os.fdopen(handle, "w") as stream:
            stream.write(str(context.attempt))
