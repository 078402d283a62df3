"""ProjectR outputs: gEAR's layout, reuse of finished projections (success 2), one
computation per projection id across processes, and index updates that lose nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from projectr_fixtures import (
    generated,
    output_path,
    payload,
    read_projection,
    run_job,
    write_cart,
    write_text_target,
)

from gearqueue.files import exclusive
from gearqueue.jobs.projectr import ProjectRJob
from gearqueue.projectr.outputs import ProjectionFiles, read_index

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
CHILD = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import projectr_fixtures as f; " \
        f"f.child_main()"


@pytest.fixture
def job(settings) -> ProjectRJob:
    paths = settings.paths
    paths.projections_dir.mkdir(parents=True)
    loadings, _, target = generated(np.random.default_rng(0), 50, 6, 3)
    genes = [f"g{i}" for i in range(50)]
    write_text_target(paths.datasets_dir / "ds.csv", genes, [f"s{i}" for i in range(6)], target)
    write_cart(paths.carts_dir / "cart.cart.tab", genes, ["P0", "P1", "P2"], loadings)
    job = ProjectRJob(settings)
    job.warm_up()
    return job


def files_of(job: ProjectRJob, projection_id: str) -> ProjectionFiles:
    return ProjectionFiles(job.settings.paths.projections_dir, "ds", "cart", projection_id)


def test_outputs_follow_gears_layout(job):
    reply = run_job(job, payload(full_output=True))
    files = files_of(job, reply["projection_id"])
    assert files.csv.is_file() and files.pval_csv.is_file()
    for path in (files.csv, files.pval_csv):
        link = files.genecart_dir / path.name
        assert link.is_symlink() and link.read_bytes() == path.read_bytes()
    entry = {"uuid": reply["projection_id"], "algorithm": "nmf", "num_common_genes": 50,
             "num_genecart_genes": 50, "num_dataset_genes": 50, "zscore": False,
             "scope": "weighted-list", "full_output": True}
    assert read_index(files.dataset_dir / "projections.json") == {"cart": [entry]}
    assert read_index(files.genecart_dir / "projections.json") == {"ds": [entry]}
    leftovers = [p.name for p in job.settings.paths.projections_dir.rglob("*.tmp")]
    assert leftovers == []


def test_default_projection_id_is_gears_uuid(job):
    reply = run_job(job, payload())
    digest = hashlib.md5(b"ds-cart-nmf").hexdigest()
    assert reply["projection_id"] == str(uuid.UUID(digest))
    assert run_job(job, payload(zscore=True))["projection_id"] != reply["projection_id"]


def test_identical_request_reuses_the_finished_projection(job):
    first = run_job(job, payload())
    path = output_path(job.settings, first)
    stamp = path.stat().st_mtime_ns
    second = run_job(job, payload())
    assert first["success"] == 1 and second["success"] == 2
    assert {k: v for k, v in second.items() if k != "success"} == \
        {k: v for k, v in first.items() if k != "success"}
    assert path.stat().st_mtime_ns == stamp  # not recomputed


def test_projection_left_without_its_index_entry_is_recomputed(job):
    first = run_job(job, payload())
    index = files_of(job, first["projection_id"]).dataset_dir / "projections.json"
    index.unlink()  # as if the worker died between the CSV and the index
    assert run_job(job, payload())["success"] == 1


def test_full_output_request_recomputes_a_projection_without_pvalues(job):
    assert run_job(job, payload())["success"] == 1
    full = run_job(job, payload(full_output=True))
    assert full["success"] == 1
    assert output_path(job.settings, full, suffix=".pval.csv").is_file()
    assert run_job(job, payload())["success"] == 2  # p-values on top do not hurt


def test_same_projection_id_with_another_algorithm_is_recomputed(job):
    assert run_job(job, payload(projection_id="mine"))["success"] == 1
    reply = run_job(job, payload(algorithm="pca", projection_id="mine"))
    assert reply["success"] == 1
    entries = read_index(files_of(job, "mine").dataset_dir / "projections.json")["cart"]
    assert [entry["algorithm"] for entry in entries] == ["pca"]


def test_projection_computed_by_gear_is_reused(job):
    files = files_of(job, "legacy")
    files.dataset_dir.mkdir(parents=True)
    files.csv.write_text(",P0\ns0,1.0\n")
    (files.dataset_dir / "projections.json").write_text(json.dumps({"cart": [
        {"uuid": "legacy", "is_pca": 1, "num_common_genes": 7, "num_genecart_genes": 8,
         "num_dataset_genes": 9}]}))
    reply = run_job(job, payload(algorithm="pca", projection_id="legacy"))
    assert reply == {"success": 2, "projection_id": "legacy", "num_common_genes": 7,
                     "num_genecart_genes": 8, "num_dataset_genes": 9,
                     "message": "Found 7 common genes between the target dataset (9 genes) "
                                "and the pattern file (8 genes)."}


def start_child(config: Path, body: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(config), json.dumps(body)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_identical_requests_at_once_compute_once(job, settings):
    files = files_of(job, "shared")
    body = payload(projection_id="shared")
    with exclusive(files.lock, purpose="test"):
        children = [start_child(settings.source, body) for _ in range(2)]
        time.sleep(4)  # both start R and block on the projection's lock
    outputs = [child.communicate(timeout=120) for child in children]
    replies = [json.loads(out) for out, _ in outputs]
    assert sorted(reply["success"] for reply in replies) == [1, 2], outputs
    assert all("waiting for the lock" in err for _, err in outputs)
    assert replies[0]["num_common_genes"] == replies[1]["num_common_genes"] == 50
    _, _, values = read_projection(files.csv)
    assert values.shape == (6, 3)


def test_a_killed_lock_holder_leaves_no_stale_lock(job, settings):
    files = files_of(job, "after-kill")
    code = ("import sys, time; from pathlib import Path; from gearqueue.files import exclusive\n"
            "with exclusive(Path(sys.argv[1]), purpose='x'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(files.lock)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    holder.stdout.close()
    assert run_job(job, payload(projection_id="after-kill"))["success"] == 1


def test_concurrent_index_updates_lose_no_entry(tmp_path):
    index = tmp_path / "projections.json"
    code = ("import sys; from pathlib import Path; "
            "from gearqueue.projectr.outputs import update_index\n"
            "for n in range(25):\n"
            "    update_index(Path(sys.argv[1]), sys.argv[2], "
            "{'uuid': f'{sys.argv[3]}-{n}', 'algorithm': 'nmf'})\n")
    seen_invalid: list[str] = []
    stop = threading.Event()

    def read_while_writing() -> None:
        while not stop.is_set():
            if index.exists():
                text = index.read_text()
                try:
                    json.loads(text)
                except json.JSONDecodeError:
                    seen_invalid.append(text)

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    # two writers per key: they append to the same list at the same time
    writers = [subprocess.Popen([sys.executable, "-c", code, str(index), key, f"w{n}"])
               for n, key in enumerate(("k0", "k1", "k0", "k1"))]
    try:
        assert [writer.wait(120) for writer in writers] == [0, 0, 0, 0]
    finally:
        stop.set()
        reader.join()
    result = read_index(index)
    assert sorted(len(entries) for entries in result.values()) == [50, 50]
    assert len({entry["uuid"] for entries in result.values() for entry in entries}) == 100
    assert seen_invalid == []
