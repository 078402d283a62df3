"""dataset_import of a 10x-style MTX folder: the sparse h5ad it writes holds the dense
matrix the test computed, with obs/var annotations; every bad member is a permanent
error naming the file and the line; the consumer survives each one."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
from matrix_jobs import hidden_files, make_folders, run

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import PermanentJobError
from gearqueue.jobs.dataset_import import DatasetImportJob
from gearqueue.matrices.targets import open_target
from gearqueue.matrices.tenx import find_members, mtx_to_h5ad

GENES = [f"ENSG{i:05d}" for i in range(12)]
SYMBOLS = [f"Sym{i}" for i in range(12)]
BARCODES = [f"AAAC{j:04d}-1" for j in range(9)]


@pytest.fixture
def job(settings) -> DatasetImportJob:
    return DatasetImportJob(make_folders(settings))


@pytest.fixture
def counts() -> np.ndarray:
    """genes x cells, mostly zeros, as a 10x matrix; one empty cell, one empty gene."""
    rng = np.random.default_rng(4)
    dense = rng.integers(1, 40, size=(len(GENES), len(BARCODES)))
    dense[rng.random(dense.shape) < 0.7] = 0
    dense[:, 4] = 0
    dense[7] = 0
    return dense


def mtx_lines(dense: np.ndarray, *, field: str = "integer", order: str = "column") -> list[str]:
    """MatrixMarket coordinate text of `dense`, written here (not by the code under test)."""
    rows, columns = np.nonzero(dense)
    index = np.lexsort((rows, columns))
    if order != "column":  # any other order: reversed
        index = index[::-1]
    body = []
    for i, j in zip(rows[index], columns[index], strict=True):
        value = dense[i, j]
        body.append(f"{i + 1} {j + 1}" if field == "pattern" else
                    f"{i + 1} {j + 1} {int(value) if field == 'integer' else repr(float(value))}")
    return [f"%%MatrixMarket matrix coordinate {field} general",
            "% written by the test", f"{dense.shape[0]} {dense.shape[1]} {len(body)}", *body]


def write_folder(folder: Path, dense: np.ndarray, *, lines: list[str] | None = None,
                 gz: bool = False, features: list[str] | None = None,
                 barcodes: list[str] | None = None, obs: str | None = None,
                 var: str | None = None, genes_tsv: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""

    def put(name: str, text: str) -> None:
        data = text.encode()
        (folder / f"{name}{suffix}").write_bytes(gzip.compress(data) if gz else data)

    put("matrix.mtx", "\n".join(lines if lines is not None else mtx_lines(dense)) + "\n")
    if features is None:
        features = ([f"{g}\t{s}" for g, s in zip(GENES, SYMBOLS, strict=True)] if genes_tsv
                    else [f"{g}\t{s}\tGene Expression" for g, s in zip(GENES, SYMBOLS,
                                                                        strict=True)])
    put("genes.tsv" if genes_tsv else "features.tsv", "\n".join(features) + "\n")
    put("barcodes.tsv", "\n".join(barcodes if barcodes is not None else BARCODES) + "\n")
    if obs is not None:
        (folder / "obs.tsv").write_text(obs)
    if var is not None:
        (folder / "var.tsv").write_text(var)
    return folder


def uploads(job: DatasetImportJob) -> Path:
    return job.settings.paths.uploads_dir


def dataset(job: DatasetImportJob, dataset_id: str = "ds") -> Path:
    return job.settings.paths.datasets_dir / f"{dataset_id}.h5ad"


def obs_text(barcodes: list[str]) -> str:
    """cell_type and n_genes for each barcode, rows in reverse order (matched by id)."""
    rows = [f"{b}\t{'T' if j % 2 else 'B'}\t{j * 10}" for j, b in enumerate(barcodes)]
    return "barcode\tcell_type\tn_genes\n" + "\n".join(reversed(rows)) + "\n"


# --- happy paths -----------------------------------------------------------------------


def test_an_mtx_folder_becomes_a_sparse_h5ad_holding_the_same_matrix(job, counts):
    var = "gene\tchromosome\n" + "".join(f"{g}\tchr{i % 3 + 1}\n" for i, g in
                                         enumerate(GENES))
    write_folder(uploads(job) / "pbmc", counts, obs=obs_text(BARCODES), var=var)
    result = run(job, {"dataset_id": "ds", "upload": "pbmc", "format": "mtx"})
    assert result["success"] == 1, result
    assert (result["num_genes"], result["num_samples"]) == (12, 9)
    assert result["message"] == "imported upload 'pbmc' as dataset 'ds': 12 genes x 9 samples"

    adata = anndata.read_h5ad(dataset(job))
    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.int32
    np.testing.assert_array_equal(adata.X.toarray(), counts.T)
    assert list(adata.obs_names) == BARCODES and list(adata.var_names) == GENES
    assert list(adata.obs["cell_type"]) == ["T" if j % 2 else "B" for j in range(9)]
    np.testing.assert_array_equal(adata.obs["n_genes"], np.arange(9) * 10.0)
    assert list(adata.var["gene_symbols"]) == SYMBOLS
    assert set(adata.var["feature_types"]) == {"Gene Expression"}
    assert list(adata.var["chromosome"]) == [f"chr{i % 3 + 1}" for i in range(12)]

    target = open_target(job.settings.paths.datasets_dir, "ds")  # ProjectR's reader
    try:
        out = np.empty((9, 12))
        target.read(0, 9, np.arange(12), out)
        np.testing.assert_array_equal(out, counts.T)
    finally:
        target.close()
    assert hidden_files(job.settings.paths.datasets_dir) == []

    again = run(job, {"dataset_id": "ds", "upload": "pbmc", "format": "mtx"})
    assert again["success"] == 2 and again["sha256"] == result["sha256"]


def test_gzipped_members_and_a_v2_genes_tsv(job, counts):
    write_folder(uploads(job) / "v2", counts, gz=True, genes_tsv=True)
    assert run(job, {"dataset_id": "ds", "upload": "v2", "format": "mtx"})["success"] == 1
    adata = anndata.read_h5ad(dataset(job))
    np.testing.assert_array_equal(adata.X.toarray(), counts.T)
    assert list(adata.var["gene_symbols"]) == SYMBOLS
    assert "feature_types" not in adata.var


@pytest.mark.parametrize("order", ["column", "reversed"])
@pytest.mark.parametrize("block_lines", [1, 5, 1000])
def test_blocks_of_any_size_and_any_entry_order_give_the_same_matrix(tmp_path, counts,
                                                                      order, block_lines):
    folder = write_folder(tmp_path / "in", counts, lines=mtx_lines(counts, order=order))
    members = find_members(folder, "upload 'in'")
    summary = mtx_to_h5ad(members, tmp_path / "out.h5ad", block_lines=block_lines)
    assert (summary.num_genes, summary.num_samples) == (12, 9)
    np.testing.assert_array_equal(anndata.read_h5ad(tmp_path / "out.h5ad").X.toarray(),
                                  counts.T)


def test_real_values_with_missing_ones_and_a_pattern_matrix(job):
    values = np.array([[0.0, 2.5e-3, 0.0], [1e20, 0.0, -4.25], [0.0, 0.0, 0.1]])
    lines = mtx_lines(values, field="real")
    lines.append("3 2 nan")
    lines[2] = "3 3 5"
    genes = [f"{g}\t{g}" for g in ("a", "b", "c")]
    write_folder(uploads(job) / "real", values, lines=lines, features=genes,
                 barcodes=["x", "y", "z"])
    result = run(job, {"dataset_id": "real", "upload": "real", "format": "mtx"})
    assert result["num_missing_values"] == 1 and "1 missing value(s)" in result["message"]
    expected = values.copy()
    expected[2, 1] = np.nan
    x = anndata.read_h5ad(dataset(job, "real")).X
    assert x.dtype == np.float64
    np.testing.assert_array_equal(x.toarray(), expected.T)

    pattern = (values != 0).astype(int)
    write_folder(uploads(job) / "pat", pattern, lines=mtx_lines(pattern, field="pattern"),
                 features=genes, barcodes=["x", "y", "z"])
    run(job, {"dataset_id": "pat", "upload": "pat", "format": "mtx"})
    np.testing.assert_array_equal(anndata.read_h5ad(dataset(job, "pat")).X.toarray(),
                                  pattern.T)


# --- bad folders -----------------------------------------------------------------------


def _lines(edit):
    def make(dense: np.ndarray) -> list[str]:
        lines = mtx_lines(dense)
        edit(lines)
        return lines
    return make


def _set(index: int, text: str):
    def edit(lines: list[str]) -> None:
        lines[index] = text
    return edit


# name: (write_folder keyword arguments from counts, expected message)
BAD = {
    "features-count": (lambda d: {"features": [f"{g}\tS" for g in GENES[:-1]]},
                       "upload 'bad' features.tsv has 11 gene(s) but upload 'bad' matrix.mtx "
                       "(line 3) declares 12 rows"),
    "barcodes-count": (lambda d: {"barcodes": [*BARCODES, "extra-1"]},
                       "upload 'bad' barcodes.tsv has 10 barcode(s) but upload 'bad' "
                       "matrix.mtx (line 3) declares 9 columns"),
    "header-claims-more": (lambda d: {"lines": _lines(lambda ls: ls.__setitem__(
        2, "12 9 999"))(d)},
        "upload 'bad' matrix.mtx: the size line (line 3) declares 999 entries but the file "
        "has {n} (it ends at line {last}): is it truncated?"),
    "more-than-header": (lambda d: {"lines": _lines(lambda ls: ls.__setitem__(
        2, "12 9 2"))(d)},
        "upload 'bad' matrix.mtx line 6: more entries than the size line (line 3) declares "
        "(2)"),
    "row-outside": (lambda d: {"lines": _lines(_set(4, "13 1 5"))(d)},
                    "upload 'bad' matrix.mtx line 5: row index 13 is outside the declared "
                    "shape 12 x 9 (line 3)"),
    "column-zero": (lambda d: {"lines": _lines(_set(5, "1 0 5"))(d)},
                    "upload 'bad' matrix.mtx line 6: column index 0 is outside the declared "
                    "shape 12 x 9 (line 3)"),
    "not-a-number": (lambda d: {"lines": _lines(_set(6, "2 3 abc"))(d)},
                     "upload 'bad' matrix.mtx line 7: the value 'abc' is not an integer "
                     "(the header says 'integer')"),
    "index-not-whole": (lambda d: {"lines": _lines(_set(4, "2.5 3 1"))(d)},
                        "upload 'bad' matrix.mtx line 5: the row index '2.5' is not a "
                        "whole number"),
    "two-fields": (lambda d: {"lines": _lines(_set(4, "2 3"))(d)},
                   "upload 'bad' matrix.mtx line 5: 2 field(s), expected 3 (row column "
                   "value): '2 3'"),
    "infinite": (lambda d: {"lines": _lines(lambda ls: ls.__setitem__(
        0, "%%MatrixMarket matrix coordinate real general") or ls.__setitem__(4, "1 1 inf"))(d)},
        "upload 'bad' matrix.mtx line 5: the value is infinite"),
    "repeated-entry": (lambda d: {"lines": _lines(lambda ls: ls.__setitem__(
        5, ls[4]))(d)}, "upload 'bad' matrix.mtx: the entry at row {row} (gene '{gene}'), "
                        "column {column} (barcode '{barcode}') appears more than once"),
    "dense-array": (lambda d: {"lines": _lines(_set(0, "%%MatrixMarket matrix array real "
                                                      "general"))(d)},
                    "upload 'bad' matrix.mtx line 1: the matrix is 'array', not 'coordinate'"),
    "not-matrix-market": (lambda d: {"lines": ["gene,cell", "a,1"]},
                          "upload 'bad' matrix.mtx line 1: not a MatrixMarket file"),
    "repeated-barcode": (lambda d: {"barcodes": [*BARCODES[:-1], BARCODES[0]]},
                         "upload 'bad' barcodes.tsv line 9: barcode 'AAAC0000-1' repeats "
                         "line 1; cell ids must be unique"),
    "obs-missing-row": (lambda d: {"obs": obs_text(BARCODES[:-1])},
                        "upload 'bad' obs.tsv has 8 row(s) but the matrix has 9 barcodes; "
                        "missing: 'AAAC0008-1'"),
    "obs-unknown-barcode": (lambda d: {"obs": obs_text([*BARCODES, "ZZZ-1"])},
                            "upload 'bad' obs.tsv line 2: barcode 'ZZZ-1' is not in the "
                            "matrix's barcodes"),
    "obs-ragged": (lambda d: {"obs": "barcode\tcell_type\n" + "".join(
        f"{b}\tT\n" for b in BARCODES[:3]) + f"{BARCODES[3]}\n"},
        "upload 'bad' obs.tsv line 5: 1 column(s), but the header (line 1) has 2"),
    "var-repeated": (lambda d: {"var": "gene\tchr\n" + "".join(
        f"{g}\tchr1\n" for g in [*GENES, GENES[2]])},
        "upload 'bad' var.tsv line 14: gene 'ENSG00002' repeats line 4"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_mtx_folder_is_a_permanent_error_naming_the_place(job, counts, case):
    build, message = BAD[case]
    write_folder(uploads(job) / "bad", counts, **build(counts))
    cells, genes = np.nonzero(counts.T)  # the entries in column order; the 2nd is repeated
    message = message.format(n=np.count_nonzero(counts), last=3 + np.count_nonzero(counts),
                             row=genes[1] + 1, gene=GENES[genes[1]], column=cells[1] + 1,
                             barcode=BARCODES[cells[1]])
    with pytest.raises(PermanentJobError) as raised:
        run(job, {"dataset_id": "ds", "upload": "bad", "format": "mtx"})
    assert message in raised.value.message
    assert list(job.settings.paths.datasets_dir.iterdir()) == []


def test_a_missing_or_doubled_member_and_a_file_for_a_folder(job, counts):
    folder = write_folder(uploads(job) / "bad", counts)
    (folder / "barcodes.tsv").unlink()
    with pytest.raises(PermanentJobError, match=r"upload 'bad' has no barcodes file: looked "
                                                r"for barcodes\.tsv, barcodes\.tsv\.gz in "):
        run(job, {"dataset_id": "ds", "upload": "bad", "format": "mtx"})
    write_folder(folder, counts)
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress((folder / "matrix.mtx").read_bytes()))
    with pytest.raises(PermanentJobError, match=r"has both matrix\.mtx and matrix\.mtx\.gz: "
                                                r"keep one"):
        run(job, {"dataset_id": "ds", "upload": "bad", "format": "mtx"})
    (uploads(job) / "file.mtx").write_text("%%MatrixMarket matrix coordinate real general\n")
    with pytest.raises(PermanentJobError, match=r"upload 'file\.mtx' in uploads_dir .* is not "
                                                r"a folder: format 'mtx' wants a folder"):
        run(job, {"dataset_id": "ds", "upload": "file.mtx", "format": "mtx"})


# --- through the queue -----------------------------------------------------------------


def test_bad_mtx_folders_through_the_queue_leave_the_consumer_working(make_config,
                                                                       start_consumer,
                                                                       counts):
    config = make_config(dataset_import_service={"max_retries": 1})
    settings = make_folders(load_settings(config))
    for case in BAD:
        write_folder(settings.paths.uploads_dir / case, counts, **BAD[case][0](counts))
    write_folder(settings.paths.uploads_dir / "good", counts, obs=obs_text(BARCODES))
    consumer = start_consumer(config, "dataset_import")
    with Client(settings) as client:
        for case in BAD:
            bad = client.call("dataset_import", {"dataset_id": f"ds-{case}", "upload": case,
                                                 "format": "mtx"}, timeout=60)
            assert bad["success"] == -1 and f"upload '{case}'" in bad["message"], (case, bad)
            assert consumer.process.poll() is None, f"consumer died after {case}"
        good = client.call("dataset_import", {"dataset_id": "ds", "upload": "good",
                                              "format": "mtx"}, timeout=60)
    assert good["success"] == 1, good
    assert consumer.process.poll() is None
    adata = anndata.read_h5ad(settings.paths.datasets_dir / "ds.h5ad")
    np.testing.assert_array_equal(adata.X.toarray(), counts.T)
    assert sorted(p.name for p in settings.paths.datasets_dir.iterdir()) == ["ds.h5ad"]
