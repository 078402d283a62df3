"""What every job-state backend offers, and the job's state machine written once.

Callers never write a status: they name what happened (`queued`, `begin_attempt`,
`progressed`, `succeeded`, `failed`, `refused`, `reset_for_replay`), and `RecordStore` turns each
into the record change, the same for every backend. A backend supplies the storage
primitives: an atomic read-modify-write of one record, an all-or-none insert of new
records, a blind write, and the per-job lock.

Concurrency contract (every backend): `locked(job_id)` holds a lock that excludes
other processes, hosts and threads, and that the system releases if its holder dies;
a job runs under it, so a redelivered duplicate waits for the first copy and then
finds its result (exactly-once effect). Each transition is one atomic change of one
record, so writers outside the lock (the client, the consumer recording a crash) never
lose another writer's update, and a reader never sees half of one. Under the job's lock
the store already knows the record (it read or wrote it last, and the lock keeps every
other writer of a running job away), so a transition there is one write instead of a
read-modify-write transaction: two of those per job were a third of a no-op job's time.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import InvalidProgress, JobExists, StateStoreUnavailable, UnknownJob
from .records import JobRecord, JobStatus, Progress

#: A change of one record: the stored record (a new queued one if none) -> the new one.
Change = Callable[[JobRecord], JobRecord]


@dataclass(frozen=True)
class AttemptRecord:
    """An attempt recorded together with its result instead of before it ran."""

    attempt: int
    worker: str


class StateStore(Protocol):
    """The job records of one job type, whatever the backend."""

    job_type: str
    #: Where the records are, for messages: a URL with its password masked, or a file.
    where: str

    def get(self, job_id: str) -> JobRecord | None: ...

    def require(self, job_id: str) -> JobRecord:
        """The record; UnknownJob if there is none."""
        ...

    def locked(self, job_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold the job's lock (released by the system if the holder dies)."""
        ...

    def confirm_locked(self, job_id: str) -> None:
        """StateStoreUnavailable unless this thread still holds the job's lock: a job
        calls it (JobContext.confirm_lock) just before it makes its effect, since a
        lock on a database connection can be lost while the job runs."""
        ...

    def check_writable(self) -> None:
        """ConfigError now, at start-up, if the store cannot be used."""
        ...

    def probe(self) -> None:
        """StateStoreUnavailable unless the store answers now: what a consumer that
        stopped taking jobs while its store was down asks before it takes them again.
        Quick (a refused connection or a busy database fails it), never a ConfigError
        for a fault that may pass."""
        ...

    def batch(self, job_ids: Iterable[str]) -> contextlib.AbstractContextManager[None]:
        """Hold the locks of a batch's jobs (run one by one, each under `locked`) until
        the batch ends, so the last writes of their attempts (`succeeded`, `failed`)
        can be committed together: all in one transaction, before any lock is released
        and before any other write under them (a redelivered job's attempt). A backend
        may also hold no lock past its job and write each at once."""
        ...

    def flush(self) -> None:
        """Commit now the last writes a batch holds back (see `batch`)."""
        ...

    def close(self) -> None: ...

    def queued(self, job_id: str) -> bool:
        """Record a new job as queued unless it has a record; True if this created it."""
        ...

    def queued_many(self, job_ids: Iterable[str]) -> None:
        """`queued` for new ids, all or none: JobExists if any has a record."""
        ...

    def begin_attempt(self, job_id: str, attempt: int, worker: str, *,
                      restart: bool = False) -> JobRecord:
        """Running attempt `attempt` on `worker` (restart: a fresh publish of a job that
        failed for good starts over, without its old error and reply)."""
        ...

    def progressed(self, job_id: str, progress: Progress, *,
                   attempt: AttemptRecord | None = None) -> JobRecord:
        """The running attempt reports `progress` (throttled by the caller: see
        worker/progress.py). Only under the job's lock, by the thread that holds it:
        one write, over the lock's own connection. `attempt`: the attempt was not
        recorded when it began (see `succeeded`): it is recorded now, as running."""
        ...

    def succeeded(self, job_id: str, result: dict[str, Any], *,
                  attempt: AttemptRecord | None = None) -> JobRecord:
        """The attempt succeeded with `result`. `attempt`: the attempt was not recorded
        when it began (a first delivery, see runner.py): it is recorded now, with it."""
        ...

    def failed(self, job_id: str, attempt: int, error: dict[str, Any],
               reply: dict[str, Any], *, retrying: bool, worker: str | None = None
               ) -> JobRecord:
        """Attempt `attempt` failed: retrying if another is due, else failed for good
        with `reply` as its stored result. `worker`: the attempt was not recorded when
        it began, and ran there."""
        ...

    def refused(self, job_id: str, error: BaseException) -> JobRecord:
        """The broker refused the publish (full queue, nack, unroutable): failed."""
        ...

    def reset_for_replay(self, job_id: str) -> JobRecord | None:
        """Queued again with no attempts, for a dead-letter replay; the record it
        replaced (None if none). A job that succeeded meanwhile keeps its record."""
        ...

    def restore(self, record: JobRecord) -> None:
        """Put back a record `reset_for_replay` replaced (the replay failed)."""
        ...

    def adopt(self, records: Iterable[JobRecord]) -> int:
        """Store records of another store (a migration); an id that has a record here
        keeps it. The number stored."""
        ...

    def records(self) -> Iterator[JobRecord]:
        """Every record, for a migration."""
        ...


