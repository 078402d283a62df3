"""The shared backend: the job records of every host in one PostgreSQL database.

Chosen by `[state] url` (a libpq URL). One table for the whole deployment, `gear_jobs`
(job_type, job_id, record as jsonb), rather than one per job type: one schema to create,
version and migrate, no DDL when a job type is added, and one place an operator looks.
The schema version is the one row of `gear_schema`; a database whose schema is newer
than this code is refused with a ConfigError naming it, and an older one is migrated
up (MIGRATIONS) under the schema's advisory lock.

The job lock is a session-level advisory lock keyed by a 64-bit hash of (job_type,
job_id), taken on a connection held for the lock's whole life and released by the server
when that connection ends, as the kernel releases SQLite's OFD lock when its holder dies.
Everything done under the lock (the record read, the attempt and the result written)
goes over that same connection, so a worker whose connection died cannot record a job it
no longer holds: the write fails with StateStoreUnavailable (transient), and the message
is redelivered to whoever holds the lock now. Keepalives on both ends make the server
notice a holder cut off the network within ~25 s (docs/scaling.md).

Faults of the database (refused, reset, shut down, unreachable) are StateStoreUnavailable.
Connections come from a psycopg_pool pool per store and process, which reconnects in the
background with backoff; a connection found broken is dropped and, for an operation that
can be repeated safely, the operation is tried once more on a fresh one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..config import mask_url
from ..errors import ConfigError, StateStoreUnavailable
from .records import JobRecord
from .store import Change, RecordStore, refuse_existing

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: The schema this code reads and writes; stored in `gear_schema`.
SCHEMA_VERSION = 2

#: version -> the statements that bring a schema of version - 1 to it. 2: records may
#: carry `progress`. The rows need no change (the record is jsonb, and one without
#: progress still loads), but a gearqueue of version 1 cannot read a record that has
#: it (its reader refused unknown keys), so the version says so and such a host is
#: refused with a clear error at start-up rather than failing on a record mid-job.
MIGRATIONS: dict[int, tuple[str, ...]] = {2: ()}

#: Where a password comes from when the URL has none (else libpq's ~/.pgpass).
ENV_PASSWORD = "GEAR_STATE_PASSWORD"

#: Seconds a connect, or a wait for a pooled connection, may take before the store is
#: declared unavailable for this operation.
CONNECT_TIMEOUT = 5.0

#: libpq and server keepalives: a dead peer is noticed after about idle + interval x count
#: seconds, on both ends, so the lock of a host cut off the network is released.
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
              "keepalives_count": "3", "tcp_user_timeout": "25000"}
SERVER_KEEPALIVES = ("-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 "
                     "-c tcp_keepalives_count=3 -c tcp_user_timeout=25000")

#: A commit is visible to every session at once, and written to disk by the server's
#: WAL writer within ~0.6 s instead of each commit waiting for its own fsync (~0.5 ms
#: here, twice per job). The same class of durability as the SQLite backend's
#: synchronous=NORMAL: a clean restart loses nothing; a crash of the server or the host
#: can lose the last commits. An operator who wants an fsync per commit sets
#: `options=-c synchronous_commit=on` in the URL (docs/scaling.md).
COMMIT_MODE = "-c synchronous_commit=off"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS gear_schema (version integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS gear_jobs (job_type text NOT NULL, job_id text NOT NULL, "
    "record jsonb NOT NULL, PRIMARY KEY (job_type, job_id))",
)
_SELECT = "SELECT record FROM gear_jobs WHERE job_type = %s AND job_id = %s"
_SELECT_FOR_UPDATE = _SELECT + " FOR UPDATE"
_SELECT_MANY = ("SELECT job_id, record FROM gear_jobs WHERE job_type = %s AND "
                "job_id = ANY(%s)")
_SELECT_ALL = "SELECT record FROM gear_jobs WHERE job_type = %s ORDER BY job_id"
_UPSERT = ("INSERT INTO gear_jobs (job_type, job_id, record) VALUES (%s, %s, %s::jsonb) "
           "ON CONFLICT (job_type, job_id) DO UPDATE SET record = EXCLUDED.record")
_INSERT_OR_KEEP = ("INSERT INTO gear_jobs (job_type, job_id, record) VALUES "
                   "(%s, %s, %s::jsonb) ON CONFLICT DO NOTHING")
_INSERT_MANY = ("INSERT INTO gear_jobs (job_type, job_id, record) SELECT %s, job_id, "
                "record::jsonb FROM unnest(%s::text[], %s::text[]) AS new (job_id, record)")
_UNLOCK = "SELECT pg_advisory_unlock(%s)"
#: Taking locks and reading the records is one round trip (libpq's pipeline mode, with
#: statements prepared by the server). The read is a statement of its own, so its
#: snapshot is taken once the locks are granted: it sees the holder's result.
_LOCK = "SELECT pg_advisory_lock(%s)"
_UNLOCK_ALL = "SELECT pg_advisory_unlock_all()"

#: Errors that say the database, not the caller's data, failed.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout,
                pg_errors.AdminShutdown, pg_errors.CannotConnectNow)


def lock_key(job_type: str, job_id: str) -> int:
    """The advisory lock key of a job: a signed 64-bit hash of (job_type, job_id)."""
    digest = hashlib.blake2b(f"{job_type}\0{job_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def conninfo(url: str, environ: Mapping[str, str] = os.environ) -> str:
    """The libpq connection string of `url`: its password (else $GEAR_STATE_PASSWORD,
    else ~/.pgpass, which libpq reads itself), keepalives on both ends."""
    given = conninfo_to_dict(url)
    extra: dict[str, Any] = {key: value for key, value in KEEPALIVES.items()
                             if key not in given}
    extra.setdefault("connect_timeout", str(int(CONNECT_TIMEOUT)))
    extra["application_name"] = given.get("application_name", "gearqueue")
    options = str(given.get("options") or "")
    if "synchronous_commit" not in options:
        options += f" {COMMIT_MODE}"
    extra["options"] = f"{options} {SERVER_KEEPALIVES}".strip()
    if "password" not in given and environ.get(ENV_PASSWORD):
        extra["password"] = environ[ENV_PASSWORD]
    return make_conninfo(url, **extra)


Row = tuple[str, str, str]


class _Held(threading.local):
    """The connections of the job locks this thread holds (job id -> connection), and
    the last writes of attempts not sent yet (job id -> row): each goes with the next
    statement on its lock's connection, committed before any lock is released."""

    def __init__(self) -> None:
        self.connections: dict[str, psycopg.Connection[Any]] = {}
        self.final: dict[str, Row] = {}

    def take_final(self, connection: psycopg.Connection[Any]) -> list[Row]:
        ids = [job_id for job_id in self.final if self.connections.get(job_id) is connection]
        return [self.final.pop(job_id) for job_id in ids]


