"""gearqueue installed by install.sh's production mode inside a real systemd (systemd_ns).

The namespace gets copy-on-write overlays over /etc, /opt, /var/lib and /usr/local/bin, so
install.sh really creates the user, /opt/gear, /etc/gear/gear.ini, /var/lib/gear, the
units and the `gearqueue` link, and none of it reaches the host: the overlays' upper
folders live in a temp folder that is deleted afterwards. Tests then play operator with
systemctl, journalctl, gear.ini and `gearqueue`, and publish jobs the way gEAR's web API
does (tests/amqp.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
from amqp import PlainPublisher
from conftest import BROKER_URL
from systemd_ns import SystemdNamespace

from gearqueue.jobtypes import JOB_TYPES

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/opt/gear"
CONFIG = "/etc/gear/gear.ini"
GEARQUEUE = f"{PREFIX}/venv/bin/gearqueue"
#: Drop-ins the tests add; removed after each test.
TEST_DROPIN = "zz-test.conf"


def unit_type(job_type: str) -> str:
    return job_type.replace("_", "-")


class Fleet:
    def __init__(self, namespace: SystemdNamespace) -> None:
        self.ns = namespace
        self.tag = f"t{uuid.uuid4().hex[:10]}"
        self.install_output = ""
        self.install_seconds = 0.0

    # --- installing and configuring ---------------------------------------------------

    def install(self, *args: str) -> str:
        result = self.ns.run(str(ROOT / "install.sh"), *args, timeout=900,
                             env={"GEAR_SKIP_APT": "1"})
        return result.stdout + result.stderr

    def queue(self, job_type: str) -> str:
        return f"{self.tag}.{job_type}_jobs"

    def write_config(self, url: str = BROKER_URL, metrics: dict[str, object] | None = None,
                     **services: dict[str, object]) -> None:
        """/etc/gear/gear.ini as an operator would write it; `echo={"workers": 3}`,
        `metrics={"textfile_dir": ...}` for a [metrics] section."""
        lines = ["[rabbitmq]", f"url = {url}", "heartbeat = 10", "reconnect_max_delay = 1", ""]
        if metrics:
            lines += ["[metrics]", *(f"{k} = {v}" for k, v in metrics.items()), ""]
        for job_type in JOB_TYPES:
            # echo in its executor child: these tests are about long jobs, the watchdog
            # and STATUS lines of a job running beside the main loop.
            isolation = {"isolation": "process"} if job_type == "echo" else {}
            values = {"queue": self.queue(job_type), "retry_backoff": 0.2, **isolation,
                      **services.get(job_type, {})}
            lines += [f"[{job_type}_service]", *(f"{k} = {v}" for k, v in values.items()), ""]
        self.ns.write_file(CONFIG, "\n".join(lines), mode="0640")
        self.ns.run("chgrp", "gear", CONFIG)

    def gearqueue(self, *args: str, check: bool = True) -> str:
        result = self.ns.run(GEARQUEUE, "--config", CONFIG, *args, check=check)
        return result.stdout + result.stderr

    def add_dropin(self, unit: str, text: str) -> None:
        self.ns.run("mkdir", "-p", f"/etc/systemd/system/{unit}.d")
        self.ns.write_file(f"/etc/systemd/system/{unit}.d/{TEST_DROPIN}", text)
        self.ns.systemctl("daemon-reload")

    # --- looking at units ----------------------------------------------------------------

    def show(self, unit: str) -> dict[str, str]:
        return self.ns.show(unit, "ActiveState", "SubState", "StatusText", "NRestarts",
                            "MainPID", "Result", "ExecMainStatus", "UnitFileState")

    def running(self, job_type: str) -> list[str]:
        """Instances of a type that are active (running), by name."""
        text = self.ns.systemctl("list-units", "--plain", "--no-legend", "--state=running",
                                 f"{unit_type(job_type)}-consumer@*.service")
        return sorted(line.split()[0] for line in text.splitlines() if line.strip())

    def wait_running(self, job_type: str, count: int, timeout: float = 60.0) -> list[str]:
        expected = [f"{unit_type(job_type)}-consumer@{n}.service" for n in range(1, count + 1)]
        self.ns.wait_for(lambda: self.running(job_type) == expected,
                         f"exactly {expected} running (now {self.running(job_type)})",
                         timeout=timeout)
        return expected

    def wait_status(self, unit: str, prefix: str, timeout: float = 30.0) -> str:
        seen: list[str] = []

        def status() -> str | None:
            state = self.show(unit)
            seen.append(f"{state['ActiveState']}/{state['SubState']}: {state['StatusText']}")
            return state["StatusText"] if state["StatusText"].startswith(prefix) else None
        try:
            return self.ns.wait_for(status, f"{unit} STATUS starting with {prefix!r}",
                                    timeout=timeout, interval=0.05)
        except AssertionError as error:
            raise AssertionError(f"{error}; last seen {seen[-1:]}") from None

    def consumers_on(self, job_type: str) -> int:
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        try:
            frame = connection.channel().queue_declare(self.queue(job_type), passive=True)
            return frame.method.consumer_count
        finally:
            connection.close()

    # --- between tests -------------------------------------------------------------------

    def reset(self) -> None:
        """Every consumer stopped and forgotten, test drop-ins gone, base gear.ini back."""
        self.ns.systemctl("stop", "gear-consumers.target", "*-consumer@*.service",
                          "gear-scale@*.service", check=False, timeout=120)
        # The drop-in folders a test made go too (install.sh's own are never empty).
        self.ns.run("sh", "-c", f"rm -f /etc/systemd/system/*.d/{TEST_DROPIN}; "
                    "rmdir /etc/systemd/system/*.d 2>/dev/null || true")
        self.ns.systemctl("daemon-reload")
        self.ns.systemctl("reset-failed", check=False)
        self.write_config()

    def delete_queues(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
            for job_type in JOB_TYPES:
                queue = self.queue(job_type)
                for name in (queue, f"{queue}.dead", *(f"{queue}.retry.{n}" for n in range(1, 4))):
                    channel = connection.channel()
                    with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                        channel.queue_delete(name)
            connection.close()

    def publisher(self, job_type: str) -> PlainPublisher:
        return PlainPublisher(self.queue(job_type))


STATE_PREFIX = "gearqueue-systemd-"


def sweep_stale_state() -> None:
    """Delete state folders of runs that were killed (their pid is in the name)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{STATE_PREFIX}*"):
        pid = folder.name.removeprefix(STATE_PREFIX).partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def installed_fleet() -> Iterator[Fleet]:
    """Boot, run install.sh (production), yield; power off and delete everything after."""
    sweep_stale_state()
    state = Path(tempfile.mkdtemp(prefix=f"{STATE_PREFIX}{os.getpid()}-"))
    namespace = SystemdNamespace(
        state / "ns", overlays=("/etc", "/opt", "/var/lib", "/usr/local/bin"))
    fleet = Fleet(namespace)
    try:
        namespace.up()
        started = time.monotonic()
        fleet.install_output = fleet.install()
        fleet.install_seconds = time.monotonic() - started
        fleet.write_config()
        yield fleet
    finally:
        namespace.down()
        fleet.delete_queues()
        shutil.rmtree(state, ignore_errors=True)
