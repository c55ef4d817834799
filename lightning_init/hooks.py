"""Forward-hook handling: a container of removable handles and the activation recorder (pure torch).

Never imports Lightning. The monitors decide *when* to record; this module makes sure hooks keep only small
reductions (never the activation itself: a small output is copied into a bounded staging buffer and reduced at the
step's end, see :class:`ActivationRecorder`) and are always removable, and tells where hooks cannot fire
(:func:`compiled_regions`).

Why one forward hook per watched module and not one global hook (``register_module_forward_hook``, ~100x cheaper to
register for 1,000 modules): Dynamo traces ``Module.__call__`` (hooks included) whenever a global forward hook is
registered, so a global hook would be traced into the graphs of compiled submodules; per-module hooks on uncompiled
modules only never reach compiled code (:func:`compiled_regions`). Registering and removing 1,000 hooks costs ~10 ms.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_init.activations import BOUNDED, nonlinearity_of
from lightning_init.callbacks._compat import compiled_by_lightning, optimized_module_type
from lightning_init.reduce import UnitMeans, call_moments
from lightning_init.stats import (
    HISTOGRAM_BINS,
    activation_row,
    activation_row_and_unit_means,
    activation_rows_and_unit_means,
    first_float_tensor,
    headroom_format,
    headroom_row,
    histogram_columns,
)

__all__ = [
    "COMPILED_PREFIX",
    "ActivationRecorder",
    "HookSet",
    "OutputGradRecorder",
    "compiled_regions",
    "original_name",
]

#: The attribute through which ``torch.compile``'s wrapper (``OptimizedModule``) holds the module it compiled; it shows
#: up in qualified names (``net._orig_mod.0.weight``).
COMPILED_PREFIX = "_orig_mod"


def compiled_regions(module: nn.Module, named: Sequence[tuple[str, nn.Module]] | None = None) -> list[str]:
    """Qualified names of the submodules of ``module`` that run compiled by ``torch.compile`` (``""``: all of it).

    A forward hook registered after the first compiled call of a module never fires inside the compiled code: Dynamo
    does not guard on hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``, on by default), so the graph it
    traced without them is reused. Hooks registered for one step only (as the activation monitor does) are therefore
    useless inside these regions. Found: every ``torch.compile(submodule)`` wrapper (``OptimizedModule``), and the
    whole ``module`` when its own ``forward`` was compiled, which is how Lightning runs ``trainer.fit(torch.compile(
    model))`` (it unwraps the model and marks it, see :func:`lightning_init.callbacks._compat.compiled_by_lightning`).
    ``named``: ``module.named_modules()`` when the caller has it already.
    """
    regions = [""] if compiled_by_lightning(module) else []
    optimized = optimized_module_type()  # None until the first torch.compile: nothing compiled
    if optimized is not None:
        walk = named if named is not None else module.named_modules()
        regions += [name for name, m in walk if name and isinstance(m, optimized)]
    return regions


def original_name(name: str) -> str:
    """``name`` as in the uncompiled module: ``net._orig_mod.0.weight`` -> ``net.0.weight`` (other names unchanged)."""
    parts = [part for part in name.split(".") if part != COMPILED_PREFIX]
    return ".".join(parts)


class HookSet:
    """A container of ``RemovableHandle`` with an idempotent :meth:`remove`; usable as a context manager.

    Example::

        with HookSet() as hooks:
            hooks.add(layer.register_forward_hook(fn))
            model(x)
        # every hook is gone here, also after an exception
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> None:
        """Keep ``handle`` for removal."""
        self._handles.append(handle)

    def remove(self) -> None:
        """Remove every hook (safe to call any number of times)."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


#: Outputs with at most this many elements are *staged*: copied into a buffer of their shape and reduced together at
#: the end of the step (:func:`lightning_init.stats.activation_rows`: a fixed number of tensor ops per shape), instead
#: of ~25 small tensor ops per call, whose dispatch costs more than the arithmetic on such tensors. 16 Ki elements
#: (64 KiB in float32): above it, the arithmetic dominates and each call is reduced in its hook.
STAGE_NUMEL = 1 << 14
#: The most staged bytes per device per step (64 MiB); calls past it are reduced in their hook.
STAGE_BYTES = 1 << 26

#: Saturation bounds of each module seen (weakly held: a module's kind does not change while it lives), so a logging
#: step does not re-classify every watched module.
_BOUNDS: weakref.WeakKeyDictionary[nn.Module, tuple[float, float] | None] = weakref.WeakKeyDictionary()


def _bounds_of(module: nn.Module) -> tuple[float, float] | None:
    try:
        return _BOUNDS[module]
    except (KeyError, TypeError):
        nl = nonlinearity_of(module)
        bounds = BOUNDED.get(nl) if nl is not None else None
        with contextlib.suppress(TypeError):
            _BOUNDS[module] = bounds
        return bounds


class _Stage:
    """Staged outputs of one (shape, dtype, device, bounds): a growing ``[capacity, *shape]`` buffer, kept between
    logging steps (refilled in place; released by :meth:`ActivationRecorder.clear`).
    """  # noqa: D205

    __slots__ = ("bounds", "buffer", "count", "reduced", "slots")

    def __init__(self, like: Tensor, bounds: tuple[float, float] | None, capacity: int) -> None:
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        self.bounds = bounds
        self.buffer = torch.empty(capacity, *like.shape, dtype=dtype, device=like.device)
        self.slots = list(self.buffer.unbind(0))
        self.count = 0
        self.reduced: tuple[Tensor, Tensor] | None = None

    def put(self, x: Tensor) -> int:
        """Copy ``x`` into the next slot (growing the buffer by doubling); returns the slot."""
        if self.count == len(self.slots):
            grown = torch.empty(2 * self.count, *self.buffer.shape[1:], dtype=self.buffer.dtype, device=x.device)
            grown[: self.count] = self.buffer
            self.buffer = grown
            self.slots = list(grown.unbind(0))
        self.slots[self.count].copy_(x)
        self.count += 1
        return self.count - 1

    def reduce(self) -> tuple[Tensor, Tensor]:
        """``[count, len(ACTIVATION_ROW)]`` rows and ``[count, units]`` unit means of the staged outputs (cached)."""
        if self.reduced is None or self.reduced[0].shape[0] != self.count:
            self.reduced = activation_rows_and_unit_means(self.buffer[: self.count], self.bounds)
        return self.reduced


class ActivationRecorder:
    """Record small reductions of module outputs between :meth:`start` and :meth:`stop`.

    Each call of a watched module contributes one float32 row of :data:`lightning_init.stats.ACTIVATION_ROW`
    (computed on the output's device, no host transfer) and its element count. A small output (at most
    :data:`STAGE_NUMEL` elements) is copied into a buffer of its shape (one op per call) and the rows of all the
    step's outputs of that shape are computed together at the step's end (:func:`lightning_init.stats.activation_rows`:
    a fixed number of ops per shape); a larger one is reduced in its hook (:func:`lightning_init.stats.activation_row`)
    and the tensor is not kept. Staged memory is bounded (:data:`STAGE_BYTES` per device) and reused across logging
    steps; :meth:`clear` releases it. With ``histograms=True`` the first call of each module on the step also keeps
    an on-device histogram of its output. A module called several times (shared module, several micro-batches) is
    reported over all its calls. :attr:`rows` lists them in the order modules first ran (forward execution order,
    input -> output); :meth:`moments` merges them (:func:`lightning_init.reduce.call_moments`).

    For the signal std of the whole step, the unit means of each call position (the ``k``-th call of a module in a
    micro-batch) are merged over the micro-batches (:class:`lightning_init.reduce.UnitMeans`, on the device;
    :meth:`next_batch` starts a micro-batch), computed from the records when asked for (:attr:`unit_means`); a module
    whose call position changes shape between micro-batches is in :attr:`mixed` (its signal std stays pooled per call).

    ``enabled`` can be set to ``False`` to ignore calls (e.g. during a validation run in the middle of a step).
    """

    def __init__(self) -> None:
        self.hooks = HookSet()
        self.enabled = True
        #: The watched modules' names, in :meth:`start` order (the moment table's rows).
        self.names: list[str] = []
        #: Module index (into ``names``) and element count of each recorded call, in call order.
        self.calls: list[int] = []
        self.call_numels: list[int] = []
        self.histograms: dict[str, dict[str, Tensor]] = {}
        self.bounded: dict[str, bool] = {}
        self._histograms = False
        #: Module name -> per-call :func:`lightning_init.stats.headroom_row` of outputs in a 16-bit format.
        self.headroom: dict[str, list[Tensor]] = {}
        self._precision: str | None = None
        #: Where each call's row is: ``(stage, slot)`` for a staged output, ``(None, i)`` for ``_direct[i]``.
        self._where: list[tuple[_Stage | None, int]] = []
        self._direct: list[Tensor] = []
        self._stages: dict[tuple[Any, ...], _Stage] = {}
        self._staged_bytes: dict[torch.device, int] = {}
        #: Per call: its position among its module's calls in the micro-batch, and its output's shape.
        self.call_positions: list[int] = []
        self._shapes: list[torch.Size] = []
        self._direct_means: list[Tensor] = []
        self._counts: dict[int, int] = {}
        #: Micro-batches recorded this step (:meth:`next_batch`).
        self.micro_batches = 1
        self._signal: tuple[int, dict[str, list[UnitMeans]], set[str]] | None = None
        #: The modules of the last :meth:`start` and their saturation bounds (strongly held until :meth:`clear`).
        self._bounds_for: tuple[list[nn.Module], list[tuple[float, float] | None]] | None = None

    def next_batch(self) -> None:
        """The next micro-batch of the step begins: call positions count from the first again."""
        self._counts = {}
        self.micro_batches += 1

    @property
    def active(self) -> bool:
        """Whether hooks are registered."""
        return len(self.hooks) > 0

    def start(
        self, modules: Iterable[tuple[str, nn.Module]], *, histograms: bool = False, precision: str | None = None
    ) -> None:
        """Register a forward hook on each ``(name, module)``; clears previous records (keeps the staging buffers).

        ``precision`` (Lightning's flag): outputs in a 16-bit format, or headed for one under mixed precision
        (:func:`lightning_init.stats.headroom_format`), also get a headroom row per call.
        """
        self.reset()
        self._histograms = histograms
        self._precision = precision
        self.enabled = True
        watched = list(modules)
        key = [m for _, m in watched]
        if (
            self._bounds_for is None
            or len(self._bounds_for[0]) != len(key)
            or any(a is not b for a, b in zip(self._bounds_for[0], key, strict=True))
        ):  # the same modules as the last logging step (the usual case): their bounds are known
            self._bounds_for = (key, [_bounds_of(m) for m in key])
        for index, ((name, module), bounds) in enumerate(zip(watched, self._bounds_for[1], strict=True)):
            self.names.append(name)
            self.bounded[name] = bounds is not None
            self.hooks.add(module.register_forward_hook(self._hook(index, name, bounds)))

    def _hook(self, index: int, name: str, bounds: tuple[float, float] | None) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.enabled:
                return
            out = first_float_tensor(output)
            if out is None:
                return
            out = out.detach()
            n = out.numel()
            if 0 < n <= STAGE_NUMEL and out.ndim >= 1:
                self._where.append(self._stage(out, bounds))
            else:
                self._where.append(self._reduce_now(out, bounds))
            self.calls.append(index)
            self.call_numels.append(n)
            k = self._counts.get(index, 0)
            self._counts[index] = k + 1
            self.call_positions.append(k)
            self._shapes.append(out.shape)
            fmt = headroom_format(out.dtype, self._precision)
            if fmt is not None:
                self.headroom.setdefault(name, []).append(headroom_row(out, fmt))
            if self._histograms and name not in self.histograms:
                self.histograms[name] = histogram_columns([out], HISTOGRAM_BINS)

        return hook

    def _stage(self, out: Tensor, bounds: tuple[float, float] | None) -> tuple[_Stage | None, int]:
        key = (out.shape, out.dtype, out.device, bounds)
        stage = self._stages.get(key)
        if stage is None or stage.count == len(stage.slots):
            size = out.numel() * (8 if out.dtype == torch.float64 else 4)
            grow = stage.count if stage is not None else 4
            used = self._staged_bytes.get(out.device, 0)
            if used + grow * size > STAGE_BYTES:  # past the bound: reduced now, not kept
                return self._reduce_now(out, bounds)
            self._staged_bytes[out.device] = used + grow * size
            if stage is None:
                stage = self._stages[key] = _Stage(out, bounds, grow)
        return stage, stage.put(out)

    def _reduce_now(self, out: Tensor, bounds: tuple[float, float] | None) -> tuple[None, int]:
        row, means = activation_row_and_unit_means(out, bounds)
        self._direct.append(row)
        self._direct_means.append(means)
        return None, len(self._direct) - 1

    def call_rows(self) -> Tensor | None:
        """``[calls, len(ACTIVATION_ROW)]``: every recorded call's row, in call order (``None``: no call)."""
        if not self._where:
            return None
        staged = {id(s): (s, s.reduce()[0]) for s in self._stages.values() if s.count}
        parts = [rows for _, rows in staged.values()]
        offsets: dict[int, int] = {}
        at = 0
        for key, (stage, _) in staged.items():
            offsets[key] = at
            at += stage.count
        if self._direct:
            parts.append(torch.stack(self._direct).to(parts[0].device if parts else self._direct[0].device))
        device = parts[0].device
        table = torch.cat([p.to(device) for p in parts]) if len(parts) > 1 else parts[0]
        position = [offsets[id(s)] + slot if s is not None else at + slot for s, slot in self._where]
        if position == list(range(len(position))):
            return table
        return table[torch.tensor(position, device=device)]

    def moments(self, device: torch.device | None = None) -> Tensor:
        """The merged :data:`lightning_init.reduce.MOMENT_COLUMNS` table, one row per watched module (``names``)."""
        rows = self.call_rows()
        calls = rows if rows is not None else torch.zeros(0, 8)
        return call_moments(calls, self.calls, self.call_numels, len(self.names), device=device)

    def _signal_states(self) -> tuple[dict[str, list[UnitMeans]], set[str]]:
        """Per module, one :class:`UnitMeans` per call position merged over the micro-batches; the ``mixed`` ones."""
        if self._signal is not None and self._signal[0] == len(self.calls):
            return self._signal[1], self._signal[2]
        states: dict[str, list[UnitMeans]] = {}
        mixed: set[str] = set()
        table = self.call_rows()
        for c, (m, k, numel) in enumerate(zip(self.calls, self.call_positions, self.call_numels, strict=True)):
            name = self.names[m]
            if name in mixed:
                continue
            if numel == 0:
                mixed.add(name)
                continue
            stage, slot = self._where[c]
            means = stage.reduce()[1][slot] if stage is not None else self._direct_means[slot]
            shape = self._shapes[c]
            assert table is not None
            call = UnitMeans.of_call(shape[0] if len(shape) else 1, tuple(shape[1:]), means, table[c])
            own = states.setdefault(name, [])
            if k == len(own):
                own.append(call)
            elif not own[k].add(call):
                mixed.add(name)
        self._signal = (len(self.calls), states, mixed)
        return states, mixed

    @property
    def unit_means(self) -> dict[str, list[UnitMeans]]:
        """Module name -> one :class:`~lightning_init.reduce.UnitMeans` per call position, over the micro-batches."""
        return self._signal_states()[0]

    @property
    def mixed(self) -> set[str]:
        """Modules whose call positions changed shape between micro-batches (their signal std stays pooled)."""
        return self._signal_states()[1]

    @property
    def rows(self) -> dict[str, list[Tensor]]:
        """Module name -> its recorded rows, in the order modules first ran (for inspection; computes staged rows)."""
        table = self.call_rows()
        out: dict[str, list[Tensor]] = {}
        if table is None:
            return out
        for row, m in zip(table.unbind(0), self.calls, strict=True):
            out.setdefault(self.names[m], []).append(row)
        return out

    @property
    def numels(self) -> dict[str, list[int]]:
        """Module name -> the element count of each of its calls."""
        out: dict[str, list[int]] = {}
        for m, n in zip(self.calls, self.call_numels, strict=True):
            out.setdefault(self.names[m], []).append(n)
        return out

    def stop(self) -> None:
        """Remove the hooks (records stay until :meth:`reset` / :meth:`clear`)."""
        self.hooks.remove()

    def reset(self) -> None:
        """Remove the hooks and drop the step's records; the staging buffers stay for the next logging step."""
        self.stop()
        self.names = []
        self.calls = []
        self.call_numels = []
        self.histograms = {}
        self.bounded = {}
        self.headroom = {}
        self._where = []
        self._direct = []
        self._direct_means = []
        self.call_positions = []
        self._shapes = []
        self._counts = {}
        self.micro_batches = 1
        self._signal = None
        for stage in self._stages.values():
            stage.count = 0
            stage.reduced = None

    def clear(self) -> None:
        """Remove the hooks, drop every record and release the staging buffers."""
        self.reset()
        self._stages = {}
        self._staged_bytes = {}
        self._bounds_for = None


class OutputGradRecorder:
    """Record small reductions of ``dL/d(output)`` of watched modules between :meth:`start` and :meth:`stop`.

    A forward hook on each module attaches a *tensor* hook (``Tensor.register_hook``) to the module's output (the
    first floating-point tensor of a tuple/list/dict output) when that output requires grad; during backward the
    tensor hook receives ``dL/d(output)`` and appends one float32 row of :data:`lightning_init.stats.ACTIVATION_ROW`
    (computed on the gradient's device, no host transfer) and its element count. The gradient is neither kept nor
    changed (the hook returns ``None``), nothing is retained after backward, and the module's deprecated
    ``register_backward_hook`` is never used.

    Why tensor hooks and not ``register_full_backward_hook``: a full backward hook wraps the module's outputs in a
    ``BackwardHookFunction`` view, so an ``inplace=True`` activation that follows the module (``Linear -> ReLU(
    inplace=True)``) raises "a view ... is being modified inplace". A tensor hook registered on the output before
    the in-place op receives the gradient of the output as the module returned it (PyTorch's documented semantics
    for hooks registered before an in-place modification), which is what ``dL/dh`` means. A module called several
    times (shared, several micro-batches) gets one row per call; the rows merge exactly
    (:func:`lightning_init.reduce.local_moments`).

    ``order`` keeps the position of each module's first forward call: the data-flow order (input -> output) that the
    rows are reported in, although backward visits them in reverse.
    """

    def __init__(self) -> None:
        self.hooks = HookSet()
        self.enabled = True
        self.rows: dict[str, list[Tensor]] = {}
        self.numels: dict[str, list[int]] = {}
        self.order: dict[str, int] = {}

    @property
    def active(self) -> bool:
        """Whether forward hooks are registered."""
        return len(self.hooks) > 0

    def start(self, modules: Iterable[tuple[str, nn.Module]]) -> None:
        """Register a forward hook on each ``(name, module)``; clears previous records."""
        self.clear()
        self.enabled = True
        for name, module in modules:
            self.hooks.add(module.register_forward_hook(self._forward_hook(name)))

    def _forward_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.enabled:
                return
            out = first_float_tensor(output)
            if out is None or not out.requires_grad:
                return  # no_grad / inference (validation inside a logging step): no backward to watch
            self.order.setdefault(name, len(self.order))
            out.register_hook(self._tensor_hook(name))

        return hook

    def _tensor_hook(self, name: str) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            self.rows.setdefault(name, []).append(activation_row(grad))
            self.numels.setdefault(name, []).append(grad.numel())

        return hook

    def ordered_rows(self) -> dict[str, list[Tensor]]:
        """The rows in data-flow order (first forward call), not in the backward order they arrived in."""
        return {n: self.rows[n] for n in sorted(self.rows, key=lambda n: self.order.get(n, len(self.order)))}

    def stop(self) -> None:
        """Remove the forward hooks (tensor hooks already attached live and die with their step's graph)."""
        self.hooks.remove()

    def clear(self) -> None:
        """Remove the hooks and drop every record."""
        self.stop()
        self.rows = {}
        self.numels = {}
        self.order = {}
