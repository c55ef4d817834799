"""Depth-profile pictures: a layers x logged-steps array drawn as an RGB image, and a PNG encoder (numpy only).

The colour of a cell is ``log10`` of its value through an embedded viridis table (dark purple = small, yellow =
large; luminance grows monotonically with the value), so a vanishing profile is a vertical gradient from bright
(output side) to dark (input side) and an exploding one the reverse. Non-finite and non-positive values (nothing to
take a logarithm of) are drawn in red. No matplotlib, no PIL, never imports Lightning.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["INVALID_COLOR", "ProfileHistory", "colorize", "depth_profile_image", "to_png"]

#: viridis (van der Walt & Smith, matplotlib's default) at 0, 0.1, ..., 1; interpolated linearly in between.
_VIRIDIS = np.array(
    [
        [0x44, 0x01, 0x54],
        [0x48, 0x24, 0x75],
        [0x41, 0x44, 0x87],
        [0x35, 0x5F, 0x8D],
        [0x2A, 0x78, 0x8E],
        [0x21, 0x91, 0x8C],
        [0x22, 0xA8, 0x84],
        [0x44, 0xBF, 0x70],
        [0x7A, 0xD1, 0x51],
        [0xBD, 0xDF, 0x26],
        [0xFD, 0xE7, 0x25],
    ],
    dtype=np.float64,
)

#: Colour of NaN, +-Inf and values <= 0 (no logarithm): red, absent from viridis.
INVALID_COLOR: tuple[int, int, int] = (230, 30, 30)
_BACKGROUND = (24, 24, 24)
_INK = (235, 235, 235)

# 3x5 bitmaps, rows top to bottom, "1" = ink.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    "-": ("000", "000", "111", "000", "000"),
    "e": ("000", "111", "111", "100", "111"),
}


def colorize(fraction: np.ndarray) -> np.ndarray:
    """Map values in ``[0, 1]`` (clipped) to viridis RGB, ``uint8`` of shape ``fraction.shape + (3,)``."""
    t = np.clip(np.asarray(fraction, dtype=np.float64), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.minimum(np.floor(t).astype(np.intp), len(_VIRIDIS) - 2)
    w = (t - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1.0 - w) + _VIRIDIS[lo + 1] * w
    return np.rint(rgb).astype(np.uint8)


def _log_range(logs: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    finite = logs[np.isfinite(logs)]
    lo = float(np.floor(finite.min())) if vmin is None and finite.size else (vmin if vmin is not None else 0.0)
    hi = float(np.ceil(finite.max())) if vmax is None and finite.size else (vmax if vmax is not None else lo + 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _draw_text(image: np.ndarray, text: str, top: int, left: int, scale: int) -> None:
    for k, char in enumerate(text):
        glyph = _GLYPHS.get(char)
        if glyph is None:
            continue
        for r, row in enumerate(glyph):
            for c, bit in enumerate(row):
                if bit == "1":
                    y, x = top + r * scale, left + (k * 4 + c) * scale
                    image[y : y + scale, x : x + scale] = _INK


def _label(exponent: float) -> str:
    return f"1e{int(exponent)}" if float(exponent).is_integer() else ""


def depth_profile_image(
    values: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    cell_height: int | None = None,
    cell_width: int | None = None,
    colorbar: bool = True,
    labels: bool = True,
) -> np.ndarray:
    """Draw a ``(layers, steps)`` array as an RGB heatmap of ``log10(values)``.

    Row ``i`` of ``values`` is drawn as the ``i``-th band from the top (first layer at the top), column ``j`` as
    the ``j``-th band from the left. Each cell becomes a ``cell_height x cell_width`` block (nearest neighbour).

    Args:
        values: 2-D array, layers x logged steps. NaN, +-Inf and values <= 0 are drawn in :data:`INVALID_COLOR`.
        vmin: ``log10`` value drawn darkest; default: the smallest finite exponent rounded down to an integer.
        vmax: ``log10`` value drawn brightest; default: the largest finite exponent rounded up to an integer.
        cell_height: pixels per layer; default ``clamp(240 // layers, 2, 24)``.
        cell_width: pixels per step; default ``clamp(480 // steps, 1, 16)``.
        colorbar: append a vertical colour bar (bright = ``vmax`` at the top) with a tick at each integer exponent.
        labels: write ``1e{vmax}`` / ``1e{vmin}`` next to the colour bar in a 3x5 pixel font (integer exponents).

    Returns:
        ``uint8`` array of shape ``(H, W, 3)``.

    Raises:
        ValueError: if ``values`` is not 2-D, is empty, or the cell sizes are not positive.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"`values` must be a non-empty 2-D array (layers x steps), got shape {arr.shape}")
    n_layers, n_steps = arr.shape
    ch = cell_height if cell_height is not None else min(24, max(2, 240 // n_layers))
    cw = cell_width if cell_width is not None else min(16, max(1, 480 // n_steps))
    if ch < 1 or cw < 1:
        raise ValueError(f"`cell_height` and `cell_width` must be >= 1, got {cell_height} and {cell_width}")
    valid = np.isfinite(arr) & (arr > 0)
    logs = np.full(arr.shape, np.nan)
    logs[valid] = np.log10(arr[valid])
    lo, hi = _log_range(logs, vmin, vmax)
    cells = colorize((np.nan_to_num(logs, nan=lo) - lo) / (hi - lo))
    cells[~valid] = INVALID_COLOR
    heat = np.repeat(np.repeat(cells, ch, axis=0), cw, axis=1)
    if not colorbar:
        return heat
    scale = 2
    text_h = 5 * scale
    height = max(heat.shape[0], 2 * text_h + 8)
    bar_w, gap = 10, 6
    label_w = (6 * 4 * scale + 4) if labels else 0
    width = heat.shape[1] + gap + bar_w + 3 + label_w
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = _BACKGROUND
    image[: heat.shape[0], : heat.shape[1]] = heat
    left = heat.shape[1] + gap
    fractions = 1.0 - np.arange(height) / max(height - 1, 1)  # top = vmax
    image[:, left : left + bar_w] = colorize(fractions)[:, None, :]
    n_ticks = int(hi - lo) if float(hi - lo).is_integer() else 0
    if 0 < n_ticks <= 40:
        for k in range(n_ticks + 1):
            y = round((1.0 - k / n_ticks) * (height - 1))
            image[y, left + bar_w : left + bar_w + 3] = _INK
    if labels:
        _draw_text(image, _label(hi), 0, left + bar_w + 4, scale)
        _draw_text(image, _label(lo), height - text_h, left + bar_w + 4, scale)
    return image


def to_png(image: np.ndarray) -> bytes:
    """Encode an ``uint8`` ``(H, W, 3)`` RGB or ``(H, W)`` grey image as PNG bytes (zlib + struct, no PIL).

    Raises:
        ValueError: if ``image`` is not ``uint8`` with one of those shapes.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) or arr.size == 0:
        raise ValueError(f"`image` must be a non-empty uint8 (H, W, 3) or (H, W) array, got {arr.dtype} {arr.shape}")
    height, width = arr.shape[:2]
    color_type = 2 if arr.ndim == 3 else 0
    rows = np.ascontiguousarray(arr).reshape(height, -1)
    raw = np.hstack([np.zeros((height, 1), dtype=np.uint8), rows]).tobytes()  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


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
