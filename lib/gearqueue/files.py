"""Files that jobs publish: checked folders, atomic replacement, locks, stale temps, checksums.

A job's output (an imported dataset, an export, a projection) is read by other processes
while it may be rewritten, and the job may be killed at any moment (hard time limit,
crash, memory cap). So an output is written to a hidden temp file in the same folder,
synced, and renamed over the final name: readers see the old file or the new one, never
half of one. Writers of one name hold a lock (`exclusive`), under which temp files that
a killed writer left behind can be removed safely.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import PermanentJobError, TransientJobError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
_READ_SIZE = 1 << 20


#: Flags of a temp file of `write_atomically`, created private (0600, like mkstemp's)
#: unless the caller asks for another mode.
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def write_atomically(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a mix.

    For small files (no fsync: see `atomic_output` for outputs that must survive a
    power loss). The temp file is named after the writer rather than by mkstemp's
    random retry loop: host, pid and thread, since on a folder shared by several hosts
    (NFS) two writers may have the same pid and thread ident; with a temp of its own
    each, the last rename wins and the file is whole. `mode` (masked by the umask): a
    file another user's process reads (node_exporter's) asks for group read.
    """
    temp = f"{path}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp"
    handle = os.open(temp, _TEMP_FLAGS, mode)
    try:
        try:
            os.write(handle, data)
        finally:
            os.close(handle)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def require_dir(path: Path, key: str) -> Path:
    """`path` (a [paths] folder) must exist: never create a data folder on a wrong disk.

    A missing folder is a configuration or mount problem that retrying does not fix;
    creating it would silently put data where nobody looks for it.
    """
    if not path.is_dir():
        raise PermanentJobError(f"{key} {path} does not exist or is not a folder "
                                f"(see [paths] {key} in gear.ini)")
    return path


def require_space(folder: Path, needed: int, key: str) -> None:
    """Refuse to start a write that cannot fit: retrying later may find the space.

    Checked before HDF5 writes, because an HDF5 file whose writes failed cannot be
    closed, and the library may crash at process exit while it still holds it.
    """
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise TransientJobError(f"{key} {folder} has {free / 2**20:.1f} MiB free; this "
                                f"needs about {needed / 2**20:.1f} MiB")


@contextlib.contextmanager
def exclusive(path: Path, *, purpose: str) -> Iterator[bool]:
    """Hold an exclusive advisory lock (flock) on `path`; yields True if another holder
    had to be waited for.

    The kernel drops a flock when its holder dies, even by SIGKILL, so unlike gEAR's
    "the lock file exists" convention there is no stale lock to detect. Lock files are
    never deleted: deleting one while another process waits on it would let a third
    process lock a new file of the same name at the same time.
    """
    descriptor = open_lock_file(path, purpose=purpose, mode=0o664)
    try:
        yield lock_waiting(descriptor, path, purpose=purpose)
    finally:
        os.close(descriptor)  # releases the lock


def open_lock_file(path: Path, *, purpose: str, mode: int) -> int:
    """A descriptor of lock file `path` (created with `mode` if absent, and its folder)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    except OSError as error:
        raise TransientJobError(f"cannot create lock file for {purpose}: {error}") from None


def lock_waiting(descriptor: int, path: Path, *, purpose: str) -> bool:
    """flock `descriptor` exclusively, saying so in the log when another holder has it
    first; True if it had to wait."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("waiting for the lock on %s (%s)", path, purpose)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        return True
    return False


def temp_prefix(final: Path) -> str:
    """Temp files of `final` are hidden (`.name.`) so no reader lists them as data."""
    return f".{final.name}."


def remove_stale_temps(final: Path) -> int:
    """Remove temp files of `final` left by a killed writer. Call only under its lock."""
    removed = 0
    prefix = temp_prefix(final)
    for entry in final.parent.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
                log.warning("removed %s, left by an interrupted writer", entry)
    return removed


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temp path next to `final`; on success sync it and rename it over `final`.

    On any failure (including SoftTimeLimitExceeded and KeyboardInterrupt) the temp file
    is removed and `final` is left as it was.
    """
    handle, name = tempfile.mkstemp(dir=final.parent, prefix=temp_prefix(final),
                                    suffix=TEMP_SUFFIX)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, 0o644)  # mkstemp makes 0600; the web server must read outputs
        _fsync_path(temp)
        os.replace(temp, final)
        _fsync_path(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces (bounded memory for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while piece := stream.read(_READ_SIZE):
            digest.update(piece)
    return digest.hexdigest()


def describe(error: OSError) -> str:
    """An OSError in one line: HDF5's carry a multi-line report of the failed write."""
    if error.errno:
        where = f" ({error.filename})" if error.filename else ""
        return f"[Errno {error.errno}] {os.strerror(error.errno)}{where}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__
