"""Projection outputs, laid out as gEAR keeps them, written so no reader sees half a file.

    <projections_dir>/by_dataset/<dataset_id>/<projection_id>.csv        samples x patterns
    <projections_dir>/by_dataset/<dataset_id>/<projection_id>.pval.csv   (nmf, full_output)
    <projections_dir>/by_dataset/<dataset_id>/projections.json   {genecart_id: [entry, ...]}
    <projections_dir>/by_genecart/<genecart_id>/<projection_id>.csv      symlink to the above
    <projections_dir>/by_genecart/<genecart_id>/projections.json {dataset_id: [entry, ...]}

Every file is written to a temporary name, fsynced and renamed. Index updates are
read-modify-write under a lock on `<index>.lock`, so concurrent workers lose no entry.
The dataset index entry is written last: it is what marks a projection complete, so a
worker killed half-way leaves an output that is recomputed, never one that is reused.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..errors import PermanentJobError, TransientJobError
from ..files import exclusive

log = logging.getLogger(__name__)

INDEX_NAME = "projections.json"


@dataclass(frozen=True)
class ProjectionFiles:
    projections_dir: Path
    dataset_id: str
    genecart_id: str
    projection_id: str

    @property
    def dataset_dir(self) -> Path:
        return self.projections_dir / "by_dataset" / self.dataset_id

    @property
    def genecart_dir(self) -> Path:
        return self.projections_dir / "by_genecart" / self.genecart_id

    @property
    def csv(self) -> Path:
        return self.dataset_dir / f"{self.projection_id}.csv"

    @property
    def pval_csv(self) -> Path:
        return self.dataset_dir / f"{self.projection_id}.pval.csv"

    @property
    def lock(self) -> Path:
        """Held while the projection is computed: one computation per projection id."""
        return self.dataset_dir / f".{self.projection_id}.lock"


def require_root(files: ProjectionFiles) -> None:
    """The projections folder must exist: never create a data root on a wrong disk."""
    if not files.projections_dir.is_dir():
        raise TransientJobError(f"the projections folder {files.projections_dir} does not "
                                f"exist ([paths] projections_dir)")


def entry_algorithm(entry: dict[str, Any]) -> str | None:
    """An entry's algorithm; gEAR's oldest entries say is_pca instead."""
    if "algorithm" in entry:
        return str(entry["algorithm"])
    if "is_pca" in entry:
        return "pca" if entry["is_pca"] == 1 else "nmf"
    return None


def find_complete(files: ProjectionFiles, algorithm: str, zscore: bool,
                  needs_pval: bool) -> dict[str, Any] | None:
    """The index entry of a finished projection matching the request, else None."""
    entries = read_index(files.dataset_dir / INDEX_NAME).get(files.genecart_id, [])
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or str(entry.get("uuid")) != files.projection_id:
            continue
        if entry_algorithm(entry) != algorithm or bool(entry.get("zscore", False)) != zscore:
            return None
        if not files.csv.is_file() or (needs_pval and not files.pval_csv.is_file()):
            return None
        return entry
    return None


def publish(files: ProjectionFiles, sample_ids: list[str], pattern_names: list[str],
            coef: np.ndarray, pval: np.ndarray | None, entry: dict[str, Any], *,
            integers: bool = False) -> None:
    """Write the result files, link them from by_genecart, then record the entry.

    Called under the projection's lock, so temp files left by a killed writer of the same
    projection can be removed.
    """
    require_root(files)
    try:
        files.dataset_dir.mkdir(parents=True, exist_ok=True)
        for stale in files.dataset_dir.glob(f".{files.projection_id}[._]*.tmp"):
            stale.unlink(missing_ok=True)
        files.genecart_dir.mkdir(parents=True, exist_ok=True)
        written = [files.csv]
        write_matrix_csv(files.csv, sample_ids, pattern_names, coef, integers=integers)
        if pval is not None:
            write_matrix_csv(files.pval_csv, sample_ids, pattern_names, pval)
            written.append(files.pval_csv)
        else:  # an older run's p-values would not belong to this projection
            files.pval_csv.unlink(missing_ok=True)
            (files.genecart_dir / files.pval_csv.name).unlink(missing_ok=True)
        for path in written:
            _symlink(files.genecart_dir / path.name, path)
    except OSError as error:
        raise TransientJobError(f"cannot write the projection files: {error}") from None
    update_index(files.genecart_dir / INDEX_NAME, files.dataset_id, entry)
    update_index(files.dataset_dir / INDEX_NAME, files.genecart_id, entry)


def write_matrix_csv(path: Path, sample_ids: list[str], pattern_names: list[str],
                     values: np.ndarray, *, integers: bool = False) -> None:
    """patterns x samples `values` as gEAR's CSV: a row per sample, a column per pattern,
    sample ids first; missing values as NA; floats in shortest round-trip form."""
    with _atomic(path) as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["", *pattern_names])
        for sample, row in zip(sample_ids, values.T.tolist(), strict=True):
            if integers:
                writer.writerow([sample, *("NA" if v != v else str(int(v)) for v in row)])
            else:
                writer.writerow([sample, *("NA" if v != v else repr(v) for v in row)])


def read_index(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise TransientJobError(f"cannot read {path.name}: {error}") from None
    if not text.strip():  # gEAR's web API creates the file empty before writing it
        return {}
    try:
        index = json.loads(text)
    except json.JSONDecodeError as error:
        raise PermanentJobError(f"projection index {path} is not valid JSON ({error}); "
                                f"repair or remove it") from None
    if not isinstance(index, dict):
        raise PermanentJobError(f"projection index {path} is not a JSON object")
    return index


def update_index(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add `entry` under `key`, replacing an entry with the same uuid; atomic and locked."""
    with exclusive(path.with_name(f".{path.name}.lock"), purpose=f"updating {path}"):
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        index = read_index(path)
        entries = [old for old in index.get(key, []) if not (
            isinstance(old, dict) and str(old.get("uuid")) == str(entry["uuid"]))]
        index[key] = [*entries, entry]
        try:
            with _atomic(path) as stream:
                json.dump(index, stream, ensure_ascii=False, indent=4)
        except OSError as error:
            raise TransientJobError(f"cannot write {path}: {error}") from None


@contextmanager
def _atomic(path: Path) -> Iterator[TextIO]:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _symlink(link: Path, target: Path) -> None:
    """Point `link` at `target` by a relative path, replacing any old link atomically."""
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), temporary)
    os.replace(temporary, link)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
