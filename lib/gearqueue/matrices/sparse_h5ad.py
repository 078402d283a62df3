"""Write a sparse (CSR) AnnData .h5ad with h5py alone, a block of cells at a time.

The CSR layout of cells x genes is the 10x matrix's entries, cell after cell, so
`data` and `indices` are appended as the MTX file is read and only `indptr` (one
integer per cell) is kept until the end. obs and var are written last, with their
annotation columns (string or float64), in the layout anndata 0.8+ writes; checked by
reading the result back with anndata and with ProjectR's reader (matrices/h5ad.py).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import h5py
import numpy as np

from .annotations import Table
from .h5ad_writer import write_provenance

#: Entries per HDF5 chunk of data/indices (1 MiB of float64).
CHUNK_ENTRIES = 1 << 17

_DATAFRAME = {"encoding-type": "dataframe", "encoding-version": "0.2.0"}
_STRINGS = {"encoding-type": "string-array", "encoding-version": "0.2.0"}
_ARRAY = {"encoding-type": "array", "encoding-version": "0.2.0"}
_DICT = {"encoding-type": "dict", "encoding-version": "0.1.0"}
_EMPTY_MAPPINGS = ("uns", "obsm", "varm", "obsp", "varp", "layers")


class SparseH5adWriter:
    """`with SparseH5adWriter(path, cells, genes, dtype) as w: w.append(counts, genes,
    values)...; w.finish(obs, var)`. Unfinished, the file has no obs/var: callers write a
    temp file and rename it only after `finish` (files.atomic_output)."""

    def __init__(self, path: Path, num_cells: int, num_genes: int, dtype: np.dtype) -> None:
        self.path = path
        self.shape = (num_cells, num_genes)
        self.dtype = np.dtype(dtype)
        self._indptr = np.zeros(num_cells + 1, dtype=np.int64)
        self._cells = 0
        self._entries = 0
        self._file: h5py.File | None = None

    def __enter__(self) -> SparseH5adWriter:
        self._file = h5py.File(self.path, "w")
        x = self._file.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array(self.shape, dtype=np.int64)})
        for name, dtype in (("data", self.dtype), ("indices", np.int32)):
            x.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                             chunks=(CHUNK_ENTRIES,), compression="gzip",
                             compression_opts=1)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def num_entries(self) -> int:
        return self._entries

    def append(self, counts: np.ndarray, genes: np.ndarray, values: np.ndarray) -> None:
        """The next len(counts) cells: counts[i] entries each, their genes and values."""
        assert self._file is not None, "use SparseH5adWriter as a context manager"
        stop = self._cells + len(counts)
        self._indptr[self._cells + 1:stop + 1] = self._entries + np.cumsum(counts)
        self._cells = stop
        if len(genes):
            end = self._entries + len(genes)
            for name, part in (("data", values), ("indices", genes)):
                dataset = self._file["X"][name]
                dataset.resize((end,))
                dataset[self._entries:end] = part
            self._entries = end

    def finish(self, obs: Table, var: Table) -> None:
        assert self._file is not None, "use SparseH5adWriter as a context manager"
        if self._cells != self.shape[0]:
            raise ValueError(f"{self._cells} cells written, {self.shape[0]} declared")
        self._file["X"].create_dataset("indptr", data=self._indptr)
        write_table(self._file, "obs", obs)
        write_table(self._file, "var", var)
        for name in _EMPTY_MAPPINGS:
            self._file.create_group(name).attrs.update(_DICT)
        self._file.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})

    def provenance(self, record: dict[str, object]) -> None:
        assert self._file is not None
        write_provenance(self._file, record)


def write_table(file: h5py.File, name: str, table: Table) -> None:
    """An AnnData dataframe: the `_index` of ids, then one dataset per column."""
    group = file.create_group(name)
    group.attrs.update({**_DATAFRAME, "_index": "_index"})
    if table.columns:
        group.attrs.create("column-order", data=list(table.columns),
                           dtype=h5py.string_dtype("utf-8"))
    else:  # what anndata writes for a dataframe without columns
        group.attrs["column-order"] = np.array([], dtype=np.float64)
    _strings(group, "_index", table.ids)
    for column, values in table.columns.items():
        if values.dtype == object:
            _strings(group, column, [str(value) for value in values])
        else:
            dataset = group.create_dataset(column, data=values)
            dataset.attrs.update(_ARRAY)


def _strings(group: h5py.Group, name: str, values: list[str]) -> None:
    dataset = group.create_dataset(name, data=np.array(values, dtype=object),
                                   dtype=h5py.string_dtype("utf-8"))
    dataset.attrs.update(_STRINGS)
