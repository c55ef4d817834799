"""Sharded parameters (FSDP2 ``fully_shard``, DTensor): statistics from local shards, and initialization.

Pure torch, never imports Lightning.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``, Lightning's ``ModelParallelStrategy``) every parameter and
gradient is a ``DTensor`` and each process holds one shard (``to_local()``). The weight and gradient monitors report
the statistics of the *whole* tensors without ever assembling them (no ``full_tensor()``, no gather of the weights):

1. each process reduces its shards to one small float64 vector (:func:`local_table`): per tensor the moment row of
   :data:`lightning_init.reduce.PARAM_COLUMNS` (element count, mean, root of the summed squared deviations,
   ``max |x|``, non-finite count, the row-spread numerator of a shard of whole columns), the shard's L2 norms of the
   extras a monitor asks for (``||w_t - w_{t-1}||``, ``||w||``) and, for a weight sharded by rows (FSDP2's
   ``Shard(0)``), the sum, max and min of each column over its rows;
2. ONE collective (the caller's ``gather``: ``[processes, L]`` from every process's ``[L]``) exchanges the vectors;
3. every process merges the gathered table the same way on the device (:func:`merge_table`, with the rules declared
   in :mod:`lightning_init.reduce`): exact mean and std (Chan et al.'s parallel formula), norms as the root of the
   summed squares, max of maxima, sums of counts, and the row spread from the merged column means.

So every process ends with the same numbers, the same table as an unsharded run (to float rounding) and the same
health decisions. Supported layouts: every ``DTensor`` on a one-dimensional device mesh spanning all processes, with
``Shard(dim)`` or ``Replicate()`` placement (FSDP2, or tensor parallelism over one mesh); a plain tensor or a
replicated ``DTensor`` is counted once (the copy of mesh rank 0). Refused, with what to do
(:func:`check_supported`): meshes of two or more dimensions (HSDP, FSDP + tensor parallel), meshes over some of the
processes, and ``Partial`` placements (a pending reduction).

Initialization (:func:`init_sharded_`): every process runs the initializer on plain tensors of the *whole* shapes,
drawn from the same seeded stream, and keeps its own shard (``distribute_tensor(..., src_data_rank=None)``: local
slicing, no communication). So the sharded model holds, bit for bit, what the unsharded model initialized with the
same seed holds, for any placement (FSDP2, HSDP, tensor parallel).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn

from lightning_init.reduce import PARAM_COLUMNS, merge_column_extremes, merge_norms, merge_param_moments

__all__ = [
    "ShardInfo",
    "check_supported",
    "init_sharded_",
    "is_sharded",
    "local_table",
    "local_tensor",
    "merge_table",
    "shard_info",
    "sharded_columns",
]

_W = len(PARAM_COLUMNS)

#: How a tensor's row spread (:func:`lightning_init.stats.row_spread`) is completed across shards: ``"columns"``
#: merges per-column extremes (the shard holds some rows), ``"local"`` takes the max of per-shard values (the shard
#: holds whole columns), ``"none"`` is not defined for the tensor (fewer than 2 dimensions or rows).
SpreadKind = Literal["columns", "local", "none"]


@functools.cache
def _dtensor_type() -> type | None:
    """``DTensor`` (looked up once: every watched tensor asks, every logging step), ``None`` without it."""
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch < 2.4
        return None
    return DTensor


def is_sharded(tensor: object) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter or gradient of ``fully_shard`` / tensor parallelism)."""
    cls = _dtensor_type()
    return cls is not None and isinstance(tensor, cls)


def local_tensor(tensor: Tensor) -> Tensor:
    """This process's shard of a ``DTensor`` (``to_local()``, a view: no copy, no communication), else ``tensor``."""
    return tensor.to_local() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ShardInfo:
    """One process's view of one tensor: its local shard and the global facts every process agrees on.

    Attributes:
        local: this process's shard (the whole tensor when replicated).
        contributes: whether this shard counts (``False`` for the copies of a replicated tensor off mesh rank 0).
        spread: how the row spread merges (see :data:`SpreadKind`).
        columns: the whole tensor's column count (``numel / shape[0]``), for ``spread == "columns"``.
        rows: the whole tensor's row count (``shape[0]``).
    """

    local: Tensor
    contributes: bool
    spread: SpreadKind
    columns: int
    rows: int


def _spread_kind(shape: Sequence[int], sharded_dim: int | None) -> SpreadKind:
    if len(shape) < 2 or shape[0] < 2 or math.prod(shape) == 0:
        return "none"
    return "columns" if sharded_dim == 0 else "local"


