"""AnnData (.h5ad) targets read with h5py, chunk by chunk, never whole.

AnnData stores X as samples (obs) x genes (var). Dense X and CSR X are streamed by
samples: only [start, stop) rows are read per chunk, so memory stays bounded whatever the
file size. CSC X is stored gene by gene, so sample chunks cannot be read from it
directly; its matched genes are gathered once (memory ~16 bytes per stored value of the
matched genes only) and then served by samples. Write CSR for files larger than memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp

from ..errors import PermanentJobError

log = logging.getLogger(__name__)

#: Elements of a sparse X read at once when gathering CSC columns.
CSC_BLOCK = 1 << 22


class H5adTarget:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = h5py.File(path, "r")
        except OSError as error:
            raise PermanentJobError(f"dataset {path.name} is not a readable h5ad (HDF5) "
                                    f"file: {error}") from None
        try:
            self.sample_ids = _index(self._file, "obs", path)
            self.gene_ids = _index(self._file, "var", path)
            self._x, self._format = _matrix(self._file, path)
        except PermanentJobError:
            self._file.close()
            raise
        shape = (len(self.sample_ids), len(self.gene_ids))
        if self._shape() != shape:
            self._file.close()
            raise PermanentJobError(f"dataset {path.name}: X has shape {self._shape()} but "
                                    f"obs/var name {shape[0]} samples x {shape[1]} genes")
        if 0 in shape:
            self._file.close()
            raise PermanentJobError(f"dataset {path.name} has {shape[0]} samples and "
                                    f"{shape[1]} genes; it needs at least one of each")
        self._gathered: tuple[bytes, sp.csr_matrix] | None = None
        log.debug("h5ad %s: %s X, %d samples x %d genes", path, self._format, *shape)

    def _shape(self) -> tuple[int, int]:
        if self._format == "dense":
            return tuple(self._x.shape)
        return tuple(int(n) for n in self._x.attrs.get("shape", self._x.attrs.get(
            "h5sparse_shape", (-1, -1))))  # type: ignore[return-value]

    def bytes_per_sample(self, genes: np.ndarray) -> int:
        if self._format == "dense":
            return len(self.gene_ids) * self._x.dtype.itemsize
        nnz = self._x["data"].shape[0]
        return 24 * max(1, nnz // max(1, len(self.sample_ids)))

    def read(self, start: int, stop: int, genes: np.ndarray, out: np.ndarray) -> None:
        try:
            if self._format == "dense":
                self._read_dense(start, stop, genes, out)
            elif self._format == "csr":
                self._read_csr(start, stop, genes, out)
            else:
                self._read_csc(start, stop, genes, out)
        except (OSError, ValueError, KeyError) as error:
            raise PermanentJobError(f"dataset {self.path.name}: cannot read X samples "
                                    f"{start}-{stop}: {error}") from None

    def _read_dense(self, start: int, stop: int, genes: np.ndarray, out: np.ndarray) -> None:
        everything = len(genes) == len(self.gene_ids) and bool(
            np.array_equal(genes, np.arange(len(genes))))
        if everything and self._x.dtype == np.float64:
            self._x.read_direct(out, np.s_[start:stop])  # straight into the engine's buffer
            return
        rows = self._x[start:stop]
        if rows.dtype == np.float64:
            np.take(rows, genes, axis=1, out=out)
        else:
            out[...] = rows[:, genes]

    def _read_csr(self, start: int, stop: int, genes: np.ndarray, out: np.ndarray) -> None:
        indptr = self._x["indptr"][start:stop + 1].astype(np.int64)
        first, last = int(indptr[0]), int(indptr[-1])
        columns = _positions(genes, len(self.gene_ids))[self._x["indices"][first:last]]
        rows = np.repeat(np.arange(stop - start), np.diff(indptr))
        keep = columns >= 0
        out.fill(0.0)
        # add.at, not assignment: a non-canonical CSR may repeat an entry, which sums.
        np.add.at(out, (rows[keep], columns[keep]), self._x["data"][first:last][keep])

    def _read_csc(self, start: int, stop: int, genes: np.ndarray, out: np.ndarray) -> None:
        key = genes.tobytes()
        if self._gathered is None or self._gathered[0] != key:
            self._gathered = (key, self._gather_csc(genes))
        out[...] = self._gathered[1][start:stop].toarray()

    def _gather_csc(self, genes: np.ndarray) -> sp.csr_matrix:
        """The matched genes' columns as a samples x matched-genes CSR matrix."""
        indptr = self._x["indptr"][()].astype(np.int64)
        position = _positions(genes, len(self.gene_ids))
        rows, columns, values = [], [], []
        for first in range(0, int(indptr[-1]), CSC_BLOCK):
            last = min(first + CSC_BLOCK, int(indptr[-1]))
            column = position[np.searchsorted(indptr, np.arange(first, last), "right") - 1]
            keep = column >= 0
            if keep.any():
                rows.append(self._x["indices"][first:last][keep])
                columns.append(column[keep])
                values.append(self._x["data"][first:last][keep].astype(np.float64))
        shape = (len(self.sample_ids), len(genes))
        if not rows:
            return sp.csr_matrix(shape)
        return sp.coo_matrix((np.concatenate(values), (np.concatenate(rows),
                                                       np.concatenate(columns))),
                             shape=shape).tocsr()

    def close(self) -> None:
        self._file.close()


