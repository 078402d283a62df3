"""ProjectR through the real broker: gEAR's web API message in, the reply out, bad input
dead-lettered, and two consumers (R in their executor children) sharing the work."""

from __future__ import annotations

import time

import numpy as np
import pytest
from amqp import PlainPublisher
from consumers import ConsumerProcess
from projectr_fixtures import generated, read_projection, write_cart, write_text_target

from gearqueue.config import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("projectr-queue")
    queue = f"t{time.time_ns()}.projectr_jobs"
    config = folder / "gear.ini"
    config.write_text(
        "[rabbitmq]\nurl = amqp://guest:guest@127.0.0.1:5672/%2F\n"
        "[paths]\nstate_dir = var/state\ndatasets_dir = var/datasets\n"
        "carts_dir = var/carts\nprojections_dir = var/projections\n"
        f"[projectr_service]\nqueue = {queue}\nretry_backoff = 0.2\n")
    paths = load_settings(config).paths
    paths.projections_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    loadings, truth, target = generated(rng, 2000, 400, 5, noise=0.01)
    genes = [f"ENSG{i:011d}" for i in range(2000)]
    write_text_target(paths.datasets_dir / "ds.csv", genes, [f"cell-{i}" for i in range(400)],
                      target)
    write_cart(paths.carts_dir / "cart.cart.tab", genes, [f"P{k}" for k in range(5)],
               loadings)
    consumers = [ConsumerProcess(config, "projectr", str(n)).start(timeout=60)
                 for n in (1, 2)]
    publisher = PlainPublisher(queue)
    yield paths, truth, publisher, consumers
    publisher.close()
    for consumer in consumers:
        consumer.stop()


def gear_message(**fields) -> dict:
    """What gEAR's web API publishes (its request parser's fields, with null defaults)."""
    return {"genecart_id": "cart", "scope": "weighted-list", "algorithm": "nmf",
            "analysis": None, "analysis_owner_id": None, "projection_id": None,
            "dataset_id": "ds", "session_id": "a-session", "zscore": False,
            "full_output": False, **fields}


def test_gear_message_is_projected_and_answered(served):
    paths, truth, publisher, _ = served
    publisher.publish(gear_message(), "one", message_id=f"one-{time.time_ns()}")
    publisher.wait_replies(1, timeout=60)
    reply = publisher.replies.pop("one")[0]
    assert reply["success"] == 1, reply
    assert reply["message"] == ("Found 2000 common genes between the target dataset (2000 "
                                "genes) and the pattern file (2000 genes).")
    samples, patterns, values = read_projection(
        paths.projections_dir / "by_dataset" / "ds" / f"{reply['projection_id']}.csv")
    assert samples[:2] == ["cell-0", "cell-1"] and patterns == ["P0", "P1", "P2", "P3", "P4"]
    np.testing.assert_allclose(values.T, truth, atol=0.01)


def test_identical_messages_at_once_compute_once(served):
    _, _, publisher, _ = served
    body = gear_message(algorithm="fixednmf", projection_id="twice")
    for name in ("first", "second"):
        publisher.publish(body, name, message_id=f"{name}-{time.time_ns()}")
    publisher.wait_replies(2, timeout=60)
    outcomes = sorted(publisher.replies.pop(name)[0]["success"] for name in ("first", "second"))
    assert outcomes == [1, 2]


def test_bad_input_is_answered_and_dead_lettered_and_consumers_live_on(served):
    _, _, publisher, consumers = served
    dead_before = publisher.depth(publisher.queue + ".dead")
    publisher.publish(gear_message(dataset_id="missing"), "bad",
                      message_id=f"bad-{time.time_ns()}")
    publisher.wait_replies(1, timeout=60)
    reply = publisher.replies.pop("bad")[0]
    assert reply["success"] == -1 and reply["message"] == (
        "dataset 'missing' not found (looked for missing.h5ad, missing.csv, missing.tsv)")
    deadline = time.monotonic() + 10
    while publisher.depth(publisher.queue + ".dead") != dead_before + 1:
        assert time.monotonic() < deadline, "the bad message was not dead-lettered"
        time.sleep(0.05)
    publisher.publish(gear_message(algorithm="pca"), "after", message_id=f"after-{time.time_ns()}")
    publisher.wait_replies(1, timeout=60)
    assert publisher.replies.pop("after")[0]["success"] == 1
    assert all(consumer.process.poll() is None for consumer in consumers)