def check_supported(named: Sequence[tuple[str, Tensor]], world_size: int, *, what: str = "parameter") -> None:
    """Raise a clear ``NotImplementedError`` for a sharded layout these statistics cannot complete exactly.

    Args:
        named: ``(name, tensor)`` pairs; plain tensors are always fine.
        world_size: the number of processes (the collective spans them all).
        what: ``"parameter"`` or ``"gradient"``, for the message.
    """
    for name, t in named:
        if not is_sharded(t):
            continue
        mesh, placements = t.device_mesh, t.placements  # type: ignore[attr-defined]
        where = f"{what} `{name}` is a DTensor on {mesh} with placements {tuple(placements)}"
        if mesh.ndim != 1:
            raise NotImplementedError(
                f"{where}: a {mesh.ndim}-dimensional device mesh (HSDP, or FSDP combined with tensor parallelism) is "
                "not supported by the weight/gradient monitors. Shard over one mesh dimension (FSDP2 `fully_shard` "
                "on `device_mesh['data_parallel']` with `ModelParallelStrategy(tensor_parallel_size=1)`), or drop "
                "WeightMonitor/GradientMonitor and keep ActivationMonitor (module outputs are not sharded)."
            )
        if mesh.size() != world_size:
            raise NotImplementedError(
                f"{where}: the mesh spans {mesh.size()} of the {world_size} processes; the monitors complete their "
                "statistics over all processes, so shard over a mesh of all of them."
            )
        for placement in placements:
            if not (placement.is_shard() or placement.is_replicate()):
                raise NotImplementedError(
                    f"{where}: placement {placement} (a pending reduction) cannot be measured without reducing it. "
                    "Only Shard(dim) and Replicate() are supported; measure after the reduction (FSDP2 reduces "
                    "gradients before `on_before_optimizer_step`)."
                )


def shard_info(tensor: Tensor, rank: int) -> ShardInfo:
    """The :class:`ShardInfo` of ``tensor`` on this process (``rank``: the global rank, for plain tensors).

    A plain tensor is treated as replicated: only rank 0's copy counts. Call :func:`check_supported` first.
    """
    shape = tuple(tensor.shape)
    rows = shape[0] if shape else 1
    columns = math.prod(shape[1:]) if len(shape) >= 1 else 1
    if not is_sharded(tensor):
        return ShardInfo(tensor.detach(), rank == 0, _spread_kind(shape, None), columns, rows)
    placement = tensor.placements[0]  # type: ignore[attr-defined]
    dim: int | None = placement.dim if placement.is_shard() else None
    if dim is not None and dim < 0:
        dim += len(shape)
    contributes = dim is not None or tensor.device_mesh.get_local_rank() == 0  # type: ignore[attr-defined]
    return ShardInfo(tensor.detach().to_local(), contributes, _spread_kind(shape, dim), columns, rows)  # type: ignore[attr-defined]


def _accum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _as_float(t: Tensor) -> Tensor:
    x = t.detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _moment_row(x: Tensor, dtype: torch.dtype, *, moments: bool, nonfinite: bool, spread: bool) -> Tensor:
    """:data:`PARAM_COLUMNS` of one non-empty float shard (``spread``: the shard holds whole columns)."""
    n = x.numel()
    lo, hi = torch.aminmax(x)
    amax = torch.maximum(hi, lo.neg())  # NaN if any NaN, inf if any Inf
    zero = torch.zeros((), dtype=dtype, device=x.device)
    mean = dev = zero
    if moments:
        # On x / max|x| (|y| <= 1): squares neither overflow nor underflow float32, so no host-side repair is needed
        # (the tensor is not at hand any more once the table is merged).
        scale = torch.where(torch.isfinite(amax) & (amax > 0), amax, 1.0)
        y = x / scale
        mean_y = y.sum() / n
        dev_y = torch.linalg.vector_norm(y.sub_(mean_y))
        mean, dev = mean_y.to(dtype) * scale.to(dtype), dev_y.to(dtype) * scale.to(dtype)
    count = (n - torch.isfinite(x).sum()).to(dtype) if nonfinite else zero
    numerator = zero
    if spread:
        w = x.flatten(1)
        d = w - w.mean(dim=0, keepdim=True)
        lo_d, hi_d = torch.aminmax(d)
        numerator = torch.maximum(hi_d, lo_d.neg()).to(dtype)
    return torch.stack([zero + n, mean, dev, amax.to(dtype), count, numerator])


