"""export: a dataset (genes x samples) or a projection (samples x patterns) as CSV/TSV in
exports_dir, the same bytes however small the memory budget, importable back to the same
numbers; every bad input is a clear permanent error that leaves nothing behind."""

from __future__ import annotations

import os
import stat
import tracemalloc

import anndata
import numpy as np
import pytest
from matrix_jobs import (
    file_size_limit,
    hidden_files,
    make_folders,
    read_table,
    reply,
    run,
)
from projectr_fixtures import payload, write_cart, write_h5ad_target, write_text_target

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import InvalidMessage, PermanentJobError, TransientJobError
from gearqueue.jobs.dataset_import import DatasetImportJob
from gearqueue.jobs.export import ExportJob
from gearqueue.jobs.projectr import ProjectRJob

GENES = ["1", "5e3", "TRUE", "Gene with space", "g,comma", 'quote"d', "dup", "dup"]
SAMPLES = ["1", "s.2", "X 3", "cell-4"]

pytestmark = pytest.mark.filterwarnings("ignore:Variable names are not unique")


@pytest.fixture
def job(settings) -> ExportJob:
    return ExportJob(make_folders(settings))


@pytest.fixture
def values() -> np.ndarray:
    """genes x samples: counts, decimals, a tiny and a huge number, one missing value."""
    rng = np.random.default_rng(3)
    matrix = rng.integers(0, 50, size=(len(GENES), len(SAMPLES))).astype(float)
    matrix[1] = [0.1, 2.5e-12, -3.75, 1e20]
    matrix[4, 2] = np.nan
    return matrix


def exported(job: ExportJob, name: str):
    return job.settings.paths.exports_dir / name


def imported(job: ExportJob, dataset_id: str, upload: str) -> dict:
    return run(DatasetImportJob(job.settings), {"dataset_id": dataset_id, "upload": upload})


def write_projection(job: ExportJob, dataset_id: str, projection_id: str, text: str):
    folder = job.settings.paths.projections_dir / "by_dataset" / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{projection_id}.csv").write_text(text)


# --- happy paths -----------------------------------------------------------------------


def test_a_dataset_exports_genes_by_samples_and_imports_back_to_the_same_numbers(job,
                                                                                 values):
    write_text_target(job.settings.paths.uploads_dir / "in.csv", GENES, SAMPLES, values)
    imported(job, "ds", "in.csv")
    result = run(job, {"dataset_id": "ds", "format": "csv"})
    assert result == {"success": 1, "file": "ds.csv", "num_rows": 8, "num_columns": 4,
                      "message": "exported dataset 'ds' (ds.h5ad, genes x samples) to ds.csv "
                                 "in exports_dir: 8 rows x 4 columns"}
    genes, samples, read = read_table(exported(job, "ds.csv"))
    assert (genes, samples) == (GENES, SAMPLES)
    np.testing.assert_array_equal(read, values)
    text = exported(job, "ds.csv").read_text()
    assert "\n5e3,0.1,2.5e-12,-3.75,1e+20\n" in text  # shortest exact forms
    assert ",NA," in text or ",NA\n" in text
    assert stat.S_IMODE(exported(job, "ds.csv").stat().st_mode) == 0o644

    os.replace(exported(job, "ds.csv"), job.settings.paths.uploads_dir / "back.csv")
    imported(job, "back", "back.csv")
    adata = anndata.read_h5ad(job.settings.paths.datasets_dir / "back.h5ad")
    assert list(adata.var_names) == GENES and list(adata.obs_names) == SAMPLES
    np.testing.assert_array_equal(adata.X, values.T)


def test_tsv_format(job, values):
    write_h5ad_target(job.settings.paths.datasets_dir / "ds.h5ad", GENES, SAMPLES, values)
    result = run(job, {"dataset_id": "ds", "format": "tsv"})
    assert result["file"] == "ds.tsv"
    genes, samples, read = read_table(exported(job, "ds.tsv"), "\t")
    assert (genes, samples) == (GENES, SAMPLES)
    np.testing.assert_array_equal(read, values)


@pytest.mark.parametrize("layout", ["dense", "csr", "csc"])
def test_an_h5ad_streams_in_small_blocks_to_the_same_bytes(job, layout):
    rng = np.random.default_rng(5)
    matrix = rng.integers(0, 4, size=(23, 11)) * rng.random((23, 11))  # mostly zeros
    genes, samples = [f"g{i}" for i in range(23)], [f"s{j}" for j in range(11)]
    write_h5ad_target(job.settings.paths.datasets_dir / "ds.h5ad", genes, samples, matrix,
                      layout=layout)
    run(job, {"dataset_id": "ds", "format": "csv"})
    whole = exported(job, "ds.csv").read_bytes()
    job.budget = 3 * 11 * 8  # 3 genes per block, read a few samples at a time
    run(job, {"dataset_id": "ds", "format": "csv"})
    assert exported(job, "ds.csv").read_bytes() == whole
    assert read_table(exported(job, "ds.csv"))[0] == genes
    np.testing.assert_array_equal(read_table(exported(job, "ds.csv"))[2], matrix)


