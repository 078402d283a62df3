"""Strict reading of delimited text matrices (CSV/TSV targets and `.tab` carts).

Ids are kept exactly as written ("1", "5e3", "TRUE", " A" stay strings, untrimmed), which
is what a data.frame round trip through R failed to do in gEAR. Every problem is an error
naming the file, the line and the column, because a silently misread cell would give a
plausible but wrong projection.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PermanentJobError, TransientJobError

log = logging.getLogger(__name__)

#: Cells read as missing values (after trimming spaces): what pandas and R write for NaN/NA.
NA_TOKENS = frozenset({"", "NA", "NaN", "nan", "NAN", "-nan", "N/A", "n/a", "#N/A", "NULL",
                       "null", "None", "<NA>"})


@dataclass(frozen=True)
class TextMatrix:
    """A parsed table: `row_ids` (first column), `labels` (header of the value columns),
    `values` (rows x value columns, float64; NaN for missing cells), and the text columns
    between the ids and the values (e.g. a cart's gene symbols) are dropped."""

    row_ids: list[str]
    labels: list[str]
    values: np.ndarray


def read_text_matrix(path: Path, delimiter: str, *, what: str, text_columns: int = 1,
                     numeric: bool = True, header_may_skip_ids: bool = False) -> TextMatrix:
    """Read `path`: a header line, then one row per id.

    `text_columns` leading columns are text (the id first); the rest must be numbers
    unless `numeric` is False (then only the ids are read and `values` has no columns).
    `header_may_skip_ids` accepts R's `write.table` layout, whose header has no cell
    above the row names.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            return _parse(csv.reader(stream, delimiter=delimiter), path, what=what,
                          text_columns=text_columns, numeric=numeric,
                          header_may_skip_ids=header_may_skip_ids)
    except UnicodeDecodeError as error:
        raise PermanentJobError(f"{what} {path.name} is not UTF-8 text: {error}") from None
    except csv.Error as error:
        raise PermanentJobError(f"{what} {path.name} is not valid delimited text: {error}") \
            from None
    except FileNotFoundError:
        raise PermanentJobError(f"{what} {path.name} not found") from None
    except OSError as error:
        raise TransientJobError(f"cannot read {what} {path.name}: {error}") from None


def _parse(reader: Any, path: Path, *, what: str, text_columns: int, numeric: bool,
           header_may_skip_ids: bool) -> TextMatrix:
    header = next((row for row in reader if row), None)
    if header is None:
        raise PermanentJobError(f"{what} {path.name} is empty")
    width: int | None = None
    labels: list[str] = []
    row_ids: list[str] = []
    rows: list[np.ndarray] = []
    for row in reader:
        if not row:
            continue
        if width is None:
            width, labels = _layout(header, row, path, what=what, text_columns=text_columns,
                                    numeric=numeric, header_may_skip_ids=header_may_skip_ids,
                                    line=reader.line_num)
        if numeric and len(row) != width:
            raise PermanentJobError(
                f"{what} {path.name}, line {reader.line_num}: {len(row)} cells, but the "
                f"header has {width} columns")
        row_ids.append(row[0])
        if numeric:
            rows.append(_numbers(row[text_columns:], labels, path, what=what,
                                 line=reader.line_num))
    if not row_ids:
        raise PermanentJobError(f"{what} {path.name} has a header but no data rows")
    values = np.vstack(rows) if numeric else np.empty((len(row_ids), 0))
    return TextMatrix(row_ids=row_ids, labels=labels, values=values)


def _layout(header: list[str], first: list[str], path: Path, *, what: str, text_columns: int,
            numeric: bool, header_may_skip_ids: bool, line: int) -> tuple[int, list[str]]:
    """Row width and value-column labels, decided by the header and the first data row."""
    if not numeric:
        return len(first), []
    if header_may_skip_ids and len(header) == len(first) - 1:
        header = ["", *header]
    if len(header) <= text_columns:
        raise PermanentJobError(f"{what} {path.name}: the header has no value columns "
                                f"(expected {text_columns} text column(s), then one column "
                                f"per value)")
    if len(first) != len(header):
        raise PermanentJobError(f"{what} {path.name}, line {line}: {len(first)} cells, but "
                                f"the header has {len(header)} columns")
    return len(header), header[text_columns:]


def _numbers(cells: list[str], labels: list[str], path: Path, *, what: str,
             line: int) -> np.ndarray:
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    values = np.empty(len(cells))
    for index, cell in enumerate(cells):
        if cell.strip() in NA_TOKENS:
            values[index] = np.nan
            continue
        try:
            values[index] = float(cell)
        except ValueError:
            raise PermanentJobError(
                f"{what} {path.name}, line {line}, column {labels[index]!r}: "
                f"{cell[:40]!r} is not a number") from None
    return values
