"""A real systemd for tests, booted as PID 1 of a private PID + mount namespace.

PID 1 of this machine is not systemd, but systemd boots in about half a second as PID 1
of a fresh namespace (tests/systemd_ns_init.sh prepares the file system; read its header
for what keeps the host safe). Tests then drive it with the real `systemctl` and
`journalctl` through `nsenter`. The network namespace is shared, so the broker on
127.0.0.1 is reachable from the units.

Lifetime: `unshare` runs with PR_SET_PDEATHSIG and --kill-child, so if pytest itself dies
the namespace's PID 1 is killed and the kernel kills everything else in the namespace.
`down()` powers off cleanly, with SIGKILL as the fallback, and removes the cgroup subtree;
`sweep_stale()` removes subtrees left by a run that was killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

INIT_SCRIPT = Path(__file__).resolve().parent / "systemd_ns_init.sh"
CGROUP_PREFIX = "gearqueue-test-"
#: Commands we run inside are not children of its systemd: drop the same capabilities.
DROP_CAPS = "-sys_module,-sys_time,-net_admin,-audit_control,-audit_write,-audit_read"
PR_SET_PDEATHSIG = 1
#: Not passed to commands inside: they would point them at the test process's libraries
#: (rpy2 sets LD_LIBRARY_PATH when a test loads R) or at its systemd sockets.
PRIVATE_ENV = ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
               "R_HOME", "NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID")


class NamespaceError(AssertionError):
    """The namespace did not boot, or a command inside it failed."""


def _cgroup2_mount() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if parts[2] == "cgroup2":
            return Path(parts[1])
    raise NamespaceError("no cgroup2 mount on this host")


def _own_cgroup2_path() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise NamespaceError("this process is in no cgroup2 group")


def _kill_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _remove_cgroup_tree(root: Path, timeout: float = 5.0) -> None:
    """rmdir a (process-free) cgroup tree, deepest first; cgroups stay busy briefly."""
    deadline = time.monotonic() + timeout
    while root.exists():
        for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()
        if not root.exists():
            return
        if time.monotonic() > deadline:
            raise NamespaceError(f"cgroup {root} could not be removed")
        time.sleep(0.05)


def sweep_stale() -> None:
    """Remove cgroup subtrees of earlier runs whose namespace is gone (no processes)."""
    parent = _cgroup2_mount() / _own_cgroup2_path().lstrip("/")
    for stale in parent.glob(f"{CGROUP_PREFIX}*"):
        procs = [p for p in stale.rglob("cgroup.procs") if p.read_text().strip()]
        if not procs and (stale / "cgroup.procs").exists():
            with contextlib.suppress(NamespaceError):
                _remove_cgroup_tree(stale, timeout=1.0)


class SystemdNamespace:
    """One booted systemd; `run()` executes a command inside its namespaces."""

    def __init__(self, state_dir: Path, *, overlays: Sequence[str] = (),
                 tmpfs: Sequence[str] = ()) -> None:
        self.state_dir = state_dir
        self.overlays = tuple(overlays)
        self.tmpfs = tuple(tmpfs)
        self.name = f"{CGROUP_PREFIX}{uuid.uuid4().hex[:8]}"
        self.cgroup = _cgroup2_mount() / _own_cgroup2_path().lstrip("/") / self.name
        self.unshare: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    # --- life cycle ------------------------------------------------------------------

    def up(self, timeout: float = 30.0) -> SystemdNamespace:
        sweep_stale()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "kmsg").write_text("")
        self.cgroup.mkdir()
        env = {**os.environ, "NS_STATE": str(self.state_dir), "NS_CG2": str(self.cgroup),
               "NS_CG2MNT": str(_cgroup2_mount()), "NS_OVERLAY": " ".join(self.overlays),
               "NS_TMPFS": " ".join(self.tmpfs)}
        with open(self.state_dir / "init.log", "wb") as init_log:
            self.unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts", "--ipc",
                 "--mount-proc", "--propagation", "private", str(INIT_SCRIPT)],
                stdin=subprocess.DEVNULL, stdout=init_log, stderr=subprocess.STDOUT, env=env,
                preexec_fn=_kill_with_parent, start_new_session=True)
        try:
            self.pid = self._wait_for_child(timeout=5.0)
            self._wait_for_boot(timeout)
        except BaseException:
            self.down()
            raise
        return self

    def _wait_for_child(self, timeout: float) -> int:
        assert self.unshare is not None
        children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                found = children.read_text().split()
                if found:
                    return int(found[0])
            if self.unshare.poll() is not None:
                break
            time.sleep(0.01)
        raise NamespaceError(f"namespace init did not start:\n{self._init_log()}")

    def _wait_for_boot(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if not self.alive:
                raise NamespaceError(f"systemd died while booting:\n{self._init_log()}")
            state = self.run("systemctl", "is-system-running", check=False,
                             timeout=5).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.05)
        raise NamespaceError(f"boot did not finish in {timeout} s (state {state!r})")

    def _init_log(self) -> str:
        parts = []
        for name in ("init.log", "kmsg"):
            path = self.state_dir / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    @property
    def alive(self) -> bool:
        return self.unshare is not None and self.unshare.poll() is None

    def down(self, timeout: float = 30.0) -> None:
        """Power off cleanly; SIGKILL the namespace if that takes too long."""
        if self.alive and self.pid is not None:
            self.run("systemctl", "--no-block", "poweroff", check=False, timeout=5)
            assert self.unshare is not None
            try:
                self.unshare.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)  # the kernel kills the rest
                self.unshare.wait(10)
        elif self.unshare is not None and self.unshare.poll() is None:
            self.unshare.kill()
            self.unshare.wait(10)
        if self.cgroup.exists():
            _remove_cgroup_tree(self.cgroup)

    # --- commands inside -------------------------------------------------------------

    def run(self, *command: str, check: bool = True, timeout: float = 60.0,
            input: str | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace (mount, pid, uts, ipc) as root."""
        if self.pid is None:
            raise NamespaceError("namespace is not up")
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "--wd=/", "--",
             "setpriv", "--bounding-set", DROP_CAPS, "--", *command],
            input=input, capture_output=True, text=True, timeout=timeout,
            env={**{k: v for k, v in os.environ.items() if k not in PRIVATE_ENV},
                 "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", **(env or {})})
        if check and result.returncode != 0:
            raise NamespaceError(f"{' '.join(command)} exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60.0) -> str:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout).stdout

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """`systemctl show -p ...` as a dict."""
        text = self.systemctl("show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def journal(self, *matches: str) -> list[dict[str, Any]]:
        """Journal entries (JSON) matching `FIELD=value` / `-u UNIT` arguments."""
        text = self.run("journalctl", "--no-pager", "-o", "json", *matches,
                        check=False).stdout
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def write_file(self, path: str, content: str, mode: str = "0644") -> None:
        self.run("sh", "-c", f'cat > "$1" && chmod {mode} "$1"', "sh", path, input=content)

    def read_file(self, path: str) -> str:
        return self.run("cat", path).stdout

    def wait_for(self, predicate: Any, what: str, timeout: float = 30.0,
                 interval: float = 0.1) -> Any:
        """Poll `predicate()` until it returns something truthy; fail naming `what`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise NamespaceError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(interval)


@contextlib.contextmanager
def booted(state_dir: Path, **options: Any) -> Iterator[SystemdNamespace]:
    namespace = SystemdNamespace(state_dir, **options).up()
    try:
        yield namespace
    finally:
        namespace.down()
