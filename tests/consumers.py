"""Run real consumer processes (listeners/<type>_consumer.py) for tests.

A consumer is ready when its log says it consumes; its stderr goes to a file the test
can read (reconnects, redeliveries and errors are asserted from it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ConsumerProcess:
    def __init__(self, config: Path, job_type: str = "echo", instance: str = "1",
                 env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> None:
        """`prefix`: a command the consumer runs under (e.g. `ip netns exec <host>`)."""
        self.config = config
        self.prefix = prefix
        self.job_type = job_type
        self.instance = instance
        self.log_path = config.parent / f"{job_type}-consumer-{instance}.log"
        self.env = {**os.environ, **(env or {})}
        self.env.pop("NOTIFY_SOCKET", None)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, timeout: float = 30.0) -> ConsumerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable,
                 str(ROOT / "listeners" / f"{self.job_type}_consumer.py"), "--config",
                 str(self.config), "--instance", self.instance],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            self.wait_for_log("consuming from", timeout=timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"consumer exited ({self.process.returncode}) before "
                                     f"logging {text!r}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"consumer did not log {text!r} within {timeout} s:\n"
                                     f"{self.log()[-3000:]}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