#: In `_HeldRecords`: the job is locked by this thread, its record not read yet.
UNREAD = object()


class _HeldRecords(threading.local):
    """The records of the jobs this thread holds the lock of (job id -> record, None
    if it has none, or UNREAD); which of them a `batch` holds until it ends; and the
    last writes of their attempts held back for the batch's one commit."""

    def __init__(self) -> None:
        self.records: dict[str, object] = {}
        self.batch_ids: set[str] = set()
        self.deferred: dict[str, JobRecord] = {}


class RecordStore(ABC):
    """The named transitions on a backend's primitives (see the module docstring)."""

    job_type: str

    def __init__(self, job_type: str) -> None:
        self.job_type = job_type
        self._held = _HeldRecords()

    # --- what a backend supplies ------------------------------------------------------

    @abstractmethod
    def _read(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def _lock(self, job_id: str) -> contextlib.AbstractContextManager[object]:
        """Hold the job's lock (see StateStore.locked); gives the record if the backend
        read it on the way (None: it has none), else UNREAD."""

    @abstractmethod
    def check_writable(self) -> None: ...

    @abstractmethod
    def probe(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def adopt(self, records: Iterable[JobRecord]) -> int: ...

    @abstractmethod
    def records(self) -> Iterator[JobRecord]: ...

    @abstractmethod
    def _change(self, job_id: str, change: Change) -> JobRecord:
        """Apply `change` to the stored record (a new queued one if none), atomically."""

    @abstractmethod
    def _insert(self, records: list[JobRecord]) -> None:
        """Store new records, all or none; JobExists if an id has a record."""

    @abstractmethod
    def _write(self, record: JobRecord, *, final: bool = False) -> None:
        """Store `record` as it is, over whatever is stored. `final`: the last write of
        an attempt under its lock, which a backend may send with the unlock, as long as
        it is committed before the lock is released."""

    def _write_many(self, records: list[JobRecord]) -> None:
        """Store the last writes of attempts under their locks (held by a batch), in
        one transaction, committed before the next write under them or the release of
        the locks, whichever comes first. This default writes them one by one."""
        for record in records:
            self._write(record, final=True)

    # --- reading and locking -------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        held = self._held.records.get(job_id, UNREAD)
        if held is not UNREAD:  # locked here, and the record known
            assert held is None or isinstance(held, JobRecord)
            return held
        record = self._read(job_id)
        if job_id in self._held.records:
            self._held.records[job_id] = record
        return record

    @contextlib.contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        if job_id in self._held.records:  # held already by this thread's batch()
            yield
            return
        with self._lock(job_id) as known:
            self._held.records[job_id] = known
            try:
                yield
            finally:
                del self._held.records[job_id]

    def batch(self, job_ids: Iterable[str]) -> contextlib.AbstractContextManager[None]:
        """A backend may hold the jobs' locks for the whole batch to group its writes
        (it calls `_begin_batch` once it holds them and `_end_batch` before it lets go);
        the default takes each job's lock in its turn, as `locked` does."""
        return contextlib.nullcontext()

    def _begin_batch(self, job_ids: Iterable[str]) -> None:
        """The locks of `job_ids` are held until `_end_batch`: their attempts' last
        writes may wait for it."""
        self._held.batch_ids.update(job_ids)

    def _end_batch(self, job_ids: Iterable[str]) -> None:
        """Commit what the batch held back; its locks are about to be released."""
        try:
            self.flush()
        finally:
            self._held.batch_ids.difference_update(job_ids)

    def flush(self) -> None:
        deferred = self._held.deferred
        if deferred:
            records = list(deferred.values())
            deferred.clear()
            self._write_many(records)

    def confirm_locked(self, job_id: str) -> None:
        if job_id not in self._held.records:
            raise StateStoreUnavailable(f"{self.job_type} job {job_id} is not locked here")

    def _transition(self, job_id: str, change: Change, *, final: bool = False) -> JobRecord:
        """`change` the record: one write under the job's lock, else a read-modify-write."""
        held = self._held
        if job_id not in held.records:
            return self._change(job_id, change)
        record = change(self.get(job_id) or self._new(job_id))
        if final and job_id in held.batch_ids:
            held.deferred[job_id] = record  # committed with the rest of the batch
        else:
            if held.deferred:  # what the batch held back goes first
                self.flush()
            self._write(record, final=final)
        held.records[job_id] = record
        return record

    # --- the transitions ----------------------------------------------------------------

    def require(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise UnknownJob(f"no state recorded for {self.job_type} job '{job_id}'")
        return record

    def queued(self, job_id: str) -> bool:
        # One insert, refused when the id has a record, rather than a read and then a
        # write: a record an executor child wrote in between is never set back to queued.
        try:
            self._insert([self._new(job_id)])
        except JobExists:
            return False
        return True

    def queued_many(self, job_ids: Iterable[str]) -> None:
        self._insert([self._new(job_id) for job_id in job_ids])

    def begin_attempt(self, job_id: str, attempt: int, worker: str, *,
                      restart: bool = False) -> JobRecord:
        cleared: dict[str, Any] = {"error": None, "result": None} if restart else {}
        return self._transition(job_id, lambda record: record.evolve(
            status=JobStatus.RUNNING, attempts=attempt, worker=worker, progress=None,
            **cleared))

    def progressed(self, job_id: str, progress: Progress, *,
                   attempt: AttemptRecord | None = None) -> JobRecord:
        if job_id not in self._held.records:
            # Outside the lock it would be a read-modify-write racing the job's own
            # result, which it could overwrite with `running`.
            raise InvalidProgress(f"{self.job_type} job {job_id}: progress is recorded only "
                                  "by the thread running the job (it holds the job's lock)")
        began: dict[str, Any] = {} if attempt is None else {
            "status": JobStatus.RUNNING, "attempts": attempt.attempt,
            "worker": attempt.worker}
        return self._transition(job_id, lambda record: record.evolve(
            progress=progress, **began))

    def succeeded(self, job_id: str, result: dict[str, Any], *,
                  attempt: AttemptRecord | None = None) -> JobRecord:
        began: dict[str, Any] = {} if attempt is None else {
            "attempts": attempt.attempt, "worker": attempt.worker}
        return self._transition(job_id, lambda record: record.evolve(
            status=JobStatus.SUCCEEDED, result=result, error=None, **began), final=True)

    def failed(self, job_id: str, attempt: int, error: dict[str, Any],
               reply: dict[str, Any], *, retrying: bool, worker: str | None = None
               ) -> JobRecord:
        began: dict[str, Any] = {} if worker is None else {"worker": worker}
        return self._transition(job_id, lambda record: record.evolve(
            status=JobStatus.RETRYING if retrying else JobStatus.FAILED, attempts=attempt,
            error=error, result=None if retrying else reply, **began), final=True)

    def refused(self, job_id: str, error: BaseException) -> JobRecord:
        described = {"class": type(error).__name__, "message": str(error),
                     "traceback": None, "attempt": 0}
        return self._transition(job_id, lambda record: record.evolve(
            status=JobStatus.FAILED, error=described))

    def reset_for_replay(self, job_id: str) -> JobRecord | None:
        # Under the job's lock: a copy still running finishes first, and its success
        # is then kept (the replayed copy is answered from it, never run again).
        with self.locked(job_id):
            previous = self.get(job_id)
            if previous is not None and previous.status is JobStatus.SUCCEEDED:
                return None
            self._transition(job_id, lambda record: record.evolve(
                status=JobStatus.QUEUED, attempts=0, error=None, result=None,
                progress=None))
        return previous

    def restore(self, record: JobRecord) -> None:
        self._write(record)

    def _new(self, job_id: str) -> JobRecord:
        return JobRecord(job_id, self.job_type, JobStatus.QUEUED)


def described_ids(job_ids: list[str]) -> str:
    """At most three ids, for an error message."""
    return ", ".join(job_ids[:3]) + (", ..." if len(job_ids) > 3 else "")


def refuse_existing(job_type: str, job_ids: list[str], where: str) -> JobExists:
    return JobExists(f"{job_type} job {described_ids(job_ids)} already has a state record "
                     f"({where})")
