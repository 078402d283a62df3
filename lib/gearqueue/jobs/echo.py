"""The diagnostic echo job: proves the path end to end and lets tests inject failures.

Body: {"data": <any JSON>, "sleep": seconds (optional), "fail": null | "permanent" |
"transient" | "crash"}. `crash` kills the executor child with SIGKILL, the way a
segfault in R would, so the runtime's crash path can be exercised for real.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidMessage, PermanentJobError, TransientJobError
from .base import Job, JobContext
from .fields import get_choice, get_field, reject_unknown

FAIL_MODES = ("permanent", "transient", "crash")
#: A longer sleep is almost certainly a mistake in a diagnostic message.
MAX_SLEEP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class EchoRequest:
    data: Any
    sleep: float
    fail: str | None


class EchoJob(Job[EchoRequest]):
    name = "echo"

    def validate(self, payload: Mapping[str, Any]) -> EchoRequest:
        reject_unknown(payload, ("data", "sleep", "fail"))
        if "data" not in payload:
            raise InvalidMessage("missing field 'data'")
        sleep = float(get_field(payload, "sleep", (int, float), required=False, default=0))
        if not 0 <= sleep <= MAX_SLEEP_SECONDS:
            raise InvalidMessage(f"field 'sleep' must be between 0 and {MAX_SLEEP_SECONDS}")
        fail = get_choice(payload, "fail", FAIL_MODES, required=False)
        return EchoRequest(data=payload["data"], sleep=sleep, fail=fail)

    def run(self, request: EchoRequest, context: JobContext) -> dict[str, Any]:
        if request.sleep:
            time.sleep(request.sleep)
        if request.fail == "permanent":
            raise PermanentJobError("echo asked to fail permanently")
        if request.fail == "transient":
            raise TransientJobError("echo asked to fail transiently")
        if request.fail == "crash":
            if not context.isolated:
                raise PermanentJobError("echo 'crash' needs an executor child; it is not "
                                        "done in-process (queue_enabled = 0)")
            os.kill(os.getpid(), signal.SIGKILL)
        return {"success": 1, "echo": request.data, "attempt": context.attempt}
