"""One obs column of an .h5ad, as text per sample: what an export groups samples by.

AnnData writes a column as a plain array (numbers or strings), as a categorical (a
group of `codes` and `categories`; anndata < 0.8 kept the categories in
`obs/__categories/<name>`), or, before 0.7, as a field of a compound obs dataset.
Missing categorical values (code -1) and NaN become "NA".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import PermanentJobError


@dataclass(frozen=True)
class ObsColumn:
    name: str
    values: list[str]  # one per sample, in obs order
    order: list[str]  # the groups in display order: categories, else sorted


def read_obs_column(path: Path, column: str) -> ObsColumn:
    try:
        with h5py.File(path, "r") as file:
            if "obs" not in file:
                raise PermanentJobError(f"dataset {path.name} has no 'obs' table")
            return _read(file["obs"], column, path)
    except OSError as error:
        raise PermanentJobError(f"dataset {path.name} is not a readable h5ad (HDF5) file: "
                                f"{error}") from None


def _read(obs: h5py.Group | h5py.Dataset, column: str, path: Path) -> ObsColumn:
    if isinstance(obs, h5py.Dataset):  # anndata < 0.7: a compound dataset
        names = [name for name in obs.dtype.names or () if name != "index"]
        if column not in names:
            raise _missing(column, names, path)
        return _plain(column, obs.fields(column)[()])
    index = obs.attrs.get("_index", "_index")
    index = index.decode() if isinstance(index, bytes) else str(index)
    names = [name for name in obs if name not in (index, "__categories")]
    if column not in obs or column == index:
        raise _missing(column, names, path)
    node = obs[column]
    if isinstance(node, h5py.Group):  # anndata >= 0.8 categorical
        if not {"codes", "categories"} <= set(node):
            raise PermanentJobError(f"dataset {path.name}: obs column {column!r} is neither "
                                    f"an array nor a categorical")
        return _categorical(column, node["codes"][()], _texts(node["categories"][()]))
    legacy = obs.get("__categories")
    if legacy is not None and column in legacy:
        return _categorical(column, node[()], _texts(legacy[column][()]))
    return _plain(column, node[()])


def _categorical(column: str, codes: np.ndarray, categories: list[str]) -> ObsColumn:
    values = ["NA" if code < 0 else categories[code] for code in codes.tolist()]
    used = set(values)
    order = [category for category in categories if category in used]
    return ObsColumn(column, values, order + (["NA"] if "NA" in used else []))


def _plain(column: str, data: np.ndarray) -> ObsColumn:
    if data.dtype.kind == "f":
        values = ["NA" if np.isnan(v) else format(v, "g") for v in data.tolist()]
        numeric = sorted({v for v in data.tolist() if not np.isnan(v)})
        order = [format(v, "g") for v in numeric] + (["NA"] if "NA" in values else [])
        return ObsColumn(column, values, order)
    if data.dtype.kind in "iub":
        values = [str(v) for v in data.tolist()]
        return ObsColumn(column, values, [str(v) for v in sorted(set(data.tolist()))])
    values = _texts(data)
    return ObsColumn(column, values, sorted(set(values)))


def _texts(data: np.ndarray) -> list[str]:
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value)
            for value in data.tolist()]


def _missing(column: str, names: list[str], path: Path) -> PermanentJobError:
    shown = ", ".join(map(repr, sorted(names)[:20])) or "none"
    return PermanentJobError(f"dataset {path.name} has no obs column {column!r} to group "
                             f"samples by (its obs columns: {shown})")