def _positions(genes: np.ndarray, total: int) -> np.ndarray:
    """For each gene of the file, its column in the buffer, or -1 if it is not read."""
    position = np.full(total, -1, dtype=np.int64)
    position[genes] = np.arange(len(genes))
    return position


def _matrix(file: h5py.File, path: Path) -> tuple[Any, str]:
    if "X" not in file:
        raise PermanentJobError(f"dataset {path.name} has no X matrix")
    x = file["X"]
    if isinstance(x, h5py.Dataset):
        if x.ndim != 2 or x.dtype.kind not in "fiub":
            raise PermanentJobError(f"dataset {path.name}: X is not a 2-D numeric matrix "
                                    f"(shape {x.shape}, type {x.dtype})")
        return x, "dense"
    encoding = x.attrs.get("encoding-type", x.attrs.get("h5sparse_format", ""))
    encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
    kind = {"csr_matrix": "csr", "csr": "csr", "csc_matrix": "csc", "csc": "csc"}.get(encoding)
    if kind is None or not {"data", "indices", "indptr"} <= set(x):
        raise PermanentJobError(f"dataset {path.name}: X is neither a dense matrix nor a "
                                f"CSR/CSC sparse matrix (encoding {encoding!r})")
    if x["data"].dtype.kind not in "fiub":
        raise PermanentJobError(f"dataset {path.name}: X holds {x['data'].dtype} values, "
                                f"not numbers")
    return x, kind


def _index(file: h5py.File, axis: str, path: Path) -> list[str]:
    """obs_names or var_names, as strings exactly as stored."""
    if axis not in file:
        raise PermanentJobError(f"dataset {path.name} has no '{axis}' table")
    table = file[axis]
    if isinstance(table, h5py.Group):
        name = table.attrs.get("_index", "_index")
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name not in table or not isinstance(table[name], h5py.Dataset):
            raise PermanentJobError(f"dataset {path.name}: '{axis}' has no index '{name}'")
        values = table[name]
    elif table.dtype.names:  # anndata < 0.7 stored obs/var as a compound dataset
        field = "index" if "index" in table.dtype.names else table.dtype.names[0]
        values = table.fields(field)[()]
        return [_text(value) for value in values]
    else:
        raise PermanentJobError(f"dataset {path.name}: '{axis}' is not an AnnData table")
    if values.dtype.kind in "OSU" or h5py.check_string_dtype(values.dtype):
        return [str(value) for value in values.asstr()[()]]
    if values.dtype.kind in "iu":
        return [str(int(value)) for value in values[()]]
    raise PermanentJobError(f"dataset {path.name}: {axis} names are {values.dtype}, not text")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
