"""MatrixMarket coordinate files (10x's matrix.mtx), streamed in bounded memory.

10x writes genes x cells, one `row column value` line per non-zero, sorted by column
(cell). AnnData wants cells x genes, and a CSR matrix of cells x genes is exactly the
entries of one cell after another: so a column-sorted file is turned into CSR rows as
it is read, block of lines by block of lines, and memory stays at one block whatever
the file's size (scipy.io.mmread holds the whole matrix, twice: see
docs/dataset-import.md for the figures). A file that is not sorted by column is read
whole into memory and sorted, as mmread would.

Every entry is checked as it is read: its line has the right number of fields, its
indices are whole numbers inside the declared shape, its value is a number and finite,
no entry appears twice, and the file holds exactly as many entries as its size line
says. Each error names the file and the line.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..errors import MatrixFormatError

log = logging.getLogger(__name__)

#: Lines parsed at once: ~16 MB of text, ~24 MB of arrays.
BLOCK_LINES = 1 << 20
FIELDS = ("real", "integer", "pattern")
#: Integer matrices become an int32 X (as anndata reads 10x counts); larger is refused.
INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True)
class MtxHeader:
    rows: int
    columns: int
    entries: int
    field: str  # real, integer or pattern
    size_line: int  # the line number of "rows columns entries"

    @property
    def values_per_line(self) -> int:
        return 2 if self.field == "pattern" else 3


@dataclass(frozen=True)
class Entries:
    """Entries as read: 0-based `rows`, `columns`, their `values`, and the line of each."""

    rows: np.ndarray  # int64
    columns: np.ndarray  # int64
    values: np.ndarray  # float64
    first_line: int


@dataclass(frozen=True)
class ColumnBlock:
    """Complete columns [first, first + len(counts)) of the matrix, entries in order:
    column by column, rows ascending within a column (a CSR block of cells x genes)."""

    first: int
    counts: np.ndarray  # entries per column, int64
    rows: np.ndarray  # int32, 0-based
    values: np.ndarray  # float64


class NotSortedByColumn(Exception):
    """The file's entries are not in column order: it cannot be streamed into CSR."""


def read_header(stream: BinaryIO, label: str) -> tuple[MtxHeader, int]:
    """The banner and size line; returns the header and the number of lines read."""
    banner = stream.readline()
    words = banner.decode("ascii", "replace").lower().split()
    if len(words) < 5 or words[0] != "%%matrixmarket" or words[1] != "matrix":
        raise MatrixFormatError(f"{label} line 1: not a MatrixMarket file (it should start "
                                f"with '%%MatrixMarket matrix coordinate ...'; it starts "
                                f"with {_text(banner.rstrip())!r})")
    layout, field, symmetry = words[2], words[3], words[4]
    if layout != "coordinate":
        raise MatrixFormatError(f"{label} line 1: the matrix is '{layout}', not "
                                f"'coordinate' (sparse) as 10x writes it")
    if field not in FIELDS:
        raise MatrixFormatError(f"{label} line 1: values of type '{field}' are not "
                                f"supported (one of {', '.join(FIELDS)})")
    if symmetry != "general":
        raise MatrixFormatError(f"{label} line 1: a '{symmetry}' matrix is not supported "
                                f"(only 'general', as 10x writes)")
    number = 1
    for raw in stream:
        number += 1
        line = raw.strip()
        if not line or line.startswith(b"%"):
            continue
        parts = line.split()
        try:
            rows, columns, entries = (int(part) for part in parts)
        except ValueError:
            raise MatrixFormatError(f"{label} line {number}: the size line should be "
                                    f"'rows columns entries', not {_text(line)!r}") from None
        if min(rows, columns, entries) < 0 or 0 in (rows, columns):
            raise MatrixFormatError(f"{label} line {number}: size {rows} x {columns} with "
                                    f"{entries} entries; it needs at least one row and "
                                    f"one column")
        return MtxHeader(rows, columns, entries, field, number), number
    raise MatrixFormatError(f"{label} has no size line ('rows columns entries') after its "
                            f"banner")


