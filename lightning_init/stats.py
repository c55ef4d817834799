"""Batched per-tensor statistics (pure torch, never imports Lightning)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
from torch import Tensor


def _abs_max_of(x: Tensor) -> Tensor:
    """``max |x|`` of a non-empty tensor in one ``aminmax`` pass, no temporary (NaN propagates)."""
    lo, hi = torch.aminmax(x)
    return torch.maximum(hi, lo.neg())


def _relative_spread(spread: Tensor, scale: Tensor) -> Tensor:
    """``spread / scale`` as float32: ``0`` for a zero ``scale`` (an all-zero weight), NaN for a NaN/Inf one."""
    ratio = spread / scale.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(scale == 0, torch.zeros_like(scale), ratio).float()


def row_spread(weight: Tensor) -> Tensor:
    """How far the output units (rows) of a weight are from being identical, as a 0-dim float32 tensor.

    ``max_ij |w_ij - mean_k w_kj| / max_ij |w_ij|`` over the weight flattened to ``(out_units, -1)``; ``0`` means every
    output unit has the same incoming weights (the symmetry a zero or constant init leaves, so every unit of the layer
    computes and learns the same thing). A zero weight gives ``0``, a weight holding NaN/Inf ``nan``. Weights with fewer
    than 2 dimensions or a single output unit give ``nan`` (symmetry is not defined for them). Computed on the weight's
    device, no host transfer.
    """
    if weight.ndim < 2 or weight.shape[0] < 2:
        return torch.full((), float("nan"), device=weight.device)
    w = weight.detach().flatten(1).float()  # no copy when already float32
    spread = _abs_max_of(w - w.mean(dim=0, keepdim=True))  # one temporary
    # NaN/Inf in the weight: NaN (not "symmetric"); an all-zero weight: 0
    return _relative_spread(spread, _abs_max_of(w))


# ------------------------------------------------------------------------------------------ statistic names

#: Statistics of a weight tensor (``weight_{stat}/{param}``). ``row_spread`` is computed only on request (not logged by
#: default): it feeds the "symmetric" health verdict.
WeightStat = Literal["mean", "std", "norm", "abs_max", "update_ratio", "row_spread"]
#: Statistics of a gradient tensor (``grad_{stat}/{param}``), plus the ``grad_norm/total`` row. ``output_grad`` is the
#: backprop signal ``dL/dh`` of each module output (``output_grad_norm/{module}``, ``output_grad_std/{module}``, see
#: :func:`output_grad_stats`); it needs backward hooks, so it is computed only on request (not logged by default).
GradStat = Literal[
    "norm", "mean", "std", "abs_max", "nonfinite", "ratio", "underflow", "overflow", "dynamic_range", "output_grad"
]
#: Statistics of a module output (``activation_{stat}/{module}``).
ActivationStat = Literal[
    "mean",
    "std",
    "signal_std",
    "abs_max",
    "zero_fraction",
    "saturation",
    "nonfinite",
    "underflow",
    "overflow",
    "dynamic_range",
]

WEIGHT_STATS: tuple[str, ...] = get_args(WeightStat)
GRAD_STATS: tuple[str, ...] = get_args(GradStat)
ACTIVATION_STATS: tuple[str, ...] = get_args(ActivationStat)
#: What each monitor logs by default.
DEFAULT_WEIGHT_STATS: tuple[str, ...] = ("mean", "std", "norm", "abs_max", "update_ratio")
DEFAULT_GRAD_STATS: tuple[str, ...] = tuple(s for s in GRAD_STATS if s != "output_grad")
DEFAULT_ACTIVATION_STATS: tuple[str, ...] = ACTIVATION_STATS

#: A bounded activation's output is "saturated" when it lies closer than this to a bound of its range (in output
#: units: ``|tanh| > 0.99``, ``sigmoid < 0.01`` or ``> 0.99``), where its derivative is below 2% (tanh) / 4% (sigmoid)
#: of its peak and the unit barely passes a gradient.
SATURATION_MARGIN = 0.01

#: Number of histogram buckets computed on device.
HISTOGRAM_BINS = 64

Table = dict[str, dict[str, float]]


# ------------------------------------------------------------------------------------------ one host transfer


def fetch(columns: Mapping[str, Tensor | Sequence[Tensor]]) -> dict[str, list[float]]:
    """Move named device columns to the host in ONE transfer.

    Each value is a tensor (flattened) or a sequence of 0-dim / small tensors (stacked). They are concatenated as
    float32 on the device of the first one, moved with a single ``tolist()`` and split back.
    """
    parts: list[Tensor] = []
    sizes: list[tuple[str, int]] = []
    device: torch.device | None = None
    for key, value in columns.items():
        flat: Tensor
        if isinstance(value, (list, tuple)):
            if not value:
                sizes.append((key, 0))
                continue
            flat = torch.stack(value if all(v.ndim == 0 for v in value) else [v.reshape(()) for v in value])
        else:
            flat = value  # type: ignore[assignment]
        flat = flat.detach().reshape(-1)
        if device is None:
            device = flat.device
        parts.append(flat.to(device=device, dtype=torch.float32))
        sizes.append((key, flat.numel()))
    values: list[float] = torch.cat(parts).tolist() if parts else []
    out: dict[str, list[float]] = {}
    start = 0
    for key, size in sizes:
        out[key] = values[start : start + size]
        start += size
    return out


# ------------------------------------------------------------------------------------------ weights and gradients


def _as_float(t: Tensor) -> Tensor:
    """``t`` detached, as float32 unless it is float32/float64 already (half precision is upcast)."""
    x = t.detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased std (``Tensor.std()``; 0 for one element, NaN for none) of a float tensor, two passes.

    ``sum`` then ``vector_norm(x - mean)``: the centred second pass is as accurate as ``torch.std_mean`` and several
    times faster on CPU (whose ``std_mean`` is a double-precision Welford loop). The squares may overflow float32
    for values beyond ~1e19; :func:`repair` recomputes those on the host side.
    """
    n = x.numel()
    if n == 0:
        nan = x.new_full((), math.nan)
        return nan, nan
    mean = x.sum() / n
    return mean, torch.linalg.vector_norm(x - mean) / math.sqrt(max(n - 1, 1))


