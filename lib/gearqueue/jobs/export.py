"""export: write a dataset, or one of its projections, as CSV or TSV for download.

Message: {"dataset_id", "format": "csv" | "tsv" | "zip", "projection_id" (optional),
"group_by" (optional, zip of a projection: an obs column)}. Without
a projection the dataset (<datasets_dir>/<dataset_id>.h5ad, .csv or .tsv, found the
way ProjectR finds it) is written genes x samples, the layout dataset_import reads, so
an export imports back to the same numbers. With one, the projection's CSV
(<projections_dir>/by_dataset/<dataset_id>/<projection_id>.csv, samples x patterns) is
written. The file is <exports_dir>/<dataset_id>[.<projection_id>].<format>, written to
a temp file and renamed. A large .h5ad streams through in blocks of genes, each read
chunk of samples by chunk of samples, so memory stays bounded. A zip adds the
metadata and a heatmap (gearqueue/exports/), and is reused when the same request finds
a verified zip of the same inputs. See docs/export.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ..errors import InvalidMessage, PermanentJobError, TransientJobError
from ..exports.zip_export import export_zip
from ..fields import SAFE_ID, get_choice, get_field, get_safe_id, reject_unknown
from ..files import (
    atomic_output,
    describe,
    exclusive,
    remove_stale_temps,
    require_dir,
    sha256_file,
)
from ..matrices import GeneBlock, Report, reporting
from ..matrices.chunks import gene_blocks
from ..matrices.delimited import DELIMITERS, DelimitedReader, write_delimited
from ..matrices.tables import read_text_matrix
from ..matrices.targets import find_target, open_target
from ..projectr.outputs import ProjectionFiles
from .base import Job, JobContext

FORMATS = ("csv", "tsv", "zip")
#: An obs column name: any text but control characters, at most this long.
GROUP_BY_LIMIT = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Bytes of values an export holds at once (a block of genes x every sample); the
#: process peaks at about three times this (the reads of a chunk of samples).
EXPORT_BUDGET = 64 * 1024 * 1024


@dataclass(frozen=True)
class ExportRequest:
    dataset_id: str
    format: str
    projection_id: str | None
    group_by: str | None = None

    @property
    def file_name(self) -> str:
        """Deterministic: the same request names the same file."""
        grouping = None
        if self.group_by is not None:  # a column name need not be a safe file name
            grouping = "by-" + (self.group_by if SAFE_ID.match(self.group_by) else
                                hashlib.sha256(self.group_by.encode()).hexdigest()[:16])
        parts = [self.dataset_id, self.projection_id, grouping, self.format]
        return ".".join(part for part in parts if part)

    def as_dict(self) -> dict[str, Any]:
        fields = {"dataset_id": self.dataset_id, "format": self.format,
                  "projection_id": self.projection_id, "group_by": self.group_by}
        return {key: value for key, value in fields.items() if value is not None}


class ExportJob(Job[ExportRequest]):
    name = "export"
    #: Overridable (tests): bytes of values held at once.
    budget = EXPORT_BUDGET

    def validate(self, payload: Mapping[str, Any]) -> ExportRequest:
        reject_unknown(payload, ("dataset_id", "format", "projection_id", "group_by"))
        dataset_id = cast(str, get_safe_id(payload, "dataset_id"))
        fmt = cast(str, get_choice(payload, "format", FORMATS))
        projection_id = get_safe_id(payload, "projection_id", required=False)
        group_by = get_field(payload, "group_by", str, required=False)
        if group_by is not None:
            if fmt != "zip" or projection_id is None:
                raise InvalidMessage("field 'group_by' groups the samples of a projection's "
                                     "heatmap: it needs \"format\": \"zip\" and a "
                                     "'projection_id'")
            if not group_by or len(group_by) > GROUP_BY_LIMIT or _CONTROL.search(group_by):
                raise InvalidMessage(f"field 'group_by' must name an obs column: 1-"
                                     f"{GROUP_BY_LIMIT} characters, no control characters; "
                                     f"got {group_by[:60]!r}")
        return ExportRequest(dataset_id, fmt, projection_id, group_by)

    def run(self, request: ExportRequest, context: JobContext) -> dict[str, Any]:
        exports = require_dir(self.settings.paths.exports_dir, "exports_dir")
        final = exports / request.file_name
        lock = self.settings.paths.state_dir / "locks" / self.name / f"{final.name}.lock"
        with exclusive(lock, purpose=f"exporting {final.name}"):
            remove_stale_temps(final)
            if request.format == "zip":
                return self._export_zip(request, final, context)
            if request.projection_id is None:
                num_rows, num_columns, what = self._export_dataset(request, final,
                                                                   context.progress)
            else:
                num_rows, num_columns, what = self._export_projection(request, final,
                                                                      context.progress)
        context.log.info("exported %s to %s: %d rows x %d columns", what, final, num_rows,
                         num_columns)
        return {"success": 1, "file": final.name, "num_rows": num_rows,
                "num_columns": num_columns,
                "message": f"exported {what} to {final.name} in exports_dir: {num_rows} "
                           f"rows x {num_columns} columns"}

    def _export_zip(self, request: ExportRequest, final: Path,
                    context: JobContext) -> dict[str, Any]:
        paths = self.settings.paths
        datasets = paths.datasets_dir
        if request.projection_id is None or request.group_by is not None:
            datasets = require_dir(datasets, "datasets_dir")
        result = export_zip(final=final, request=request.as_dict(), datasets_dir=datasets,
                            projections_dir=paths.projections_dir, budget=self.budget,
                            progress=context.progress)
        table = result.metadata["table"]
        size, checksum = final.stat().st_size, sha256_file(final)
        what = (f"dataset '{request.dataset_id}'" if request.projection_id is None else
                f"projection '{request.projection_id}' of dataset '{request.dataset_id}'")
        done = ("reused the verified" if result.reused else "wrote")
        context.log.info("%s zip %s: %d bytes, SHA-256 %s", done, final, size, checksum)
        return {"success": 2 if result.reused else 1, "file": final.name,
                "path": str(final), "size": size, "sha256": checksum,
                "num_rows": table["rows"], "num_columns": table["columns"],
                "members": sorted([*result.metadata["members"], "metadata.json"]),
                "message": f"{done} export of {what} as {final.name} in exports_dir "
                           f"({size} bytes; {table['rows']} rows x {table['columns']} "
                           f"columns, {table['layout']})"}

    def _export_dataset(self, request: ExportRequest, final: Path,
                        progress: Report) -> tuple[int, int, str]:
        datasets = require_dir(self.settings.paths.datasets_dir, "datasets_dir")
        try:
            source = find_target(datasets, request.dataset_id)
        except PermanentJobError as error:
            raise PermanentJobError(f"{error.message} in datasets_dir {datasets}") from None
        what = f"dataset '{request.dataset_id}' ({source.name}, genes x samples)"
        if source.suffix == ".h5ad":
            target = open_target(datasets, request.dataset_id)
            try:
                rows = _write(final, request.format, target.sample_ids,
                              reporting(gene_blocks(target, self.budget), progress,
                                        len(target.gene_ids), "rows written"),
                              single_precision=_stores_single_precision(source))
                return rows, len(target.sample_ids), what
            finally:
                target.close()
        delimiter = "\t" if source.suffix == ".tsv" else ","
        with DelimitedReader(source, delimiter, label=f"dataset {source.name}",
                             block_values=self.budget // 8, allow_infinite=True) as reader:
            rows = _write(final, request.format, reader.sample_ids,
                          reporting(reader.blocks(), progress, None, "rows written"))
            return rows, reader.num_samples, what

    def _export_projection(self, request: ExportRequest, final: Path,
                           progress: Report) -> tuple[int, int, str]:
        projection_id = cast(str, request.projection_id)
        # The by_dataset path does not depend on the gene cart.
        source = ProjectionFiles(self.settings.paths.projections_dir, request.dataset_id,
                                 genecart_id="", projection_id=projection_id).csv
        if not source.is_file():
            raise PermanentJobError(
                f"projection '{projection_id}' of dataset '{request.dataset_id}' not found: "
                f"no {source} (has its projectr job finished?)")
        table = read_text_matrix(source, ",", what="projection", text_columns=1)
        rows = _write(final, request.format, table.labels,
                      reporting(iter([GeneBlock(table.row_ids, table.values)]), progress,
                                len(table.row_ids), "rows written"))
        what = (f"projection '{projection_id}' of dataset '{request.dataset_id}' "
                f"(samples x patterns)")
        return rows, len(table.labels), what


def _write(final: Path, fmt: str, columns: list[str], blocks: Iterator[GeneBlock], *,
           single_precision: bool = False) -> int:
    """Write the table to a temp file and rename it to `final`; return the row count."""
    try:
        with atomic_output(final) as temp, open(temp, "w", encoding="utf-8",
                                                newline="") as stream:
            return write_delimited(stream, DELIMITERS[fmt], columns, blocks,
                                   single_precision=single_precision)
    except OSError as error:  # reading errors are PermanentJobErrors by now
        raise TransientJobError(f"cannot write export {final}: {describe(error)}") from None


def _stores_single_precision(path: Path) -> bool:
    """True if X holds float32 (or float16): print its values as float32 prints them."""
    import h5py  # only h5ad datasets need it

    with h5py.File(path, "r") as file:  # ProjectR's reader has opened it: it is valid
        x = file["X"]
        values = x["data"] if isinstance(x, h5py.Group) else x
        return values.dtype.kind == "f" and values.dtype.itemsize <= 4