def local_table(
    infos: Sequence[ShardInfo],
    stats: Sequence[str],
    *,
    norms: Mapping[str, Sequence[Tensor]] | None = None,
    count_nonfinite: bool = False,
    device: torch.device | None = None,
) -> Tensor:
    """This process's part of the table: one 1-D float64 tensor (float32 on MPS) of the same length on every process.

    Layout: ``[tensors, PARAM_COLUMNS]`` flattened, then ``[tensors, extras]`` (the local L2 norms in ``norms``,
    name -> one 0-dim tensor per tensor), then for the ``"columns"``-spread tensors (when ``row_spread`` is in
    ``stats``) the column sums, maxima and minima over the local rows. A shard that does not contribute (a
    replicated copy), or holds no element, sends zeros (and ``-inf`` / ``inf`` extremes).
    """
    extras = dict(norms or {})
    dev = infos[0].local.device if infos else (device or torch.device("cpu"))
    dtype = _accum_dtype(dev)
    moments = any(s in stats for s in ("mean", "std", "norm"))
    spread = "row_spread" in stats
    rows: list[Tensor] = []
    sums: list[Tensor] = []
    maxima: list[Tensor] = []
    minima: list[Tensor] = []
    for info in infos:
        x = _as_float(info.local)
        held = info.contributes and x.numel() > 0
        if held:
            rows.append(
                _moment_row(
                    x, dtype, moments=moments, nonfinite=count_nonfinite, spread=spread and info.spread == "local"
                )
            )
        else:
            rows.append(torch.zeros(_W, dtype=dtype, device=dev))
        if spread and info.spread == "columns":
            if held:
                w = x.flatten(1)
                sums.append(w.sum(0).to(dtype))
                maxima.append(w.amax(0).to(dtype))
                minima.append(w.amin(0).to(dtype))
            else:
                sums.append(torch.zeros(info.columns, dtype=dtype, device=dev))
                maxima.append(torch.full((info.columns,), -math.inf, dtype=dtype, device=dev))
                minima.append(torch.full((info.columns,), math.inf, dtype=dtype, device=dev))
    parts = [torch.stack(rows).reshape(-1)] if rows else []
    if extras and infos:
        keep = torch.tensor([float(i.contributes) for i in infos], dtype=dtype, device=dev)
        stacked = torch.stack([torch.stack([v.reshape(()) for v in extras[k]]).to(dtype) for k in extras], dim=1)
        parts.append((stacked * keep[:, None]).reshape(-1))
    parts += sums + maxima + minima
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=dev)


def merge_table(
    gathered: Tensor,
    infos: Sequence[ShardInfo],
    stats: Sequence[str],
    *,
    norm_names: Sequence[str] = (),
) -> dict[str, Tensor]:
    """Merge the gathered ``[processes, L]`` tables (:func:`local_table`) into per-tensor device columns.

    Returns ``abs_max`` and each of ``mean``, ``std``, ``norm``, ``row_spread``, ``nonfinite`` in ``stats``, plus one
    column per name in ``norm_names`` (the whole tensors' L2 norms), each a ``[tensors]`` tensor on the table's device.
    The same on every process (the same inputs, the same operations).
    """
    p, e = len(infos), len(norm_names)
    world = gathered.shape[0]
    fixed = gathered[:, : p * _W].reshape(world, p, _W)
    merged = merge_param_moments(fixed)
    out: dict[str, Tensor] = {"abs_max": merged["abs_max"]}
    for s in ("mean", "std", "norm", "nonfinite"):
        if s in stats:
            out[s] = merged[s]
    offset = p * _W
    if e:
        extras = gathered[:, offset : offset + p * e].reshape(world, p, e)
        for j, name in enumerate(norm_names):
            out[name] = merge_norms(extras[:, :, j])
        offset += p * e
    if "row_spread" in stats:
        undefined = torch.tensor([i.spread == "none" for i in infos], dtype=torch.bool, device=gathered.device)
        numerator = merged["spread"]
        by_columns = [k for k, i in enumerate(infos) if i.spread == "columns"]
        if by_columns:
            total = sum(infos[k].columns for k in by_columns)
            block = gathered[:, offset : offset + 3 * total]
            sums, maxima, minima = block[:, :total], block[:, total : 2 * total], block[:, 2 * total :]
            sizes = torch.tensor([infos[k].columns for k in by_columns], device=gathered.device)
            segments = torch.repeat_interleave(torch.arange(len(by_columns), device=gathered.device), sizes)
            rows = torch.repeat_interleave(
                torch.tensor([float(infos[k].rows) for k in by_columns], dtype=gathered.dtype, device=gathered.device),
                sizes,
            )
            spreads = merge_column_extremes(sums, maxima, minima, rows, segments, len(by_columns))
            numerator = numerator.index_copy(0, torch.tensor(by_columns, device=gathered.device), spreads)
        scale = merged["abs_max"]
        ratio = numerator / scale.clamp_min(torch.finfo(torch.float32).tiny)
        spread = torch.where(scale == 0, torch.zeros_like(scale), ratio)  # 0 for an all-zero weight
        out["row_spread"] = torch.where(undefined, math.nan, spread)  # NaN: not defined (a bias, one row)
    return out