def test_a_large_h5ad_is_exported_in_bounded_memory(job):
    matrix = np.random.default_rng(2).integers(0, 100, size=(3000, 200)) / 4  # 4.8 MB
    write_h5ad_target(job.settings.paths.datasets_dir / "big.h5ad",
                      [f"g{i}" for i in range(3000)], [f"s{j}" for j in range(200)], matrix)
    job.budget = 240_000  # 150 genes per block: 20 passes over X, ~4 budgets at the peak
    tracemalloc.start()
    try:
        result = run(job, {"dataset_id": "big", "format": "tsv"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result["num_rows"], result["num_columns"]) == (3000, 200)
    assert peak < matrix.nbytes / 3, f"peak {peak / 1e6:.1f} MB"
    np.testing.assert_array_equal(read_table(exported(job, "big.tsv"), "\t")[2], matrix)


def test_float32_values_are_written_as_float32_prints_them(job):
    matrix = np.array([[0.1, 3.0], [1e-7, np.nan]], dtype=np.float32)
    write_h5ad_target(job.settings.paths.datasets_dir / "ds.h5ad", ["a", "b"], ["s1", "s2"],
                      matrix, dtype=np.float32)
    run(job, {"dataset_id": "ds", "format": "csv"})
    assert exported(job, "ds.csv").read_text() == ",s1,s2\na,0.1,3\nb,1e-07,NA\n"


def test_a_text_dataset_is_exported_too(job, values):
    write_text_target(job.settings.paths.datasets_dir / "ds.tsv", GENES, SAMPLES, values)
    result = run(job, {"dataset_id": "ds", "format": "csv"})
    assert (result["num_rows"], result["num_columns"]) == (8, 4)
    assert "(ds.tsv, genes x samples)" in result["message"]
    np.testing.assert_array_equal(read_table(exported(job, "ds.csv"))[2], values)


def test_a_projection_is_exported_as_csv_and_tsv(job):
    write_projection(job, "ds", "p1", ',P1,P2\ns1,0.5,NA\n"s,2",1e-05,2.0\n')
    write_projection(job, "ds", "p1.pval", ",P1,P2\ns1,0.01,0.2\n\"s,2\",0,1\n")
    result = run(job, {"dataset_id": "ds", "format": "tsv", "projection_id": "p1"})
    assert result == {"success": 1, "file": "ds.p1.tsv", "num_rows": 2, "num_columns": 2,
                      "message": "exported projection 'p1' of dataset 'ds' (samples x "
                                 "patterns) to ds.p1.tsv in exports_dir: 2 rows x 2 columns"}
    assert exported(job, "ds.p1.tsv").read_text() == "\tP1\tP2\ns1\t0.5\tNA\ns,2\t1e-05\t2\n"
    run(job, {"dataset_id": "ds", "format": "csv", "projection_id": "p1.pval"})
    assert read_table(exported(job, "ds.p1.pval.csv"))[0] == ["s1", "s,2"]


def test_an_export_replaces_the_last_one_and_removes_a_killed_exports_temp_file(job):
    write_projection(job, "ds", "p", ",P\ns1,1\n")
    exported(job, "ds.p.csv").write_text("an older export\n")
    stale = exported(job, ".ds.p.csv.k1ll3d.tmp")
    stale.write_text("half an export")
    run(job, {"dataset_id": "ds", "format": "csv", "projection_id": "p"})
    assert exported(job, "ds.p.csv").read_text() == ",P\ns1,1\n"
    assert hidden_files(job.settings.paths.exports_dir) == []


def test_import_then_projectr_then_export_the_projection(job):
    rng = np.random.default_rng(11)
    genes = [f"gene{i}" for i in range(30)]
    write_text_target(job.settings.paths.uploads_dir / "u.csv", genes, SAMPLES,
                      rng.gamma(2.0, 1.0, size=(30, 4)))
    write_cart(job.settings.paths.carts_dir / "cart.c1.tab", genes[5:], ["A", "B"],
               rng.gamma(2.0, 1.0, size=(25, 2)))
    imported(job, "ds", "u.csv")
    projectr = ProjectRJob(job.settings, engine="numpy")
    projectr.warm_up()
    projection = run(projectr, payload(dataset_id="ds", genecart_id="c1"))
    assert projection["success"] == 1 and projection["num_common_genes"] == 25
    result = run(job, {"dataset_id": "ds", "format": "csv",
                       "projection_id": projection["projection_id"]})
    source = (job.settings.paths.projections_dir / "by_dataset" / "ds"
              / f"{projection['projection_id']}.csv")
    assert read_table(exported(job, result["file"]))[:2] == (SAMPLES, ["A", "B"])
    np.testing.assert_array_equal(read_table(exported(job, result["file"]))[2],
                                  read_table(source)[2])


# --- bad messages and missing inputs ---------------------------------------------------

BAD_MESSAGES = {
    "no-format": ({"dataset_id": "ds"}, "missing field 'format'"),
    "h5ad-format": ({"dataset_id": "ds", "format": "h5ad"}, "'format' must be one of csv, tsv"),
    "no-dataset-id": ({"format": "csv"}, "missing field 'dataset_id'"),
    "dataset-id-up": ({"dataset_id": "../ds", "format": "csv"}, "'dataset_id' is not a valid"),
    "projection-id-up": ({"dataset_id": "ds", "format": "csv",
                          "projection_id": "../../../etc/passwd"},
                         "'projection_id' is not a valid id"),
    "projection-id-number": ({"dataset_id": "ds", "format": "csv", "projection_id": 7},
                             "'projection_id' must be a string"),
    "unknown-field": ({"dataset_id": "ds", "format": "csv", "file": "/tmp/x"},
                      "unknown field(s) 'file'"),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_a_bad_message_is_refused_before_any_work(job, case):
    message_payload, message = BAD_MESSAGES[case]
    with pytest.raises(InvalidMessage) as raised:
        run(job, message_payload)
    assert message in raised.value.message
    assert reply(job, message_payload) == {"success": -1, "message": raised.value.message}


def test_a_missing_dataset_names_the_datasets_folder(job):
    with pytest.raises(PermanentJobError) as raised:
        run(job, {"dataset_id": "nope", "format": "csv"})
    assert raised.value.message == (
        "dataset 'nope' not found (looked for nope.h5ad, nope.csv, nope.tsv) in datasets_dir "
        f"{job.settings.paths.datasets_dir}")


def test_a_missing_projection_names_its_file(job):
    with pytest.raises(PermanentJobError) as raised:
        run(job, {"dataset_id": "ds", "format": "csv", "projection_id": "p9"})
    path = job.settings.paths.projections_dir / "by_dataset" / "ds" / "p9.csv"
    assert raised.value.message == (f"projection 'p9' of dataset 'ds' not found: no {path} "
                                    "(has its projectr job finished?)")


@pytest.mark.parametrize("name, content, message", [
    ("ds.h5ad", b"not hdf5", "dataset ds.h5ad is not a readable h5ad (HDF5) file"),
    ("ds.csv", b"gene,s1\ng1,1\ng2,x\n",
     "dataset ds.csv line 3 (gene 'g2'), column 2 (sample 's1'): 'x' is not a number"),
    ("ds.tsv", b"", "dataset ds.tsv is empty"),
])
def test_a_broken_dataset_is_a_permanent_error(job, name, content, message):
    (job.settings.paths.datasets_dir / name).write_bytes(content)
    with pytest.raises(PermanentJobError) as raised:
        run(job, {"dataset_id": "ds", "format": "csv"})
    assert message in raised.value.message
    assert list(job.settings.paths.exports_dir.iterdir()) == []


def test_a_broken_projection_is_a_permanent_error(job):
    write_projection(job, "ds", "p", ",P1\ns1,0.5\ns2,oops\n")
    with pytest.raises(PermanentJobError, match=r"projection p\.csv, line 3, column 'P1': "
                                                r"'oops' is not a number"):
        run(job, {"dataset_id": "ds", "format": "csv", "projection_id": "p"})
    assert list(job.settings.paths.exports_dir.iterdir()) == []


@pytest.mark.parametrize("folder", ["exports_dir", "datasets_dir"])
def test_a_missing_data_folder_is_named_with_its_gear_ini_key(job, folder):
    path = getattr(job.settings.paths, folder)
    os.rmdir(path)
    with pytest.raises(PermanentJobError) as raised:
        run(job, {"dataset_id": "ds", "format": "csv"})
    assert raised.value.message == (f"{folder} {path} does not exist or is not a folder "
                                    f"(see [paths] {folder} in gear.ini)")


def test_a_write_failure_is_transient_and_leaves_nothing(job):
    matrix = np.arange(200 * 50, dtype=float).reshape(200, 50) / 7
    write_h5ad_target(job.settings.paths.datasets_dir / "ds.h5ad",
                      [f"g{i}" for i in range(200)], [f"s{j}" for j in range(50)], matrix)
    written = r"cannot write export .*/ds\.csv: \[Errno 27\] File too large"
    with file_size_limit(20_000), pytest.raises(TransientJobError, match=written):
        run(job, {"dataset_id": "ds", "format": "csv"})
    assert list(job.settings.paths.exports_dir.iterdir()) == []


# --- through the queue -----------------------------------------------------------------


@pytest.mark.slow
def test_exports_through_the_queue_with_a_real_consumer(make_config, start_consumer, values):
    config = make_config()
    settings = make_folders(load_settings(config))
    write_h5ad_target(settings.paths.datasets_dir / "ds.h5ad", GENES, SAMPLES, values)
    start_consumer(config, "export")
    with Client(settings) as client:
        result = client.call("export", {"dataset_id": "ds", "format": "tsv"}, timeout=60)
        missing = client.call("export", {"dataset_id": "ds", "format": "csv",
                                         "projection_id": "nope"}, timeout=30)
    assert result["success"] == 1 and result["file"] == "ds.tsv", result
    np.testing.assert_array_equal(
        read_table(settings.paths.exports_dir / "ds.tsv", "\t")[2], values)
    assert missing["success"] == -1 and "projection 'nope' of dataset 'ds' not found" in \
        missing["message"]
