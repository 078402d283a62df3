"""What only the PostgreSQL backend has: its schema version, its lock on a connection, its
faults, its URL and password; and a consumer's job across a restart of the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from private_postgres import PrivatePostgres
from state_backends import scratch_database

from gearqueue.config import load_settings
from gearqueue.errors import ConfigError, StateStoreUnavailable
from gearqueue.state import JobStatus, open_store
from gearqueue.state.postgres import SCHEMA_VERSION, PostgresStore, conninfo


@pytest.fixture
def database() -> Iterator[str]:
    with scratch_database() as url:
        yield url


def test_open_store_with_a_state_url_is_postgresql(make_config, database: str) -> None:
    store = open_store(load_settings(make_config(state={"url": database})), "echo")
    assert isinstance(store, PostgresStore)
    store.check_writable()
    assert store.schema_version() == SCHEMA_VERSION


def test_a_schema_newer_than_the_code_is_refused_naming_the_database(database) -> None:
    PostgresStore(database, "echo").check_writable()
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute("UPDATE gear_schema SET version = %s", (SCHEMA_VERSION + 1,))
    store = PostgresStore(database.replace("postgres@", "postgres:secret@"), "echo")
    with pytest.raises(ConfigError, match=rf"\[state\].*url.*postgres:\*\*\*@127\.0\.0\.1.*"
                       rf"schema version {SCHEMA_VERSION + 1}, newer") as raised:
        store.check_writable()
    assert "secret" not in str(raised.value)
    with pytest.raises(ConfigError, match="newer"):
        store.get("job-1")  # not only at start-up


def test_an_unreachable_database_is_a_transient_error_and_a_config_error_at_start(
        ) -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/gear", "echo")
    with pytest.raises(StateStoreUnavailable, match=r"127\.0\.0\.1:1/gear"):
        store.get("job-1")
    with pytest.raises(ConfigError, match=r"\[state\].*url.*not reachable"):
        store.check_writable()


def test_the_password_comes_from_the_url_else_the_environment(monkeypatch) -> None:
    assert "password=secret" in conninfo("postgresql://gear@db/gear",
                                         {"GEAR_STATE_PASSWORD": "secret"})
    assert "password=given" in conninfo("postgresql://gear:given@db/gear",
                                        {"GEAR_STATE_PASSWORD": "secret"})
    assert "password" not in conninfo("postgresql://gear@db/gear", {})  # ~/.pgpass: libpq's


def test_check_config_masks_the_state_password(make_config, capsys) -> None:
    from gearqueue.cli import main

    config = make_config(state={"url": "postgresql://gear:hunter2@db-host/gear"})
    assert main(["--config", str(config), "check-config"]) == 0
    printed = capsys.readouterr().out
    assert "[state]\nurl = postgresql://gear:***@db-host/gear" in printed
    assert "hunter2" not in printed


def test_a_state_url_that_is_not_postgresql_is_a_config_error(make_config) -> None:
    with pytest.raises(ConfigError, match=r"\[state\].*url.*not a postgresql://"):
        load_settings(make_config(state={"url": "mysql://db/gear"}))


def lock_backend_pid(store: PostgresStore, job_id: str) -> int:
    return store._lock_connections.connections[job_id].info.backend_pid


def test_a_lost_lock_connection_makes_the_late_result_change_nothing(database) -> None:
    """Host A's lock connection dies mid-job (a cut, a restart, a kill); host B then
    gets the lock and finishes the job. A's late result must not be recorded."""
    host_a, host_b = PostgresStore(database, "echo"), PostgresStore(database, "echo")
    b_done = threading.Event()

    def host_b_runs_it() -> None:
        with host_b.locked("job-1"):
            record = host_b.require("job-1")
            host_b.begin_attempt("job-1", record.attempts + 1, "host-b")
            host_b.succeeded("job-1", {"success": 1, "by": "host-b"})
        b_done.set()

    try:
        with host_a.locked("job-1"):
            host_a.begin_attempt("job-1", 1, "host-a")
            host_a.confirm_locked("job-1")
            with psycopg.connect(database, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)",
                              (lock_backend_pid(host_a, "job-1"),))
            thread = threading.Thread(target=host_b_runs_it)
            thread.start()
            assert b_done.wait(20), "host B never got the lock"
            with pytest.raises(StateStoreUnavailable, match="lost the connection"):
                host_a.confirm_locked("job-1")
            host_a.succeeded("job-1", {"success": 1, "by": "host-a"})  # sent at the unlock
        pytest.fail("the late result was accepted")
    except StateStoreUnavailable as error:
        assert "lost the connection holding the lock" in str(error)
    finally:
        thread.join(10)
    record = host_a.require("job-1")  # a fresh pooled connection reads it
    assert (record.status, record.result, record.attempts, record.worker) == \
        (JobStatus.SUCCEEDED, {"success": 1, "by": "host-b"}, 2, "host-b")
    host_a.close()
    host_b.close()


