"""contract = gear without a broker: gEAR's gear.ini, ids, status file, lock and numbers.

Expected numbers are computed here with NumPy/SciPy from gEAR's rules as gEAR's code
states them (IGS/gEAR www/api/resources/projectr.py), not taken from this code.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from gear_web import GearWebAPI
from projectr_fixtures import context, payload, read_projection, write_cart, write_text_target
from scipy.optimize import nnls

from gearqueue.config import load_settings
from gearqueue.errors import ConfigError, InvalidMessage, PermanentJobError
from gearqueue.jobs.projectr import ProjectRJob
from gearqueue.projectr.gear_contract import UNWEIGHTED_WITH_NMF, gear_projection_id
from gearqueue.projectr.gear_files import gear_lock
from gearqueue.worker.outcome import Outcome

#: Real R and a real broker: the slow tier.
pytestmark = pytest.mark.slow

#: gEAR's gear.ini.template, section by section and key by key; values of our own.
GEAR_INI = """\
[database]
user = tester
password = unused
host = localhost
name = gear_test

[email_sender]
address = nobody@example.org
password = unused

[content]
;; a comment as gEAR writes them
default_layout_share_id = abc123
spatial_dataset_location =

[test]
host = http://localhost/
user_name = Test User
user_email = test@example.org
user_institution = Nowhere
password = unused

[folders]
profile_domain_master_id = 101
cart_public_master_id = 110

[history]
enable_user_history = 1
history_count = 10

[projectR_service]
hostname = https://projectr.example.org
cloud_run_enabled = 0
queue_enabled = 1
queue_host = localhost
full_output = 1
contract = gear

[nemoarchive_import]
importer_id = x
gcp_project_id=y
credentials_json=/dev/null
queue_enabled = 0
queue_host = localhost

[uploader_service]
queue_enabled = 0
queue_host = localhost

[higlass]
admin_user = a
admin_pass = b
hostname = h
"""


def gear_root(tmp_path: Path, extra: str = "") -> Path:
    """gEAR's layout: gear.ini next to www/ (datasets, carts, projections)."""
    ini = tmp_path / "gear.ini"
    # state_dir: install.sh makes /var/lib/gear/state; a test keeps its state here.
    ini.write_text(GEAR_INI + f"\n[paths]\nstate_dir = {tmp_path}/state\n" + extra)
    for folder in ("datasets", "carts", "projections"):
        (tmp_path / "www" / folder).mkdir(parents=True, exist_ok=True)
    return ini


# --- gear.ini ----------------------------------------------------------------------------


