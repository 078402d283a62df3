"""export format "zip": the table, metadata.json (checksums the test recomputes) and a
heatmap PNG that decodes at the documented size; grouped by an obs column; the same
request reuses the verified file without rewriting it; bad requests name the field."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import anndata
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matrix_jobs import make_folders, read_table, run
from projectr_fixtures import payload, write_cart, write_h5ad_target, write_text_target

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import InvalidMessage, PermanentJobError
from gearqueue.jobs.dataset_import import DatasetImportJob
from gearqueue.jobs.export import ExportJob
from gearqueue.jobs.projectr import ProjectRJob

SAMPLES = [f"cell-{j}" for j in range(12)]
CELL_TYPES = ["T", "B", "NK"]


@pytest.fixture
def job(settings) -> ExportJob:
    return ExportJob(make_folders(settings))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def documented_size(patterns: int) -> tuple[int, int]:
    """docs/export.md: 1600 px wide; 260 + 22 px per pattern high, within 400-1800."""
    return 1600, min(1800, max(400, 260 + 22 * patterns))


def write_annotated_dataset(job: ExportJob, dataset_id: str = "ds") -> list[str]:
    """An h5ad with a categorical obs column written by anndata itself."""
    rng = np.random.default_rng(8)
    genes = [f"gene{i}" for i in range(40)]
    cell_types = [CELL_TYPES[j % 3] for j in range(len(SAMPLES))]
    obs = pd.DataFrame({"cell_type": pd.Categorical(cell_types, categories=CELL_TYPES)},
                       index=pd.Index(SAMPLES))
    adata = anndata.AnnData(rng.gamma(2.0, 1.0, size=(len(SAMPLES), 40)), obs=obs,
                            var=pd.DataFrame(index=pd.Index(genes)))
    adata.write_h5ad(job.settings.paths.datasets_dir / f"{dataset_id}.h5ad")
    write_cart(job.settings.paths.carts_dir / "cart.c1.tab", genes[:30], ["A", "B", "C"],
               rng.gamma(2.0, 1.0, size=(30, 3)))
    return cell_types


def project(job: ExportJob, dataset_id: str = "ds") -> dict:
    projectr = ProjectRJob(job.settings, engine="numpy")
    projectr.warm_up()
    reply = run(projectr, payload(dataset_id=dataset_id, genecart_id="c1"))
    assert reply["success"] == 1, reply
    return reply


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_a_projection_zip_holds_the_csv_its_metadata_and_a_heatmap(job):
    write_annotated_dataset(job)
    projection = project(job)
    pid = projection["projection_id"]
    result = run(job, {"dataset_id": "ds", "format": "zip", "projection_id": pid})
    path = job.settings.paths.exports_dir / f"ds.{pid}.zip"
    assert result["success"] == 1 and result["path"] == str(path)
    assert result["file"] == path.name
    assert result["size"] == path.stat().st_size
    assert result["sha256"] == sha256(path.read_bytes())
    assert (result["num_rows"], result["num_columns"]) == (12, 3)

    files = members(path)
    assert sorted(files) == sorted([f"ds.{pid}.csv", f"ds.{pid}.heatmap.png",
                                    "metadata.json"]) == result["members"]
    metadata = json.loads(files["metadata.json"])
    for name, data in files.items():
        if name != "metadata.json":
            assert metadata["members"][name] == {"sha256": sha256(data), "size": len(data)}
    source = job.settings.paths.projections_dir / "by_dataset" / "ds" / f"{pid}.csv"
    assert metadata["inputs"] == {"projection": {"file": source.name, "size":
                                                 source.stat().st_size,
                                                 "sha256": sha256(source.read_bytes())}}
    assert metadata["request"] == {"dataset_id": "ds", "format": "zip", "projection_id": pid}
    assert metadata["algorithm"] == "nmf"
    assert metadata["gene_counts"] == {key: projection[key] for key in (
        "num_common_genes", "num_genecart_genes", "num_dataset_genes")}
    assert metadata["projection"]["genecart_id"] == "c1"
    assert metadata["versions"]["numpy"] == np.__version__
    assert metadata["versions"]["gearqueue"] and metadata["versions"]["matplotlib"]

    run(job, {"dataset_id": "ds", "format": "csv", "projection_id": pid})
    assert files[f"ds.{pid}.csv"] == (job.settings.paths.exports_dir
                                      / f"ds.{pid}.csv").read_bytes()
    image = matplotlib.image.imread(io.BytesIO(files[f"ds.{pid}.heatmap.png"]), format="png")
    assert image.shape[:2] == documented_size(3)[::-1]
    assert image.std() > 0.05  # not a blank image
    heatmap = metadata["heatmap"]
    assert (heatmap["patterns"], heatmap["samples"], heatmap["columns"]) == (3, 12, 12)
    assert heatmap["samples_per_column"] == 1 and heatmap["group_by"] is None


def test_samples_grouped_by_an_obs_column(job):
    cell_types = write_annotated_dataset(job)
    pid = project(job)["projection_id"]
    result = run(job, {"dataset_id": "ds", "format": "zip", "projection_id": pid,
                       "group_by": "cell_type"})
    assert result["file"] == f"ds.{pid}.by-cell_type.zip"
    files = members(job.settings.paths.exports_dir / result["file"])
    metadata = json.loads(files["metadata.json"])
    assert metadata["heatmap"]["groups"] == CELL_TYPES  # the categories' order
    assert metadata["heatmap"]["group_by"] == "cell_type"
    dataset = job.settings.paths.datasets_dir / "ds.h5ad"
    assert metadata["inputs"]["dataset"]["sha256"] == sha256(dataset.read_bytes())
    image = matplotlib.image.imread(io.BytesIO(files[f"ds.{pid}.heatmap.png"]), format="png")
    assert image.shape[:2] == documented_size(3)[::-1]
    assert len(set(cell_types)) == 3

    ungrouped = run(job, {"dataset_id": "ds", "format": "zip", "projection_id": pid})
    plain = members(job.settings.paths.exports_dir / ungrouped["file"])
    assert plain[f"ds.{pid}.heatmap.png"] != files[f"ds.{pid}.heatmap.png"]


def test_a_mtx_import_grouped_by_its_obs_tsv(job):
    folder = job.settings.paths.uploads_dir / "tenx"
    folder.mkdir()
    rng = np.random.default_rng(2)
    counts = rng.poisson(3.0, size=(30, 10))
    lines = [f"{i + 1} {j + 1} {counts[i, j]}" for j in range(10) for i in range(30)
             if counts[i, j]]
    (folder / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n"
                                       f"30 10 {len(lines)}\n" + "\n".join(lines) + "\n")
    (folder / "features.tsv").write_text("".join(f"gene{i}\tG{i}\n" for i in range(30)))
    (folder / "barcodes.tsv").write_text("".join(f"bc{j}\n" for j in range(10)))
    (folder / "obs.tsv").write_text("barcode\tcluster\n" + "".join(
        f"bc{j}\tc{j % 2}\n" for j in range(10)))
    run(DatasetImportJob(job.settings), {"dataset_id": "tx", "upload": "tenx",
                                         "format": "mtx"})
    write_cart(job.settings.paths.carts_dir / "cart.c1.tab", [f"gene{i}" for i in range(30)],
               ["A", "B"], rng.gamma(2.0, 1.0, size=(30, 2)))
    pid = project(job, "tx")["projection_id"]
    result = run(job, {"dataset_id": "tx", "format": "zip", "projection_id": pid,
                       "group_by": "cluster"})
    metadata = json.loads(members(job.settings.paths.exports_dir / result["file"])
                          ["metadata.json"])
    assert metadata["heatmap"]["groups"] == ["c0", "c1"]


def test_the_same_request_reuses_the_verified_file_and_new_inputs_rewrite_it(job):
    write_annotated_dataset(job)
    pid = project(job)["projection_id"]
    message = {"dataset_id": "ds", "format": "zip", "projection_id": pid}
    first = run(job, message)
    path = job.settings.paths.exports_dir / first["file"]
    before = os.stat(path)
    again = run(job, message)
    after = os.stat(path)
    assert again["success"] == 2 and "reused the verified" in again["message"]
    assert {k: again[k] for k in ("path", "size", "sha256")} == \
        {k: first[k] for k in ("path", "size", "sha256")}
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # A damaged zip under the right name is not trusted.
    path.write_bytes(path.read_bytes()[:-100])
    repaired = run(job, message)
    assert repaired["success"] == 1 and repaired["sha256"] == first["sha256"]  # same bytes

    # The projection changed since: the zip is written again from it.
    source = job.settings.paths.projections_dir / "by_dataset" / "ds" / f"{pid}.csv"
    source.write_text(source.read_text().replace("cell-0,", "cell-0,9", 1))
    changed = run(job, message)
    assert changed["success"] == 1 and changed["sha256"] != first["sha256"]
    data = members(path)[f"ds.{pid}.csv"]
    assert data == source.read_bytes() or b"cell-0,9" in data


def test_a_large_projection_is_averaged_into_columns_and_says_so(job, tmp_path):
    patterns, samples = 50, 10_000
    rng = np.random.default_rng(1)
    values = rng.gamma(2.0, 1.0, size=(samples, patterns))
    folder = job.settings.paths.projections_dir / "by_dataset" / "big"
    folder.mkdir(parents=True)
    write_text_target(folder / "p.csv", [f"s{j}" for j in range(samples)],
                      [f"P{k}" for k in range(patterns)], values, corner="")
    result = run(job, {"dataset_id": "big", "format": "zip", "projection_id": "p"})
    files = members(job.settings.paths.exports_dir / result["file"])
    heatmap = json.loads(files["metadata.json"])["heatmap"]
    assert heatmap["columns"] == 2000 and heatmap["samples_per_column"] == 5
    image = matplotlib.image.imread(io.BytesIO(files["big.p.heatmap.png"]), format="png")
    assert image.shape[:2] == documented_size(patterns)[::-1]
    (tmp_path / "member.csv").write_bytes(files["big.p.csv"])
    np.testing.assert_array_equal(read_table(tmp_path / "member.csv")[2], values)


def test_a_dataset_zip_holds_the_dataset_csv_and_no_heatmap(job):
    genes, samples = ["g1", "g2", "g3"], ["s1", "s2"]
    matrix = np.array([[1.0, 0.5], [2.0, np.nan], [0.0, 3.0]])
    write_h5ad_target(job.settings.paths.datasets_dir / "ds.h5ad", genes, samples, matrix)
    result = run(job, {"dataset_id": "ds", "format": "zip"})
    files = members(job.settings.paths.exports_dir / "ds.zip")
    assert sorted(files) == ["ds.csv", "metadata.json"]
    run(job, {"dataset_id": "ds", "format": "csv"})
    assert files["ds.csv"] == (job.settings.paths.exports_dir / "ds.csv").read_bytes()
    metadata = json.loads(files["metadata.json"])
    assert metadata["table"]["layout"] == "genes x samples"
    assert (result["num_rows"], result["num_columns"]) == (3, 2)


BAD_MESSAGES = {
    "group-by-csv": ({"dataset_id": "ds", "format": "csv", "projection_id": "p",
                      "group_by": "cell_type"}, "field 'group_by' groups the samples of a "
                                                "projection's heatmap: it needs \"format\": "
                                                "\"zip\" and a 'projection_id'"),
    "group-by-dataset": ({"dataset_id": "ds", "format": "zip", "group_by": "cell_type"},
                         "it needs \"format\": \"zip\" and a 'projection_id'"),
    "group-by-empty": ({"dataset_id": "ds", "format": "zip", "projection_id": "p",
                        "group_by": ""}, "field 'group_by' must name an obs column"),
    "group-by-control": ({"dataset_id": "ds", "format": "zip", "projection_id": "p",
                          "group_by": "a\nb"}, "field 'group_by' must name an obs column"),
    "group-by-number": ({"dataset_id": "ds", "format": "zip", "projection_id": "p",
                         "group_by": 3}, "field 'group_by' must be a string"),
    "bad-format": ({"dataset_id": "ds", "format": "xlsx"},
                   "field 'format' must be one of csv, tsv, zip"),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_a_bad_zip_request_names_the_field(job, case):
    message, text = BAD_MESSAGES[case]
    with pytest.raises(InvalidMessage) as raised:
        run(job, message)
    assert text in raised.value.message


def test_a_missing_obs_column_or_a_text_dataset_cannot_be_grouped(job):
    write_annotated_dataset(job)
    pid = project(job)["projection_id"]
    with pytest.raises(PermanentJobError, match=r"dataset ds\.h5ad has no obs column 'tissue' "
                                                r"to group samples by \(its obs columns: "
                                                r"'cell_type'\)"):
        run(job, {"dataset_id": "ds", "format": "zip", "projection_id": pid,
                  "group_by": "tissue"})
    (job.settings.paths.datasets_dir / "ds.h5ad").rename(
        job.settings.paths.datasets_dir / "other.h5ad")
    write_text_target(job.settings.paths.datasets_dir / "ds.csv", ["g"], SAMPLES,
                      np.ones((1, len(SAMPLES))))
    with pytest.raises(PermanentJobError, match=r"dataset 'ds' is ds\.csv, a text file"):
        run(job, {"dataset_id": "ds", "format": "zip", "projection_id": pid,
                  "group_by": "cell_type"})
    assert not any(p.suffix == ".zip" for p in job.settings.paths.exports_dir.iterdir())


def test_zip_exports_through_the_queue(make_config, start_consumer):
    config = make_config()
    settings = make_folders(load_settings(config))
    job = ExportJob(settings)
    write_annotated_dataset(job)
    pid = project(job)["projection_id"]
    consumer = start_consumer(config, "export")
    with Client(settings) as client:
        bad = client.call("export", {"dataset_id": "ds", "format": "zip",
                                     "projection_id": pid, "group_by": "tissue"}, timeout=60)
        assert consumer.process.poll() is None
        good = client.call("export", {"dataset_id": "ds", "format": "zip",
                                      "projection_id": pid, "group_by": "cell_type"},
                           timeout=120)
        again = client.call("export", {"dataset_id": "ds", "format": "zip",
                                       "projection_id": pid, "group_by": "cell_type"},
                            timeout=60)
    assert bad["success"] == -1 and "no obs column 'tissue'" in bad["message"]
    assert good["success"] == 1, good
    assert again["success"] == 2 and again["sha256"] == good["sha256"]
    with open(good["path"], "rb") as stream:
        assert sha256(stream.read()) == good["sha256"]
    assert consumer.process.poll() is None