@pytest.mark.slow
def test_the_store_works_again_after_the_database_restarts(private_postgres) -> None:
    store = PostgresStore(private_postgres.url, "echo")
    store.queued("before")
    private_postgres.stop()
    with pytest.raises(StateStoreUnavailable):
        store.get("before")
    private_postgres.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            assert store.require("before").status is JobStatus.QUEUED
            break
        except StateStoreUnavailable:
            assert time.monotonic() < deadline, "the store never reconnected"
            time.sleep(0.2)
    with store.locked("after"):
        store.begin_attempt("after", 1, "w")
        store.succeeded("after", {"success": 1})
    assert store.require("after").status is JobStatus.SUCCEEDED
    store.close()


@pytest.mark.slow
def test_a_consumers_jobs_survive_a_restart_of_the_database(
        make_config, start_consumer, private_postgres: PrivatePostgres) -> None:
    """The database restarts while a job runs: the job's lock and its connection are
    gone, so the job must not make its effect or record its result on them; it is run
    again once the database is back. Every job ends succeeded, each effect made once."""
    from chaos.harness import Ledger, wait_until

    from gearqueue.client import Client

    config = make_config(state={"url": private_postgres.url})
    consumer = start_consumer(config)
    ledger = Ledger.of(config)
    job_ids = [f"job-{n}" for n in range(6)]
    with Client(load_settings(config)) as client:
        for job_id in job_ids:
            client.submit("echo", {"data": job_id, "sleep": 0.6, "mark": True},
                          job_id=job_id)
    wait_until(lambda: ledger.count(["job-0"], JobStatus.RUNNING) == 1, 30, "job-0 running")
    private_postgres.restart()
    assert consumer.process is not None
    wait_until(lambda: ledger.count(job_ids, JobStatus.SUCCEEDED) == len(job_ids)
               or consumer.process.poll() is not None, 90, "every job succeeded")
    assert sorted(ledger.marks()) == job_ids
    assert ledger.reruns() == []  # no effect made twice
    assert consumer.process is not None and consumer.process.poll() is None, consumer.log()
    records = ledger.records(job_ids)
    assert records["job-0"] is not None and records["job-0"].attempts == 2, consumer.log()
    ledger.store.close()


def test_state_migrate_copies_the_sqlite_state_into_postgresql_once(
        make_config, database: str, capsys) -> None:
    from gearqueue.cli import main
    from gearqueue.state.sqlite import SqliteStore

    config = make_config()
    settings = load_settings(config)
    sqlite = SqliteStore(settings.paths.state_dir, "echo")
    sqlite.queued("waiting")
    sqlite.succeeded("done", {"success": 1, "echo": 7})
    sqlite.failed("broken", 4, {"class": "Busy"}, {"success": 0}, retrying=False)
    target = PostgresStore(database, "echo")
    newer = target.begin_attempt("waiting", 1, "host-b")  # written after the switch
    argv = ["--config", str(config), "state", "migrate", "--to", database]
    assert main(argv) == 0
    assert "echo: 2 record(s) copied" in capsys.readouterr().out
    assert {record.job_id: record for record in target.records()} == {
        "waiting": newer, "done": sqlite.require("done"), "broken": sqlite.require("broken")}
    assert main(argv) == 0  # again: nothing copied twice, nothing overwritten
    assert "echo: 0 record(s) copied" in capsys.readouterr().out
    assert target.require("waiting") == newer
    switched = open_store(load_settings(make_config("switched.ini", state={"url": database})),
                          "echo")
    assert switched.require("done").result == {"success": 1, "echo": 7}
    for store in (sqlite, target, switched):
        store.close()


def test_doctor_checks_the_state_database(make_config, database: str) -> None:
    from test_doctor import about, doctor

    config = make_config(state={"url": database}, echo_service={"queue_enabled": 0})
    code, findings = doctor(config, "echo")
    assert code == 0
    assert about(findings, "echo")[:2] == [
        ("ok", f"job-state database {database} is reachable, schema version "
               f"{SCHEMA_VERSION}"),
        ("ok", "job locks work (an advisory lock held on its own connection)")]
    unreachable = make_config("down.ini", state={"url": "postgresql://gear@127.0.0.1:1/x"},
                              echo_service={"queue_enabled": 0})
    code, findings = doctor(unreachable, "echo")
    assert code == 1
    level, message = about(findings, "echo")[0]
    assert level == "fail" and "[state]" in message and "not reachable" in message
