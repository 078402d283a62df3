"""genes x samples as CSV/TSV text, read and written in blocks of genes.

The layout is gEAR's: a header row of sample ids (its first cell names the gene-id
column and is ignored; R's `write.table` style, with one cell fewer than the data rows,
is accepted too), then one row per gene: its id, then one number per sample. Ids are
kept exactly as written (strings, even "1" or "TRUE"). Missing values (empty, NA, NaN,
N/A) become NaN; infinities and anything else that is not a number are refused with
the line, gene and sample named. Files may be gzip-compressed.

Speed: numpy's C parser (`loadtxt`) converts a block of lines; only a block it refuses
(missing values, an error to locate) is parsed again cell by cell with the csv module.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO, cast

import numpy as np

from ..errors import MatrixFormatError
from . import BLOCK_VALUES, GeneBlock, genes_per_block
from .tables import NA_TOKENS  # the same missing-value cells as ProjectR reads

log = logging.getLogger(__name__)

DELIMITERS = {"csv": ",", "tsv": "\t"}
GZIP_MAGIC = b"\x1f\x8b"
#: Text written for NaN: read back as missing by R, pandas and this module.
NA_TEXT = "NA"


def _zero(_: str) -> float:
    return 0.0


class DelimitedReader:
    """Stream a genes x samples text matrix: `sample_ids` on entry, then `blocks()`.

    `label` names the file in error messages (e.g. "upload 'x.csv'"). Infinite values
    are refused unless `allow_infinite` (an import refuses them; an export of a dataset
    that ProjectR accepts must not).
    """

    def __init__(self, path: Path, delimiter: str, *, label: str | None = None,
                 block_values: int = BLOCK_VALUES, allow_infinite: bool = False) -> None:
        self.path = path
        self.delimiter = delimiter
        self.label = label or str(path)
        self.block_values = block_values
        self.allow_infinite = allow_infinite
        self.sample_ids: list[str] = []
        self.num_missing = 0
        self._stream: BinaryIO | None = None
        self._lines: Iterator[tuple[int, str]] = iter(())
        self._pending: list[tuple[int, str]] = []

    def __enter__(self) -> DelimitedReader:
        self._stream = _open_binary(self.path)
        self._lines = self._numbered_lines(self._stream)
        self._read_header()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stream is not None:
            self._stream.close()

    @property
    def num_samples(self) -> int:
        return len(self.sample_ids)

    # --- header ----------------------------------------------------------------------

    def _read_header(self) -> None:
        first = next(self._lines, None)
        if first is None:
            raise MatrixFormatError(f"{self.label} is empty: it needs a header row of "
                                    "sample ids and one row per gene")
        header = self._fields(*first)
        data = next(self._lines, None)
        if data is None:
            raise MatrixFormatError(f"{self.label} has a header but no gene rows")
        self._pending.append(data)
        width = len(self._fields(*data))
        # R's write.table writes no cell above the row names; everyone else writes one.
        ids = header if len(header) == width - 1 else header[1:]
        if not ids:
            raise MatrixFormatError(f"{self.label} has no sample columns: the header "
                                    f"{_short(first[1])} holds only the gene-id column"
                                    + self._delimiter_hint(first[1]))
        for column, sample in enumerate(ids, start=2):
            if not sample:
                raise MatrixFormatError(f"{self.label} line {first[0]}: the sample id "
                                        f"of column {column} is empty")
        repeated = sorted(sample for sample, count in Counter(ids).items() if count > 1)
        if repeated:
            raise MatrixFormatError(f"{self.label} line {first[0]}: sample ids must be "
                                    f"unique; repeated: {_examples(repeated)}")
        self.sample_ids = ids

    # --- rows ------------------------------------------------------------------------

    def blocks(self) -> Iterator[GeneBlock]:
        """Blocks of consecutive gene rows, each of about `block_values` values."""
        size = genes_per_block(self.num_samples, self.block_values)
        rows = itertools.chain(self._pending, self._lines)
        while chunk := list(itertools.islice(rows, size)):
            block = self._parse_fast(chunk)
            if block is None:
                log.debug("%s lines %d-%d: parsed cell by cell", self.label, chunk[0][0],
                          chunk[-1][0])
                block = self._parse_slowly(chunk)
            if not self.allow_infinite:
                self._check_finite(block, chunk)
            self.num_missing += int(np.count_nonzero(np.isnan(block.values)))
            yield block

    def _parse_fast(self, chunk: list[tuple[int, str]]) -> GeneBlock | None:
        """numpy's C parser; None when it refuses the block (then `_parse_slowly` says why)."""
        try:
            values = np.loadtxt([line for _, line in chunk], delimiter=self.delimiter,
                                quotechar='"', comments=None, ndmin=2, dtype=np.float64,
                                converters={0: _zero})
        except ValueError:
            return None
        if values.shape[1] != self.num_samples + 1:
            return None
        gene_ids = [self._first_field(line) for _, line in chunk]
        if not all(gene_ids):
            return None
        return GeneBlock(gene_ids, values[:, 1:])

    def _parse_slowly(self, chunk: list[tuple[int, str]]) -> GeneBlock:
        values = np.empty((len(chunk), self.num_samples), dtype=np.float64)
        gene_ids = []
        for row, (number, line) in enumerate(chunk):
            fields = self._fields(number, line)
            if len(fields) != self.num_samples + 1:
                raise MatrixFormatError(
                    f"{self.label} line {number}: {len(fields)} fields, but the header "
                    f"has {self.num_samples} samples (a gene id, then one value per sample)")
            gene = fields[0]
            if not gene:
                raise MatrixFormatError(f"{self.label} line {number}: the gene id is empty")
            gene_ids.append(gene)
            for column, cell in enumerate(fields[1:]):
                values[row, column] = self._number(cell, number, gene, column)
        return GeneBlock(gene_ids, values)

    def _number(self, cell: str, number: int, gene: str, column: int) -> float:
        if cell.strip() in NA_TOKENS:
            return float("nan")
        try:
            if "_" in cell:  # Python reads "1_000"; R, pandas and numpy do not
                raise ValueError(cell)
            return float(cell)
        except ValueError:
            raise MatrixFormatError(
                f"{self.label} line {number} (gene {gene!r}), column {column + 2} (sample "
                f"{self.sample_ids[column]!r}): {cell[:40]!r} is not a number") from None

    def _check_finite(self, block: GeneBlock, chunk: list[tuple[int, str]]) -> None:
        infinite = np.argwhere(np.isinf(block.values))
        if len(infinite):
            row, column = (int(i) for i in infinite[0])
            raise MatrixFormatError(
                f"{self.label} line {chunk[row][0]} (gene {block.gene_ids[row]!r}), column "
                f"{column + 2} (sample {self.sample_ids[column]!r}): value is infinite "
                f"({len(infinite)} infinite value(s) in lines {chunk[0][0]}-{chunk[-1][0]})")

    # --- text ------------------------------------------------------------------------

    def _numbered_lines(self, stream: BinaryIO) -> Iterator[tuple[int, str]]:
        """(line number, line without its end), skipping blank lines; errors located.

        Lines are decoded one by one (not by an 8 KiB text buffer) so that a byte that is
        not UTF-8 is reported on its own line.
        """
        number = 0
        try:
            for number, raw in enumerate(stream, start=1):
                try:
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as error:
                    raise MatrixFormatError(
                        f"{self.label} is not UTF-8 text (line {number}, byte "
                        f"{error.start + 1}: {error.reason})") from None
                text = text.rstrip("\r\n")
                if text.strip():
                    yield number, text
        except (OSError, EOFError) as error:  # gzip: truncated or corrupt stream
            raise MatrixFormatError(f"{self.label}: cannot read the compressed data after "
                                    f"line {number}: {error}") from None

    def _fields(self, number: int, line: str) -> list[str]:
        try:
            return next(csv.reader([line], delimiter=self.delimiter, strict=True))
        except csv.Error as error:
            raise MatrixFormatError(f"{self.label} line {number}: {error} (a quoted field "
                                    "must end on the same line)") from None

    def _delimiter_hint(self, line: str) -> str:
        for name, other in DELIMITERS.items():
            if other != self.delimiter and other in line:
                return f" (it looks {name.upper()}-delimited: give format '{name}')"
        return ""

    def _first_field(self, line: str) -> str:
        if line.startswith('"'):
            return next(csv.reader([line], delimiter=self.delimiter))[0]
        return line.split(self.delimiter, 1)[0]