def read_entries(stream: BinaryIO, header: MtxHeader, label: str, first_line: int,
                 block_lines: int = BLOCK_LINES) -> Iterator[Entries]:
    """Checked entries, a block of lines at a time, in file order."""
    seen = 0
    number = first_line
    where = f"the size line (line {header.size_line}) declares"
    while chunk := list(itertools.islice(stream, block_lines)):
        entries = _parse_fast(chunk, header, number) or _parse_slowly(chunk, header,
                                                                      number, label)
        count = len(entries.rows)
        if seen + count > header.entries:
            extra = _line_of(chunk, header.entries - seen, number)
            raise MatrixFormatError(f"{label} line {extra}: more entries than {where} "
                                    f"({header.entries})")
        _check_entries(entries, chunk, header, label)
        seen += count
        number += len(chunk)
        yield entries
    if seen < header.entries:
        raise MatrixFormatError(f"{label}: {where} {header.entries} entries but the file "
                                f"has {seen} (it ends at line {number - 1}): is it truncated?")


def _parse_fast(chunk: list[bytes], header: MtxHeader, first: int) -> Entries | None:
    """numpy's C parser; None when it refuses the block (`_parse_slowly` then says why)."""
    dtype = np.float64 if header.field == "real" else np.int64
    try:
        table = np.loadtxt(io.BytesIO(b"".join(chunk)), dtype=dtype, ndmin=2, comments=None)
    except ValueError:
        return None
    if table.shape != (len(chunk), header.values_per_line):  # blank lines, ragged lines
        return None
    indices = table[:, :2]
    if dtype is np.float64:
        if not (indices == np.floor(indices)).all():
            return None
        indices = indices.astype(np.int64)
    values = (np.ones(len(chunk)) if header.field == "pattern"
              else table[:, 2].astype(np.float64))
    return Entries(indices[:, 0] - 1, indices[:, 1] - 1, values, first)


def _parse_slowly(chunk: list[bytes], header: MtxHeader, first: int,
                  label: str) -> Entries:
    """Line by line, to name the line and the field that is wrong (blank lines skipped)."""
    rows, columns, values = [], [], []
    for offset, raw in enumerate(chunk):
        number = first + offset
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != header.values_per_line:
            wanted = "row column" + ("" if header.field == "pattern" else " value")
            raise MatrixFormatError(f"{label} line {number}: {len(parts)} field(s), "
                                    f"expected {header.values_per_line} ({wanted}): "
                                    f"{_text(raw.strip())!r}")
        for name, text in zip(("row", "column"), parts[:2], strict=True):
            if not text.isdigit():
                raise MatrixFormatError(f"{label} line {number}: the {name} index "
                                        f"{_text(text)!r} is not a whole number")
        rows.append(int(parts[0]) - 1)
        columns.append(int(parts[1]) - 1)
        values.append(1.0 if header.field == "pattern"
                      else _value(parts[2], header.field, number, label))
    return Entries(np.array(rows, dtype=np.int64), np.array(columns, dtype=np.int64),
                   np.array(values, dtype=np.float64), first)


def _value(text: bytes, field: str, number: int, label: str) -> float:
    try:
        return float(int(text)) if field == "integer" else float(text)
    except ValueError:
        kind = "an integer (the header says 'integer')" if field == "integer" else "a number"
        raise MatrixFormatError(f"{label} line {number}: the value {_text(text)!r} is not "
                                f"{kind}") from None


def _text(raw: bytes, limit: int = 60) -> str:
    return raw[:limit].decode("utf-8", "replace")


def _check_entries(entries: Entries, chunk: list[bytes], header: MtxHeader,
                   label: str) -> None:
    shape = f"{header.rows} x {header.columns} (line {header.size_line})"
    for name, indices, limit in (("row", entries.rows, header.rows),
                                 ("column", entries.columns, header.columns)):
        outside = (indices < 0) | (indices >= limit)
        if outside.any():
            at = int(np.argmax(outside))
            raise MatrixFormatError(
                f"{label} line {_line_of(chunk, at, entries.first_line)}: {name} index "
                f"{int(indices[at]) + 1} is outside the declared shape {shape}")
    infinite = np.isinf(entries.values)
    if infinite.any():
        at = int(np.argmax(infinite))
        raise MatrixFormatError(f"{label} line {_line_of(chunk, at, entries.first_line)}: "
                                f"the value is infinite")
    if header.field == "integer":
        large = np.abs(entries.values) > INT32_MAX
        if large.any():
            at = int(np.argmax(large))
            raise MatrixFormatError(
                f"{label} line {_line_of(chunk, at, entries.first_line)}: the count "
                f"{int(entries.values[at])} does not fit a 32-bit integer")