#: Tensors of one shape with at most this many elements (256 KiB in float32) are stacked and reduced together (one op
#: per statistic for the whole group); larger ones are reduced one by one, without a copy.
STACK_NUMEL = 1 << 16


def _shape_groups(xs: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``xs`` grouped by (shape, dtype, device); tensors above :data:`STACK_NUMEL` elements alone."""
    groups: dict[Any, list[int]] = {}
    for i, x in enumerate(xs):
        key: Any = (x.shape, x.dtype, x.device) if x.numel() <= STACK_NUMEL else i
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _group_columns(x: Tensor, columns: Sequence[str]) -> dict[str, Tensor]:
    """The statistics of ``x`` (``[G, *shape]``: G tensors of one shape, float32/64) as ``[G]`` columns."""
    g = x.shape[0]
    flat = x.reshape(g, -1)
    n = flat.shape[1]
    if n == 0:
        nan, zero = flat.new_full((g,), math.nan), flat.new_zeros(g)
        empty = {"abs_max": zero, "norm": zero, "mean": nan, "std": nan, "row_spread": nan}
        return {c: empty[c] for c in columns}
    # amax and amin along a dim, not aminmax: torch's aminmax with dim is 10-40x slower on CPU (a [1, 262144] row:
    # 700 us against 2 x 15 us). Both propagate NaN; an Inf shows as inf.
    out: dict[str, Tensor] = {"abs_max": torch.maximum(flat.amax(dim=1), flat.amin(dim=1).neg())}
    if "norm" in columns:
        out["norm"] = torch.linalg.vector_norm(flat, dim=1)
    spread = "row_spread" in columns
    if spread and x.ndim >= 3 and x.shape[1] >= 2:
        # d = w - column means (w flattened to rows): the spread is max |d|, and the std follows from the exact
        # decomposition sum (w - mean)^2 = sum d^2 + rows * sum (column_mean - mean)^2 (one temporary, two passes)
        w = x.reshape(g, x.shape[1], -1)
        rows = w.shape[1]
        col_mean = w.mean(dim=1, keepdim=True)
        d = (w - col_mean).reshape(g, -1)
        mean = col_mean.mean(dim=(1, 2))
        within = torch.linalg.vector_norm(d, dim=1)
        between = torch.linalg.vector_norm(col_mean.reshape(g, -1) - mean[:, None], dim=1) * math.sqrt(rows)
        out["mean"], out["std"] = mean, torch.hypot(within, between) / math.sqrt(max(n - 1, 1))
        out["row_spread"] = _relative_spread(torch.maximum(d.amax(dim=1), d.amin(dim=1).neg()), out["abs_max"])
    else:
        if "mean" in columns or "std" in columns:
            # sum, then the centred vector_norm: as accurate as std_mean and several times faster on CPU (whose
            # std_mean is a double-precision Welford loop); overflowing squares are repaired on the host
            mean = flat.sum(dim=1) / n
            out["mean"] = mean
            out["std"] = torch.linalg.vector_norm(flat - mean[:, None], dim=1) / math.sqrt(max(n - 1, 1))
        if spread:
            out["row_spread"] = flat.new_full((g,), math.nan)  # not defined for this shape
    return {c: out[c] for c in columns}


def tensor_columns(tensors: Sequence[Tensor], stats: Sequence[str]) -> dict[str, Tensor]:
    """Device-side statistics of each tensor, as ``[len(tensors)]`` float32 columns (no host transfer).

    ``abs_max`` is always computed (the host-side :func:`repair` needs it). Supported: ``mean``, ``std`` (unbiased,
    like ``Tensor.std()``; 0 for a one-element tensor), ``norm`` (L2), ``abs_max``, ``row_spread`` (:func:`row_spread`;
    NaN where undefined). Half-precision tensors are reduced in float32.

    Batched over layers: tensors of one shape (up to :data:`STACK_NUMEL` elements) are stacked and reduced together,
    a fixed number of ops per shape instead of ~10 per tensor (a deep net has a handful of shapes); larger tensors are
    reduced one by one (no copy). ``abs_max`` is an ``amax`` and an ``amin``, mean/std a ``sum`` and a centred
    ``vector_norm`` (two passes, no Welford loop); with ``row_spread``, a weight's mean/std/spread share one temporary.
    """
    columns = ("abs_max", *dict.fromkeys(s for s in stats if s in ("norm", "mean", "std", "row_spread")))
    if not tensors:
        return {c: torch.zeros(0) for c in columns}
    xs = [_as_float(t) for t in tensors]
    groups = _shape_groups(xs)
    parts: list[dict[str, Tensor]] = []
    for idx in groups:
        x = xs[idx[0]][None] if len(idx) == 1 else torch.stack([xs[i] for i in idx])
        parts.append(_group_columns(x, columns))
    device = parts[0]["abs_max"].device
    if len(parts) == 1:
        table = torch.stack([parts[0][c] for c in columns], dim=1).float()
    else:
        table = torch.cat([torch.stack([p[c].to(device) for c in columns], dim=1).float() for p in parts])
    order = [i for idx in groups for i in idx]
    if order != list(range(len(order))):
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        table = table[inverse.to(device)]
    return dict(zip(columns, table.unbind(1), strict=True))


def repair(tensors: Sequence[Tensor], host: dict[str, list[float]], *, count_nonfinite: bool) -> None:
    """Fix host columns in place where a float32 reduction was not exact; costs nothing on healthy tensors.

    - A non-finite ``abs_max`` means the tensor holds NaN/Inf: with ``count_nonfinite`` the ``nonfinite`` column gets
      their count (one extra transfer for such a tensor), otherwise 0 everywhere.
    - A finite ``abs_max`` with a non-finite ``norm``/``std``/``mean`` means the float32 reduction overflowed (values
      beyond ~1e19 square past float32's range): the statistic is recomputed on ``tensor / abs_max`` and scaled back
      in Python floats, so a huge finite value is reported huge, not as inf.
    - A ``norm`` below ``abs_max`` (impossible in exact arithmetic) means the squares underflowed (values below ~1e-19,
      e.g. the gradients of a deep net initialized too small): ``norm`` and ``std`` are recomputed the same way, so a
      tiny gradient is reported tiny, not as 0.
    """
    if count_nonfinite:
        host["nonfinite"] = [0.0] * len(tensors)
    # one vectorized check finds the rows to look at (usually none)
    amaxes = np.asarray(host["abs_max"], dtype=np.float64)
    bad = ~np.isfinite(amaxes)
    for k in ("norm", "std", "mean"):
        if k in host:
            bad |= ~np.isfinite(np.asarray(host[k], dtype=np.float64))
    if "norm" in host:
        bad |= np.asarray(host["norm"], dtype=np.float64) < amaxes * (1.0 - 1e-6)
    for i in np.flatnonzero(bad).tolist():
        t = tensors[i]
        amax = host["abs_max"][i]
        if not math.isfinite(amax):
            if count_nonfinite:
                finite: float = torch.isfinite(t.detach()).sum().tolist()  # type: ignore[assignment]
                host["nonfinite"][i] = float(t.numel() - finite)
            continue
        keys = [k for k in ("norm", "std", "mean") if k in host and not math.isfinite(host[k][i])]
        if "norm" in host and host["norm"][i] < amax * (1.0 - 1e-6):
            # ||x||_2 >= max|x| always: a smaller norm means the squares underflowed (values below ~1e-19)
            keys = list(dict.fromkeys([*keys, *(k for k in ("norm", "std") if k in host)]))
        if not keys or amax == 0.0:
            continue
        x = t.detach().float() / amax
        mean, std = _mean_std(x)
        norm, std_v, mean_v = torch.stack([torch.linalg.vector_norm(x), std, mean]).tolist()
        fixed = {"norm": norm * amax, "std": std_v * amax, "mean": mean_v * amax}
        for k in keys:
            host[k][i] = fixed[k]


def safe_ratio(num: float, den: float) -> float:
    """``num / den`` as a float: ``nan`` for ``0/0``, ``inf`` for ``x/0``."""
    if den == 0.0:
        return math.nan if num == 0.0 or math.isnan(num) else math.inf
    return num / den


def total_norm(norms: Iterable[float]) -> float:
    """L2 norm of per-tensor L2 norms (the global gradient norm), overflow-safe (``math.hypot``)."""
    return math.hypot(*norms)


# ------------------------------------------------------------------------------------------ histograms


def histogram_columns(tensors: Sequence[Tensor], bins: int = HISTOGRAM_BINS) -> dict[str, Tensor]:
    """Per-tensor histograms of the FINITE values, computed on device without a host sync.

    Returns ``{"counts": [n, bins], "meta": [n, 5]}`` with meta ``(min, max, num, sum, sum_squares)`` over finite
    values. Buckets split ``[min, max]`` evenly; arithmetic is done on halves so that ``max - min`` cannot overflow,
    which is why values beyond ±1e20 (where ``SummaryWriter.add_histogram`` raises "The histogram is empty") bin fine.
    """
    counts: list[Tensor] = []
    metas: list[Tensor] = []
    for t in tensors:
        x = t.detach().reshape(-1).float()
        fast = _cpu_histogram(x, bins)
        if fast is not None:
            counts.append(fast[0])
            metas.append(fast[1])
            continue
        finite = torch.isfinite(x)
        lo = torch.where(finite, x, math.inf).amin() if x.numel() else x.new_tensor(math.inf)
        hi = torch.where(finite, x, -math.inf).amax() if x.numel() else x.new_tensor(-math.inf)
        half_width = hi / 2 - lo / 2
        scale = torch.where(half_width > 0, half_width, torch.ones_like(half_width))
        pos = ((x / 2 - lo / 2) / scale * bins).floor().clamp(0, bins - 1)
        idx = torch.where(finite, pos, float(bins)).long()
        hist = torch.zeros(bins + 1, device=x.device).scatter_add_(0, idx, torch.ones_like(x))[:bins]
        xs = torch.where(finite, x, 0.0)
        num = finite.sum().float()
        metas.append(torch.stack([lo, hi, num, xs.sum(), xs.square().sum()]))
        counts.append(hist)
    if not counts:
        return {"counts": torch.zeros(0, bins), "meta": torch.zeros(0, 5)}
    return {"counts": torch.stack(counts), "meta": torch.stack(metas)}


def _cpu_histogram(x: Tensor, bins: int) -> tuple[Tensor, Tensor] | None:
    """:func:`histogram_columns` of one flat float32 CPU tensor whose values are all finite, with ``torch.histc``.

    On the CPU reading a value is no device transfer, so the range is read first and ``histc`` (one dedicated pass)
    bins the values, ~3x cheaper than the general path's masked reductions and ``scatter_add_``. ``None`` (use the
    general path) off the CPU, for an empty tensor, one holding NaN/Inf, a constant one, or a range so wide that
    ``max - min`` overflows float32.
    """
    if x.device.type != "cpu" or not x.numel():
        return None
    lo_t, hi_t = x.amin(), x.amax()
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)) or not hi > lo or not hi - lo < 1e38:  # float32 arithmetic
        return None
    hist = torch.histc(x, bins=bins, min=lo, max=hi)
    meta = torch.stack([lo_t, hi_t, x.new_tensor(float(x.numel())), x.sum(), torch.dot(x, x)])
    return hist, meta


class HostHistogram(NamedTuple):
    """A histogram on the host, in the form of ``SummaryWriter.add_histogram_raw``."""

    min: float
    max: float
    num: float
    sum: float
    sum_squares: float
    bucket_limits: list[float]
    bucket_counts: list[float]


def host_histograms(counts: Sequence[float], meta: Sequence[float], n: int, bins: int) -> list[HostHistogram | None]:
    """Split fetched ``histogram_columns`` into per-tensor histograms (``None`` where no value was finite)."""
    out: list[HostHistogram | None] = []
    for i in range(n):
        lo, hi, num, total, squares = meta[5 * i : 5 * i + 5]
        if num <= 0:
            out.append(None)
            continue
        width = (hi / 2 - lo / 2) * 2 / bins if hi > lo else 1.0 / bins
        limits = [lo + width * (b + 1) for b in range(bins)]
        limits[-1] = max(hi, limits[-1]) if hi > lo else limits[-1]
        out.append(HostHistogram(lo, hi, num, total, squares, limits, list(counts[bins * i : bins * (i + 1)])))
    return out


# ------------------------------------------------------------------------------------------ activations

#: Columns of :func:`activation_row`; counts are element counts of one call.
ACTIVATION_ROW: tuple[str, ...] = ("mean", "std", "abs_max", "zeros", "saturated", "nonfinite", "signal", "signal_dof")


def first_float_tensor(output: Any) -> Tensor | None:
    """The first floating-point tensor in ``output`` (depth-first through tuples, lists and dict values).

    That is the main output of ``nn.LSTM`` / ``nn.GRU`` (``output`` before ``(h, c)``) and ``nn.MultiheadAttention``.
    """
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (list, tuple)) else ()
    for value in values:
        found = first_float_tensor(value)
        if found is not None:
            return found
    return None


def activation_row(output: Tensor, bounds: tuple[float, float] | None = None) -> Tensor:
    """Small reductions of one module output, a float32 tensor with the columns :data:`ACTIVATION_ROW`.

    The row of :func:`activation_row_and_unit_means` (which documents the columns), without the unit means.
    """
    return activation_row_and_unit_means(output, bounds)[0]


def _count_saturated(x: Tensor, bounds: tuple[float, float], out: Tensor, dim: int | None = None) -> Tensor:
    """Elements of ``x`` within :data:`SATURATION_MARGIN` of ``bounds`` (``x < low + m`` or ``x > high - m``; Inf
    counts, NaN does not), using ``out`` (``x``'s shape and dtype, overwritten) as the temporary.

    Through subtractions and one ``bool`` sum rather than two comparisons and an ``or`` (3-4x cheaper on CPU): the
    sign of ``a - b`` is exact in IEEE arithmetic, so ``max(low + m - x, x - (high - m)) > 0`` is the same test.
    """  # noqa: D205
    low, high = bounds
    torch.sub(low + SATURATION_MARGIN, x, out=out)
    torch.maximum(out, x - (high - SATURATION_MARGIN), out=out)
    hits = out.relu_().nan_to_num_(nan=0.0).bool()
    return hits.sum() if dim is None else hits.sum(dim=dim)


def activation_row_and_unit_means(output: Tensor, bounds: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """:func:`activation_row` of one module output and the mean of each unit across the samples.

    The unit means (``[units]``, float32 or float64 as the reduction, NaN where a unit holds NaN/Inf) are the
    intermediate of the signal std, returned so that calls (micro-batches) and processes can be merged into the
    signal std of their union exactly (:class:`lightning_init.reduce.UnitMeans`); empty for an empty output.

    Reduced in float32 (half-precision outputs are upcast), over all elements. ``saturated`` counts outputs within
    :data:`SATURATION_MARGIN` of ``bounds`` (0 when ``bounds`` is None). The output itself is not kept.

    Mean and std are computed on the output divided by its ``abs_max`` and scaled back, so huge finite outputs
    (1e30) give finite statistics without a host-side repair (the output is gone by the time the row reaches the
    host). ``zeros`` counts exact zeros (``-0.0`` included), ``nonfinite`` the NaN/Inf elements (the non-zeros of
    ``output * 0``).

    ``signal`` is the *signal* std: the std of each unit (every element of a sample: a feature, a channel at a
    position) across the samples of the first dimension, pooled over the units (``sqrt(mean_u var_n x[n, u])``,
    ``signal_dof = (n - 1) x units`` degrees of freedom; NaN for fewer than 2 samples). Per-unit offsets (a bias, a
    constant pattern) are not signal: an output that is the same for every sample has signal 0 whatever its std.
    The plain ``std`` decomposes exactly into this within-unit part and the spread of the unit means, computed in
    one pass over the centred temporary.
    """
    x = output.detach()
    if x.dtype != torch.float32 and x.dtype != torch.float64:
        x = x.float()
    n = x.numel()
    if n == 0:
        empty = torch.tensor([math.nan, math.nan, 0.0, 0.0, 0.0, 0.0, math.nan, 0.0], device=x.device)
        return empty, x.new_zeros(0)
    lo, hi = torch.aminmax(x)
    amax = torch.maximum(hi, lo.neg())  # NaN if any NaN, inf if any Inf
    scale = torch.where(torch.isfinite(amax) & (amax > 0), amax, 1.0)
    y = x / scale  # |y| <= 1: its squares cannot overflow
    samples = x.shape[0] if x.ndim >= 1 else 1
    units = n // samples
    yu = y.reshape(samples, units)
    unit_mean = yu.mean(dim=0)  # [units]
    mean_y = unit_mean.mean()
    within = torch.linalg.vector_norm(yu.sub_(unit_mean))  # in place: y is now centred per unit
    between = torch.linalg.vector_norm(unit_mean - mean_y) * math.sqrt(samples)
    std_y = torch.hypot(within, between) / math.sqrt(max(n - 1, 1))
    signal_dof = (samples - 1) * units
    signal_y = within / math.sqrt(signal_dof) if signal_dof > 0 else within.new_full((), math.nan)
    if x.device.type == "cpu" and math.isfinite(float(amax)):
        nonfinite = torch.zeros((), dtype=torch.long)  # |x| has a finite max: no NaN/Inf (reading it is no transfer)
    else:
        torch.mul(x, 0, out=y)  # reuse the temporary: NaN exactly where x is NaN/Inf, 0 elsewhere
        nonfinite = y.bool().sum()  # ``bool()`` + ``sum`` is ~2x cheaper on CPU than ``== 0`` or ``count_nonzero``
    zeros = n - x.bool().sum()  # NaN counts as non-zero, as in ``count_nonzero``
    # y (the temporary) is free again for the saturation count
    saturated = torch.zeros((), device=x.device) if bounds is None else _count_saturated(x, bounds, out=y)
    row = torch.stack(
        [
            (mean_y * scale).float(),
            (std_y * scale).float(),
            amax.float(),
            zeros.float(),
            saturated.float(),
            nonfinite.float(),
            (signal_y * scale).float(),
            torch.full((), float(signal_dof), device=x.device),
        ]
    )
    return row, unit_mean.mul_(scale)


def activation_rows(outputs: Tensor, bounds: tuple[float, float] | None = None) -> Tensor:
    """:func:`activation_row` of each of ``C`` module outputs of one shape at once: ``[C, len(ACTIVATION_ROW)]``.

    The rows of :func:`activation_rows_and_unit_means` (which documents them), without the unit means.
    """
    return activation_rows_and_unit_means(outputs, bounds)[0]


def activation_rows_and_unit_means(outputs: Tensor, bounds: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """:func:`activation_row_and_unit_means` of each of ``C`` module outputs of one shape at once.

    Returns the ``[C, len(ACTIVATION_ROW)]`` float32 rows and the ``[C, units]`` unit means (in the reduction's
    dtype, as :func:`activation_row_and_unit_means`).

    ``outputs`` is ``[C, *shape]`` (``C`` calls stacked, ``shape`` with at least one dimension, its first the samples);
    row ``c`` equals ``activation_row(outputs[c], bounds)`` up to float rounding (the same scaled two-pass
    reductions, along dimensions instead of over the whole tensor). A fixed number of tensor ops whatever ``C``: what
    makes many small outputs cheap (:class:`lightning_init.hooks.ActivationRecorder` stages them).
    """
    x = outputs.detach()
    if x.dtype != torch.float32 and x.dtype != torch.float64:
        x = x.float()
    calls = x.shape[0]
    if x.ndim < 2 or x[0].numel() == 0:
        raise ValueError(f"`outputs` must be [calls, samples, ...] with elements, got shape {tuple(x.shape)}.")
    flat = x.reshape(calls, -1)
    n = flat.shape[1]
    samples = x.shape[1]
    units = n // samples
    # amax and amin along a dim, not aminmax (torch's aminmax with dim is 10-40x slower on CPU)
    amax = torch.maximum(flat.amax(dim=1), flat.amin(dim=1).neg())  # NaN if any NaN, inf if any Inf
    scale = torch.where(torch.isfinite(amax) & (amax > 0), amax, 1.0)
    y = (flat / scale[:, None]).reshape(calls, samples, units)  # |y| <= 1: its squares cannot overflow
    unit_mean = y.mean(dim=1)  # [C, units]
    mean_y = unit_mean.mean(dim=1)
    within = torch.linalg.vector_norm(y.sub_(unit_mean[:, None, :]), dim=(1, 2))  # in place: y centred per unit
    between = torch.linalg.vector_norm(unit_mean - mean_y[:, None], dim=1) * math.sqrt(samples)
    std_y = torch.hypot(within, between) / math.sqrt(max(n - 1, 1))
    signal_dof = (samples - 1) * units
    signal_y = within / math.sqrt(signal_dof) if signal_dof > 0 else torch.full_like(within, math.nan)
    y = y.reshape(calls, n)
    if x.device.type == "cpu" and bool(torch.isfinite(amax).all()):
        nonfinite = torch.zeros(calls, dtype=torch.long)  # every max |x| finite: no NaN/Inf (a read, no transfer)
    else:
        torch.mul(flat, 0, out=y)  # reuse the temporary: NaN exactly where x is NaN/Inf, 0 elsewhere
        nonfinite = y.bool().sum(dim=1)
    zeros = n - flat.bool().sum(dim=1)  # NaN counts as non-zero, as in ``count_nonzero``
    # y (the temporary) is free again for the saturation count
    saturated = torch.zeros_like(amax) if bounds is None else _count_saturated(flat, bounds, out=y, dim=1)
    rows = torch.stack(
        [
            mean_y * scale,
            std_y * scale,
            amax,
            zeros.to(amax.dtype),
            saturated.to(amax.dtype),
            nonfinite.to(amax.dtype),
            signal_y * scale,
            torch.full_like(amax, float(signal_dof)),
        ],
        dim=1,
    ).float()
    return rows, unit_mean.mul_(scale[:, None])


# ------------------------------------------------------------------------------------------ backprop signal

#: Statistics of the backprop signal ``dL/dh`` of a module output ``h`` (``output_grad_{stat}/{module}``).
OUTPUT_GRAD_STATS: tuple[str, ...] = ("norm", "std")


def output_grad_stats(numel: float, mean: float, std: float, *, scale: float = 1.0) -> dict[str, float]:
    """``norm`` (L2) and ``std`` of a module's ``dL/dh`` from its merged moments, divided by ``scale``.

    ``numel``, ``mean`` and ``std`` (unbiased) describe every element of every call of the module over the step (all
    accumulation micro-batches, all processes: :func:`lightning_init.reduce.merge_moments`), so
    ``norm = sqrt((numel - 1) * std^2 + numel * mean^2)`` is the norm of ``dL/dh`` over the whole batch of the step
    (the concatenation of the micro-batches' gradients; Lightning already divides each micro-batch's loss by the
    number of micro-batches). ``scale`` undoes what multiplied the loss before backward: the GradScaler's loss scale
    under ``precision="16-mixed"``, times the number of processes under DDP (whose gradients are averaged, so the
    global loss is the mean of the processes' losses). Computed on the host in float64: no overflow for any float32
    moments. NaN statistics for ``numel == 0``.
    """
    if numel <= 0 or scale <= 0:
        return {"norm": math.nan, "std": math.nan}
    squares = max(numel - 1.0, 0.0) * std * std + numel * mean * mean
    return {"norm": math.sqrt(squares) / scale, "std": std / scale}


# ------------------------------------------------------------------------------------------ 16-bit headroom

#: Statistics of how a tensor fits its 16-bit format (``{kind}_{stat}/{name}`` for activations and gradients):
#: ``underflow`` and ``overflow`` (fractions of the elements), ``dynamic_range`` (bits). Logged only for tensors that
#: live in a 16-bit format (see :func:`headroom_format`): never under 32-bit precision.
HEADROOM_STATS: tuple[str, ...] = ("underflow", "overflow", "dynamic_range")
#: Columns of :func:`headroom_row`.
HEADROOM_ROW: tuple[str, ...] = ("underflow", "overflow", "abs_max", "abs_min_nonzero")
#: Lightning precision flags whose tensors live in (or are cast to) a 16-bit format.
_PRECISION_FORMAT: dict[str, torch.dtype] = {
    "16-mixed": torch.float16,
    "16": torch.float16,
    "16-true": torch.float16,
    "bf16-mixed": torch.bfloat16,
    "bf16": torch.bfloat16,
    "bf16-true": torch.bfloat16,
}


def headroom_format(dtype: torch.dtype, precision: str | None = None) -> torch.dtype | None:
    """The 16-bit format a tensor of ``dtype`` lives in under Lightning's ``precision``, or ``None`` (no headroom).

    A ``float16`` / ``bfloat16`` tensor lives in its own format (a model cast to half, or an autocast output). A wider
    tensor under ``"16-mixed"`` / ``"bf16-mixed"`` (an op autocast keeps in float32, a float32 master gradient) is
    measured against the format it is cast to at the next autocast op. Under 32/64-bit precision: ``None``.
    """
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    return _PRECISION_FORMAT.get(str(precision)) if precision is not None else None


def headroom_row(x: Tensor, fmt: torch.dtype, scale: float | Tensor = 1.0) -> Tensor:
    """Counts and extremes of ``|x * scale|`` against ``fmt`` (columns :data:`HEADROOM_ROW`), float32 on ``x``'s device.

    - ``underflow``: elements with ``0 < |x| < finfo(fmt).tiny`` (the smallest normal): subnormals, which lose
      precision and which flush-to-zero arithmetic turns into 0, and, for a wider tensor on its way to ``fmt``, the
      values the cast makes subnormal or 0. Exact zeros are not counted (a ReLU's zeros are structure, not underflow;
      they are ``zero_fraction``); a value already flushed to 0 in a 16-bit tensor cannot be told from them.
    - ``overflow``: elements with ``|x| > finfo(fmt).max / 2`` (one doubling from inf), Inf included, NaN not.
    - ``abs_max``, ``abs_min_nonzero``: the largest finite and the smallest non-zero ``|x|`` (``nan`` / ``inf`` when
      there is none), from which :func:`headroom_stats` takes the dynamic range.

    ``scale`` is what multiplied the values while they were in ``fmt``: the GradScaler's loss scale for the gradients
    of a ``16-mixed`` run (their float32 ``.grad`` is read unscaled).
    """
    info = torch.finfo(fmt)
    a = x.detach().abs()
    if a.dtype != torch.float32 and a.dtype != torch.float64:
        a = a.float()
    if not (isinstance(scale, float) and scale == 1.0):
        a = a * scale
    if a.numel() == 0:
        return torch.tensor([0.0, 0.0, math.nan, math.inf], device=x.device)
    finite = torch.isfinite(a)
    under = ((a < info.tiny) & (a > 0)).sum()
    over = (a > info.max / 2).sum()  # NaN compares False, Inf True
    amax = torch.where(finite, a, 0.0).amax()
    amin = torch.where(a > 0, a, math.inf).amin()
    return torch.stack([under.float(), over.float(), amax.float(), amin.float()])


def headroom_stats(rows: Sequence[Sequence[float]], numel: float) -> dict[str, float]:
    """Merge host-side :func:`headroom_row` rows (calls, micro-batches) of ``numel`` elements in all.

    Returns ``underflow`` and ``overflow`` as fractions of ``numel`` and ``dynamic_range`` =
    ``log2(max |x| / min non-zero |x|)`` in bits (``nan`` when no element is non-zero and finite).
    """
    if numel <= 0 or not rows:
        return {"underflow": math.nan, "overflow": math.nan, "dynamic_range": math.nan}
    under = sum(r[0] for r in rows)
    over = sum(r[1] for r in rows)
    amax = max((r[2] for r in rows if not math.isnan(r[2])), default=math.nan)
    amin = min(r[3] for r in rows)
    bits = math.log2(amax / amin) if amax > 0 and math.isfinite(amin) and amin > 0 else math.nan
    return {"underflow": under / numel, "overflow": over / numel, "dynamic_range": bits}
