"""format "zip": the table, its metadata and (for a projection) its heatmap, in one file.

    <base>.csv            the table, exactly as format "csv" writes it
    <base>.heatmap.png    projections only: patterns x samples (exports/heatmap.py)
    metadata.json         request, inputs with their SHA-256, algorithm and gene counts
                          (from the projection index), table shape, heatmap facts,
                          software versions, and the SHA-256 and size of each member

Called by the export job under its lock on the zip's name. The same request again
reuses the zip once it is verified (exports/bundle.py) against the inputs as they are
now; a zip made from older inputs, or damaged, is written again.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PermanentJobError, TransientJobError
from ..files import atomic_output, describe, sha256_file
from ..matrices import NO_REPORT, GeneBlock, Report, reporting
from ..matrices.chunks import gene_blocks
from ..matrices.delimited import DelimitedReader, write_delimited
from ..matrices.h5ad import H5adTarget
from ..matrices.obs_column import read_obs_column
from ..matrices.tables import read_text_matrix
from ..matrices.targets import find_target, open_target
from ..projectr.outputs import INDEX_NAME, ProjectionFiles, read_index
from .bundle import BundleWriter, read_verified
from .heatmap import draw_heatmap
from .versions import software_versions

SCHEMA = 1


@dataclass(frozen=True)
class ZipResult:
    metadata: dict[str, Any]
    reused: bool


def export_zip(*, final: Path, request: dict[str, Any], datasets_dir: Path,
               projections_dir: Path, budget: int, progress: Report = NO_REPORT) -> ZipResult:
    """Write (or reuse) the zip at `final` for `request` (its validated fields);
    `progress` is told the table's rows written."""
    dataset_id, projection_id = request["dataset_id"], request.get("projection_id")
    inputs: dict[str, dict[str, Any]] = {}
    if projection_id is not None:
        source = ProjectionFiles(projections_dir, dataset_id, genecart_id="",
                                 projection_id=projection_id).csv
        if not source.is_file():
            raise PermanentJobError(
                f"projection '{projection_id}' of dataset '{dataset_id}' not found: "
                f"no {source} (has its projectr job finished?)")
        inputs["projection"] = _described(source)
    dataset = None
    if projection_id is None or request.get("group_by") is not None:
        try:
            dataset = find_target(datasets_dir, dataset_id)
        except PermanentJobError as error:
            raise PermanentJobError(f"{error.message} in datasets_dir {datasets_dir}") \
                from None
        inputs["dataset"] = _described(dataset)
    checksums = {name: entry["sha256"] for name, entry in inputs.items()}
    reused = read_verified(final, request, checksums)
    if reused is not None:
        return ZipResult(reused, True)
    metadata: dict[str, Any] = {"gearqueue_export": SCHEMA, "request": request,
                                "inputs": inputs, "versions": software_versions()}
    base = ".".join(part for part in (dataset_id, projection_id) if part)
    mtime = max(Path(entry["path"]).stat().st_mtime for entry in inputs.values())
    for entry in inputs.values():
        entry.pop("path")
    try:
        with atomic_output(final) as temp, zipfile.ZipFile(temp, "w") as archive:
            bundle = BundleWriter(archive, mtime)
            if projection_id is None:
                assert dataset is not None
                metadata["table"] = _dataset_member(bundle, f"{base}.csv", dataset, budget,
                                                    progress)
            else:
                metadata.update(_projection_members(bundle, base, request, source,
                                                    projections_dir, dataset, progress))
            bundle.finish(metadata)
    except OSError as error:  # reading errors are PermanentJobErrors by now
        raise TransientJobError(f"cannot write export {final}: {describe(error)}") from None
    return ZipResult(read_verified(final, request, checksums) or metadata, False)


def _described(path: Path) -> dict[str, Any]:
    try:
        return {"file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size,
                "path": str(path)}
    except OSError as error:
        raise TransientJobError(f"cannot read {path}: {describe(error)}") from None


