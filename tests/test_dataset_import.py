"""dataset_import: an upload becomes <datasets_dir>/<id>.h5ad that anndata and ProjectR
read with the same ids and numbers; every bad input is a clear permanent error that
leaves nothing behind; the same upload twice is success 2."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import threading
import tracemalloc

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matrix_jobs import file_size_limit, hidden_files, make_folders, reply, run
from projectr_fixtures import write_h5ad_target, write_text_target

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import InvalidMessage, PermanentJobError, TransientJobError
from gearqueue.jobs.dataset_import import DatasetImportJob
from gearqueue.matrices.convert import text_to_h5ad
from gearqueue.matrices.h5ad_writer import read_provenance
from gearqueue.matrices.targets import open_target
from gearqueue.state import JobStatus, open_store

# Ids that a data.frame round trip through R would have mangled, and a repeated gene.
GENES = ["1", "5e3", "TRUE", "Gene with space", "HLA-A*02", "g,comma", "NA", "dup", "dup"]
SAMPLES = ["1", "s.2", "X 3", "cell-4", "NA"]

pytestmark = pytest.mark.filterwarnings("ignore:Variable names are not unique")


@pytest.fixture
def job(settings) -> DatasetImportJob:
    return DatasetImportJob(make_folders(settings))


@pytest.fixture
def values() -> np.ndarray:
    """genes x samples, with zeros, decimals and one missing value."""
    rng = np.random.default_rng(7)
    matrix = np.round(rng.gamma(1.0, 10.0, size=(len(GENES), len(SAMPLES))), 3)
    matrix[matrix < 5] = 0.0
    matrix[2, 3] = np.nan
    return matrix


def upload(job: DatasetImportJob, name: str) -> os.PathLike:
    return job.settings.paths.uploads_dir / name


def dataset(job: DatasetImportJob, dataset_id: str = "ds"):
    return job.settings.paths.datasets_dir / f"{dataset_id}.h5ad"


def assert_same(left: np.ndarray, right: np.ndarray) -> None:
    np.testing.assert_array_equal(left, right)  # NaN == NaN here, exactly equal otherwise


# --- happy paths -----------------------------------------------------------------------


def test_csv_upload_becomes_an_h5ad_read_alike_by_anndata_and_projectr(job, values):
    path = write_text_target(upload(job, "counts.csv"), GENES, SAMPLES, values)
    result = run(job, {"dataset_id": "ds", "upload": "counts.csv"})
    assert result["success"] == 1
    assert result["dataset_id"] == "ds"
    assert (result["num_genes"], result["num_samples"]) == (9, 5)
    assert result["num_duplicate_genes"] == 1 and result["duplicate_genes"] == ["dup"]
    assert result["num_missing_values"] == 1
    assert "'dup'" in result["message"] and "ProjectR uses the first row" in result["message"]
    assert result["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    adata = anndata.read_h5ad(dataset(job))
    assert list(adata.obs_names) == SAMPLES and list(adata.var_names) == GENES
    assert_same(adata.X, values.T)

    target = open_target(job.settings.paths.datasets_dir, "ds")
    try:
        assert target.sample_ids == SAMPLES and target.gene_ids == GENES
        out = np.empty((len(SAMPLES), len(GENES)))
        target.read(0, len(SAMPLES), np.arange(len(GENES)), out)
        assert_same(out, values.T)
    finally:
        target.close()
    assert stat.S_IMODE(dataset(job).stat().st_mode) == 0o644
    assert read_provenance(dataset(job))["upload"] == "counts.csv"
    assert hidden_files(job.settings.paths.datasets_dir) == []


def test_r_write_table_tsv_with_bom_crlf_quotes_and_missing_cells(job):
    # R's write.table: no cell above the row names, quoted strings, NA; plus a BOM and CRLF.
    text = ('\ufeff"s1"\t"s 2"\r\n"g1"\t1\tNA\r\n"g\t2"\t\t2.5e-3\r\n\r\n"g3"\t-4\tNaN\r\n')
    upload(job, "r.tsv").write_bytes(text.encode())
    result = run(job, {"dataset_id": "ds", "upload": "r.tsv"})
    assert (result["num_genes"], result["num_samples"], result["num_missing_values"]) == \
        (3, 2, 3)
    adata = anndata.read_h5ad(dataset(job))
    assert list(adata.obs_names) == ["s1", "s 2"]
    assert list(adata.var_names) == ["g1", "g\t2", "g3"]
    assert_same(adata.X, np.array([[1, np.nan, -4], [np.nan, 0.0025, np.nan]]))


def test_gzip_compressed_csv_and_format_given_for_an_unusual_name(job, values):
    text = write_text_target(upload(job, "plain.csv"), GENES, SAMPLES, values).read_bytes()
    upload(job, "counts.csv.gz").write_bytes(gzip.compress(text))
    upload(job, "counts.dat").write_bytes(text)
    assert run(job, {"dataset_id": "gz", "upload": "counts.csv.gz"})["num_genes"] == 9
    assert run(job, {"dataset_id": "dat", "upload": "counts.dat",
                     "format": "csv"})["num_genes"] == 9
    for name in ("gz", "dat"):
        assert_same(anndata.read_h5ad(dataset(job, name)).X, values.T)


def test_blocks_are_joined_in_order_whichever_parser_reads_them(tmp_path):
    # 2 genes per block; the block with "NA" goes through the cell-by-cell parser.
    genes = [f"g{i}" for i in range(7)]
    matrix = np.arange(21, dtype=float).reshape(7, 3) / 4
    matrix[3, 1] = np.nan
    source = write_text_target(tmp_path / "in.csv", genes, ["a", "b", "c"], matrix)
    summary = text_to_h5ad(source, ",", tmp_path / "out.h5ad", label="test", block_values=6)
    assert (summary.num_genes, summary.num_missing_values) == (7, 1)
    adata = anndata.read_h5ad(tmp_path / "out.h5ad")
    assert list(adata.var_names) == genes
    assert_same(adata.X, matrix.T)


def test_a_large_upload_is_imported_in_bounded_memory(tmp_path):
    genes, samples = 3000, 400  # 1.2 M values: 9.6 MB as float64, ~10 MB of text
    matrix = np.random.default_rng(1).integers(0, 1000, size=(genes, samples)) / 8
    source = write_text_target(tmp_path / "big.csv", [f"g{i}" for i in range(genes)],
                               [f"s{j}" for j in range(samples)], matrix)
    tracemalloc.start()
    try:
        text_to_h5ad(source, ",", tmp_path / "big.h5ad", label="big", block_values=40_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Loading it whole would take the 9.6 MB matrix plus its text; one block is 0.3 MB.
    assert peak < matrix.nbytes / 3, f"peak {peak / 1e6:.1f} MB"
    with h5py.File(tmp_path / "big.h5ad") as file:
        assert_same(file["X"][()], matrix.T)


@pytest.mark.parametrize("layout", ["dense", "csr", "csc"])
def test_h5ad_upload_is_checked_and_copied_as_it_is(job, values, layout):
    values = np.nan_to_num(values)  # sparse h5ad files hold no NaN in practice
    write_h5ad_target(upload(job, "cells.h5ad"), GENES, SAMPLES, values, layout=layout)
    result = run(job, {"dataset_id": "ds", "upload": "cells.h5ad"})
    assert (result["num_genes"], result["num_samples"]) == (9, 5)
    assert result["duplicate_genes"] == ["dup"]
    adata = anndata.read_h5ad(dataset(job))
    assert sp.issparse(adata.X) == (layout != "dense")
    x = adata.X.toarray() if sp.issparse(adata.X) else adata.X
    assert_same(x, values.T)
    assert read_provenance(dataset(job))["sha256"] == result["sha256"]


def test_h5ad_annotations_and_integer_counts_are_kept(job):
    counts = np.array([[1, 0, 3], [0, 5, 6]], dtype=np.int32)  # samples x genes
    adata = anndata.AnnData(counts, obs=pd.DataFrame({"cell_type": ["T", "B"]},
                                                     index=pd.Index(["c1", "c2"])),
                            var=pd.DataFrame(index=pd.Index(["a", "b", "c"])))
    adata.write_h5ad(upload(job, "annotated.h5ad"))
    run(job, {"dataset_id": "ds", "upload": "annotated.h5ad"})
    copied = anndata.read_h5ad(dataset(job))
    assert list(copied.obs["cell_type"]) == ["T", "B"]
    assert copied.X.dtype == np.int32 and (counts == copied.X).all()


def test_the_same_upload_again_is_success_2_and_touches_nothing(job, values):
    text = write_text_target(upload(job, "a.csv"), GENES, SAMPLES, values).read_bytes()
    first = run(job, {"dataset_id": "ds", "upload": "a.csv"})
    before = os.stat(dataset(job))
    upload(job, "copy-of-a.csv").write_bytes(text)  # same bytes under another name
    for name in ("a.csv", "copy-of-a.csv"):
        again = run(job, {"dataset_id": "ds", "upload": name})
        assert again["success"] == 2, again
        assert "already imported" in again["message"]
        assert {key: again[key] for key in ("num_genes", "num_samples", "duplicate_genes",
                                            "sha256")} == \
            {key: first[key] for key in ("num_genes", "num_samples", "duplicate_genes",
                                         "sha256")}
    after = os.stat(dataset(job))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_two_imports_of_one_dataset_at_once_write_it_once(job, values):
    write_text_target(upload(job, "a.csv"), GENES, SAMPLES, values)
    start = threading.Barrier(2)
    replies: list[dict] = []

    def import_it() -> None:
        start.wait()
        replies.append(run(job, {"dataset_id": "ds", "upload": "a.csv"}))

    threads = [threading.Thread(target=import_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(result["success"] for result in replies) == [1, 2]
    assert_same(anndata.read_h5ad(dataset(job)).X, values.T)


def test_other_data_for_an_existing_dataset_needs_replace(job, values):
    write_text_target(upload(job, "v1.csv"), GENES, SAMPLES, values)
    write_text_target(upload(job, "v2.csv"), GENES, SAMPLES, values + 1)
    run(job, {"dataset_id": "ds", "upload": "v1.csv"})
    with pytest.raises(PermanentJobError, match=r"dataset 'ds' already exists .*ds\.h5ad, "
                       r"imported from upload 'v1\.csv'.*\"replace\": true"):
        run(job, {"dataset_id": "ds", "upload": "v2.csv"})
    assert_same(anndata.read_h5ad(dataset(job)).X, values.T)
    assert run(job, {"dataset_id": "ds", "upload": "v2.csv", "replace": True})["success"] == 1
    assert_same(anndata.read_h5ad(dataset(job)).X, values.T + 1)


def test_a_failed_replace_keeps_the_old_dataset_and_leaves_no_temp_file(job, values):
    write_text_target(upload(job, "good.csv"), GENES, SAMPLES, values)
    run(job, {"dataset_id": "ds", "upload": "good.csv"})
    lines = upload(job, "good.csv").read_text().splitlines()
    upload(job, "bad.csv").write_text("\n".join([*lines, "late,1,2,3,4,oops"]) + "\n")
    with pytest.raises(PermanentJobError, match=r"line 11 \(gene 'late'\), column 6 "
                                                r"\(sample 'NA'\): 'oops' is not a number"):
        run(job, {"dataset_id": "ds", "upload": "bad.csv", "replace": True})
    assert_same(anndata.read_h5ad(dataset(job)).X, values.T)
    assert hidden_files(job.settings.paths.datasets_dir) == []


def test_a_temp_file_left_by_a_killed_import_is_removed(job, values):
    write_text_target(upload(job, "a.csv"), GENES, SAMPLES, values)
    stale = job.settings.paths.datasets_dir / ".ds.h5ad.k1ll3d.tmp"
    stale.write_bytes(b"half a dataset")
    run(job, {"dataset_id": "ds", "upload": "a.csv"})
    assert not stale.exists()


def test_a_dataset_that_exists_as_text_is_not_shadowed(job, values):
    write_text_target(upload(job, "a.csv"), GENES, SAMPLES, values)
    write_text_target(job.settings.paths.datasets_dir / "ds.tsv", GENES, SAMPLES, values)
    with pytest.raises(PermanentJobError, match=r"dataset 'ds' already exists as .*ds\.tsv"):
        run(job, {"dataset_id": "ds", "upload": "a.csv"})
    assert not dataset(job).exists()


def test_a_write_failure_is_transient_and_leaves_nothing(job, values):
    write_h5ad_target(upload(job, "a.h5ad"), GENES, [f"s{i}" for i in range(2000)],
                      np.ones((9, 2000)))
    size = upload(job, "a.h5ad").stat().st_size
    written = r"cannot write dataset .*/ds\.h5ad: \[Errno 27\] File too large"
    with file_size_limit(size // 2), pytest.raises(TransientJobError, match=written):
        run(job, {"dataset_id": "ds", "upload": "a.h5ad"})
    assert list(job.settings.paths.datasets_dir.iterdir()) == []


# --- bad messages ----------------------------------------------------------------------

BAD_MESSAGES = {
    "no-dataset-id": ({"upload": "a.csv"}, "missing field 'dataset_id'"),
    "no-upload": ({"dataset_id": "ds"}, "missing field 'upload'"),
    "dataset-id-up": ({"dataset_id": "../ds", "upload": "a.csv"}, "'dataset_id' is not a valid id"),
    "dataset-id-slash": ({"dataset_id": "a/b", "upload": "a.csv"}, "'dataset_id' is not a valid"),
    "dataset-id-hidden": ({"dataset_id": ".ds", "upload": "a.csv"}, "'dataset_id' is not a valid"),
    "dataset-id-long": ({"dataset_id": "d" * 129, "upload": "a.csv"}, "1-128 letters"),
    "dataset-id-number": ({"dataset_id": 5, "upload": "a.csv"}, "'dataset_id' must be a string"),
    "upload-up": ({"dataset_id": "ds", "upload": "../../etc/passwd"}, "'upload' is not a valid"),
    "upload-absolute": ({"dataset_id": "ds", "upload": "/etc/passwd"}, "'upload' is not a valid"),
    "upload-subfolder": ({"dataset_id": "ds", "upload": "sub/a.csv"}, "'upload' is not a valid"),
    "bad-format": ({"dataset_id": "ds", "upload": "a.csv", "format": "xlsx"},
                   "'format' must be one of csv, tsv, h5ad"),
    "unknown-extension": ({"dataset_id": "ds", "upload": "a.txt"},
                          "field 'format' is needed: the name of upload 'a.txt' does not say"),
    "replace-not-bool": ({"dataset_id": "ds", "upload": "a.csv", "replace": "yes"},
                         "'replace' must be a boolean"),
    "unknown-field": ({"dataset_id": "ds", "upload": "a.csv", "path": "/tmp"},
                      "unknown field(s) 'path'"),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_a_bad_message_is_refused_before_any_work(job, case):
    payload, message = BAD_MESSAGES[case]
    with pytest.raises(InvalidMessage) as raised:
        run(job, payload)
    assert message in raised.value.message
    assert reply(job, payload) == {"success": -1, "message": raised.value.message}


# --- bad uploads -----------------------------------------------------------------------

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
BAD_TEXT = {
    "empty": (b"", "upload 'x.csv' in uploads_dir {uploads} is empty (0 bytes)"),
    "blank": (b"\n \n", "upload 'x.csv' is empty: it needs a header row"),
    "header-only": (b"gene,s1,s2\n", "upload 'x.csv' has a header but no gene rows"),
    "no-samples": (b"gene\ng1\n", "upload 'x.csv' has no sample columns"),
    "tsv-as-csv": (b"gene\ts1\ng1\t1\n", "(it looks TSV-delimited: give format 'tsv')"),
    "repeated-sample": (b"gene,s1,s2,s1\ng1,1,2,3\n",
                        "upload 'x.csv' line 1: sample ids must be unique; repeated: 's1'"),
    "empty-sample": (b"gene,s1,,s3\ng1,1,2,3\n", "line 1: the sample id of column 3 is empty"),
    "ragged-row": (b"gene,s1,s2\ng1,1,2\ng2,3\n",
                   "line 3: 2 fields, but the header has 2 samples"),
    "not-a-number": (b"gene,s1,s2\ng1,1,2\ng2,3,abc\n",
                     "line 3 (gene 'g2'), column 3 (sample 's2'): 'abc' is not a number"),
    "underscore": (b"gene,s1\ng1,1_000\n", "'1_000' is not a number"),
    "infinite": (b"gene,s1,s2\ng1,1,Inf\n",
                 "line 2 (gene 'g1'), column 3 (sample 's2'): value is infinite"),
    "overflow": (b"gene,s1\ng1,1e400\n", "line 2 (gene 'g1'), column 2 (sample 's1'): value "
                                          "is infinite"),
    "empty-gene": (b"gene,s1\ng1,1\n,2\n", "line 3: the gene id is empty"),
    "not-utf8": (b"gene,s1\ng1,1\n\xff\xfe,2\n", "upload 'x.csv' is not UTF-8 text (line 3"),
    "open-quote": (b'gene,s1\n"g1,1\n', "line 2: unexpected end of data (a quoted field must "
                                         "end on the same line)"),
    "hdf5-as-csv": (HDF5_SIGNATURE + b"rest", "upload 'x.csv' is an HDF5 file, not CSV text: "
                                             "give format 'h5ad'"),
}


@pytest.mark.parametrize("case", list(BAD_TEXT))
def test_a_bad_text_upload_is_a_permanent_error_naming_the_place(job, case):
    content, message = BAD_TEXT[case]
    upload(job, "x.csv").write_bytes(content)
    with pytest.raises(PermanentJobError) as raised:
        run(job, {"dataset_id": "ds", "upload": "x.csv"})
    assert message.format(uploads=job.settings.paths.uploads_dir) in raised.value.message
    assert not isinstance(raised.value, TransientJobError)
    assert list(job.settings.paths.datasets_dir.iterdir()) == []


def test_a_truncated_gzip_upload(job, values):
    text = write_text_target(upload(job, "a.csv"), GENES, SAMPLES, values).read_bytes()
    upload(job, "x.csv.gz").write_bytes(gzip.compress(text * 50)[:300])
    with pytest.raises(PermanentJobError, match=r"upload 'x\.csv\.gz': cannot read the "
                                                r"compressed data after line \d+"):
        run(job, {"dataset_id": "ds", "upload": "x.csv.gz"})


def h5ad_with(path, build) -> None:
    """An anndata-written file, then altered by `build(h5py.File)`."""
    write_h5ad_target(path, ["a", "b"], ["s1", "s2"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    with h5py.File(path, "r+") as file:
        build(file)


def _infinite(file) -> None:
    file["X"][0, 1] = np.inf


def _repeated_sample(file) -> None:
    del file["obs/_index"]
    file["obs"].create_dataset("_index", data=np.array(["s1", "s1"], dtype=object),
                               dtype=h5py.string_dtype())


def _text_x(file) -> None:
    del file["X"]
    file.create_dataset("X", data=np.array([["a", "b"], ["c", "d"]], dtype="S1"))


BAD_H5AD = {
    "no-x": (lambda file: file.__delitem__("X"), "upload 'x.h5ad': dataset x.h5ad has no X"),
    "text-x": (_text_x, "X is not a 2-D numeric matrix"),
    "infinite": (_infinite, "upload 'x.h5ad': X has 1 infinite value(s) in samples 1-2, the "
                            "first at sample 's1', gene 'b'"),
    "repeated-sample": (_repeated_sample, "sample ids (obs_names) must be unique; repeated: "
                                          "'s1'"),
    "no-var": (lambda file: file.__delitem__("var"), "has no 'var' table"),
}


@pytest.mark.parametrize("case", list(BAD_H5AD))
def test_a_bad_h5ad_upload_is_a_permanent_error(job, case):
    build, message = BAD_H5AD[case]
    h5ad_with(upload(job, "x.h5ad"), build)
    with pytest.raises(PermanentJobError) as raised:
        run(job, {"dataset_id": "ds", "upload": "x.h5ad"})
    assert message in raised.value.message
    assert list(job.settings.paths.datasets_dir.iterdir()) == []


@pytest.mark.parametrize("content, message", [
    (b"gene,s1\ng1,1\n", "upload 'x.h5ad' is not an h5ad (HDF5) file: it starts with "
                          "b'gene,s1\\n'"),
    (gzip.compress(HDF5_SIGNATURE + b"0" * 100), "is not an h5ad (HDF5) file: it is "
                                                "gzip-compressed"),
    (HDF5_SIGNATURE + b"\0" * 100, "dataset x.h5ad is not a readable h5ad (HDF5) file"),
])
def test_an_upload_that_is_not_an_h5ad(job, content, message):
    upload(job, "x.h5ad").write_bytes(content)
    with pytest.raises(PermanentJobError) as raised:
        run(job, {"dataset_id": "ds", "upload": "x.h5ad"})
    assert message in raised.value.message


def test_a_missing_upload_names_the_uploads_folder(job):
    with pytest.raises(PermanentJobError) as raised:
        run(job, {"dataset_id": "ds", "upload": "nope.csv"})
    assert raised.value.message == (f"upload 'nope.csv' not found in uploads_dir "
                                    f"{job.settings.paths.uploads_dir}")


def test_an_upload_that_is_not_a_regular_file(job):
    upload(job, "folder.csv").mkdir()
    os.mkfifo(upload(job, "pipe.csv"))  # reading it would block the worker for ever
    for name in ("folder.csv", "pipe.csv"):
        with pytest.raises(PermanentJobError, match=f"upload '{name}' in uploads_dir .* is "
                                                    "not a regular file"):
            run(job, {"dataset_id": "ds", "upload": name})


@pytest.mark.parametrize("folder", ["uploads_dir", "datasets_dir"])
def test_a_missing_data_folder_is_named_with_its_gear_ini_key(job, folder):
    path = getattr(job.settings.paths, folder)
    os.rmdir(path)
    with pytest.raises(PermanentJobError) as raised:
        run(job, {"dataset_id": "ds", "upload": "a.csv"})
    assert raised.value.message == (f"{folder} {path} does not exist or is not a folder "
                                    f"(see [paths] {folder} in gear.ini)")
    assert not path.exists()  # not created on what may be the wrong disk


# --- through the queue -----------------------------------------------------------------


@pytest.mark.slow
def test_imports_through_the_queue_with_a_real_consumer(make_config, start_consumer, values):
    config = make_config(dataset_import_service={"max_retries": 1})
    settings = make_folders(load_settings(config))
    write_text_target(settings.paths.uploads_dir / "a.csv", GENES, SAMPLES, values)
    start_consumer(config, "dataset_import")
    with Client(settings) as client:
        first = client.call("dataset_import", {"dataset_id": "ds", "upload": "a.csv"},
                            timeout=60)
        again = client.call("dataset_import", {"dataset_id": "ds", "upload": "a.csv"},
                            timeout=30)
        bad = client.call("dataset_import", {"dataset_id": "ds2", "upload": "nope.csv"},
                          timeout=30, job_id="bad-upload")
    assert first["success"] == 1 and first["num_genes"] == 9, first
    assert again["success"] == 2, again
    assert bad == {"success": -1, "message": "upload 'nope.csv' not found in uploads_dir "
                                             f"{settings.paths.uploads_dir}"}
    record = open_store(settings, "dataset_import").require("bad-upload")
    assert record.status is JobStatus.FAILED and record.attempts == 1  # no retry
    assert_same(anndata.read_h5ad(settings.paths.datasets_dir / "ds.h5ad").X, values.T)
