"""Activation statistics that combine exactly across calls, micro-batches and processes (pure torch).

An :class:`~lightning_init.hooks.ActivationRecorder` keeps one small row per module call
(:data:`lightning_init.stats.ACTIVATION_ROW`). To describe the *global* batch of a data-parallel step, each process
first merges its own calls into one row of :data:`MOMENT_COLUMNS` per module, on the device
(:func:`local_moments`); the processes exchange these ``[modules, 10]`` tables in ONE collective (``all_gather``); and
every process merges the gathered tables the same way on the host (:func:`merge_moments`), so every process ends with
the same numbers and takes the same health decisions.

This is the one place that declares how each statistic reduces (as torchmetrics' ``dist_reduce_fx`` does):

============  =====================================================================
column        reduction
============  =====================================================================
``numel``     sum
``mean``      element-weighted mean
``dev_norm``  ``sqrt`` of the sum of squared deviations from the mean (kept as a root so
              that a float32 transfer does not overflow), merged with Chan et al.'s
              parallel formula
``abs_max``   max (NaN wins)
``zeros``     sum (count of exactly-zero outputs)
``saturated`` sum (count of outputs near the bounds of tanh/sigmoid)
``nonfinite`` sum (count of NaN/Inf outputs)
``order``     min (position of the module's first call: forward execution order)
``signal_norm`` ``sqrt`` of the within-unit sum of squares (deviations of every unit from its own mean
              across the samples: the signal std's numerator); the monitor replaces it by each
              call position's over all micro-batches (:class:`UnitMeans`), and adds the
              between-process spread of the unit means (:func:`merge_signal`): exact for the
              global batch where every process ran the module with the same layout
``signal_dof``  sum (its degrees of freedom)
============  =====================================================================

Never imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MOMENT_COLUMNS",
    "PARAM_COLUMNS",
    "call_moments",
    "local_moments",
    "MERGED_STATS",
    "merge_column_extremes",
    "merge_moment_rows",
    "merge_moments",
    "merge_norms",
    "merge_param_moments",
    "moment_order",
    "moment_rank",
]

#: Columns of the per-module moment table exchanged between processes.
MOMENT_COLUMNS: tuple[str, ...] = (
    "numel",
    "mean",
    "dev_norm",
    "abs_max",
    "zeros",
    "saturated",
    "nonfinite",
    "order",
    "signal_norm",
    "signal_dof",
)
_W = len(MOMENT_COLUMNS)


def _accum_dtype(device: torch.device) -> torch.dtype:
    # float64 wherever the backend has it (MPS does not).
    return torch.float32 if device.type == "mps" else torch.float64


def local_moments(
    names: Sequence[str],
    rows: Mapping[str, Sequence[Tensor]],
    numels: Mapping[str, Sequence[int]],
    *,
    device: torch.device | None = None,
) -> Tensor:
    """Merge the recorded calls of each module into one row of :data:`MOMENT_COLUMNS`, on the rows' device.

    Args:
        names: every watched module, in an order that is the same on every process (the table's row order).
        rows: module name -> per-call rows (``mean, std, abs_max, zeros, saturated, nonfinite``; ``std`` unbiased).
            Modules absent from ``rows`` (not run on this process) get ``numel = 0`` and ``order = inf``.
        numels: module name -> element count of each call.
        device: where to build the table when no module ran (default: CPU).

    Returns:
        A ``[len(names), len(MOMENT_COLUMNS)]`` float64 tensor (float32 on MPS). ``order`` is the position of the
        module in ``rows``' insertion order (the order modules first ran).
    """
    index = {n: i for i, n in enumerate(names)}
    ran = [n for n in rows if rows[n] and n in index]
    calls = [row for n in ran for row in rows[n]]
    modules = [index[n] for n in ran for _ in rows[n]]
    counts = [c for n in ran for c in numels[n][: len(rows[n])]]
    first = next(iter(calls), None)
    stacked = torch.stack(calls) if first is not None else torch.zeros(0, 8, device=device)
    return call_moments(stacked, modules, counts, len(names), device=device)


def call_moments(
    calls: Tensor, modules: Sequence[int], numels: Sequence[int], n_modules: int, *, device: torch.device | None = None
) -> Tensor:
    """Merge recorded calls into one row of :data:`MOMENT_COLUMNS` per module, on the calls' device (vectorized).

    Args:
        calls: ``[C, len(ACTIVATION_ROW)]`` per-call rows (:data:`lightning_init.stats.ACTIVATION_ROW`), in call
            order.
        modules: the module index (``0 .. n_modules - 1``) of each call.
        numels: the element count of each call.
        n_modules: the table's number of rows (every watched module, the same on every process).
        device: where to build the table when nothing was recorded (default: CPU).

    Returns:
        A ``[n_modules, len(MOMENT_COLUMNS)]`` float64 tensor (float32 on MPS). Modules without calls get
        ``numel = 0`` and ``order = inf``; ``order`` is the rank of a module's first call among the modules that ran.
    """
    dev = calls.device if len(modules) else (device or torch.device("cpu"))
    dtype = _accum_dtype(dev)
    m = n_modules
    out = torch.zeros(m, _W, dtype=dtype, device=dev)
    out[:, 7] = math.inf
    if not len(modules):
        return out
    # first-run order (host, vectorized): the rank of each module's first call among the modules that ran
    ran, first_call = np.unique(np.asarray(modules, dtype=np.int64), return_index=True)
    ranks = np.empty(len(ran))
    ranks[np.argsort(first_call, kind="stable")] = np.arange(len(ran), dtype=np.float64)
    host_order = np.full(m, math.inf)
    host_order[ran] = ranks
    order = torch.from_numpy(host_order).to(dev, dtype=dtype, non_blocking=True)
    stacked = calls.to(dtype)
    idx = torch.tensor(list(modules), dtype=torch.long).to(dev, non_blocking=True)
    n = torch.tensor(list(numels), dtype=dtype).to(dev, non_blocking=True)
    total = torch.zeros(m, dtype=dtype, device=dev).index_add_(0, idx, n)
    mean = torch.zeros(m, dtype=dtype, device=dev).index_add_(0, idx, n * stacked[:, 0]) / total.clamp_min(1.0)
    within = stacked[:, 1].square() * (n - 1.0).clamp_min(0.0)
    between = n * (stacked[:, 0] - mean[idx]).square()
    m2 = torch.zeros(m, dtype=dtype, device=dev).index_add_(0, idx, within + between)
    amax = stacked[:, 2]
    nan_amax = torch.zeros(m, dtype=dtype, device=dev).index_add_(0, idx, amax.isnan().to(dtype))
    amax_m = torch.zeros(m, dtype=dtype, device=dev).scatter_reduce_(
        0, idx, torch.nan_to_num(amax, nan=0.0), "amax", include_self=True
    )
    amax_m = torch.where(nan_amax > 0, torch.full_like(amax_m, math.nan), amax_m)
    counts = torch.zeros(m, 3, dtype=dtype, device=dev).index_add_(0, idx, stacked[:, 3:6])
    dof = stacked[:, 7]
    ss = torch.where(dof > 0, stacked[:, 6].square() * dof, torch.zeros_like(dof))  # NaN signal of 1-sample calls
    signal = torch.zeros(m, 2, dtype=dtype, device=dev).index_add_(0, idx, torch.stack([ss, dof], dim=1))
    return torch.cat(
        [
            total[:, None],
            mean[:, None],
            m2.sqrt()[:, None],
            amax_m[:, None],
            counts,
            order[:, None],
            signal[:, :1].sqrt(),
            signal[:, 1:],
        ],
        dim=1,
    )


#: The statistics :func:`merge_moment_rows` returns, one column each.
MERGED_STATS: tuple[str, ...] = ("mean", "std", "signal_std", "abs_max", "zero_fraction", "saturation", "nonfinite")


def merge_moment_rows(parts: Sequence[Sequence[Sequence[float]]] | np.ndarray) -> dict[str, np.ndarray]:
    """Merge every module's moment rows from several processes (host side, vectorized over modules and processes).

    ``parts[p][i]`` is process ``p``'s :data:`MOMENT_COLUMNS` row of module ``i`` (``[processes, modules, columns]``).
    Returns one float64 column (``[modules]``) per statistic of :data:`MERGED_STATS`: ``mean``, ``std`` (unbiased over
    all elements; 0 for one element), ``signal_std`` (the pooled within-unit std across the samples,
    :func:`lightning_init.stats.activation_row`), ``abs_max`` (NaN wins), ``zero_fraction``, ``saturation`` (meaningful
    for bounded activations only) and ``nonfinite``. Rows no process saw an element of are NaN throughout. Parts
    with ``numel = 0`` are left out; the means and squared deviations merge with Chan et al.'s parallel formula (one
    process: its own row, exactly).
    """
    p = np.asarray(parts, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"parts: expected [processes, modules, columns], got shape {p.shape}")
    numel = p[..., 0]
    valid = numel > 0
    n = np.where(valid, numel, 0.0)
    total = n.sum(axis=0)
    seen = total > 0

    def summed(column: int) -> np.ndarray:
        return np.where(valid, p[..., column], 0.0).sum(axis=0)

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if p.shape[0] == 1:
            mean, m2 = p[0, :, 1].copy(), p[0, :, 2] * p[0, :, 2]
        else:
            mu = np.where(valid, p[..., 1], 0.0)
            mean = (n * mu).sum(axis=0) / total
            dev = p[..., 2]
            m2 = np.where(valid, dev * dev + n * (mu - mean) ** 2, 0.0).sum(axis=0)
        std = np.where(total > 1, np.sqrt(m2 / (total - 1.0)), 0.0)
        nan_max = (valid & np.isnan(p[..., 3])).any(axis=0)
        amax = np.where(nan_max, math.nan, np.maximum(np.where(valid, p[..., 3], 0.0).max(axis=0), 0.0))
        if p.shape[2] >= 10:
            ss = np.where(valid, p[..., 8] * p[..., 8], 0.0).sum(axis=0)
            dof = summed(9)
            signal = np.where(dof > 0, np.sqrt(ss / dof), math.nan)
        else:
            signal = np.full(total.shape, math.nan)
        out = {
            "mean": mean,
            "std": std,
            "signal_std": signal,
            "abs_max": amax,
            "zero_fraction": summed(4) / total,
            "saturation": summed(5) / total,
            "nonfinite": summed(6),
        }
    return {k: np.where(seen, v, math.nan) for k, v in out.items()}


def merge_moments(parts: Sequence[Sequence[float]], *, bounded: bool) -> dict[str, float]:
    """Merge one module's moment rows from several processes (host side) into its statistics.

    Returns ``mean``, ``std`` (unbiased over all elements), ``signal_std``, ``abs_max``, ``zero_fraction``,
    ``nonfinite`` and, for a ``bounded`` activation, ``saturation``; NaN statistics when no process saw an element
    (without ``saturation``). One module of :func:`merge_moment_rows`.
    """
    merged = merge_moment_rows([[list(row)] for row in parts]) if len(parts) else None
    if merged is None or not sum(max(float(row[0]), 0.0) for row in parts) > 0:
        return {k: math.nan for k in ("mean", "std", "signal_std", "abs_max", "zero_fraction", "nonfinite")}
    out = {k: float(v[0]) for k, v in merged.items()}
    if not bounded:
        del out["saturation"]
    return out


def moment_rank(parts: Sequence[Sequence[Sequence[float]]] | np.ndarray) -> np.ndarray:
    """Indices of the modules that ran on some process, in forward execution order (:func:`moment_order`)."""
    p = np.asarray(parts, dtype=np.float64)
    if p.shape[1] == 0:
        return np.zeros(0, dtype=np.int64)
    valid = p[..., 0] > 0
    ran = np.flatnonzero(valid.any(axis=0))
    first = valid.argmax(axis=0)[ran]
    position = p[first, ran, 7]
    return ran[np.lexsort((ran, position, first))]


def moment_order(names: Sequence[str], parts: Sequence[Sequence[Sequence[float]]]) -> list[str]:
    """Names of the modules that ran on some process, in forward execution order.

    ``parts[p][i]`` is process ``p``'s moment row of ``names[i]``. Modules are ordered by their first-call position on
    the lowest-ranked process that ran them (process 0's order first), so every process gets the same order.
    """
    if not len(names):
        return []
    return [names[i] for i in moment_rank(parts).tolist()]


# ------------------------------------------------------------------------------------------ sharded parameters

#: Columns of the per-parameter moment table of one shard (:mod:`lightning_init.sharded`), and how each merges
#: across the processes that hold the shards (a device-side merge of the gathered ``[processes, params, columns]``):
#:
#: ============  ===================================================================
#: column        reduction
#: ============  ===================================================================
#: ``numel``     sum
#: ``mean``      element-weighted mean
#: ``dev_norm``  root of the summed squared deviations, parallel formula (Chan et al.):
#:               ``sum(dev_norm_p^2 + numel_p * (mean_p - mean)^2)``
#: ``abs_max``   max (NaN wins)
#: ``nonfinite`` sum
#: ``spread``    max (the :func:`~lightning_init.stats.row_spread` numerator of a shard
#:               that holds whole columns; shards of rows merge per column instead:
#:               :func:`merge_column_extremes`)
#: ============  ===================================================================
#:
#: Norm-like extras (``||w_t - w_{t-1}||``, ``||w||`` of a gradient ratio) merge as the root of the summed squares.
PARAM_COLUMNS: tuple[str, ...] = ("numel", "mean", "dev_norm", "abs_max", "nonfinite", "spread")


def merge_param_moments(parts: Tensor) -> dict[str, Tensor]:
    """Merge gathered per-shard parameter rows ``[processes, params, len(PARAM_COLUMNS)]`` on their device.

    Returns per-parameter columns (``[params]`` tensors): ``numel``, ``mean``, ``std`` (unbiased; 0 for one element,
    NaN for none), ``norm`` (L2, from ``dev_norm^2 + numel * mean^2``; the ``abs_max`` of a tensor holding NaN/Inf,
    as ``vector_norm`` gives), ``abs_max`` (NaN when any shard holds NaN), ``nonfinite`` and ``spread`` (max).
    """
    numel, mean, dev, amax, nonfinite, spread = parts.unbind(-1)
    total = numel.sum(0)
    merged_mean = (numel * mean).sum(0) / total.clamp_min(1.0)
    held = numel > 0  # an empty shard's zero mean must not enter the deviation sum
    m2 = torch.where(held, dev.square() + numel * (mean - merged_mean).square(), 0.0).sum(0)
    nan = torch.full_like(total, math.nan)
    std = torch.where(total > 1, m2.sqrt() / (total - 1).clamp_min(1.0).sqrt(), torch.where(total == 1, 0.0, nan))
    amax_m = torch.where(amax.isnan().any(0), nan, amax.amax(0))
    norm = torch.where(amax_m.isfinite(), (m2 + total * merged_mean.square()).sqrt(), amax_m)
    merged_mean = torch.where(total > 0, merged_mean, nan)
    return {
        "numel": total,
        "mean": merged_mean,
        "std": std,
        "norm": norm,
        "abs_max": amax_m,
        "nonfinite": nonfinite.sum(0),
        "spread": spread.amax(0),
    }


def merge_norms(parts: Tensor) -> Tensor:
    """``[processes, n]`` per-shard L2 norms -> ``[n]`` norms of the whole tensors (root of the summed squares)."""
    return parts.square().sum(0).sqrt()


def merge_column_extremes(
    sums: Tensor, maxima: Tensor, minima: Tensor, rows: Tensor, segments: Tensor, n_segments: int
) -> Tensor:
    """Row-sharded weights: ``max_ij |w_ij - mean_i w_ij|`` of each whole weight from per-shard column extremes.

    Each process holds some rows of a weight flattened to ``(rows, columns)`` and sends, per column, the sum, max and
    min over its rows. Summed over processes, the sums give the column means; then ``max |w - column mean|`` is
    ``max(max - mean, mean - min)`` per column, maximized over the weight's columns (exact: no rounding beyond that of
    the inputs).

    Args:
        sums: ``[processes, columns]`` column sums (the columns of every row-sharded weight, concatenated).
        maxima: ``[processes, columns]`` column maxima (``-inf`` for a shard with no rows).
        minima: ``[processes, columns]`` column minima (``inf`` for a shard with no rows).
        rows: ``[columns]`` the whole weight's row count, per column.
        segments: ``[columns]`` which weight each column belongs to (``0 .. n_segments - 1``).
        n_segments: the number of row-sharded weights.

    Returns:
        ``[n_segments]`` spread numerators (NaN where a column holds NaN).
    """
    col_mean = sums.sum(0) / rows
    hi, lo = maxima.amax(0), minima.amin(0)
    dev = torch.maximum(hi - col_mean, col_mean - lo)
    out = torch.zeros(n_segments, dtype=dev.dtype, device=dev.device)
    out = out.scatter_reduce(0, segments, torch.nan_to_num(dev, nan=math.inf), "amax", include_self=True)
    has_nan = torch.zeros_like(out).index_add_(0, segments, dev.isnan().to(dev.dtype)) > 0
    return torch.where(has_nan, torch.full_like(out, math.nan), out)


# ------------------------------------------------------------------------------------------ the signal std, exactly

#: Columns of the per-module signal layout table exchanged with the moment table (same collective), and the check
#: each must pass for the module's signal std to be merged exactly across processes:
#:
#: ==============  =================================================================================
#: column          meaning (exact merge: every process ran the module with the same values of ...)
#: ==============  =================================================================================
#: ``samples``     samples per call position (0: ran with different counts, or not at all)
#: ``units``       units (elements of one sample) over the call positions: the vector's length
#: ``calls``       call positions per (micro-)batch
#: ``shape_key``   a hash of the per-sample shapes of the call positions
#: ``offset``      where the unit means start in this process's vector (-1: did not fit)
#: ==============  =================================================================================
SIGNAL_LAYOUT: tuple[str, ...] = ("samples", "units", "calls", "shape_key", "offset")
_L = len(SIGNAL_LAYOUT)

#: Vector capacity (floats) of the unit means in the first logging step's collective; later steps use at least what
#: every process needed (the largest of them, rounded up to a power of two), agreed from the gathered layouts.
SIGNAL_CAPACITY = 1 << 18

_HASH_PRIME = 2_147_483_647  # keeps the shape hash an exact integer in float64 (< 2**53)


class UnitMeans:
    """Per-unit moments of one call position of a module, merged exactly over its calls (micro-batches).

    ``samples`` samples of a per-sample ``shape``; ``mean`` the ``[units]`` unit means; ``ss`` the within-unit sum of
    squares ``sum_n sum_u (x[n, u] - mean[u])^2`` (the signal std's numerator). Merging two groups of samples is
    Chan et al.'s parallel formula per unit: ``ss = ss_a + ss_b + n_a n_b / (n_a + n_b) ||mean_a - mean_b||^2``.
    Everything stays on the device (float64; float32 on MPS); no host transfer.
    """

    __slots__ = ("mean", "samples", "shape", "ss")

    def __init__(self, samples: int, shape: tuple[int, ...], mean: Tensor, ss: Tensor) -> None:
        self.samples = samples
        self.shape = shape
        self.mean = mean
        self.ss = ss

    @classmethod
    def of_call(cls, samples: int, shape: tuple[int, ...], unit_means: Tensor, row: Tensor) -> UnitMeans:
        """One call's moments from its :func:`~lightning_init.stats.activation_row_and_unit_means` (``row``)."""
        dtype = _accum_dtype(unit_means.device)
        signal, dof = row[6].to(dtype), row[7].to(dtype)
        ss = torch.where(dof > 0, signal.square() * dof, torch.zeros_like(dof))  # NaN signal of a 1-sample call
        return cls(samples, shape, unit_means.to(dtype), ss)

    def add(self, other: UnitMeans) -> bool:
        """Merge ``other`` (the same call position of a later micro-batch) in; ``False`` if its shape differs."""
        if other.shape != self.shape:
            return False
        total = self.samples + other.samples
        delta = other.mean - self.mean
        self.ss = self.ss + other.ss + delta.square().sum() * (self.samples * other.samples / total)
        self.mean = self.mean + delta * (other.samples / total)
        self.samples = total
        return True

    @property
    def units(self) -> int:
        """Elements of one sample."""
        return self.mean.numel()


def _shape_key(states: Sequence[UnitMeans]) -> float:
    key = 0
    for state in states:
        for dim in (len(state.shape), *state.shape):
            key = (key * 1_000_003 + dim + 1) % _HASH_PRIME
    return float(key)


def local_signal(
    names: Sequence[str],
    unit_means: Mapping[str, Sequence[UnitMeans]],
    mixed: Collection[str],
    *,
    capacity: int,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor | None, list[tuple[int, int, int]]]:
    """This process's signal std of each module over all its calls, and what the exact cross-process merge needs.

    Args:
        names: every watched module, the same list on every process (the tables' row order).
        unit_means: module name -> one :class:`UnitMeans` per call position (merged over micro-batches).
        mixed: modules whose call positions changed shape between micro-batches (their signal std stays pooled
            per call: the signal columns of :func:`local_moments`).
        capacity: length of the unit-mean vector (0: single process, no vector).
        device: where the tables live.

    Returns:
        ``signal``: ``[len(names), 3]`` ``signal_norm``, ``signal_dof`` (the columns of :data:`MOMENT_COLUMNS`) over
        all samples of each call position and ``known`` (0, with NaN columns, where not run or ``mixed``);
        ``layout``: ``[len(names), len(SIGNAL_LAYOUT)]``; ``vector``: ``[capacity]`` the unit means of the modules
        that fit, at their offsets (``None`` for ``capacity=0``); ``segments``: ``(row, offset, length)`` of each
        module in ``vector``.
    """
    dtype = _accum_dtype(device)
    m = len(names)
    signal = torch.full((m, 3), math.nan, dtype=dtype, device=device)
    signal[:, 2] = 0.0
    layout = [[0.0, 0.0, 0.0, 0.0, -1.0] for _ in range(m)]
    segments: list[tuple[int, int, int]] = []
    means: list[Tensor] = []
    rows: list[int] = []
    sums: list[Tensor] = []
    dofs: list[float] = []
    offset = 0
    for i, name in enumerate(names):
        states = unit_means.get(name)
        if not states or name in mixed:
            continue
        rows.append(i)
        sums.append(torch.stack([s.ss for s in states]).sum())
        dofs.append(float(sum(s.units * (s.samples - 1) for s in states)))
        units = sum(s.units for s in states)
        samples = states[0].samples if all(s.samples == states[0].samples for s in states) else 0
        at = offset if samples and units <= capacity - offset else -1
        layout[i] = [float(samples), float(units), float(len(states)), _shape_key(states), float(at)]
        if at >= 0:
            means += [s.mean for s in states]
            segments.append((i, at, units))
            offset += units
    if rows:
        index = torch.tensor(rows, device=device)
        known = torch.ones(len(rows), dtype=dtype, device=device)
        dof = torch.tensor(dofs, dtype=dtype, device=device)
        signal[index] = torch.stack([torch.stack(sums).sqrt(), dof, known], dim=1)
    vector = torch.cat([*means, torch.zeros(capacity - offset, dtype=dtype, device=device)]) if capacity else None
    return signal, torch.tensor(layout, dtype=dtype, device=device).reshape(m, _L), vector, segments


def merge_signal(layout: Tensor, vectors: Tensor, segments: Sequence[tuple[int, int, int]]) -> Tensor:
    """The between-process part of each module's signal std, from the gathered layouts and unit-mean vectors.

    ``layout`` is ``[processes, modules, len(SIGNAL_LAYOUT)]``, ``vectors`` ``[processes, capacity]``, ``segments``
    this process's own (:func:`local_signal`). Returns ``[modules, 2]`` on the device: ``between``, the sum over
    units of ``sum_p n_p (mean_pu - mean_u)^2`` (``mean_u`` the unit's mean over every process's samples), and
    ``exact``, 1 where every process ran the module with the same layout (:data:`SIGNAL_LAYOUT`) and its unit
    means fit, so that ``sum_p ss_p + between`` over ``sum_p dof_p + (processes - 1) units`` is the signal std of
    the global batch (:func:`exact_signal_std`); 0 elsewhere (the signal std stays pooled per process). Every
    process gets the same values from the same gathered tensors.
    """
    m = layout.shape[1]
    samples, units, calls, key, offset = layout.unbind(-1)
    same = (units == units[:1]).all(0) & (calls == calls[:1]).all(0) & (key == key[:1]).all(0)
    exact = same & (samples > 0).all(0) & (offset >= 0).all(0)
    between = torch.zeros(m, dtype=vectors.dtype, device=vectors.device)
    own = [(i, at, length) for i, at, length in segments if length > 0]
    if own:
        dev = vectors.device
        rows = torch.tensor([i for i, _, _ in own], device=dev)
        lengths = torch.tensor([length for *_, length in own], device=dev)
        seg = torch.repeat_interleave(torch.arange(len(own), device=dev), lengths)  # [L] segment of each position
        starts = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(int(lengths.sum()), device=dev) - starts[seg]  # position within the segment
        at = offset[:, rows].clamp_min(0)  # [processes, segments]: each process's own offsets
        index = (at[:, seg] + pos).long().clamp(0, vectors.shape[1] - 1)
        values = vectors.gather(1, index)  # [processes, L]
        n = samples[:, rows][:, seg]  # [processes, L]
        mean = (n * values).sum(0) / n.sum(0).clamp_min(1.0)
        spread = (n * (values - mean).square()).sum(0)
        between = between.index_add_(0, rows[seg], spread)
    return torch.stack([between, exact.to(between.dtype)], dim=1)


def exact_signal_std(parts: Sequence[Sequence[float]], between: float, units: float) -> float:
    """The global batch's signal std of one module from its gathered moment rows and :func:`merge_signal`'s part.

    ``parts[p]`` is process ``p``'s :data:`MOMENT_COLUMNS` row; the pooled within-process sums of squares and
    degrees of freedom get the between-process spread of the unit means and ``processes - 1`` more degrees of freedom
    per unit.
    """
    ss = sum(row[8] * row[8] for row in parts)
    dof = sum(row[9] for row in parts) + (len(parts) - 1) * units
    return math.sqrt((ss + between) / dof) if dof > 0 else math.nan


def signal_capacity(current: int, layout: Sequence[float], processes: int, modules: int) -> int:
    """The unit-mean capacity of the next collective: at least ``current`` and what every process needed.

    ``layout`` is the gathered ``[processes, modules, len(SIGNAL_LAYOUT)]`` table, flattened; every process computes
    the same capacity from it (the collective's size must agree).
    """
    need = 0
    for p in range(processes):
        rows = [layout[(p * modules + i) * _L : (p * modules + i + 1) * _L] for i in range(modules)]
        need = max(need, int(sum(r[1] for r in rows if r[0] > 0)))
    capacity = current
    while capacity < need:
        capacity *= 2
    return capacity
