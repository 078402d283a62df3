"""A process's connection to one job-state database (SQLite, WAL).

Opened on first use, shared by the process's threads under a mutex, and never carried
across a fork: SQLite keeps its lock bookkeeping per process, so a connection (or even
a new one opened beside an inherited one) in a forked child would take no real locks.
Failures of the database itself (busy past BUSY_TIMEOUT, I/O, full, corrupt) become
StateStoreUnavailable naming the file; errors in the caller's data are not converted.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ..errors import StateStoreUnavailable

_T = TypeVar("_T")

#: How long a write waits for another writer's transaction before it fails. Writes
#: take tens of microseconds, so only a stuck or very overloaded host waits this long.
BUSY_TIMEOUT = 30.0


class _Session:
    """One process's connection to a store's database and the lock its threads share."""

    __slots__ = ("__weakref__", "connection", "mutex", "pid")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.mutex = threading.Lock()
        self.connection: sqlite3.Connection | None = None
        _FORK_GUARD.add(self)

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self.connection.close()
            self.connection = None


class _ForkGuard:
    """Closes every store's connection before the process forks, with no store busy.

    A new connection opened in a child whose parent had the same database open at the
    fork takes no locks at all: SQLite keeps its lock bookkeeping per process and per
    file, and the child inherits the parent's, which says the locks are held (seen in
    /proc/locks). Another process could then checkpoint and delete the WAL under the
    child. Closing first leaves no bookkeeping to inherit, and holding each store's
    mutex across the fork means no thread is inside SQLite when it happens. This is
    process-wide by nature, like logging's own at-fork lock handling, hence one
    instance for the module. The registry holds sessions weakly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: weakref.WeakSet[_Session] = weakref.WeakSet()
        self._held: list[_Session] = []

    def add(self, session: _Session) -> None:
        with self._lock:
            self._sessions.add(session)

    def before_fork(self) -> None:
        self._lock.acquire()
        self._held = list(self._sessions)
        for session in self._held:
            session.mutex.acquire()
            session.close()

    def after_fork_in_parent(self) -> None:
        self._release()

    def after_fork_in_child(self) -> None:
        for session in self._held:
            session.pid = os.getpid()
        self._release()

    def _release(self) -> None:
        for session in self._held:
            session.mutex.release()
        self._held = []
        self._lock.release()


_FORK_GUARD = _ForkGuard()
os.register_at_fork(before=_FORK_GUARD.before_fork,
                    after_in_parent=_FORK_GUARD.after_fork_in_parent,
                    after_in_child=_FORK_GUARD.after_fork_in_child)


class Database:
    """One SQLite database file, used by this process through one connection."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self.schema = schema
        self._session = _Session()
        self._folder_made = False

    def use(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work` on this process's connection, one thread at a time."""
        session = self._session
        if session.pid != os.getpid():
            # Forked without Python's at-fork hooks (by C code): never use the parent's
            # connection, but close it, which resets SQLite's lock bookkeeping (see
            # _ForkGuard), and leave its mutex, which a vanished thread may hold.
            session.close()
            session = self._session = _Session()
        with session.mutex:
            try:
                if session.connection is None:
                    session.connection = self.open()
                return work(session.connection)
            except OSError as error:
                raise StateStoreUnavailable(f"job state store {self.path}: {error}") from error
            except sqlite3.DatabaseError as error:
                if not is_storage_failure(error):
                    raise
                raise StateStoreUnavailable(f"job state store {self.path}: {error}") from error

    def close(self) -> None:
        """Close this process's connection (the next use opens a new one)."""
        with self._session.mutex:
            self._session.close()

    def make_folder(self) -> None:
        """The database's folder, made once per process (not a system call per job)."""
        if not self._folder_made:
            os.makedirs(self.path.parent, exist_ok=True)
            self._folder_made = True

    def open(self) -> sqlite3.Connection:
        """A new connection of its own, set up (WAL, the schema), for the caller to close."""
        self.make_folder()
        # Created private, as the record files were (SQLite gives its -wal and -shm
        # files the database file's mode). Only if absent: closing a descriptor of an
        # open database would drop every POSIX lock this process's connections hold.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o600))
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                     check_same_thread=False)
        try:
            connection.execute("PRAGMA synchronous = NORMAL")  # per connection
            _set_up(connection, self.schema)
        except BaseException:
            connection.close()
            raise
        return connection


def _set_up(connection: sqlite3.Connection, schema: str) -> None:
    """Make the database WAL (a setting kept in the file) with our table, once.

    Switching to WAL fails at once, without waiting as BUSY_TIMEOUT asks, when another
    process is opening the new database at the same moment: so this retries.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            if connection.execute("PRAGMA journal_mode").fetchone() != ("wal",):
                connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(schema)
            return
        except sqlite3.OperationalError as error:
            busy = (error.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY,
                                                       sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


@contextlib.contextmanager
def immediate(connection: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that holds the write lock from its start, or rolls back."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise


def is_storage_failure(error: sqlite3.DatabaseError) -> bool:
    """Busy, locked, I/O, full, read-only, unopenable (OperationalError) or corrupt
    (a plain DatabaseError): the store failed, not the caller's data."""
    return isinstance(error, sqlite3.OperationalError) or type(error) is sqlite3.DatabaseError