class PostgresStore(RecordStore):
    """Job records of one job type in the shared PostgreSQL database at `url`."""

    def __init__(self, url: str, job_type: str, *, max_connections: int = 8) -> None:
        super().__init__(job_type)
        self.url = url
        self.where = mask_url(url)
        self._max_connections = max_connections
        self._encode = json.JSONEncoder(separators=(",", ":")).encode
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_pid = 0
        self._pool_mutex = threading.Lock()
        self._lock_connections = _Held()
        #: Pools of the process this one was forked from: never used or closed here (a
        #: close would end the parent's sessions), only kept from the garbage collector.
        self._inherited: list[object] = []

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r}, {self.job_type!r})"

    # --- connections --------------------------------------------------------------------

    def _get_pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        with self._pool_mutex:
            if self._pool is not None and self._pool_pid != os.getpid():
                self._inherited.append(self._pool)
                self._pool = None
            if self._pool is None:
                self._ensure_schema()
                self._pool = psycopg_pool.ConnectionPool(
                    conninfo(self.url), kwargs={"autocommit": True}, min_size=1,
                    max_size=self._max_connections, timeout=CONNECT_TIMEOUT,
                    name=f"gearqueue-state-{self.job_type}", open=False)
                self._pool.open(wait=False)
                self._pool_pid = os.getpid()
            return self._pool

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of its own (not pooled), for the caller to close."""
        try:
            return psycopg.connect(conninfo(self.url), autocommit=True)
        except _UNAVAILABLE as error:
            raise self._unavailable(error) from error

    def _unavailable(self, error: BaseException) -> StateStoreUnavailable:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return StateStoreUnavailable(f"job state store {self.where}: {text}")

    def _use(self, work: Callable[[psycopg.Connection[Any]], _T], *, again: bool = True) -> _T:
        """Run `work` on a pooled connection; a broken one is dropped and, if `again`
        (the work can be repeated safely), the work runs once more on a fresh one."""
        pool = self._get_pool()
        for attempt in (1, 2):
            try:
                with pool.connection() as connection:
                    return work(connection)
            except _UNAVAILABLE as error:
                if attempt == 2 or not again:
                    raise self._unavailable(error) from error
                log.info("state store %s: a pooled connection was broken (%s); once more",
                         self.where, error)
                self._drop_broken(pool)
        raise AssertionError("unreachable")

    def _drop_broken(self, pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]]
                     ) -> None:
        """A broken connection usually means the server restarted, so its idle pooled
        siblings are broken too: check them all now rather than fail on each in turn."""
        with contextlib.suppress(*_UNAVAILABLE):
            pool.check()

    def _on_held(self, job_id: str, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """Run `work` on the connection of this thread's lock of `job_id` if it holds
        it, else on a pooled one. A failure on the lock's connection means the lock is
        gone with it: never retried elsewhere."""
        connection = self._lock_connections.connections.get(job_id)
        if connection is None:
            return self._use(work)
        try:
            return work(connection)
        except _UNAVAILABLE as error:
            raise StateStoreUnavailable(
                f"job state store {self.where}: lost the connection holding the lock of "
                f"{self.job_type} job {job_id}, so its lock may be held elsewhere now; "
                f"nothing was recorded ({error})") from error

    def _ensure_schema(self) -> None:
        """Create the tables if absent and check the schema version (once per pool)."""
        connection = self._connect()
        try:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)",
                                   (lock_key("", "gear_schema"),))
                for statement in _SCHEMA:
                    connection.execute(statement)
                row = connection.execute("SELECT max(version) FROM gear_schema").fetchone()
                version = row[0] if row else None
                if version is None:
                    connection.execute("INSERT INTO gear_schema (version) VALUES (%s)",
                                       (SCHEMA_VERSION,))
                elif version > SCHEMA_VERSION:
                    raise ConfigError(
                        f"the job-state database {self.where} has schema version {version}, "
                        f"newer than this gearqueue's {SCHEMA_VERSION}: upgrade gearqueue "
                        "on this host", section="state", key="url")
                elif version < SCHEMA_VERSION:
                    self._migrate(connection, version)
        except _UNAVAILABLE as error:
            raise self._unavailable(error) from error
        except psycopg.Error as error:
            raise ConfigError(f"the job-state database {self.where} cannot be used: "
                              f"{error}", section="state", key="url") from None
        finally:
            connection.close()

    def _migrate(self, connection: psycopg.Connection[Any], version: int) -> None:
        """Bring a schema of `version` to SCHEMA_VERSION, in the caller's transaction."""
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                connection.execute(statement)
        connection.execute("UPDATE gear_schema SET version = %s", (SCHEMA_VERSION,))
        log.info("job-state database %s: schema migrated from version %d to %d",
                 self.where, version, SCHEMA_VERSION)

    def check_writable(self) -> None:
        try:
            self._ensure_schema()
        except StateStoreUnavailable as error:
            raise ConfigError(f"the job-state database is not reachable: {error}",
                              section="state", key="url") from None

    def probe(self) -> None:
        """A connection of its own, one statement: not the pool, which may still be
        reconnecting in the background, and whose wait for a connection is longer."""
        connection = self._connect()
        try:
            connection.execute("SELECT 1")
        except _UNAVAILABLE as error:
            raise self._unavailable(error) from error
        finally:
            connection.close()

    def close(self) -> None:
        with self._pool_mutex:
            pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.close()

    def schema_version(self) -> int | None:
        """The version stored in the database (None if it has no schema yet)."""
        def read(connection: psycopg.Connection[Any]) -> int | None:
            exists = connection.execute("SELECT to_regclass('gear_schema')").fetchone()
            if not exists or exists[0] is None:
                return None
            row = connection.execute("SELECT max(version) FROM gear_schema").fetchone()
            return row[0] if row else None

        connection = self._connect()
        try:
            return read(connection)
        finally:
            connection.close()

    # --- records ------------------------------------------------------------------------

    def _row(self, record: JobRecord) -> tuple[str, str, str]:
        return self.job_type, record.job_id, self._encode(record.to_json())

    def _read(self, job_id: str) -> JobRecord | None:
        def read(connection: psycopg.Connection[Any]) -> JobRecord | None:
            row = connection.execute(_SELECT, (self.job_type, job_id)).fetchone()
            return None if row is None else JobRecord.from_json(row[0])

        return self._on_held(job_id, read)

    def records(self) -> Iterator[JobRecord]:
        rows = self._use(lambda connection: connection.execute(
            _SELECT_ALL, (self.job_type,)).fetchall())
        for (data,) in rows:
            yield JobRecord.from_json(data)

    def _write(self, record: JobRecord, *, final: bool = False) -> None:
        row = self._row(record)
        held = self._lock_connections
        connection = held.connections.get(record.job_id)
        if connection is None:
            self._use(lambda connection: connection.execute(_UPSERT, row))
            return
        if final:
            held.final[record.job_id] = row  # sent with the next statement or the unlock
            return
        rows = [*held.take_final(connection), row]
        self._on_held(record.job_id, lambda connection: _commit(connection, rows))

    def _change(self, job_id: str, change: Change) -> JobRecord:
        def write(connection: psycopg.Connection[Any]) -> JobRecord:
            with connection.transaction():
                # The row first if there is none, so FOR UPDATE has a row to lock and
                # two writers of a new job cannot both insert.
                connection.execute(_INSERT_OR_KEEP, self._row(self._new(job_id)))
                row = connection.execute(_SELECT_FOR_UPDATE, (self.job_type, job_id)
                                         ).fetchone()
                assert row is not None
                record = change(JobRecord.from_json(row[0]))
                connection.execute(_UPSERT, self._row(record))
            return record

        return self._use(write)

    def _insert(self, records: list[JobRecord]) -> None:
        rows = [self._row(record) for record in records]

        def write(connection: psycopg.Connection[Any]) -> None:
            connection.execute(_INSERT_MANY, (self.job_type, [row[1] for row in rows],
                                              [row[2] for row in rows]))

        try:
            # Not repeated on a broken connection: a commit that was lost on the way
            # back would make the repeat refuse the job's own record.
            self._use(write, again=False)
        except pg_errors.UniqueViolation:
            raise refuse_existing(self.job_type, [record.job_id for record in records],
                                  self.where) from None

    def adopt(self, records: Iterable[JobRecord]) -> int:
        rows = [self._row(record) for record in records]

        def write(connection: psycopg.Connection[Any]) -> int:
            cursor = connection.execute(
                _INSERT_MANY + " ON CONFLICT DO NOTHING",
                (self.job_type, [row[1] for row in rows], [row[2] for row in rows]))
            return cursor.rowcount

        return self._use(write)

    # --- locks --------------------------------------------------------------------------

    def _locked_connection(self, keys: list[int], job_ids: list[str]
                           ) -> tuple[psycopg.Connection[Any], dict[str, JobRecord | None]]:
        """A pooled connection holding the advisory locks `keys` (taken in this order),
        and the records of `job_ids` read once they are all held: one round trip."""
        pool = self._get_pool()
        for attempt in (1, 2):
            try:
                connection = pool.getconn()
            except _UNAVAILABLE as error:
                raise self._unavailable(error) from error
            try:
                with connection.pipeline():
                    for key in keys:
                        connection.execute(_LOCK, (key,))
                    cursor = connection.execute(_SELECT_MANY, (self.job_type, job_ids))
                found = {job_id: JobRecord.from_json(data) for job_id, data in cursor}
                return connection, {job_id: found.get(job_id) for job_id in job_ids}
            except _UNAVAILABLE as error:
                pool.putconn(connection)  # broken: the pool drops it
                if attempt == 2:
                    raise self._unavailable(error) from error
                self._drop_broken(pool)
            except BaseException:
                pool.putconn(connection)
                raise
        raise AssertionError("unreachable")

    def _release(self, connection: psycopg.Connection[Any], job_ids: list[str],
                 unlock: str, key: int | None = None) -> None:
        """Send the attempts' last writes, commit them, then release the locks."""
        held = self._lock_connections
        rows = held.take_final(connection)
        for job_id in job_ids:
            del held.connections[job_id]
        try:
            if rows:
                _commit(connection, rows, then=unlock, key=key)
            else:
                with contextlib.suppress(*_UNAVAILABLE):  # a dead session holds no lock
                    connection.execute(unlock, () if key is None else (key,))
        except _UNAVAILABLE as error:
            raise StateStoreUnavailable(
                f"job state store {self.where}: lost the connection holding the lock of "
                f"{self.job_type} job(s) {', '.join(job_ids[:3])}, so the lock may be held "
                f"elsewhere now; their outcome was not recorded ({error})") from error
        finally:
            self._get_pool().putconn(connection)

    @contextlib.contextmanager
    def _lock(self, job_id: str) -> Iterator[object]:
        """Hold the job's advisory lock on a pooled connection kept for the lock's life."""
        key = lock_key(self.job_type, job_id)
        connection, records = self._locked_connection([key], [job_id])
        self._lock_connections.connections[job_id] = connection
        try:
            yield records[job_id]
        finally:
            self._release(connection, [job_id], _UNLOCK, key)

    @contextlib.contextmanager
    def batch(self, job_ids: Iterable[str]) -> Iterator[None]:
        """Hold the locks of a batch's jobs on one connection, so their state writes
        take one round trip a job: the attempt of job i+1 and the result of job i in one
        commit, the last result with the unlock. Locks are taken in key order, so two
        batches never wait for each other in a circle."""
        ids = list(dict.fromkeys(job_ids))
        held = self._held.records
        if len(ids) < 2 or any(job_id in held for job_id in ids):
            yield
            return
        ids.sort(key=lambda job_id: lock_key(self.job_type, job_id))
        connection, records = self._locked_connection(
            [lock_key(self.job_type, job_id) for job_id in ids], ids)
        for job_id in ids:
            self._lock_connections.connections[job_id] = connection
            held[job_id] = records[job_id]
        self._begin_batch(ids)
        try:
            yield
        finally:
            try:
                self._end_batch(ids)  # the held-back results: committed with the unlock
            finally:
                for job_id in ids:
                    del held[job_id]
                self._release(connection, ids, _UNLOCK_ALL)

    def confirm_locked(self, job_id: str) -> None:
        """StateStoreUnavailable unless this thread still holds the job's lock (its
        connection is alive and the server lists the lock as ours)."""
        def confirm(connection: psycopg.Connection[Any]) -> None:
            key = lock_key(self.job_type, job_id)
            row = connection.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND objsubid = 1 "
                "AND classid = (%s >> 32)::int::oid AND objid = (%s & 4294967295)::oid",
                (key, key)).fetchone()
            if not row or not row[0]:
                raise StateStoreUnavailable(f"job state store {self.where}: the lock of "
                                            f"{self.job_type} job {job_id} is not held")

        super().confirm_locked(job_id)
        self._on_held(job_id, confirm)


def _commit(connection: psycopg.Connection[Any], rows: list[Row], then: str = "",
            key: int | None = None) -> None:
    """Write `rows` in one transaction, then run `then` (an unlock) after the commit,
    never before it: one round trip."""
    if len(rows) == 1 and not then:
        connection.execute(_UPSERT, rows[0])
        return
    with connection.pipeline():  # an explicit COMMIT commits there, before `then` runs
        connection.execute("BEGIN")
        for row in rows:
            connection.execute(_UPSERT, row)
        connection.execute("COMMIT")
        if then:
            connection.execute(then, () if key is None else (key,))
