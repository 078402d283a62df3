"""A PostgreSQL cluster of a test's own (initdb + pg_ctl in a temp folder, its own port),
for tests that stop or restart the database: never the shared server.

initdb refuses to run as root, so as root the cluster belongs to the `postgres` user.
It listens on 127.0.0.1, and on addresses of the test's own if asked (`listen`, e.g. a
test bridge's, with `clients` the networks allowed in from there; tests/netns.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivatePostgres:
    def __init__(self, listen: tuple[str, ...] = (), clients: tuple[str, ...] = ()) -> None:
        self.listen = ("127.0.0.1", *listen)
        self.clients = clients
        self.folder = Path(tempfile.mkdtemp(prefix="gq-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        self.url = self.url_on("127.0.0.1")
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def url_on(self, address: str) -> str:
        """The [state] url of the `gear` database through one of the listening addresses."""
        return f"postgresql://postgres@{address}:{self.port}/gear"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PrivatePostgres:
        if not self.data.exists():
            self._run(str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                      "postgres", "--no-sync")
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.writelines(f"host all all {network} trust\n" for network in self.clients)
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                  "-o", f"-p {self.port} -k {self.folder} -c "
                  f"listen_addresses={','.join(self.listen)} -c fsync=off", "start")
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                             autocommit=True) as admin:
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = 'gear'"
                                 ).fetchone():
                admin.execute("CREATE DATABASE gear")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self._as_user, str(BIN / "pg_ctl"), "-D", str(self.data), "-m",
                            "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)
