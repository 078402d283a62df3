"""Data folders shared by several hosts (NFS or similar): two writers of the same output
at once leave one correct file, even when they have the same pid and thread.

Each writer stands for a host: a process in UTS and PID namespaces of its own
(`unshare --uts --pid --fork`), with its own host name and pid 1, as the same service
on two machines may have; with address space randomisation off (`setarch -R`), its
main thread has the same ident in both, as identical machines may. The file system is
the one shared folder.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

WRITES = 150
SIZE = 256 * 1024

WRITER = f"""
import os, socket, sys
from pathlib import Path
from gearqueue.files import atomic_output, write_atomically
path, kind, fill, host = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
assert os.getpid() == 1 and socket.gethostname() == host, (os.getpid(), socket.gethostname())
data = fill.encode() * {SIZE}
for _ in range({WRITES}):
    if kind == "small":
        write_atomically(path, data)
    else:
        with atomic_output(path) as temp:
            temp.write_bytes(data)
"""


def host_writer(host: str, path: Path, kind: str, fill: str) -> subprocess.Popen[str]:
    """A writer on `host`: its own host name, pid 1."""
    return subprocess.Popen(
        ["unshare", "--uts", "--pid", "--fork", "sh", "-c", 'hostname "$0" && exec "$@"',
         host, "setarch", platform.machine(), "-R", sys.executable, "-c", WRITER, str(path),
         kind, fill, host],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kind", ["small", "output"])
def test_two_hosts_writing_the_same_file_at_once_leave_one_whole_file(
        tmp_path: Path, kind: str) -> None:
    """`small`: files.write_atomically (temp named by host, pid, thread); `output`:
    files.atomic_output (mkstemp). Readers meanwhile see one whole version or the other."""
    path = tmp_path / "shared" / "result.bin"
    path.parent.mkdir()
    versions = {b"a" * SIZE, b"b" * SIZE}
    writers = [host_writer("gq-host-a", path, kind, "a"),
               host_writer("gq-host-b", path, kind, "b")]
    reads = 0
    while any(writer.poll() is None for writer in writers):
        if path.exists():
            assert path.read_bytes() in versions, "a reader saw a mixed or partial file"
            reads += 1
    for writer in writers:
        _, stderr = writer.communicate()
        assert writer.returncode == 0, stderr
    assert path.read_bytes() in versions
    assert [entry.name for entry in path.parent.iterdir()] == ["result.bin"]  # no temps
    assert reads > 0
