"""gEAR's web API, as gEAR's code behaves, against our projectr consumer on a private broker.

gEAR's own gear.ini (its template's sections and keys, values of our own) with
`contract = gear` is the consumer's config; the broker is a private node, because a
test restarts it and gEAR's queue is plainly `projectr`. The scenario runs in order:
publisher first on a fresh broker, consumer first, a duplicate request, bad messages,
a job waiting while the consumer is down, broker restarts, and a crashed child.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pika
import pika.exceptions
import pytest
from consumers import ConsumerProcess
from gear_web import GearWebAPI
from private_broker import PrivateBroker
from projectr_fixtures import (
    generated,
    read_projection,
    write_cart,
    write_h5ad_target,
    write_text_target,
)
from test_projectr_gear import GEAR_INI

from gearqueue.cli.doctor import diagnose
from gearqueue.config import load_settings

#: Real R and a real broker: the slow tier.
pytestmark = pytest.mark.slow

GENES = [f"ENSG{i:011d}" for i in range(500)]
SAMPLES = [f"cell-{j}" for j in range(80)]


@pytest.fixture(scope="module")
def gear_site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gear-root")
    broker = PrivateBroker(root / "broker").start()
    ini = root / "gear.ini"
    # state_dir: install.sh makes /var/lib/gear/state; max_retries 0: a crash is final.
    ini.write_text(GEAR_INI.replace("contract = gear", "contract = gear\nmax_retries = 0")
                   + f"\n[paths]\nstate_dir = {root}/state\n")
    environ = {**os.environ, "GEAR_RABBITMQ_URL": broker.url}
    settings = load_settings(ini, environ=environ)
    for folder in ("datasets", "carts", "projections"):
        (root / "www" / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    loadings, truth, target = generated(rng, len(GENES), len(SAMPLES), 4, noise=0.01)
    write_h5ad_target(settings.paths.datasets_dir / "ds.h5ad", GENES, SAMPLES, target)
    write_cart(settings.paths.carts_dir / "cart.cart.tab", GENES,
               [f"P{k}" for k in range(4)], loadings)
    consumer = ConsumerProcess(ini, "projectr", "1", env={"GEAR_RABBITMQ_URL": broker.url})
    web = GearWebAPI(settings.paths.projections_dir, broker.parameters())
    site = {"root": root, "broker": broker, "settings": settings, "consumer": consumer,
            "web": web, "truth": truth, "loadings": loadings, "target": target}
    try:
        yield site
    finally:
        consumer.stop()
        broker.close()


def queue_exists(broker: PrivateBroker, name: str) -> int | None:
    """Messages waiting in `name`, or None if there is no such queue."""
    connection = pika.BlockingConnection(broker.parameters())
    try:
        return connection.channel().queue_declare(name, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404
        return None
    finally:
        if connection.is_open:
            connection.close()


def projection(site, projection_id: str) -> np.ndarray:
    path = site["settings"].paths.projections_dir / "by_dataset" / "ds" / f"{projection_id}.csv"
    samples, patterns, values = read_projection(path)
    assert samples == SAMPLES and patterns == ["P0", "P1", "P2", "P3"]
    return values


def test_publisher_first_on_a_fresh_broker(gear_site) -> None:
    web, consumer = gear_site["web"], gear_site["consumer"]
    # Nothing declared gEAR's exchange yet: gEAR's own publish fails, as with gEAR's
    # consumer down; its queue is declared (non-durable) before the publish fails.
    first = web.request("ds", "cart", "nmf")
    assert first["status"] == "failed" and "no exchange 'message'" in first["error"]
    assert queue_exists(gear_site["broker"], "projectr") == 0
    consumer.start(timeout=120)  # declares over gEAR's non-durable queue: no 406, no rc 2
    again = web.request("ds", "cart", "nmf")  # gEAR deletes a failed status and re-runs
    projection_id = again["result"]["projection_id"]
    final = web.poll(projection_id)
    assert final["status"] == "complete" and final["error"] is None
    assert final["result"]["success"] == 1 and final["result"]["num_common_genes"] == 500
    assert final["result"]["message"].startswith("Found 500 common genes")
    assert web.status(projection_id) is None  # ProjectRStatus deleted it once complete
    assert web.output_file("ds", "cart", "nmf") == projection_id
    np.testing.assert_allclose(projection(gear_site, projection_id).T, gear_site["truth"],
                               atol=0.01)
    folder = gear_site["settings"].paths.projections_dir / "by_dataset" / "ds"
    assert (folder / f"{projection_id}_pval.csv").is_file()
    # the repeated full-output request is complete at once, not "already pending"
    assert web.request("ds", "cart", "nmf")["status"] == "complete"


def test_consumer_first(gear_site) -> None:
    web = gear_site["web"]
    projection_id = web.request("ds", "cart", "pca")["result"]["projection_id"]
    assert web.poll(projection_id)["status"] == "complete"
    expected = gear_site["target"].T @ gear_site["loadings"]
    np.testing.assert_allclose(projection(gear_site, projection_id), expected, rtol=1e-9)


def test_duplicate_request_computes_once(gear_site) -> None:
    web, consumer = gear_site["web"], gear_site["consumer"]
    message = {"dataset_id": "ds", "session_id": "s", "projection_id": "dup",
               "genecart_id": "cart", "scope": "weighted-list", "algorithm": "fixednmf",
               "zscore": False, "full_output": True}
    web.publish(message)  # two web requests that raced past the status-file check
    web.publish(message)
    consumer.wait_for_log("projection dup is already complete", timeout=60)
    assert consumer.log().count("projection dup: ") == 1
    assert web.poll("dup")["status"] == "complete"
    index = json.loads((gear_site["settings"].paths.projections_dir / "by_dataset" / "ds"
                        / "projections.json").read_text())
    assert [entry["uuid"] for entry in index["cart"]].count("dup") == 1


def test_bad_messages_fail_in_the_status_file(gear_site) -> None:
    web = gear_site["web"]
    missing = web.request("missing", "cart", "pca")
    status = web.poll(missing["result"]["projection_id"])
    assert status["status"] == "failed"
    assert status["error"].startswith("dataset 'missing' not found")
    unweighted = web.request("ds", "cart", "nmf", scope="unweighted-list", projection_id="uw")
    assert unweighted["status"] == "pending"
    assert web.poll("uw")["error"] == "Unweighted gene lists cannot be used with NMF algorithms."
    assert queue_exists(gear_site["broker"], "projectr.dead") == 2


def test_a_job_waits_while_the_consumer_is_down(gear_site) -> None:
    web, consumer = gear_site["web"], gear_site["consumer"]
    consumer.stop()
    waiting = web.request("ds", "cart", "binary")  # the exchange outlives the consumer
    assert waiting["status"] == "pending"
    assert queue_exists(gear_site["broker"], "projectr") == 1
    consumer.start(timeout=120)
    assert web.poll(waiting["result"]["projection_id"])["status"] == "complete"


def test_broker_restart(gear_site) -> None:
    web, consumer, broker = gear_site["web"], gear_site["consumer"], gear_site["broker"]
    starts = consumer.log().count("consuming from")
    broker.restart()
    consumer.wait_for_log("consuming from", timeout=120, count=starts + 1)
    # the reconnect declared gEAR's exchange, queue and binding again
    projection_id = web.request("ds", "cart", "nmf", zscore=True)["result"]["projection_id"]
    assert web.poll(projection_id)["status"] == "complete"
    # The cost of gEAR's non-durable queue: a job waiting through a restart is lost, and
    # its status file stays pending (docs/projectr.md, Running under gEAR).
    consumer.stop()
    lost = web.request("ds", "cart", "fixednmf", zscore=True)
    assert queue_exists(broker, "projectr") == 1
    broker.restart()
    assert queue_exists(broker, "projectr") is None
    assert web.status(lost["result"]["projection_id"])["status"] == "pending"
    consumer.start(timeout=120)


def executor_children(pid: int) -> list[int]:
    """The executor children of consumer `pid` (the one running the job, and a successor
    started ahead of recycling, if any); not multiprocessing's resource tracker."""
    children = [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    found = [child for child in children
             if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()]
    assert found, children
    return found


def test_a_crashed_child_fails_the_status_file(gear_site) -> None:
    web, consumer = gear_site["web"], gear_site["consumer"]
    rng = np.random.default_rng(5)
    big = rng.gamma(2.0, 1.0, (len(GENES), 1))
    # a text target of this size takes seconds to parse: time to kill its child
    wide = np.repeat(big, 6000, axis=1)
    write_text_target(gear_site["settings"].paths.datasets_dir / "big.csv", GENES,
                      [f"c{j}" for j in range(wide.shape[1])], wide)
    projection_id = web.request("big", "cart", "pca")["result"]["projection_id"]
    path = web.status_path(projection_id)
    deadline = time.monotonic() + 60
    while json.loads(path.read_text())["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert consumer.process is not None
    for child in executor_children(consumer.process.pid):  # children of our consumer
        os.kill(child, signal.SIGKILL)
    status = web.poll(projection_id)
    assert status["status"] == "failed" and "executor child died" in status["error"]


def test_doctor_says_which_contract(gear_site) -> None:
    settings = load_settings(gear_site["root"] / "gear.ini",
                             environ={"GEAR_RABBITMQ_URL": gear_site["broker"].url})
    messages = [finding.message for finding in diagnose(settings, ["projectr"], environ={})]
    assert any(m.startswith("contract = gear: queue 'projectr' NOT durable, bound to gEAR's "
                            "topic exchange 'message'") for m in messages), messages
    assert "gEAR's exchange exists" in messages
    assert any("declared as configured" in m for m in messages), messages
