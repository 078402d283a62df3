"""dataset_import: turn an uploaded matrix into a dataset ProjectR and export can read.

Message: {"dataset_id", "upload": a file name inside uploads_dir, "format": "csv" |
"tsv" | "h5ad" (optional: from the extension) | "mtx" (the upload is then a 10x-style
folder: matrix.mtx, features.tsv, barcodes.tsv), "replace": bool (optional)}. The result
is <datasets_dir>/<dataset_id>.h5ad, written to a temp file and renamed, so a reader
never sees half a dataset and a killed import leaves nothing behind. The SHA-256 of the
upload is recorded in the file: importing the same upload again replies success 2 and
does nothing; a different upload for an existing dataset is refused unless "replace".
See docs/dataset-import.md.
"""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ..errors import InvalidMessage, PermanentJobError, TransientJobError
from ..fields import get_choice, get_field, get_safe_id, reject_unknown
from ..files import (
    atomic_output,
    describe,
    exclusive,
    remove_stale_temps,
    require_dir,
    require_space,
    sha256_file,
)
from ..matrices.convert import MatrixSummary, check_h5ad, copy_h5ad, stamp, text_to_h5ad
from ..matrices.delimited import DELIMITERS, GZIP_MAGIC
from ..matrices.h5ad_writer import read_provenance
from ..matrices.targets import TARGET_SUFFIXES
from ..matrices.tenx import TenxFolder, find_members, folder_checksum, mtx_to_h5ad
from ..matrices.tenx import uncompressed_size as folder_size
from .base import Job, JobContext

FORMATS = ("csv", "tsv", "h5ad", "mtx")
#: Upload name endings that say the format (checked lower-case, longest first).
EXTENSIONS = ((".csv.gz", "csv"), (".tsv.gz", "tsv"), (".tab.gz", "tsv"), (".csv", "csv"),
              (".tsv", "tsv"), (".tab", "tsv"), (".h5ad", "h5ad"))
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class ImportRequest:
    dataset_id: str
    upload: str
    format: str
    replace: bool


def format_from_name(upload: str) -> str | None:
    name = upload.lower()
    return next((fmt for ending, fmt in EXTENSIONS if name.endswith(ending)), None)


class DatasetImportJob(Job[ImportRequest]):
    name = "dataset_import"

    def validate(self, payload: Mapping[str, Any]) -> ImportRequest:
        reject_unknown(payload, ("dataset_id", "upload", "format", "replace"))
        dataset_id = cast(str, get_safe_id(payload, "dataset_id"))
        upload = cast(str, get_safe_id(payload, "upload"))
        fmt = get_choice(payload, "format", FORMATS, required=False) or format_from_name(upload)
        if fmt is None:
            raise InvalidMessage(f"field 'format' is needed: the name of upload {upload!r} "
                                 f"does not say it (give one of {', '.join(FORMATS)})")
        replace = get_field(payload, "replace", bool, required=False, default=False)
        return ImportRequest(dataset_id, upload, fmt, replace)

    def run(self, request: ImportRequest, context: JobContext) -> dict[str, Any]:
        paths = self.settings.paths
        source = require_dir(paths.uploads_dir, "uploads_dir") / request.upload
        datasets = require_dir(paths.datasets_dir, "datasets_dir")
        final = datasets / f"{request.dataset_id}.h5ad"
        label = f"upload '{request.upload}'"
        folder = None
        if request.format == "mtx":
            folder = _check_folder(source, label, paths.uploads_dir)
        else:
            _check_upload(source, request.format, label, paths.uploads_dir)
        lock = paths.state_dir / "locks" / self.name / f"{request.dataset_id}.lock"
        with exclusive(lock, purpose=f"importing dataset {request.dataset_id}"):
            remove_stale_temps(final)
            try:
                checksum = sha256_file(source) if folder is None else folder_checksum(folder)
            except OSError as error:
                raise TransientJobError(f"cannot read {label}: {describe(error)}") from None
            done = _already_imported(request, final, checksum)
            if done is not None:
                context.log.info("dataset %s: already imported from this upload",
                                 request.dataset_id)
                return done
            _refuse_conflicts(request, datasets)
            expected = _expected_size(source) if folder is None else folder_size(folder)
            require_space(datasets, expected, "datasets_dir")
            summary = self._write(request, source, final, label, checksum, context, folder)
        return _reply(1, request, summary, checksum, _imported_message(request, summary))

    def _write(self, request: ImportRequest, source: Path, final: Path, label: str,
               checksum: str, context: JobContext,
               folder: TenxFolder | None = None) -> MatrixSummary:
        context.log.info("importing %s (%s) as dataset %s", source, request.format,
                         request.dataset_id)
        try:
            with atomic_output(final) as temp:
                if folder is not None:
                    summary = mtx_to_h5ad(folder, temp, progress=context.progress)
                elif request.format == "h5ad":
                    summary = check_h5ad(source, label=label, progress=context.progress)
                    copy_h5ad(source, temp)
                else:
                    summary = text_to_h5ad(source, DELIMITERS[request.format], temp,
                                           label=label, progress=context.progress)
                stamp(temp, {"sha256": checksum, "upload": request.upload,
                             "format": request.format, "job_id": context.job_id,
                             "imported_at": _now(), **summary.as_reply()})
        except OSError as error:  # reading errors are PermanentJobErrors by now
            raise TransientJobError(f"cannot write dataset {final}: {describe(error)}") from None
        context.log.info("dataset %s: %d genes x %d samples, %d duplicate gene id(s), "
                         "%d missing value(s)", request.dataset_id, summary.num_genes,
                         summary.num_samples, summary.num_duplicate_genes,
                         summary.num_missing_values)
        return summary


