"""Every bad input of a ProjectR job gives a failure reply (-1) whose message says what
is wrong and where, and nothing is written outside the data folders."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from projectr_fixtures import (
    context,
    payload,
    run_job,
    write_cart,
    write_h5ad_target,
    write_text_target,
)

from gearqueue.errors import InvalidMessage, TransientJobError
from gearqueue.jobs.projectr import ProjectRJob

pytestmark = pytest.mark.slow

GENES = ["a", "b", "c", "d"]


@pytest.fixture
def job(settings) -> ProjectRJob:
    settings.paths.projections_dir.mkdir(parents=True)
    job = ProjectRJob(settings)
    job.warm_up()
    return job


@pytest.fixture
def good_inputs(job):
    rng = np.random.default_rng(0)
    write_text_target(job.settings.paths.datasets_dir / "ds.csv", GENES, ["s0", "s1", "s2"],
                      rng.normal(size=(4, 3)))
    write_cart(job.settings.paths.carts_dir / "cart.cart.tab", GENES, ["P0", "P1"],
               rng.normal(size=(4, 2)))


def failure(job: ProjectRJob, **fields) -> dict:
    reply = run_job(job, payload(**fields))
    assert reply["success"] == -1, reply
    return reply


def write(path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def test_good_inputs_succeed(job, good_inputs):
    assert run_job(job, payload())["success"] == 1


def test_missing_dataset(job, good_inputs):
    reply = failure(job, dataset_id="nope")
    assert reply["message"] == ("dataset 'nope' not found (looked for nope.h5ad, nope.csv, "
                                "nope.tsv)")


def test_missing_cart(job, good_inputs):
    assert failure(job, genecart_id="nope")["message"] == (
        "gene cart 'nope' not found (no cart.nope.tab)")


@pytest.mark.parametrize("field", ["dataset_id", "genecart_id", "projection_id"])
@pytest.mark.parametrize("value", ["../ds", "a/b", "..", "x..y", "a\x00b", ".hidden", "",
                                   "x" * 129, "a b"])
def test_ids_that_could_name_other_files_are_refused(job, good_inputs, tmp_path, field, value):
    before = sorted(tmp_path.rglob("*"))
    reply = failure(job, **{field: value})
    assert reply["message"].startswith(f"field '{field}' is not a valid id")
    assert sorted(tmp_path.rglob("*")) == before


def test_ids_must_be_strings(job, good_inputs):
    assert failure(job, dataset_id=12)["message"].startswith(
        "field 'dataset_id' must be a string")


def test_no_common_genes_reply_carries_the_three_counts(job, good_inputs):
    write_cart(job.settings.paths.carts_dir / "cart.other.tab", ["x", "y"], ["P0"],
               np.ones((2, 1)))
    reply = failure(job, genecart_id="other")
    assert reply["message"] == ("No common genes between the target dataset (4 genes) and "
                                "the pattern file (2 genes).")
    assert (reply["num_common_genes"], reply["num_genecart_genes"],
            reply["num_dataset_genes"]) == (0, 2, 4)


def test_non_numeric_target_cell_is_located(job, good_inputs):
    write(job.settings.paths.datasets_dir / "ds.csv", "gene,s0,s1\na,1,2\nb,3,abc\n")
    assert failure(job)["message"] == "dataset ds.csv, line 3, column 's1': 'abc' is not a number"


def test_non_numeric_cart_cell_is_located(job, good_inputs):
    write(job.settings.paths.carts_dir / "cart.cart.tab",
          "id\tsym\tP0\tP1\na\tA\t1\t2\nb\tB\tTRUE\t1\n")
    assert failure(job)["message"] == ("gene cart cart.cart.tab, line 3, column 'P0': 'TRUE' "
                                       "is not a number")


def test_missing_weight_of_a_matched_gene_is_named(job, good_inputs):
    write(job.settings.paths.carts_dir / "cart.cart.tab",
          "id\tsym\tP0\tP1\na\tA\t1\t2\nb\tB\t3\tNA\nzz\tZ\tNA\t1\n")
    reply = failure(job)
    assert reply["message"] == ("gene cart: the weight of gene 'b' for pattern 'P1' is missing "
                                "(NA); every matched gene needs finite weights")
    assert reply["num_common_genes"] == 2


def test_missing_weight_of_an_unmatched_gene_is_harmless(job, good_inputs):
    write(job.settings.paths.carts_dir / "cart.cart.tab",
          "id\tsym\tP0\na\tA\t1\nb\tB\t3\nzz\tZ\t\n")
    assert run_job(job, payload())["success"] == 1


@pytest.mark.parametrize("name,text,message", [
    ("ds.csv", "", "dataset ds.csv is empty"),
    ("ds.csv", "\n\n", "dataset ds.csv is empty"),
    ("ds.tsv", "gene\ts0\ts1\n", "dataset ds.tsv has a header but no data rows"),
    ("ds.csv", "gene\na\nb\n", "dataset ds.csv: the header has no value columns"),
    ("ds.csv", "gene,s0,s1\na,1,2\nb,3\n", "dataset ds.csv, line 3: 2 cells, but the header "
                                            "has 3 columns"),
    ("ds.csv", "gene,s0\na,1,2,3\n", "dataset ds.csv, line 2: 4 cells, but the header has 2"),
    ("ds.csv", b"gene,s0\n\xff\xfe,1\n", "dataset ds.csv is not UTF-8 text"),
])
def test_empty_or_malformed_text_targets(job, good_inputs, name, text, message):
    (job.settings.paths.datasets_dir / "ds.csv").unlink()
    write(job.settings.paths.datasets_dir / name, text)
    assert failure(job)["message"].startswith(message)


def test_header_without_row_name_cell_is_r_write_table_layout(job, good_inputs):
    write(job.settings.paths.datasets_dir / "ds.csv", "s0,s1\na,1,2\nb,3,4\nc,5,7\n")
    assert run_job(job, payload(algorithm="pca"))["success"] == 1


def test_h5ad_that_is_not_hdf5(job, good_inputs):
    write(job.settings.paths.datasets_dir / "ds.h5ad", "gene,s0\na,1\n")
    assert failure(job)["message"].startswith(
        "dataset ds.h5ad is not a readable h5ad (HDF5) file")


def h5ad(job, build) -> None:
    path = job.settings.paths.datasets_dir / "ds.h5ad"
    write_h5ad_target(path, GENES, ["s0", "s1", "s2"], np.ones((4, 3)))
    with h5py.File(path, "r+") as file:
        build(file)


@pytest.mark.parametrize("build,message", [
    (lambda f: f.__delitem__("X"), "dataset ds.h5ad has no X matrix"),
    (lambda f: (f.__delitem__("X"), f.create_dataset("X", data=np.array([[b"x"] * 4] * 3))),
     "dataset ds.h5ad: X is not a 2-D numeric matrix"),
    (lambda f: (f.__delitem__("X"), f.create_dataset("X", data=np.ones((3, 5)))),
     "dataset ds.h5ad: X has shape (3, 5) but obs/var name 3 samples x 4 genes"),
    (lambda f: f.__delitem__("var"), "dataset ds.h5ad has no 'var' table"),
    (lambda f: (f.__delitem__("X"), f.create_group("X").attrs.__setitem__(
        "encoding-type", "coo_matrix")), "dataset ds.h5ad: X is neither a dense matrix nor"),
])
def test_malformed_h5ad(job, good_inputs, build, message):
    (job.settings.paths.datasets_dir / "ds.csv").unlink()
    h5ad(job, build)
    assert failure(job)["message"].startswith(message)


def test_h5ad_without_samples(job, good_inputs):
    (job.settings.paths.datasets_dir / "ds.csv").unlink()
    write_h5ad_target(job.settings.paths.datasets_dir / "ds.h5ad", GENES, [],
                      np.ones((4, 0)))
    assert failure(job)["message"] == ("dataset ds.h5ad has 0 samples and 4 genes; it needs "
                                       "at least one of each")


@pytest.mark.parametrize("text,message", [
    ("", "gene cart cart.cart.tab is empty"),
    ("id\tsym\tP0\n", "gene cart cart.cart.tab has a header but no data rows"),
    ("id\tsym\na\tA\n", "gene cart cart.cart.tab: the header has no value columns"),
    ("id\tsym\tP0\tP1\tP0\na\tA\t1\t2\t3\n",
     "gene cart cart.cart.tab: duplicate pattern name(s) 'P0'"),
    ("id\tsym\tP0\t \na\tA\t1\t2\n", "gene cart cart.cart.tab: a pattern column has an empty"),
])
def test_empty_or_malformed_carts(job, good_inputs, text, message):
    write(job.settings.paths.carts_dir / "cart.cart.tab", text)
    assert failure(job)["message"].startswith(message)


@pytest.mark.parametrize("field,value,message", [
    ("algorithm", "svd", "field 'algorithm' must be one of nmf, fixednmf, pca, "
                         "pca_centered, binary; got 'svd'"),
    ("algorithm", None, "missing field 'algorithm'"),
    ("scope", "everything", "field 'scope' must be one of weighted-list, unweighted-list"),
    ("zscore", "maybe", "field 'zscore' must be a boolean, got 'maybe'"),
    ("full_output", 2, "field 'full_output' must be a boolean, got 2"),
    ("session_id", "s" * 300, "field 'session_id' is longer than 256 characters"),
])
def test_bad_message_fields(job, good_inputs, field, value, message):
    assert failure(job, **{field: value})["message"].startswith(message)
    with pytest.raises(InvalidMessage):
        job.validate(payload(**{field: value}))


def test_more_patterns_than_common_genes(job, good_inputs):
    write_cart(job.settings.paths.carts_dir / "cart.cart.tab", ["a", "b", "x"],
               ["P0", "P1", "P2"], np.eye(3))
    reply = failure(job)
    assert reply["message"] == ("The pattern file has 3 patterns but only 2 genes are common "
                                "to the target dataset; nmf needs at least as many common "
                                "genes as patterns.")
    assert (reply["num_common_genes"], reply["num_genecart_genes"],
            reply["num_dataset_genes"]) == (2, 3, 4)
    assert run_job(job, payload(algorithm="pca"))["success"] == 1  # a dot product is fine


def test_gear_publisher_fields_and_unknown_fields_are_accepted(job, good_inputs):
    reply = run_job(job, payload(analysis=None, analysis_owner_id=None, session_id="abc",
                                 projection_id=None, something_new=1))
    assert reply["success"] == 1, reply
    flags = run_job(job, payload(algorithm="pca", zscore="false", full_output=0))
    assert flags["success"] == 1, flags


def test_missing_projections_folder_is_transient_and_not_created(settings, good_inputs):
    root = settings.paths.projections_dir
    root.rmdir()
    job = ProjectRJob(settings)
    reply = failure(job)
    assert reply["message"] == (f"the projections folder {root} does not exist ([paths] "
                                f"projections_dir)")
    assert not root.exists()
    with pytest.raises(TransientJobError):
        job.run(job.validate(payload()), context(settings))