def sharded_columns(
    tensors: Sequence[Tensor],
    stats: Sequence[str],
    *,
    gather: Callable[[Tensor], Tensor],
    rank: int,
    norms: Mapping[str, Sequence[Tensor]] | None = None,
    count_nonfinite: bool = False,
    device: torch.device | None = None,
) -> dict[str, Tensor]:
    """Statistics of whole (sharded) tensors from their local shards, completed with ONE call of ``gather``.

    Args:
        tensors: the parameters or gradients (``DTensor`` or plain), in the same order on every process.
        stats: any of ``mean``, ``std``, ``norm``, ``row_spread`` (``abs_max`` is always computed).
        gather: the collective: this process's ``[L]`` tensor -> ``[processes, L]`` (e.g. Lightning's
            ``trainer.strategy.all_gather``); called exactly once, by every process, even with no tensors.
        rank: this process's global rank (decides which copy of a plain tensor counts).
        norms: name -> the L2 norm of each tensor's LOCAL shard (``torch._foreach_norm`` of the local tensors), merged
            as the whole tensors' norms (e.g. ``||w_t - w_{t-1}||`` of a weight snapshot kept per shard).
        count_nonfinite: add a ``nonfinite`` column (NaN/Inf element count).
        device: where to build the table when there is no tensor.

    Returns:
        As :func:`merge_table`: ``[tensors]`` device columns, the same on every process.
    """
    infos = [shard_info(t, rank) for t in tensors]
    wanted = [*stats, "nonfinite"] if count_nonfinite else list(stats)
    local = local_table(infos, wanted, norms=norms, count_nonfinite=count_nonfinite, device=device)
    gathered = gather(local)
    gathered = gathered.reshape(-1, local.numel()) if local.numel() else local.reshape(1, 0)
    return merge_table(gathered, infos, wanted, norm_names=list(norms or {}))


_T = TypeVar("_T")


def init_sharded_(module: nn.Module, init: Callable[[nn.Module], _T]) -> _T:
    """Run ``init(module)`` on whole-shape plain parameters, then keep each process's shard of the result.

    Every ``DTensor`` parameter of ``module`` is replaced, for the duration of ``init``, by a plain parameter of its
    global shape, dtype and device, filled with NaN (tied parameters by one tensor); ``init`` writes those (e.g.
    :func:`lightning_init.init_module` with a ``seed``: the same draws as on the unsharded module); then each
    process copies its slice (``distribute_tensor(full, mesh, placements, src_data_rank=None)``: no communication)
    into the ``DTensor``'s local shard, and the ``DTensor`` parameters are put back, also when ``init`` raises. A
    parameter ``init`` did not write (still all NaN: a ``skip`` rule, ``only_rules``) keeps its values; the
    current values are never gathered, so ``init`` must not read a parameter before writing it.

    Peak memory: one whole-shape copy of every sharded parameter per process, for the duration of ``init``. If
    ``init`` runs the module (a data-flow trace, a probe forward), FSDP2's forward hooks must be paused meanwhile
    (``WeightInit`` does, with ``lightning_init.callbacks._compat.suspended_fsdp_hooks``): they would put the sharded
    parameters back mid-way.

    Args:
        module: a module whose parameters are (partly) ``DTensor``s; plain parameters are passed through untouched.
        init: writes the parameters of ``module`` in place and returns anything (e.g. an ``InitReport``).

    Returns:
        What ``init`` returned.
    """
    from torch.distributed.tensor import distribute_tensor

    slots: list[tuple[nn.Module, str, nn.Parameter]] = []
    full: dict[int, nn.Parameter] = {}
    for mod in module.modules():
        for name, p in list(mod.named_parameters(recurse=False, remove_duplicate=False)):
            if not is_sharded(p):
                continue
            if id(p) not in full:
                local = p.to_local()  # type: ignore[attr-defined]
                plain = torch.full(p.shape, math.nan, dtype=p.dtype, device=local.device)
                full[id(p)] = nn.Parameter(plain, requires_grad=p.requires_grad)
            slots.append((mod, name, p))
    originals = {id(p): (name, p) for mod, name, p in slots}
    try:
        for mod, name, p in slots:
            setattr(mod, name, full[id(p)])
        result = init(module)
        with torch.no_grad():
            for key, (name, p) in originals.items():
                unset = full[key].isnan()
                if bool(unset.all()):
                    continue  # not initialized: keeps its values
                if bool(unset.any()):
                    raise RuntimeError(
                        f"The initializer wrote only part of sharded parameter `{name}` {tuple(p.shape)} (or wrote "
                        "NaN): a sharded parameter is initialized whole or not at all."
                    )
                shard = distribute_tensor(full[key].detach(), p.device_mesh, p.placements, src_data_rank=None)  # type: ignore[attr-defined]
                p.to_local().copy_(shard.to_local())  # type: ignore[attr-defined]
    finally:
        for mod, name, p in slots:
            setattr(mod, name, p)
    return result