def _check_upload(source: Path, fmt: str, label: str, folder: Path) -> None:
    """The upload exists, is a non-empty regular file, and its first bytes fit `fmt`."""
    try:
        info = os.stat(source)
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the worker for ever
            raise PermanentJobError(f"{label} in uploads_dir {folder} is not a regular file")
        if info.st_size == 0:
            raise PermanentJobError(f"{label} in uploads_dir {folder} is empty (0 bytes)")
        with open(source, "rb") as stream:
            head = stream.read(len(HDF5_MAGIC))
    except FileNotFoundError:
        raise PermanentJobError(f"{label} not found in uploads_dir {folder}") from None
    except PermissionError as error:
        raise PermanentJobError(f"{label} in uploads_dir {folder} cannot be read: "
                                f"{error.strerror}") from None
    if fmt == "h5ad" and not head.startswith(HDF5_MAGIC):
        what = "is gzip-compressed" if head.startswith(GZIP_MAGIC) else f"starts with {head!r}"
        raise PermanentJobError(f"{label} is not an h5ad (HDF5) file: it {what}")
    if fmt != "h5ad" and head.startswith(HDF5_MAGIC):
        raise PermanentJobError(f"{label} is an HDF5 file, not {fmt.upper()} text: give "
                                f"format 'h5ad'")


def _check_folder(source: Path, label: str, folder: Path) -> TenxFolder:
    """An MTX upload is a folder holding the triplet (and maybe obs.tsv / var.tsv)."""
    if not source.exists():
        raise PermanentJobError(f"{label} not found in uploads_dir {folder}")
    if not source.is_dir():
        raise PermanentJobError(f"{label} in uploads_dir {folder} is not a folder: format "
                                f"'mtx' wants a folder holding matrix.mtx[.gz], "
                                f"features.tsv[.gz] (or genes.tsv[.gz]) and barcodes.tsv[.gz]")
    try:
        return find_members(source, label)
    except PermissionError as error:
        raise PermanentJobError(f"{label} in uploads_dir {folder} cannot be read: "
                                f"{error.strerror}") from None


def _expected_size(source: Path) -> int:
    """About the size of the dataset: the upload's, uncompressed (gzip's trailer says it)."""
    size = source.stat().st_size
    with open(source, "rb") as stream:
        if stream.read(2) != GZIP_MAGIC:
            return size
        stream.seek(-4, os.SEEK_END)
        uncompressed = int.from_bytes(stream.read(4), "little")  # modulo 4 GiB
    # deflate expands at most ~1032 times; outside that the trailer wrapped or is damaged
    return uncompressed if size <= uncompressed <= 1032 * size else 4 * size


def _already_imported(request: ImportRequest, final: Path,
                      checksum: str) -> dict[str, Any] | None:
    """The success-2 reply if `final` was imported from identical bytes, else None."""
    if not final.exists():
        return None
    recorded = read_provenance(final)
    if recorded is not None and recorded.get("sha256") == checksum:
        summary = MatrixSummary(**{key: recorded[key] for key in MatrixSummary().as_reply()
                                   if key in recorded})
        return _reply(2, request, summary, checksum,
                      f"dataset '{request.dataset_id}' was already imported from identical "
                      f"data (SHA-256 {checksum[:12]}…); nothing to do")
    if request.replace:
        return None
    origin = (f"imported from upload '{recorded.get('upload')}' at "
              f"{recorded.get('imported_at')}" if recorded else "not written by an import")
    raise PermanentJobError(
        f"dataset '{request.dataset_id}' already exists ({final}, {origin}) with other "
        f"data than {request.upload!r}; send \"replace\": true to overwrite it, or use "
        f"another dataset_id")


def _refuse_conflicts(request: ImportRequest, datasets: Path) -> None:
    """A text target of the same id would be a second, different dataset of that id."""
    for suffix in (suffix for suffix in TARGET_SUFFIXES if suffix != ".h5ad"):
        other = datasets / f"{request.dataset_id}{suffix}"
        if other.exists():
            raise PermanentJobError(
                f"dataset '{request.dataset_id}' already exists as {other}; remove it "
                f"before importing, or use another dataset_id")


def _reply(success: int, request: ImportRequest, summary: MatrixSummary, checksum: str,
           message: str) -> dict[str, Any]:
    return {"success": success, "message": message, "dataset_id": request.dataset_id,
            **summary.as_reply(), "sha256": checksum}


def _imported_message(request: ImportRequest, summary: MatrixSummary) -> str:
    text = (f"imported upload '{request.upload}' as dataset '{request.dataset_id}': "
            f"{summary.num_genes} genes x {summary.num_samples} samples")
    if summary.num_duplicate_genes:
        shown = ", ".join(map(repr, summary.duplicate_genes))
        more = summary.num_duplicate_genes - len(summary.duplicate_genes)
        text += (f"; {summary.num_duplicate_genes} gene id(s) occur more than once "
                 f"({shown}{f' and {more} more' if more else ''}): ProjectR uses the first "
                 f"row of each")
    if summary.num_missing_values:
        text += f"; {summary.num_missing_values} missing value(s)"
    return text


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