def _dataset_member(bundle: BundleWriter, name: str, source: Path, budget: int,
                    progress: Report) -> dict[str, Any]:
    """The dataset, genes x samples, streamed block by block into the zip."""
    if source.suffix == ".h5ad":
        target = open_target(source.parent, source.stem)
        try:
            rows = bundle.add_text(name, lambda stream: write_delimited(
                stream, ",", target.sample_ids, reporting(
                    gene_blocks(target, budget), progress, len(target.gene_ids), "rows written")))
            columns = len(target.sample_ids)
        finally:
            target.close()
    else:
        delimiter = "\t" if source.suffix == ".tsv" else ","
        with DelimitedReader(source, delimiter, label=f"dataset {source.name}",
                             block_values=budget // 8, allow_infinite=True) as reader:
            rows = bundle.add_text(name, lambda stream: write_delimited(
                stream, ",", reader.sample_ids,
                reporting(reader.blocks(), progress, None, "rows written")))
            columns = reader.num_samples
    return {"file": name, "layout": "genes x samples", "rows": rows, "columns": columns}


def _projection_members(bundle: BundleWriter, base: str, request: dict[str, Any],
                        source: Path, projections_dir: Path,
                        dataset: Path | None, progress: Report) -> dict[str, Any]:
    """The projection CSV and its heatmap; what the projection index says of it."""
    table = read_text_matrix(source, ",", what="projection", text_columns=1)
    name = f"{base}.csv"
    bundle.add_text(name, lambda stream: write_delimited(
        stream, ",", table.labels, reporting(iter([GeneBlock(table.row_ids, table.values)]),
                                             progress, len(table.row_ids), "rows written")))
    groups = order = None
    group_by = request.get("group_by")
    if group_by is not None:
        assert dataset is not None
        groups, order = _groups(dataset, group_by, table.row_ids, request["dataset_id"])
    entry, genecart_id = _index_entry(projections_dir, request["dataset_id"],
                                      request["projection_id"])
    title = (f"projection {request['projection_id']} of dataset {request['dataset_id']}"
             + (f" ({entry['algorithm']}, gene cart {genecart_id})" if entry.get("algorithm")
                else ""))
    png = io.BytesIO()
    facts = draw_heatmap(png, table.values.T, table.labels, table.row_ids, title=title,
                         groups=groups, group_order=order, group_by=group_by)
    bundle.add_bytes(f"{base}.heatmap.png", png.getvalue(), compress=False)
    return {"table": {"file": name, "layout": "samples x patterns",
                      "rows": len(table.row_ids), "columns": len(table.labels)},
            "heatmap": {"file": f"{base}.heatmap.png", **facts.as_dict()},
            "projection": {"genecart_id": genecart_id, **entry},
            "algorithm": entry.get("algorithm"),
            "gene_counts": {key: entry.get(key) for key in (
                "num_common_genes", "num_genecart_genes", "num_dataset_genes")}}


def _groups(dataset: Path, column: str, samples: list[str],
            dataset_id: str) -> tuple[list[str], list[str]]:
    if dataset.suffix != ".h5ad":
        raise PermanentJobError(f"field 'group_by' needs sample annotations, and dataset "
                                f"'{dataset_id}' is {dataset.name}, a text file without "
                                f"any: import it as an h5ad or MTX folder with obs")
    obs = read_obs_column(dataset, column)
    target = H5adTarget(dataset)
    try:
        position = {sample: index for index, sample in enumerate(target.sample_ids)}
    finally:
        target.close()
    missing = [sample for sample in samples if sample not in position]
    if missing:
        raise PermanentJobError(f"the projection's sample(s) {', '.join(map(repr, missing[:5]))}"
                                f" are not in dataset {dataset.name}'s obs: was the dataset "
                                f"replaced after the projection?")
    return [obs.values[position[sample]] for sample in samples], obs.order


def _index_entry(projections_dir: Path, dataset_id: str,
                 projection_id: str) -> tuple[dict[str, Any], str | None]:
    """The projection's entry in by_dataset/<dataset>/projections.json, if it has one."""
    index = read_index(projections_dir / "by_dataset" / dataset_id / INDEX_NAME)
    for genecart_id, entries in index.items():
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and str(entry.get("uuid")) == projection_id:
                return dict(entry), genecart_id
    return {}, None
