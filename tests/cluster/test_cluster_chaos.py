"""Chaos 4: 1000 jobs across two hosts' consumers on the cluster, with the job-state
store on PostgreSQL, while consumers are killed with SIGKILL every few seconds, the node
holding the queue's leader is stopped twice (and started again), and the database is
restarted once.

The hosts are network namespaces (tests/netns.py); the RabbitMQ nodes and the private
PostgreSQL cluster listen on the test bridge's address. Proven by per-job marks and
state records: 0 lost, 0 done twice in effect, every job `succeeded`. The figures are
printed (pytest -s).

The faults are steps run at a number of succeeded jobs, one at a time, each in a thread
of its own so the kills go on meanwhile.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from chaos.harness import Feeder, Fleet, Ledger, wait_until
from netns import HostNetwork, NetHost
from private_cluster import PrivateCluster
from private_postgres import PrivatePostgres

from gearqueue.state import JobStatus
from gearqueue.topology import dead_queue, retry_queue

pytestmark = pytest.mark.slow

JOBS = 1000
KILL_EVERY = 3.0


@dataclass
class LeaderBounce:
    """Stop the node that holds the queue's leader, then start it again."""

    cluster: PrivateCluster
    queue: str
    stopped: list[str] = field(default_factory=list)
    new_leaders: list[str] = field(default_factory=list)
    seconds_away: list[float] = field(default_factory=list)

    def __call__(self) -> None:
        leader = self.cluster.queue_leader(self.queue)
        started = time.monotonic()
        self.cluster.stop_node(leader)
        self.stopped.append(leader.node)
        self.new_leaders.append(self.cluster.queue_leader(self.queue).node)
        self.cluster.start_node(leader)
        self.seconds_away.append(time.monotonic() - started)


@dataclass
class DatabaseRestart:
    """Restart the state database (a fast shutdown, as `systemctl restart postgresql`)."""

    database: PrivatePostgres
    seconds_away: list[float] = field(default_factory=list)

    def __call__(self) -> None:
        started = time.monotonic()
        self.database.restart()
        self.seconds_away.append(time.monotonic() - started)


@pytest.fixture
def bridged_postgres(host_network: HostNetwork) -> Iterator[PrivatePostgres]:
    """A private PostgreSQL the hosts reach over the test bridge."""
    database = PrivatePostgres(listen=(host_network.address,),
                               clients=(f"{host_network.address}/24",)).start()
    try:
        yield database
    finally:
        database.destroy()


@dataclass
class Step:
    """A fault run once `after` jobs have succeeded, in a thread of its own."""

    after: int
    name: str
    action: Callable[[], None]
    thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> None:
        def run() -> None:
            try:
                self.action()
            except BaseException as error:  # noqa: BLE001 - reported by the test
                self.error = error

        self.thread = threading.Thread(target=run, name=self.name, daemon=True)
        self.thread.start()

    @property
    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()


def test_1000_jobs_on_two_hosts_through_sigkills_two_leader_stops_and_a_database_restart(
        cluster_config, cluster: PrivateCluster, host_network: HostNetwork,
        hosts: list[NetHost], fleet: Fleet, bridged_postgres: PrivatePostgres) -> None:
    config = cluster_config(address=host_network.address,
                            echo_service={"retry_backoff": 0.2},
                            rabbitmq={"heartbeat": 5, "socket_timeout": 2},
                            state={"url": bridged_postgres.url_on(host_network.address)})
    ledger = Ledger.of(config)
    consumers = [fleet.start(config, f"{host.name[-2:]}", prefix=tuple(host.command()))
                 for host in hosts]
    job_ids = [f"job-{number}" for number in range(JOBS)]
    feeder = Feeder(cluster.nodes[0].url, config)
    started = time.monotonic()
    try:
        for number, job_id in enumerate(job_ids):
            feeder.publish(job_id, {"data": number, "sleep": 0.02, "mark": True},
                           reply=False)
        queue = feeder.service.queue
    finally:
        feeder.close()  # its node may be stopped below
    bounce = LeaderBounce(cluster, queue)
    database = DatabaseRestart(bridged_postgres)
    steps = [Step(JOBS // 5, "first leader stop", bounce),
             Step(JOBS * 2 // 5, "database restart", database),
             Step(JOBS * 3 // 5, "second leader stop", bounce)]

    rng = random.Random(13)
    next_kill = time.monotonic() + KILL_EVERY
    victim = 0
    succeeded = 0

    def chaos() -> None:
        nonlocal next_kill, victim, succeeded
        succeeded = ledger.count(job_ids, JobStatus.SUCCEEDED)
        for step in steps:
            if step.thread is None and succeeded >= step.after \
                    and all(other.done for other in steps if other.thread is not None):
                step.start()
        if time.monotonic() >= next_kill:
            consumer = consumers[victim]
            victim = 1 - victim
            if fleet.alive(consumer):
                fleet.kill(consumer)
                fleet.restart(consumer, wait=False)
            next_kill = time.monotonic() + KILL_EVERY * rng.uniform(0.75, 1.25)

    wait_until(lambda: succeeded == JOBS and all(step.done for step in steps),
               timeout=400, what=f"{JOBS} jobs succeeded and every step done", tick=chaos,
               poll=0.25)
    duration = time.monotonic() - started
    for step in steps:
        assert step.error is None, f"{step.name}: {step.error!r}"

    records = ledger.records(job_ids)
    marks = ledger.marks()
    reruns = ledger.reruns()
    redelivered = sum(1 for record in records.values() if record and record.attempts > 1)
    lost = [job_id for job_id in job_ids if job_id not in marks]
    waits = sum(consumer.log().count("the state database answers again")
                for consumer in consumers)
    print(f"\nchaos 4 (cluster): jobs {JOBS} on 2 hosts in {duration:.0f} s, kills "
          f"{fleet.kills}, leader stops {len(bounce.stopped)} "
          f"({', '.join(f'{s:.1f}' for s in bounce.seconds_away)} s away), database "
          f"restarts {len(database.seconds_away)} "
          f"({', '.join(f'{s:.1f}' for s in database.seconds_away)} s; consumers waited "
          f"for it {waits} times), jobs run again "
          f"{redelivered}, re-runs that found their effect made {len(reruns)}, lost "
          f"{len(lost)}, duplicated effects {len(set(marks) - set(job_ids))}")

    assert len(bounce.stopped) == 2 and len(database.seconds_away) == 1
    assert all(old != new for old, new in zip(bounce.stopped, bounce.new_leaders,
                                              strict=True))
    assert fleet.kills >= 5
    assert redelivered >= 1, "no kill hit a running job: the test injected nothing"
    assert all(record is not None and record.status is JobStatus.SUCCEEDED
               for record in records.values())
    assert lost == []
    assert sorted(marks) == sorted(job_ids)  # each effect once: one mark per job id
    assert len(reruns) <= fleet.kills
    assert all(earlier < attempt for _, attempt, earlier in reruns)
    cluster.ensure_running()
    feeder = Feeder(cluster.any_running().url, config)
    try:
        assert feeder.depth(queue) == 0
        assert feeder.depth(dead_queue(feeder.service)) == 0
        assert all(feeder.depth(retry_queue(feeder.service, n)) == 0 for n in (1, 2, 3))
    finally:
        feeder.close()