def _open_binary(path: Path) -> BinaryIO:
    """The file's bytes, gunzipped if it is gzip-compressed."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == GZIP_MAGIC
    return cast(BinaryIO, gzip.open(path, "rb") if compressed else open(path, "rb"))


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _examples(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --- writing -------------------------------------------------------------------------


def write_delimited(stream: TextIO, delimiter: str, sample_ids: list[str],
                    blocks: Iterable[GeneBlock], *, single_precision: bool = False) -> int:
    """Write the header and every block; return the number of gene rows written.

    Numbers are written in the shortest form that reads back to the same value: float64,
    or float32 when the source stored float32 (`single_precision`), else a float32
    dataset would print as 0.10000000149011612. Whole numbers lose their ".0", NaN is
    "NA" and infinities "Inf"/"-Inf", as R writes them. Ids are quoted as the csv module
    quotes them. Formatting is ~0.25 us a value: it, not reading, bounds an export.
    """
    csv.writer(stream, delimiter=delimiter, lineterminator="\n").writerow(["", *sample_ids])
    whole = re.compile(rf"\.0(?={re.escape(delimiter)}|$)")
    rows = 0
    for block in blocks:
        for gene, values in zip(block.gene_ids, block.values, strict=True):
            stream.write(_quote(gene, delimiter) + delimiter
                         + _numbers(values, delimiter, whole, single_precision) + "\n")
        rows += len(block.gene_ids)
    return rows


def _numbers(values: np.ndarray, delimiter: str, whole: re.Pattern[str],
             single_precision: bool) -> str:
    if (np.abs(values) < 1e15).all() and (values == np.round(values)).all():
        # Counts, the common case: integers print twice as fast as floats. (NaN and
        # infinities fail the first test.)
        return delimiter.join(map(str, values.astype(np.int64).tolist()))
    if single_precision:
        text = delimiter.join(values.astype(np.float32).astype(str).tolist())
    else:
        text = delimiter.join(map(repr, values.tolist()))
    text = whole.sub("", text)
    if not np.isfinite(values).all():  # "nan" and "inf" occur only as whole cells
        text = text.replace("nan", NA_TEXT).replace("inf", "Inf")
    return text


def _quote(cell: str, delimiter: str) -> str:
    """The cell as csv.writer (QUOTE_MINIMAL) writes it."""
    if delimiter in cell or '"' in cell or "\n" in cell or "\r" in cell:
        return '"' + cell.replace('"', '""') + '"'
    return cell
