"""The heatmap of a projection: patterns x samples, samples grouped by an obs column.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, so no global figure
state in a long-lived worker, and no display needed). The image has a fixed width and
a height that grows with the number of patterns, so it stays readable for 3 or 300
patterns. Past MAX_COLUMNS samples a column per sample would be thinner than a pixel:
consecutive samples (within a group) are averaged into MAX_COLUMNS columns, and the
figure says so. Memory is patterns x MAX_COLUMNS, whatever the number of samples.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: Image width in pixels, and its height: HEIGHT_BASE + HEIGHT_PER_PATTERN per pattern,
#: kept within HEIGHT_RANGE.
WIDTH_PX = 1600
HEIGHT_BASE, HEIGHT_PER_PATTERN, HEIGHT_RANGE = 260, 22, (400, 1800)
DPI = 100
#: More samples than this are averaged into this many columns.
MAX_COLUMNS = 2000
#: Sample ids are written under the columns up to this many samples.
MAX_SAMPLE_LABELS = 60
MAX_PATTERN_LABELS = 60
MAX_GROUP_LABELS = 40
#: Colours are clipped at this percentile of the values' magnitude.
CLIP_PERCENTILE = 99.0


@dataclass(frozen=True)
class HeatmapFacts:
    """What the figure shows (recorded in the export's metadata)."""

    width: int
    height: int
    patterns: int
    samples: int
    columns: int
    samples_per_column: int  # the most samples averaged into one column (1: none)
    group_by: str | None
    groups: list[str]
    colour_limits: list[float]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def image_size(patterns: int) -> tuple[int, int]:
    low, high = HEIGHT_RANGE
    return WIDTH_PX, min(high, max(low, HEIGHT_BASE + HEIGHT_PER_PATTERN * patterns))


def column_bins(groups: list[str] | None, order: list[str], samples: int,
                max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """The column of each sample, and (group, first column, stop) for each group shown.

    Samples are ordered by group (in `order`), keeping their order within a group. Each
    group gets columns in proportion to its samples (at least one) when there are more
    samples than `max_columns`.
    """
    labels = groups if groups is not None else [""] * samples
    by_group: dict[str, list[int]] = {name: [] for name in (order if groups else [""])}
    for index, label in enumerate(labels):
        by_group.setdefault(label, []).append(index)
    column = np.empty(samples, dtype=np.int64)
    spans: list[tuple[str, int, int]] = []
    next_column = 0
    squeeze = samples > max_columns
    for name, members in by_group.items():
        if not members:
            continue
        wanted = max(1, round(len(members) * max_columns / samples)) if squeeze else len(members)
        wanted = min(wanted, len(members))
        # consecutive members share a column: floor(i * wanted / n)
        column[members] = next_column + (np.arange(len(members)) * wanted) // len(members)
        spans.append((name, next_column, next_column + wanted))
        next_column += wanted
    return column, spans


def aggregate(values: np.ndarray, column: np.ndarray, columns: int) -> np.ndarray:
    """patterns x columns: the mean of each column's samples (NaN ignored)."""
    out = np.empty((values.shape[0], columns))
    for row, pattern in enumerate(values):
        finite = np.isfinite(pattern)
        sums = np.bincount(column, weights=np.where(finite, pattern, 0.0), minlength=columns)
        counts = np.bincount(column, weights=finite.astype(np.float64), minlength=columns)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[row] = sums / counts
    return out


def draw_heatmap(stream: BinaryIO, values: np.ndarray, pattern_names: list[str],
                 sample_ids: list[str], *, title: str, groups: list[str] | None = None,
                 group_order: list[str] | None = None, group_by: str | None = None,
                 max_columns: int = MAX_COLUMNS) -> HeatmapFacts:
    """Write the PNG of `values` (patterns x samples) to `stream`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    patterns, samples = values.shape
    column, spans = column_bins(groups, group_order or [], samples, max_columns)
    columns = spans[-1][2]
    image = aggregate(values, column, columns)
    per_column = int(np.bincount(column).max())
    cmap, low, high, extend = _colours(image)

    width, height = image_size(patterns)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 2, width_ratios=[60, 1], height_ratios=[1, 14])
    heat = figure.add_subplot(grid[1, 0])
    shown = heat.imshow(image, aspect="auto", interpolation="nearest", cmap=cmap,
                        vmin=low, vmax=high)
    figure.colorbar(shown, cax=figure.add_subplot(grid[1, 1]), extend=extend,
                    label="pattern weight")
    _pattern_ticks(heat, pattern_names)
    if groups is None and per_column == 1 and samples <= MAX_SAMPLE_LABELS:
        heat.set_xticks(range(samples), sample_ids, rotation=90, fontsize=8)
    else:
        heat.set_xticks([])
    for _, first, _stop in spans[1:]:
        heat.axvline(first - 0.5, color="white", linewidth=1.5)
    heat.set_xlabel(_sample_caption(samples, columns, per_column, group_by, len(spans)))
    strip = figure.add_subplot(grid[0, 0], sharex=heat)
    if groups is not None:
        palette = ListedColormap(_palette(len(spans)))
        strip.imshow(np.repeat(np.arange(len(spans)), [stop - first for _, first, stop
                                                       in spans])[None, :],
                     aspect="auto", interpolation="nearest", cmap=palette,
                     vmin=-0.5, vmax=len(spans) - 0.5)
        if len(spans) <= MAX_GROUP_LABELS:
            for name, first, stop in spans:
                strip.text((first + stop - 1) / 2, 0, name, ha="center", va="center",
                           fontsize=8, rotation=90 if len(spans) > 12 else 0,
                           clip_on=True)
        strip.set_title(f"{title}\nsamples grouped by {group_by!r}", fontsize=11)
    else:
        strip.set_axis_off()
        strip.set_title(title, fontsize=11)
    strip.set_yticks([])
    strip.tick_params(axis="x", labelbottom=False, bottom=False)
    figure.savefig(stream, format="png", metadata={"Software": None})
    return HeatmapFacts(width, height, patterns, samples, columns, per_column, group_by,
                        [name for name, _, _ in spans] if groups is not None else [],
                        [float(low), float(high)])


def _colours(image: np.ndarray) -> tuple[str, float, float, str]:
    """Diverging around 0 if any weight is negative, else sequential; clipped."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return "viridis", 0.0, 1.0, "neither"
    magnitude = float(np.percentile(np.abs(finite), CLIP_PERCENTILE)) or 1.0
    if finite.min() < 0:
        clipped = bool(np.abs(finite).max() > magnitude)
        return "RdBu_r", -magnitude, magnitude, "both" if clipped else "neither"
    low = float(finite.min())
    high = max(magnitude, low + 1e-12)
    return "viridis", low, high, "max" if finite.max() > high else "neither"


def _pattern_ticks(axes: Axes, names: list[str]) -> None:
    step = max(1, -(-len(names) // MAX_PATTERN_LABELS))
    positions = list(range(0, len(names), step))
    axes.set_yticks(positions, [names[i] for i in positions],
                    fontsize=9 if len(names) <= 30 else 7)
    axes.set_ylabel("pattern")


def _sample_caption(samples: int, columns: int, per_column: int, group_by: str | None,
                    groups: int) -> str:
    text = f"{samples:,} samples"
    if group_by is not None:
        text += f" in {groups} group(s) of {group_by!r}"
    if per_column > 1:
        text += (f"; shown as {columns:,} columns, each the mean of up to {per_column:,} "
                 f"consecutive samples")
    return text


def _palette(count: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    base = colormaps["tab20"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [base(index % 20) for index in range(count)]
