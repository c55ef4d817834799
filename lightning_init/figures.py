"""Depth-profile figures through matplotlib (Agg): a heatmap of layers x logged steps and a "coord check" chart.

Both are drawn from a :class:`ProfileHistory` (the bounded layers x steps history of one statistic that
:class:`~lightning_init.health.HealthTracker` keeps):

- :func:`heatmap_figure`: rows = layers in data-flow order (input at the top, names on the y axis), columns =
  logged steps (step numbers on the x axis), colour = the value on a log10 scale (viridis, colour bar in powers of
  ten). Cells with nothing to take a logarithm of are drawn in colours absent from viridis and explained in a
  legend: NaN (or not logged at that step) red, +-Inf black, 0 white.
- :func:`depth_profile_figure`: x = layer in data-flow order, y = the value on a log10 axis, one line per logged step
  coloured by step (the muP "coord check" picture): a level profile is a flat line, vanishing falls to the right,
  exploding rises; lines that move apart over steps are a profile drifting during training. Zeros are marked at the
  bottom edge, NaN/Inf at the top edge.

:func:`render` draws a figure once on an Agg canvas (no pyplot, no global state, thread-safe) and returns its RGB
pixels and PNG bytes. matplotlib is imported on first use, so importing this module (the tracker does) costs
nothing. Never imports Lightning.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "INVALID_STYLES",
    "ProfileHistory",
    "Rendered",
    "depth_profile_figure",
    "heatmap_figure",
    "render",
]

#: How cells without a logarithm are drawn and named in the legend: (colour, legend label).
INVALID_STYLES: dict[str, tuple[str, str]] = {
    "nan": ("#e41a1c", "NaN (or not logged)"),
    "inf": ("#000000", "+/-Inf"),
    "zero": ("#ffffff", "0 (no log)"),
}
#: Width of every figure in inches at :data:`DPI`: 405 px, about the width of a TensorBoard image card, so the
#: picture is shown at (almost) its own size and 9-point text stays readable.
WIDTH_IN = 4.5
#: Dots per inch of the rendered PNG.
DPI = 90
#: Font size of tick labels; layer names shrink to :data:`_MIN_FONT` on deep models, then every k-th is shown.
_FONT = 9.0
_MIN_FONT = 6.5


@dataclass(frozen=True)
class Rendered:
    """A drawn figure: ``rgb`` pixels (``uint8``, ``(H, W, 3)``) and the same picture as ``png`` bytes."""

    rgb: np.ndarray
    png: bytes


def render(figure: Figure) -> Rendered:
    """Draw ``figure`` on an Agg canvas and encode it as PNG (PIL, a dependency of matplotlib); one draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=6)
    return Rendered(rgb=rgb, png=buffer.getvalue())


def _new_figure(height_in: float) -> Figure:
    from matplotlib.figure import Figure

    # No layout engine: constrained/tight layout measure every text several times (most of a draw's time); the
    # margins are computed from the label lengths instead (:func:`_axes`).
    return Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)


def _text_px(chars: int, size: float) -> float:
    """Width in pixels of ``chars`` characters of DejaVu Sans at ``size`` points (0.7 em each; digits are 0.64 em)."""
    return chars * size * 0.7 * DPI / 72


def _fit_names(names: Sequence[str], size: float, max_px: float) -> list[str]:
    """``names`` shortened to at most ``max_px`` pixels at ``size`` points, keeping their ends.

    The end is the distinctive part of a qualified name (``...layers.7.mlp.fc1``); a margin sized from the shortened
    names never eats the plot.
    """
    max_chars = max(4, int(max_px / _text_px(1, size)))
    return [n if len(n) <= max_chars else "\u2026" + n[len(n) - max_chars + 1 :] for n in names]


def _axes(fig: Figure, *, left_px: float, bottom_px: float, top_px: float, bar: bool) -> tuple[Any, Any]:
    """The plot's axes and its colour bar's axes at fixed pixel margins (right: colour bar and its labels)."""
    width_px, height_px = fig.get_figwidth() * DPI, fig.get_figheight() * DPI
    bar_px, bar_gap, bar_text = 10.0, 8.0, 62.0
    right_px = bar_gap + bar_px + bar_text if bar else 12.0
    w, h = width_px - left_px - right_px, height_px - bottom_px - top_px
    ax = fig.add_axes((left_px / width_px, bottom_px / height_px, w / width_px, h / height_px))
    cax = None
    if bar:
        cax = fig.add_axes(
            ((left_px + w + bar_gap) / width_px, bottom_px / height_px, bar_px / width_px, h / height_px)
        )
    return ax, cax