def _line_of(chunk: list[bytes], entry: int, first: int) -> int:
    """The line number of the `entry`-th entry of the chunk (blank lines hold none)."""
    if entry < len(chunk) and all(line.strip() for line in chunk[:entry + 1]):
        return first + entry
    seen = -1
    for offset, line in enumerate(chunk):
        seen += bool(line.strip())
        if seen == entry:
            return first + offset
    return first + len(chunk)


# --- entries -> complete columns --------------------------------------------------------


def column_blocks(blocks: Iterator[Entries], num_columns: int) -> Iterator[ColumnBlock]:
    """Complete columns in order, from entries sorted by column (10x's order).

    Raises NotSortedByColumn at the first entry whose column comes before the previous
    one's; the caller then sorts the file in memory (`sorted_in_memory`).
    """
    pending = _empty()
    next_column = 0
    for block in blocks:
        columns = block.columns
        if len(columns) == 0:
            continue
        previous = pending.columns[-1] if len(pending.columns) else next_column
        if columns[0] < previous or (np.diff(columns) < 0).any():
            raise NotSortedByColumn(block.first_line)
        joined = _join(pending, block)
        last = int(joined.columns[-1])
        done = joined.columns < last
        if done.any():
            yield _complete(_select(joined, done), next_column, last)
            next_column = last
        pending = _select(joined, ~done)
    yield _complete(pending, next_column, num_columns)


def sorted_in_memory(blocks: Iterator[Entries], num_columns: int,
                     block_entries: int = BLOCK_LINES) -> Iterator[ColumnBlock]:
    """Every entry read, sorted by column, then given out like `column_blocks`."""
    parts = list(blocks)
    everything = Entries(np.concatenate([p.rows for p in parts]) if parts else _ints(),
                         np.concatenate([p.columns for p in parts]) if parts else _ints(),
                         np.concatenate([p.values for p in parts]) if parts else _floats(),
                         0)
    del parts
    order = np.argsort(everything.columns, kind="stable")
    rows, columns = everything.rows[order], everything.columns[order]
    values = everything.values[order]
    del everything, order
    start, first = 0, 0
    while start < len(columns):
        stop = min(len(columns), start + block_entries)
        # a block ends at a column boundary
        stop = int(np.searchsorted(columns, columns[stop - 1], "right"))
        last = int(columns[stop - 1]) + 1
        yield _complete(Entries(rows[start:stop], columns[start:stop], values[start:stop], 0),
                        first, last)
        start, first = stop, last
    if first < num_columns:
        yield _complete(_empty(), first, num_columns)


def _complete(entries: Entries, first: int, stop: int) -> ColumnBlock:
    """Columns [first, stop): rows sorted within each column, repeats refused."""
    order = np.lexsort((entries.rows, entries.columns))
    rows, columns = entries.rows[order], entries.columns[order]
    repeated = (np.diff(rows) == 0) & (np.diff(columns) == 0)
    if repeated.any():
        at = int(np.argmax(repeated))
        raise DuplicateEntry(int(rows[at]), int(columns[at]))
    counts = np.bincount(columns - first, minlength=stop - first).astype(np.int64)
    return ColumnBlock(first, counts, rows.astype(np.int32), entries.values[order])


class DuplicateEntry(Exception):
    """Two entries for one (row, column): the caller names the gene and the barcode."""

    def __init__(self, row: int, column: int) -> None:
        super().__init__(row, column)
        self.row, self.column = row, column


def _join(left: Entries, right: Entries) -> Entries:
    if not len(left.rows):
        return right
    return Entries(np.concatenate([left.rows, right.rows]),
                   np.concatenate([left.columns, right.columns]),
                   np.concatenate([left.values, right.values]), left.first_line)


def _select(entries: Entries, mask: np.ndarray) -> Entries:
    return Entries(entries.rows[mask], entries.columns[mask], entries.values[mask],
                   entries.first_line)


def _ints() -> np.ndarray:
    return np.empty(0, dtype=np.int64)


def _floats() -> np.ndarray:
    return np.empty(0, dtype=np.float64)


def _empty() -> Entries:
    return Entries(_ints(), _ints(), _floats(), 0)
