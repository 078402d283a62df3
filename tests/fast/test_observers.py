"""Observers hear of every settled job after its ack, and one that fails changes nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence

from gearqueue.worker.observers import ConsumerObserver
from gearqueue.worker.settlement import Settled


class Recorder(ConsumerObserver):
    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.settled_jobs: list[tuple[str, str]] = []

    def batch_started(self, job_ids: Sequence[str]) -> None:
        self.started.append(list(job_ids))

    def settled(self, jobs: Sequence[Settled]) -> None:
        self.settled_jobs += [(job.envelope.job_id, job.verdict.value) for job in jobs]


class Broken(ConsumerObserver):
    def settled(self, jobs: Sequence[Settled]) -> None:
        raise RuntimeError("observer bug")


def test_observers_see_each_job_settled_after_its_ack(consumer, tag) -> None:
    recorder = Recorder()
    loop, channel = consumer(observers=[recorder])
    ids = [f"{tag}-{n}" for n in range(3)]
    channel.deliver(json.dumps({"data": 0}).encode(), ids[0])
    channel.deliver(json.dumps({"data": 1, "fail": "permanent"}).encode(), ids[1])
    channel.deliver(json.dumps({"data": 2}).encode(), ids[2])
    loop.serve(channel)  # type: ignore[arg-type]
    assert recorder.started == [ids]
    assert recorder.settled_jobs == [(ids[0], "succeeded"), (ids[1], "failed"),
                                     (ids[2], "succeeded")]
    assert [event.kind for event in channel.events][-2:] == ["ack", "cancel"]


def test_a_failing_observer_is_logged_and_the_others_still_run(consumer, tag, caplog) -> None:
    recorder = Recorder()
    loop, channel = consumer(observers=[Broken(), recorder])
    ids = [f"{tag}-{n}" for n in range(2)]
    for job_id in ids:
        channel.deliver(json.dumps({"data": job_id}).encode(), job_id)
    loop.serve(channel)  # type: ignore[arg-type]
    assert [kind for kind, _ in recorder.settled_jobs] == ids
    assert [event.kind for event in channel.events].count("reply") == 2
    assert "observer Broken failed in settled" in caplog.text