def test_gears_own_gear_ini_loads_with_one_info_line(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gearqueue.config")
    settings = load_settings(gear_root(tmp_path), environ={})
    service = settings.service("projectr")
    assert (service.contract, service.queue, service.queue_durable) == ("gear", "projectr",
                                                                        False)
    assert service.queue_host == "localhost" and service.queue_enabled
    assert settings.paths.projections_dir == tmp_path / "www" / "projections"
    assert settings.paths.datasets_dir == tmp_path / "www" / "datasets"
    assert settings.paths.carts_dir == tmp_path / "www" / "carts"
    lines = [r.getMessage() for r in caplog.records if "gEAR's own settings" in r.getMessage()]
    assert len(lines) == 1
    for named in ("[database]", "[higlass]", "[uploader_service]",
                  "[projectR_service] hostname, cloud_run_enabled, full_output"):
        assert named in lines[0]
    # the other job types keep this project's contract
    assert settings.service("echo").contract == "gearqueue"
    assert settings.service("echo").queue_durable


def test_a_typo_in_our_section_still_fails(tmp_path) -> None:
    ini = gear_root(tmp_path)
    ini.write_text(ini.read_text().replace("queue_host = localhost\nfull_output",
                                           "queue_hots = localhost\nfull_output"))
    with pytest.raises(ConfigError, match="queue_hots"):
        load_settings(ini, environ={})


def test_an_unknown_section_still_fails_and_two_spellings_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown section"):
        load_settings(gear_root(tmp_path, "[rabitmq]\nheartbeat = 5\n"), environ={})
    with pytest.raises(ConfigError, match="given twice"):
        load_settings(gear_root(tmp_path, "[projectr_service]\nprefetch = 2\n"), environ={})


def test_gear_contract_refuses_queue_arguments_and_durable_can_be_turned_on(tmp_path) -> None:
    ini = gear_root(tmp_path)
    ini.write_text(ini.read_text().replace("contract = gear", "contract = gear\nmax_length = 9"))
    with pytest.raises(ConfigError, match="max_length"):
        load_settings(ini, environ={})
    ini.write_text(ini.read_text().replace("max_length = 9", "queue_durable = 1"))
    assert load_settings(ini, environ={}).service("projectr").queue_durable


# --- ids, refusals -----------------------------------------------------------------------


def test_projection_id_is_gears_hash_with_zscore() -> None:
    # gEAR: create_new_uuid(*(dataset_id, genecart_id, algorithm, zscore)), "-".join(str)
    for zscore, text in ((False, "ds1-cart7-nmf-False"), (True, "ds1-cart7-nmf-True")):
        expected = str(uuid.UUID(hashlib.md5(text.encode()).hexdigest()))
        assert gear_projection_id("ds1", "cart7", "nmf", zscore) == expected


@pytest.fixture
def gear_job(tmp_path):
    settings = load_settings(gear_root(tmp_path), environ={})
    return ProjectRJob(settings), settings


def test_message_without_projection_id_gets_gears_id(gear_job) -> None:
    job, _ = gear_job
    request = job.validate(payload(projection_id=None, zscore=True))
    assert request.projection_id == str(uuid.UUID(hashlib.md5(b"ds-cart-nmf-True").hexdigest()))


def test_unweighted_lists_are_refused_as_gear_refuses_them(gear_job) -> None:
    job, _ = gear_job
    with pytest.raises(InvalidMessage, match=re.escape(UNWEIGHTED_WITH_NMF)):
        job.validate(payload("fixednmf", scope="unweighted-list"))
    with pytest.raises(InvalidMessage, match=r"gene cart 'cart' is an unweighted gene list.*"
                                             r"MySQL.*cart\.cart\.tab"):
        job.validate(payload("pca", scope="unweighted-list"))


# --- numbers, files, status --------------------------------------------------------------


GENES = [f"g{i}" for i in range(60)]
SAMPLES = [f"s{j}" for j in range(12)]


def inputs(settings, target: np.ndarray, loadings: np.ndarray) -> None:
    write_text_target(settings.paths.datasets_dir / "ds.csv", GENES, SAMPLES, target)
    write_cart(settings.paths.carts_dir / "cart.cart.tab", GENES,
               [f"P{k}" for k in range(loadings.shape[1])], loadings)


def run(job: ProjectRJob, **fields) -> dict:
    return job.run(job.validate(payload(**fields)), context(job.settings))


def status_of(settings, projection_id: str) -> dict:
    path = settings.paths.projections_dir / "job_status" / f"job_{projection_id}.json"
    return json.loads(path.read_text())


def test_nmf_fills_missing_values_with_zero_and_writes_gears_files(gear_job) -> None:
    job, settings = gear_job
    rng = np.random.default_rng(1)
    loadings = rng.gamma(2.0, 1.0, (60, 3))
    target = loadings @ rng.uniform(0, 4, (3, 12)) + rng.normal(0, 0.1, (60, 12))
    target[[3, 17, 40], [0, 5, 5]] = np.nan
    loadings[7, 1] = np.nan
    inputs(settings, target, loadings)
    reply = run(job, algorithm="nmf", projection_id="p1", full_output=True)
    filled_l, filled_d = np.nan_to_num(loadings), np.nan_to_num(target)
    expected = np.linalg.lstsq(filled_l, filled_d, rcond=None)[0]
    folder = settings.paths.projections_dir / "by_dataset" / "ds"
    _, _, values = read_projection(folder / "p1.csv")
    np.testing.assert_allclose(values.T, expected, rtol=1e-9, atol=1e-12)
    assert (folder / "p1_pval.csv").is_file() and not (folder / "p1.pval.csv").exists()
    assert not (folder / "p1.csv.lock").exists()
    assert status_of(settings, "p1") == {"status": "complete", "result": reply, "error": None}
    assert reply["success"] == 1 and reply["projection_id"] == "p1"
    web = GearWebAPI(settings.paths.projections_dir, parameters=None)  # type: ignore[arg-type]
    assert web.output_file("ds", "cart", "nmf") == "p1"
    assert web.status("p1")["status"] == "complete" and web.status("p1") is None


def gear_fixednmf(target: np.ndarray, loadings: np.ndarray, zscore: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """gEAR's steps: zscore per gene (ddof 1), NaN -> 0, scale by min sum / sum, NNLS."""
    data = target.copy()
    if zscore:
        mean = np.nanmean(data, axis=1, keepdims=True)
        sd = np.nanstd(data, axis=1, ddof=1, keepdims=True)
        data = (data - mean) / sd
    data = np.nan_to_num(data, nan=0.0)
    sums = data.sum(axis=0)
    data = data / (sums / sums.min())
    coef = np.column_stack([nnls(loadings, data[:, s])[0] for s in range(data.shape[1])])
    return coef, sums


@pytest.mark.parametrize("zscore", [False, True])
def test_fixednmf_scales_each_sample_by_its_column_sum(gear_job, zscore) -> None:
    job, settings = gear_job
    rng = np.random.default_rng(2)
    loadings = rng.gamma(2.0, 1.0, (60, 3))
    target = loadings @ rng.uniform(0, 4, (3, 12)) * rng.uniform(0.5, 3, 12)
    target[5, 2] = np.nan
    inputs(settings, target, loadings)
    expected, sums = gear_fixednmf(target, loadings, zscore)
    # raw data: every factor positive (scaled after the fit); z-scored data also sums
    # below 0 (the path that scales before fitting): both are exercised
    assert (sums > 0).all() != zscore
    reply = run(job, algorithm="fixednmf", projection_id=f"f{int(zscore)}", zscore=zscore)
    _, _, values = read_projection(settings.paths.projections_dir / "by_dataset" / "ds"
                                   / f"{reply['projection_id']}.csv")
    np.testing.assert_allclose(values.T, expected, rtol=1e-7, atol=1e-10)


def test_a_nan_result_fails_the_job_with_gears_sentence(gear_job) -> None:
    job, settings = gear_job
    rng = np.random.default_rng(3)
    base = rng.gamma(2.0, 1.0, (60, 2))
    loadings = np.column_stack([base, base[:, 0]])  # P2 = P0: not estimable -> NA
    inputs(settings, rng.gamma(2.0, 1.0, (60, 12)), loadings)
    with pytest.raises(PermanentJobError, match=re.escape(
            "There are NaN values in the projection patterns.  Cannot proceed.")):
        run(job, algorithm="nmf", projection_id="nan")
    assert not (settings.paths.projections_dir / "by_dataset" / "ds" / "nan.csv").exists()


def test_final_failure_writes_failed_status(gear_job) -> None:
    job, settings = gear_job
    body = payload(dataset_id="nowhere", projection_id="bad1")
    outcome = Outcome(succeeded=False, reply={"success": -1, "message": "m"}, attempt=1,
                      message="dataset 'nowhere' not found")
    job.on_final_failure("j1", body, outcome)
    assert status_of(settings, "bad1") == {
        "status": "failed", "result": {"success": -1, "projection_id": "bad1"},
        "error": "dataset 'nowhere' not found"}
    job.on_final_failure("j2", None, outcome)  # nothing to name: no file, no error


# --- gEAR's lock -------------------------------------------------------------------------


def take_lock_as_gear_does(path: Path):
    """gEAR's create_lock_file: open "w+", write the pid, flock(LOCK_EX)."""
    handle = open(path, "w+")  # noqa: SIM115 - held across the test, as gEAR holds it
    handle.write(f"{os.getpid()}\n")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def test_workers_wait_for_gears_lock_and_gear_waits_for_ours(gear_job) -> None:
    job, settings = gear_job
    rng = np.random.default_rng(4)
    loadings = rng.gamma(2.0, 1.0, (60, 2))
    inputs(settings, loadings @ rng.uniform(0, 3, (2, 12)), loadings)
    folder = settings.paths.projections_dir / "by_dataset" / "ds"
    folder.mkdir(parents=True)
    lock = folder / "pl.csv.lock"
    gear_handle = take_lock_as_gear_does(lock)
    replies: list[dict] = []
    worker = threading.Thread(target=lambda: replies.append(run(job, algorithm="pca",
                                                                projection_id="pl")))
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive() and not replies  # waits on gEAR's flock
    # gEAR finishes: its CSV and index entry, then close and delete (gEAR's order)
    (folder / "pl.csv").write_text(",P0,P1\n" + "".join(f"{s},1.0,2.0\n" for s in SAMPLES))
    (folder / "projections.json").write_text(json.dumps({"cart": [{
        "uuid": "pl", "algorithm": "pca", "zscore": False, "num_common_genes": 60,
        "num_genecart_genes": 60, "num_dataset_genes": 60}]}))
    gear_handle.close()
    lock.unlink()
    worker.join(60)
    assert replies and replies[0]["success"] == 2  # found gEAR's result, did not recompute

    # ours held: gEAR's flock on the same name cannot be had
    with gear_lock(lock, purpose="test"), open(lock, "w+") as probe, \
            pytest.raises(BlockingIOError):
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not lock.exists()
