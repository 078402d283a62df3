"""The text members of a 10x folder: features/genes, barcodes, and obs/var annotations.

features.tsv (10x v3: id, name, feature type) or genes.tsv (v2: id, name) names the
matrix's rows; barcodes.tsv its columns. obs.tsv and var.tsv, which 10x does not write
but labs add, annotate the cells and the genes: a header row naming the columns, then
one row per cell (or gene), its barcode (or gene id) first. They are matched by id, in
any order, and must cover every cell (gene) exactly once. Any of them may be gzipped.
"""

from __future__ import annotations

import gzip
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, cast

import numpy as np

from ..errors import MatrixFormatError
from .tables import NA_TOKENS

GZIP_MAGIC = b"\x1f\x8b"
#: Names given to features.tsv's second and third columns (as scanpy's read_10x_mtx).
FEATURE_COLUMNS = ("gene_symbols", "feature_types")


@dataclass
class Table:
    """Ids and named columns: `columns[name][i]` belongs to `ids[i]`."""

    ids: list[str]
    columns: dict[str, np.ndarray] = field(default_factory=dict)


def open_text(path: Path) -> TextIO:
    with open(path, "rb") as probe:
        compressed = probe.read(2) == GZIP_MAGIC
    if compressed:
        return cast(TextIO, gzip.open(path, "rt", encoding="utf-8-sig", newline=""))
    return open(path, encoding="utf-8-sig", newline="")


def _rows(path: Path, label: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every non-blank line, tab-separated, no quoting."""
    rows = []
    try:
        with open_text(path) as stream:
            for number, line in enumerate(stream, start=1):
                text = line.rstrip("\r\n")
                if text.strip():
                    rows.append((number, text.split("\t")))
    except UnicodeDecodeError as error:
        raise MatrixFormatError(f"{label} is not UTF-8 text: {error.reason} at byte "
                                f"{error.start}") from None
    except (OSError, EOFError) as error:
        raise MatrixFormatError(f"{label} cannot be read: {error}") from None
    return rows


def read_features(path: Path, label: str) -> Table:
    """features.tsv / genes.tsv: the gene id first; symbol and type kept as columns."""
    rows = _rows(path, label)
    ids = []
    extra: list[list[str]] = [[] for _ in FEATURE_COLUMNS]
    width = len(rows[0][1]) if rows else 0
    for number, cells in rows:
        if len(cells) != width:
            raise MatrixFormatError(f"{label} line {number}: {len(cells)} column(s), but "
                                    f"line {rows[0][0]} has {width}")
        if not cells[0]:
            raise MatrixFormatError(f"{label} line {number}: the gene id is empty")
        ids.append(cells[0])
        for column, cell in zip(extra, cells[1:], strict=False):
            column.append(cell)
    table = Table(ids)
    for name, values in zip(FEATURE_COLUMNS, extra, strict=True):
        if values:
            table.columns[name] = np.array(values, dtype=object)
    return table


def read_barcodes(path: Path, label: str) -> list[str]:
    """barcodes.tsv: one cell id a line (the first column), each once."""
    rows = _rows(path, label)
    first_line: dict[str, int] = {}
    for number, cells in rows:
        barcode = cells[0]
        if not barcode:
            raise MatrixFormatError(f"{label} line {number}: the barcode is empty")
        if barcode in first_line:
            raise MatrixFormatError(f"{label} line {number}: barcode {barcode!r} repeats "
                                    f"line {first_line[barcode]}; cell ids must be unique")
        first_line[barcode] = number
    return list(first_line)


def read_annotations(path: Path, label: str, ids: list[str], what: str) -> Table:
    """obs.tsv / var.tsv, matched to `ids` (the barcodes, or the gene ids) by their first
    column, and returned in the order of `ids`. Numeric columns become float64 (empty or
    NA cells NaN), the others strings."""
    rows = _rows(path, label)
    if not rows:
        raise MatrixFormatError(f"{label} is empty: it needs a header row and one row per "
                                f"{what}")
    header_line, header = rows[0]
    names = header[1:]
    if not names:
        raise MatrixFormatError(f"{label} line {header_line}: the header names no "
                                f"annotation columns (the {what} id, then one name per "
                                f"column)")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated or "" in names:
        raise MatrixFormatError(f"{label} line {header_line}: column names must be unique "
                                f"and not empty; {repeated or ['']!r}")
    wanted = _positions(ids)
    line_of: dict[str, int] = {}
    cells_of: list[list[str] | None] = [None] * len(ids)
    for number, cells in rows[1:]:
        if len(cells) != len(header):
            raise MatrixFormatError(f"{label} line {number}: {len(cells)} column(s), but "
                                    f"the header (line {header_line}) has {len(header)}")
        key = cells[0]
        if key in line_of:
            raise MatrixFormatError(f"{label} line {number}: {what} {key!r} repeats line "
                                    f"{line_of[key]}")
        if key not in wanted:
            raise MatrixFormatError(f"{label} line {number}: {what} {key!r} is not in the "
                                    f"matrix's {what}s")
        line_of[key] = number
        for position in wanted[key]:
            cells_of[position] = cells[1:]
    missing = [ids[i] for i, cells in enumerate(cells_of) if cells is None]
    if missing:
        raise MatrixFormatError(f"{label} has {len(rows) - 1} row(s) but the matrix has "
                                f"{len(ids)} {what}s; missing: "
                                f"{', '.join(map(repr, missing[:5]))}"
                                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    table = Table(list(ids))
    for index, name in enumerate(names):
        table.columns[name] = _column([cast(list[str], cells)[index] for cells in cells_of])
    return table


def _positions(ids: list[str]) -> dict[str, list[int]]:
    """Where each id occurs (gene ids may repeat; they share one annotation row)."""
    positions: dict[str, list[int]] = {}
    for index, key in enumerate(ids):
        positions.setdefault(key, []).append(index)
    return positions


def _column(cells: list[str]) -> np.ndarray:
    try:
        return np.array([np.nan if cell.strip() in NA_TOKENS else float(cell)
                         for cell in cells], dtype=np.float64)
    except ValueError:
        return np.array(cells, dtype=object)
