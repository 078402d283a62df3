"""A 10x-style MTX folder (matrix.mtx, features.tsv, barcodes.tsv) into a sparse .h5ad.

The upload is a folder inside uploads_dir, as Cell Ranger's filtered_feature_bc_matrix/
is: matrix.mtx[.gz] (genes x cells), features.tsv[.gz] or genes.tsv[.gz] (its rows),
barcodes.tsv[.gz] (its columns), and optionally obs.tsv[.gz] / var.tsv[.gz]
(annotations of the cells / genes). The dataset is cells x genes with X in CSR, the
sparse layout ProjectR's reader streams by samples; integer counts stay int32.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from ..errors import MatrixFormatError
from ..files import sha256_file
from . import NO_REPORT, Report, mtx
from .annotations import GZIP_MAGIC, Table, read_annotations, read_barcodes, read_features
from .convert import DuplicateGenes, MatrixSummary
from .sparse_h5ad import SparseH5adWriter

log = logging.getLogger(__name__)

#: Member -> the names it may have, in the order they are looked for.
MEMBERS = {
    "matrix": ("matrix.mtx", "matrix.mtx.gz"),
    "features": ("features.tsv", "features.tsv.gz", "genes.tsv", "genes.tsv.gz"),
    "barcodes": ("barcodes.tsv", "barcodes.tsv.gz"),
    "obs": ("obs.tsv", "obs.tsv.gz"),
    "var": ("var.tsv", "var.tsv.gz"),
}
REQUIRED = ("matrix", "features", "barcodes")


@dataclass(frozen=True)
class TenxFolder:
    folder: Path
    label: str
    members: dict[str, Path]

    def name(self, member: str) -> str:
        return f"{self.label} {self.members[member].name}"


def find_members(folder: Path, label: str) -> TenxFolder:
    """The triplet (and annotations) in `folder`; a missing or doubled member is an error."""
    found: dict[str, Path] = {}
    for member, names in MEMBERS.items():
        present = [folder / name for name in names if (folder / name).is_file()]
        if len(present) > 1:
            raise MatrixFormatError(f"{label} has both {present[0].name} and "
                                    f"{present[1].name}: keep one")
        if present:
            found[member] = present[0]
        elif member in REQUIRED:
            raise MatrixFormatError(f"{label} has no {member} file: looked for "
                                    f"{', '.join(names)} in {folder}")
    for path in found.values():
        if path.stat().st_size == 0:
            raise MatrixFormatError(f"{label} {path.name} is empty (0 bytes)")
    return TenxFolder(folder, label, found)


def folder_checksum(members: TenxFolder) -> str:
    """SHA-256 over each member's name and SHA-256: the same files give the same value."""
    digest = hashlib.sha256()
    for member in sorted(members.members):
        path = members.members[member]
        digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def uncompressed_size(members: TenxFolder) -> int:
    """About the dataset's size: gzip members count four times their size."""
    total = 0
    for path in members.members.values():
        size = path.stat().st_size
        total += 4 * size if path.name.endswith(".gz") else size
    return total


def mtx_to_h5ad(members: TenxFolder, destination: Path, *,
                block_lines: int = mtx.BLOCK_LINES,
                progress: Report = NO_REPORT) -> MatrixSummary:
    """Check every member against the others and write the cells x genes .h5ad
    (`progress`: the cells written)."""
    features = read_features(members.members["features"], members.name("features"))
    barcodes = read_barcodes(members.members["barcodes"], members.name("barcodes"))
    with open_binary(members.members["matrix"]) as stream:
        header, _ = mtx.read_header(stream, members.name("matrix"))
    _check_dimensions(header, features, barcodes, members)
    obs = (read_annotations(members.members["obs"], members.name("obs"), barcodes,
                            "barcode") if "obs" in members.members else Table(barcodes))
    var = Table(features.ids, dict(features.columns))
    if "var" in members.members:
        var.columns.update(read_annotations(members.members["var"], members.name("var"),
                                            features.ids, "gene").columns)
    conversion = _Conversion(members, destination, header, features, barcodes, block_lines,
                             progress)
    try:
        summary = conversion.run(obs, var, streamed=True)
    except mtx.NotSortedByColumn as unsorted:
        log.info("%s is not sorted by column (line %s); sorting it in memory",
                 members.name("matrix"), unsorted.args[0])
        summary = conversion.run(obs, var, streamed=False)
    duplicates = DuplicateGenes()
    duplicates.add(features.ids)
    duplicates.fill(summary)
    return summary


@dataclass(frozen=True)
class _Conversion:
    members: TenxFolder
    destination: Path
    header: mtx.MtxHeader
    features: Table
    barcodes: list[str]
    block_lines: int
    progress: Report

    def run(self, obs: Table, var: Table, *, streamed: bool) -> MatrixSummary:
        """One pass over matrix.mtx: cells as they come (`streamed`), or sorted first."""
        label = self.members.name("matrix")
        header = self.header
        summary = MatrixSummary(num_genes=header.rows, num_samples=header.columns)
        dtype = np.dtype(np.float64 if header.field == "real" else np.int32)
        with open_binary(self.members.members["matrix"]) as stream, \
                SparseH5adWriter(self.destination, header.columns, header.rows,
                                 dtype) as writer:
            _, lines = mtx.read_header(stream, label)
            entries = mtx.read_entries(stream, header, label, lines + 1, self.block_lines)
            blocks = (mtx.column_blocks(entries, header.columns) if streamed else
                      mtx.sorted_in_memory(entries, header.columns, self.block_lines))
            try:
                for block in blocks:
                    summary.num_missing_values += int(np.count_nonzero(
                        np.isnan(block.values)))
                    writer.append(block.counts, block.rows, block.values.astype(dtype))
                    self.progress(block.first + len(block.counts), header.columns,
                                  "cells written")
            except mtx.DuplicateEntry as repeat:
                raise _duplicate(repeat, self.features, self.barcodes, label) from None
            writer.finish(obs, var)
        return summary


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, gunzipped if it is gzip-compressed (whatever its name)."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == GZIP_MAGIC
    return cast(BinaryIO, gzip.open(path, "rb") if compressed else open(path, "rb"))


def _duplicate(repeat: mtx.DuplicateEntry, features: Table, barcodes: list[str],
               label: str) -> MatrixFormatError:
    return MatrixFormatError(
        f"{label}: the entry at row {repeat.row + 1} (gene {features.ids[repeat.row]!r}), "
        f"column {repeat.column + 1} (barcode {barcodes[repeat.column]!r}) appears more "
        f"than once")


def _check_dimensions(header: mtx.MtxHeader, features: Table, barcodes: list[str],
                      members: TenxFolder) -> None:
    size = f"{members.name('matrix')} (line {header.size_line}) declares"
    if len(features.ids) != header.rows:
        raise MatrixFormatError(f"{members.name('features')} has {len(features.ids)} "
                                f"gene(s) but {size} {header.rows} rows")
    if len(barcodes) != header.columns:
        raise MatrixFormatError(f"{members.name('barcodes')} has {len(barcodes)} "
                                f"barcode(s) but {size} {header.columns} columns")


