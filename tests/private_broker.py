"""A RabbitMQ node of our own, for tests that stop, restart or reconfigure a broker.

The shared broker (rabbit@localhost on 5672) is never touched: the private node has its
own node name (gq-<random>@localhost), its own AMQP and distribution ports, its own epmd
(on its own port, started and stopped here), its own Erlang cookie (HOME is the temp
dir, so root's home stays clean), and its own config, plugins, env, data and log files,
all under one temp dir. Everything is run from Debian's rabbitmq-server package as the
current user (root in CI), bypassing /usr/sbin/rabbitmq-server, which would `su` to the
rabbitmq user and read /etc/rabbitmq.

Why the AMQP listener is set in rabbitmq.conf and not with RABBITMQ_NODE_IP_ADDRESS +
RABBITMQ_NODE_PORT: with both variables set, RabbitMQ 3.10 starts the listener twice
and fails to boot with eaddrinuse.

Nodes of a cluster (tests/private_cluster.py) share one epmd and one Erlang cookie, which the
cluster passes in (`epmd_port`, `cookie`); a node may also listen on addresses of the
test's own besides 127.0.0.1 (`addresses`, e.g. a test bridge's), never on 0.0.0.0.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
EPMD = "epmd"
#: Ports are taken below the kernel's ephemeral range (32768+), so an outgoing
#: connection cannot hold our listening port when the node restarts.
PORT_RANGE = (20000, 32000)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports on 127.0.0.1 that nothing listens on right now."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(*PORT_RANGE)
        if port in ports:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                continue
        ports.append(port)
    return ports


def start_epmd(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """An epmd of our own on 127.0.0.1:`port` (never the system's on 4369)."""
    return subprocess.Popen([EPMD, "-port", str(port), "-address", "127.0.0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_epmd(epmd: subprocess.Popen[bytes]) -> None:
    epmd.terminate()
    try:
        epmd.wait(10)
    except subprocess.TimeoutExpired:
        epmd.kill()
        epmd.wait(5)


class BrokerStartFailed(RuntimeError):
    """The private node did not come up; the message carries the end of its output."""


class PrivateBroker:
    """One private RabbitMQ node under `base`; `start`, `stop`, `kill`, `restart`, `close`.

    `conf` adds rabbitmq.conf lines (key -> value); `advanced` is the text of
    advanced.config (Erlang terms), for settings rabbitmq.conf cannot express.
    """

    def __init__(self, base: Path, conf: dict[str, str] | None = None,
                 advanced: str = "[].\n", *, epmd_port: int | None = None,
                 cookie: str | None = None, addresses: tuple[str, ...] = ()) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.node = f"gq-{uuid.uuid4().hex[:10]}@localhost"
        self.port, self.dist_port, own_epmd_port = free_ports(3)
        #: A cluster's nodes share its epmd (it starts it); a lone node starts its own.
        self.owns_epmd = epmd_port is None
        self.epmd_port = own_epmd_port if epmd_port is None else epmd_port
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        #: URL of each address the node listens on (127.0.0.1 first).
        self.urls = {address: f"amqp://guest:guest@{address}:{self.port}/%2F"
                     for address in ("127.0.0.1", *addresses)}
        self.output = base / "server.out"
        if cookie is not None:  # HOME is `base`: Erlang reads the cookie from there
            cookie_file = base / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)
        settings = {
            "listeners.tcp.local": f"127.0.0.1:{self.port}",
            **{f"listeners.tcp.own{number}": f"{address}:{self.port}"
               for number, address in enumerate(addresses, 1)},
            "loopback_users": "none",
            # CI disks may be nearly full; an alarm would block every publisher.
            "disk_free_limit.absolute": "1MB",
            "log.console": "false",
            "log.file.level": "info",
            **(conf or {}),
        }
        (base / "rabbitmq.conf").write_text(
            "".join(f"{key} = {value}\n" for key, value in settings.items()))
        (base / "advanced.config").write_text(advanced)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")  # never /etc/rabbitmq/rabbitmq-env.conf
        self.env = {
            **{key: value for key, value in os.environ.items()
               if not key.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(base),  # the Erlang cookie is created here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.epmd: subprocess.Popen[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._launched = 0.0
        self.starts = 0

    # --- life cycle ------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> PrivateBroker:
        """Start the node (and our epmd, once) and wait until it accepts AMQP connections."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the node's processes without waiting (a cluster boots its nodes at once)."""
        if self.epmd is None and self.owns_epmd:
            self.epmd = start_epmd(self.epmd_port, self.env)
        assert self.process is None, "already started"
        with open(self.output, "ab") as output:
            self.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")], cwd=self.base, env=self.env,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group, so kill() reaches beam
        self._launched = time.monotonic()

    def wait_ready(self, timeout: float = 60.0) -> PrivateBroker:
        """Wait until the launched node accepts AMQP connections."""
        assert self.process is not None, "not launched"
        deadline = self._launched + timeout
        while not self.accepts_connections():
            if self.process.poll() is not None:
                self.process = None
                raise BrokerStartFailed(f"private broker exited while starting:\n"
                                        f"{self.output.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerStartFailed(f"private broker not up within {timeout} s:\n"
                                        f"{self.output.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        self.starts += 1
        return self

    def accepts_connections(self) -> bool:
        try:
            connection = pika.BlockingConnection(self.parameters())
        except pika.exceptions.AMQPError:
            return False
        connection.close()
        return True

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown (what `systemctl stop rabbitmq-server` does)."""
        if self.process is None:
            return
        result = self.ctl("shutdown", timeout=timeout)
        try:
            self.process.wait(timeout if result.returncode == 0 else 5)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self.process = None

    def kill(self) -> None:
        """SIGKILL the node's whole process group: a crash, no goodbye to clients."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.process = None

    def restart(self, *, hard: bool = False, down_for: float = 0.0) -> float:
        """Stop (or kill) and start again; returns the seconds the broker was away."""
        started = time.monotonic()
        if hard:
            self.kill()
        else:
            self.stop()
        time.sleep(down_for)
        self.start()
        return time.monotonic() - started

    def close(self) -> None:
        """Teardown: stop the node, then our epmd. Only processes started here are ended."""
        try:
            self.stop()
        finally:
            if self.epmd is not None:
                stop_epmd(self.epmd)
                self.epmd = None

    # --- tools -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def parameters(self, **overrides: object) -> pika.URLParameters:
        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 2
        for key, value in overrides.items():
            setattr(params, key, value)
        return params

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """rabbitmqctl against this node only (-n), with its cookie and epmd."""
        return subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def eval(self, expression: str) -> str:
        """Evaluate an Erlang expression on the node (e.g. change an app env at run time)."""
        result = self.ctl("eval", expression)
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl eval failed: {result.stderr or result.stdout}")
        return result.stdout.strip()

    @contextlib.contextmanager
    def rabbit_env(self, **values: int) -> Iterator[None]:
        """Set `rabbit` application settings at run time (channels opened from now on
        see them), and put the old values back afterwards."""
        before = {key: self.eval(f"application:get_env(rabbit, {key}).") for key in values}
        for key, value in values.items():
            self.eval(f"application:set_env(rabbit, {key}, {value}).")
        try:
            yield
        finally:
            for key, old in before.items():
                if old == "undefined":
                    self.eval(f"application:unset_env(rabbit, {key}).")
                else:  # {ok,1800000}
                    self.eval(f"application:set_env(rabbit, {key}, "
                              f"{old.removeprefix('{ok,').removesuffix('}')}).")

    def log(self) -> str:
        path = self.base / "log" / f"{self.node}.log"
        return path.read_text(errors="replace") if path.exists() else ""
