"""The real jobs report progress where they loop: ProjectR per chunk of samples (and the
z-score pass), dataset_import per rows read (text), samples read (h5ad) and cells
written (MTX), export per rows written. Run with a context that records each report,
unthrottled; the throttle is tested in test_progress.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from matrix_jobs import make_folders
from projectr_fixtures import (
    generated,
    payload,
    write_cart,
    write_h5ad_target,
    write_text_target,
)

from gearqueue.jobs.base import Job, JobContext
from gearqueue.jobs.dataset_import import DatasetImportJob
from gearqueue.jobs.export import ExportJob
from gearqueue.jobs.projectr import ProjectRJob
from gearqueue.matrices.convert import text_to_h5ad
from gearqueue.matrices.tenx import find_members, mtx_to_h5ad

pytestmark = pytest.mark.filterwarnings("ignore:Variable names are not unique")

Reports = list[tuple[int, "int | None", str]]


def run_reporting(job: Job, body: dict) -> tuple[dict, Reports]:  # type: ignore[type-arg]
    reports: Reports = []
    context = JobContext(job_id="j", job_type=job.name, attempt=1, settings=job.settings,
                         isolated=False, log=logging.LoggerAdapter(logging.getLogger("t"), {}),
                         progress=lambda done, total=None, phase="": reports.append(
                             (done, total, phase)))
    return job.run(job.validate(body), context), reports


@pytest.fixture
def folders(settings):
    make_folders(settings)
    return settings


def test_projectr_reports_each_chunk_of_samples_and_the_zscore_pass(folders) -> None:
    paths = folders.paths
    loadings, _, target = generated(np.random.default_rng(0), 40, 10, 3)
    genes = [f"g{i}" for i in range(40)]
    write_text_target(paths.datasets_dir / "ds.csv", genes, [f"s{i}" for i in range(10)],
                      target)
    write_cart(paths.carts_dir / "cart.cart.tab", genes, ["P0", "P1", "P2"], loadings)
    job = ProjectRJob(folders, engine="numpy", chunk_bytes=40 * 8 * 3)  # a few samples
    reply, reports = run_reporting(job, payload("nmf", zscore=True))
    assert reply["success"] == 1, reply
    scored = [done for done, total, phase in reports if phase == "samples z-scored"]
    projected = [done for done, total, phase in reports if phase == "samples projected"]
    assert len(reports) == len(scored) + len(projected) and {r[1] for r in reports} == {10}
    assert reports[:len(scored)] == [(done, 10, "samples z-scored") for done in scored]
    assert scored == projected and len(scored) >= 3  # one report per chunk, each pass
    assert scored == sorted(set(scored)) and scored[-1] == 10


def test_a_text_import_reports_rows_read_per_block(folders, tmp_path: Path) -> None:
    values = np.arange(100 * 4, dtype=float).reshape(100, 4)
    source = write_text_target(tmp_path / "up.csv", [f"g{i}" for i in range(100)],
                               ["a", "b", "c", "d"], values)
    reports: Reports = []
    text_to_h5ad(source, ",", tmp_path / "out.h5ad", label="upload", block_values=4 * 30,
                 progress=lambda done, total, phase: reports.append((done, total, phase)))
    assert reports == [(30, None, "rows read"), (60, None, "rows read"),
                       (90, None, "rows read"), (100, None, "rows read")]
    write_text_target(folders.paths.uploads_dir / "up.csv", [f"g{i}" for i in range(100)],
                      ["a", "b", "c", "d"], values)
    reply, reports = run_reporting(DatasetImportJob(folders),
                                   {"dataset_id": "ds", "upload": "up.csv"})
    assert reply["success"] == 1 and reports[-1] == (100, None, "rows read")


def test_an_h5ad_import_reports_samples_read(folders) -> None:
    values = np.ones((5, 7))
    write_h5ad_target(folders.paths.uploads_dir / "up.h5ad", [f"g{i}" for i in range(5)],
                      [f"s{i}" for i in range(7)], values)
    reply, reports = run_reporting(DatasetImportJob(folders),
                                   {"dataset_id": "ds", "upload": "up.h5ad"})
    assert reply["success"] == 1
    assert reports and reports[-1] == (7, 7, "samples read")


def test_an_mtx_import_reports_cells_written(tmp_path: Path) -> None:
    folder = tmp_path / "tenx"
    folder.mkdir()
    cells, genes = 6, 3
    entries = [(g + 1, c + 1, c + g + 1) for c in range(cells) for g in range(genes)]
    (folder / "matrix.mtx").write_text(
        "%%MatrixMarket matrix coordinate integer general\n"
        f"{genes} {cells} {len(entries)}\n" + "".join(f"{g} {c} {v}\n" for g, c, v in entries))
    (folder / "features.tsv").write_text("".join(f"G{g}\tS{g}\tGene Expression\n"
                                                 for g in range(genes)))
    (folder / "barcodes.tsv").write_text("".join(f"C{c}\n" for c in range(cells)))
    reports: Reports = []
    mtx_to_h5ad(find_members(folder, "upload"), tmp_path / "out.h5ad", block_lines=6,
                progress=lambda done, total, phase: reports.append((done, total, phase)))
    assert reports[-1] == (cells, cells, "cells written")
    assert len(reports) >= 2 and [r[0] for r in reports] == sorted(r[0] for r in reports)


def test_an_export_reports_rows_written(folders) -> None:
    values = np.arange(50 * 3, dtype=float).reshape(50, 3)
    write_h5ad_target(folders.paths.datasets_dir / "ds.h5ad", [f"g{i}" for i in range(50)],
                      ["a", "b", "c"], values)
    job = ExportJob(folders)
    job.budget = 3 * 8 * 20  # 20 genes a block
    reply, reports = run_reporting(job, {"dataset_id": "ds", "format": "csv"})
    assert reply["success"] == 1
    assert reports == [(20, 50, "rows written"), (40, 50, "rows written"),
                       (50, 50, "rows written")]
    reply, reports = run_reporting(job, {"dataset_id": "ds", "format": "zip"})
    assert reply["success"] == 1 and reports[-1] == (50, 50, "rows written")