def _layer_ticks(n: int, axis_px: float) -> tuple[list[int], float]:
    """Which of ``n`` layer labels to show along ``axis_px`` pixels, and at which font size, so none overlap."""
    size = max(_MIN_FONT, min(_FONT, 0.75 * axis_px / max(n, 1) * 72 / DPI))
    needed = size * DPI / 72 * 1.25  # pixels per label line
    every = max(1, math.ceil(n * needed / max(axis_px, 1.0)))
    return list(range(0, n, every)), size


def _step_ticks(steps: Sequence[int], max_ticks: int = 7) -> list[int]:
    """Column indices to label on the step axis: evenly spread, always the first and the last."""
    n = len(steps)
    if n <= max_ticks:
        return list(range(n))
    picks = np.unique(np.round(np.linspace(0, n - 1, max_ticks)).astype(int))
    return [int(i) for i in picks]


def _classes(values: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the cells without a logarithm, by :data:`INVALID_STYLES` key."""
    return {
        "nan": np.isnan(values),
        "inf": np.isinf(values),
        "zero": np.isfinite(values) & (values <= 0),
    }


def _log_limits(values: np.ndarray) -> tuple[float, float] | None:
    """Smallest and largest positive finite value, widened to whole decades; ``None`` if there is none."""
    good = values[np.isfinite(values) & (values > 0)]
    if good.size == 0:
        return None
    lo, hi = math.floor(math.log10(float(good.min()))), math.ceil(math.log10(float(good.max())))
    if hi <= lo:
        hi = lo + 1
    return 10.0**lo, 10.0**hi


def _decades(axis: Any, values: np.ndarray) -> None:
    """Log-axis ticks in plain text (mathtext parsing is most of a draw's time), no minor ticks: at powers of ten
    labelled ``1e-3``, or, when ``values`` span less than two decades, also at 2 and 5 times them (``0.2``, ``0.5``).
    """  # noqa: D205
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    good = values[np.isfinite(values) & (values > 0)]
    narrow = good.size > 0 and math.log10(float(good.max()) / float(good.min())) < 2
    if narrow:
        axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0), numticks=12))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}" if v > 0 else ""))
    else:
        axis.set_major_locator(LogLocator(base=10.0, numticks=9))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"1e{round(math.log10(v))}" if v > 0 else ""))
    axis.set_minor_locator(NullLocator())


def _legend_handles(masks: Mapping[str, np.ndarray]) -> list[Any]:
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=colour, edgecolor="#555555", label=label)
        for key, (colour, label) in INVALID_STYLES.items()
        if masks[key].any()
    ]


def heatmap_figure(
    values: np.ndarray,
    layers: Sequence[str],
    steps: Sequence[int],
    *,
    title: str,
    label: str,
) -> Figure:
    """The depth-profile heatmap: ``values`` (layers x logged steps) on a log10 colour scale.

    Args:
        values: 2-D array, one row per layer (first row = input side, drawn at the top), one column per step.
        layers: the row names (y axis).
        steps: the column steps (x axis).
        title: the figure's title.
        label: what the colour is (the colour bar's label), e.g. ``"grad norm"``.

    Raises:
        ValueError: if the shapes disagree or ``values`` is empty.
    """
    from matplotlib.colors import ListedColormap, LogNorm

    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0 or arr.shape != (len(layers), len(steps)):
        raise ValueError(
            f"`values` must be a non-empty (layers, steps) array matching {len(layers)} layers and {len(steps)} "
            f"steps, got shape {arr.shape}"
        )
    n_layers, n_steps = arr.shape
    height_in = min(7.0, max(3.2, 1.5 + 0.14 * n_layers))
    fig = _new_figure(height_in)
    masks = _classes(arr)
    limits = _log_limits(arr)
    handles = _legend_handles(masks)
    top_px, bottom_px = 24.0, 34.0 + (16.0 if handles else 0.0)
    axis_px = height_in * DPI - top_px - bottom_px
    rows, size = _layer_ticks(n_layers, axis_px)
    layers = _fit_names(layers, size, 0.4 * WIDTH_IN * DPI)
    left_px = 8.0 + _text_px(max(len(layers[r]) for r in rows), size)
    ax, cax = _axes(fig, left_px=left_px, bottom_px=bottom_px, top_px=top_px, bar=limits is not None)
    good = np.ma.masked_where(~(np.isfinite(arr) & (arr > 0)), arr)
    if limits is not None:
        mesh = ax.pcolormesh(good, cmap="viridis", norm=LogNorm(*limits), shading="flat")
        bar = fig.colorbar(mesh, cax=cax)
        _decades(bar.ax.yaxis, arr)
        bar.set_label(f"{label} (log10 scale)", fontsize=_FONT)
        bar.ax.tick_params(labelsize=_FONT)
    for key, (colour, _) in INVALID_STYLES.items():
        if masks[key].any():
            ax.pcolormesh(
                np.ma.masked_where(~masks[key], np.ones_like(arr)),
                cmap=ListedColormap([colour]),
                vmin=0,
                vmax=1,
                shading="flat",
            )
    ax.set_xlim(0, n_steps)
    ax.set_ylim(n_layers, 0)  # first layer (input side) at the top
    ax.set_yticks([r + 0.5 for r in rows], [layers[r] for r in rows], fontsize=size)
    cols = _step_ticks(steps)
    ax.set_xticks([c + 0.5 for c in cols], [str(steps[c]) for c in cols], fontsize=_FONT)
    ax.set_xlabel("logged step", fontsize=_FONT, labelpad=1)
    fig.suptitle(title, fontsize=_FONT + 1, y=1 - 4 / (height_in * DPI), va="top")
    if handles:
        fig.legend(
            handles=handles,
            loc="lower center",
            ncols=len(handles),
            fontsize=_FONT - 0.5,
            frameon=False,
            borderaxespad=0.1,
            handlelength=1.2,
        )
    return fig


def depth_profile_figure(
    values: np.ndarray,
    layers: Sequence[str],
    steps: Sequence[int],
    *,
    title: str,
    label: str,
    max_lines: int = 12,
) -> Figure:
    """The coord-check chart: one line per logged step across the layers (x), ``label`` on a log10 y axis.

    Args:
        values: 2-D array, layers (data-flow order) x logged steps.
        layers: the layer names (x tick labels).
        steps: the steps of the columns (line colours, colour bar).
        title: the figure's title.
        label: the y axis' quantity, e.g. ``"activation std"``.
        max_lines: at most this many steps are drawn (evenly spread, always the first and the last).

    Raises:
        ValueError: if the shapes disagree, ``values`` is empty or ``max_lines < 2``.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0 or arr.shape != (len(layers), len(steps)):
        raise ValueError(
            f"`values` must be a non-empty (layers, steps) array matching {len(layers)} layers and {len(steps)} "
            f"steps, got shape {arr.shape}"
        )
    if max_lines < 2:
        raise ValueError(f"`max_lines` must be >= 2, got {max_lines}")
    n_layers = arr.shape[0]
    height_in = 3.6
    fig = _new_figure(height_in)
    ticks, size = _layer_ticks(n_layers, WIDTH_IN * DPI - 130)
    layers = _fit_names(layers, size, 0.45 * height_in * DPI)
    bottom_px = 10.0 + _text_px(max(len(layers[t]) for t in ticks), size)
    ax, cax = _axes(fig, left_px=52.0, bottom_px=bottom_px, top_px=24.0, bar=True)
    cmap = colormaps["plasma"]
    norm = Normalize(vmin=float(min(steps)), vmax=float(max(max(steps), min(steps) + 1)))
    x = np.arange(n_layers)
    cols = _step_ticks(steps, max_lines)
    positive = np.isfinite(arr) & (arr > 0)
    zeros = np.zeros(n_layers, dtype=bool)
    nonfinite = np.zeros(n_layers, dtype=bool)
    for c in cols:
        y = np.where(positive[:, c], arr[:, c], np.nan)
        ax.plot(x, y, color=cmap(norm(steps[c])), linewidth=1.2, marker="o", markersize=2.5)
        zeros |= np.isfinite(arr[:, c]) & (arr[:, c] <= 0)
        nonfinite |= np.isinf(arr[:, c]) | (np.isnan(arr[:, c]) & positive.any(axis=1))
    if positive[:, cols].any():
        ax.set_yscale("log")
        _decades(ax.yaxis, arr[:, cols])
    edge = ax.get_xaxis_transform()  # x in data, y in axes fraction
    handles = []
    if zeros.any():
        ax.plot(x[zeros], np.zeros(int(zeros.sum())), "v", color="#1f77b4", transform=edge, clip_on=False)
        handles.append(Line2D([], [], linestyle="", marker="v", color="#1f77b4", label="0 (at some step)"))
    if nonfinite.any():
        ax.plot(x[nonfinite], np.ones(int(nonfinite.sum())), "x", color="#e41a1c", transform=edge, clip_on=False)
        handles.append(Line2D([], [], linestyle="", marker="x", color="#e41a1c", label="NaN/Inf (at some step)"))
    ax.set_xticks(ticks, [layers[t] for t in ticks], rotation=90, fontsize=size)
    ax.set_xlim(-0.5, n_layers - 0.5)
    ax.set_ylabel(f"{label} (log10 scale)", fontsize=_FONT)
    ax.tick_params(axis="y", labelsize=_FONT)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=_FONT + 1, y=1 - 4 / (height_in * DPI), va="top")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.set_label("logged step", fontsize=_FONT)
    bar.ax.tick_params(labelsize=_FONT)
    if handles:
        ax.legend(handles=handles, fontsize=_FONT - 0.5, loc="best", framealpha=0.8)
    return fig


class ProfileHistory:
    """Bounded layers x steps history of one statistic, for :func:`depth_profile_image`.

    Keeps at most ``max_columns`` columns: when full, every other column is dropped and only every
    ``2**k``-th offered column is kept from then on (uniform decimation), so memory stays flat however long the
    run. The latest column is always kept as well, so the picture ends at the last logged step.

    Args:
        max_columns: even number >= 2.
    """

    def __init__(self, max_columns: int = 256) -> None:
        if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 2 or max_columns % 2:
            raise ValueError(f"`max_columns` must be an even integer >= 2, got {max_columns!r}")
        self.max_columns = max_columns
        self._layers: dict[str, int] = {}
        # A column is a compact float64 array indexed by layer row (NaN: absent), ~8 bytes a value instead of a dict's
        # ~100, so the full history of a 40-layer model stays under 100 KB.
        self._columns: list[tuple[int, np.ndarray]] = []
        self._latest: tuple[int, np.ndarray] | None = None
        self._offered = 0
        self._stride = 1

    def __len__(self) -> int:
        extra = self._latest is not None and (not self._columns or self._columns[-1] is not self._latest)
        return len(self._columns) + int(extra)

    def append(self, step: int, values: Mapping[str, float]) -> None:
        """Add the column of ``step``: layer name -> value (layers appear as rows in first-seen order)."""
        rows = [self._layers.setdefault(name, len(self._layers)) for name in values]
        column = np.full(len(self._layers), np.nan)
        column[rows] = [float(v) for v in values.values()]
        entry = (int(step), column)
        self._latest = entry
        if self._offered % self._stride == 0:
            if len(self._columns) == self.max_columns:
                self._columns = self._columns[::2]
                self._stride *= 2
            if self._offered % self._stride == 0:
                self._columns.append(entry)
        self._offered += 1

    def matrix(self) -> tuple[np.ndarray, list[str], list[int]]:
        """Return ``(values, layer_names, steps)``; ``values`` is ``(layers, columns)``, NaN where a layer is absent."""
        columns = list(self._columns)
        if self._latest is not None and (not columns or columns[-1] is not self._latest):
            columns.append(self._latest)
        out = np.full((len(self._layers), len(columns)), np.nan)
        for j, (_, column) in enumerate(columns):
            out[: len(column), j] = column
        return out, list(self._layers), [s for s, _ in columns]

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (for a callback's ``state_dict``)."""
        values, layers, steps = self.matrix()
        return {
            "max_columns": self.max_columns,
            "layers": layers,
            "steps": steps,
            "values": [[None if math.isnan(v) else v for v in row] for row in values.T.tolist()],
            "offered": self._offered,
            "stride": self._stride,
            "latest_kept": bool(self._columns) and self._columns[-1] is self._latest,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.max_columns = int(state["max_columns"])
        self._layers = {name: i for i, name in enumerate(state["layers"])}
        entries = [
            (int(step), np.array([np.nan if v is None else float(v) for v in col], dtype=np.float64))
            for step, col in zip(state["steps"], state["values"], strict=True)
        ]
        if entries and not state["latest_kept"]:
            self._latest = entries.pop()
            self._columns = entries
        else:
            self._columns = entries
            self._latest = entries[-1] if entries else None
        self._offered = int(state["offered"])
        self._stride = int(state["stride"])
