"""Forward-hook handling: a container of removable handles and the activation recorder (pure torch).

Never imports Lightning. The monitors decide *when* to record; this module makes sure hooks keep only small
reductions (never the activation itself) and are always removable, and tells where hooks cannot fire
(:func:`compiled_regions`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_init.activations import BOUNDED, nonlinearity_of
from lightning_init.callbacks._compat import compiled_by_lightning, optimized_module_type
from lightning_init.reduce import UnitMeans
from lightning_init.stats import (
    HISTOGRAM_BINS,
    activation_row,
    activation_row_and_unit_means,
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


def compiled_regions(module: nn.Module) -> list[str]:
    """Qualified names of the submodules of ``module`` that run compiled by ``torch.compile`` (``""``: all of it).

    A forward hook registered after the first compiled call of a module never fires inside the compiled code: Dynamo
    does not guard on hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``, on by default), so the graph it
    traced without them is reused. Hooks registered for one step only (as the activation monitor does) are therefore
    useless inside these regions. Found: every ``torch.compile(submodule)`` wrapper (``OptimizedModule``), and the
    whole ``module`` when its own ``forward`` was compiled, which is how Lightning runs ``trainer.fit(torch.compile(
    model))`` (it unwraps the model and marks it, see :func:`lightning_init.callbacks._compat.compiled_by_lightning`).
    """
    regions = [""] if compiled_by_lightning(module) else []
    optimized = optimized_module_type()  # None until the first torch.compile: nothing compiled
    if optimized is not None:
        regions += [name for name, m in module.named_modules() if name and isinstance(m, optimized)]
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


class ActivationRecorder:
    """Record small reductions of module outputs between :meth:`start` and :meth:`stop`.

    Each call of a watched module appends one float32 row of :data:`lightning_init.stats.ACTIVATION_ROW` (computed on
    the output's device, no host transfer) and its element count; with ``histograms=True`` the first call of each
    module on the step also keeps an on-device histogram of its output. The output tensor itself is never kept.
    A module called several times (shared module, several micro-batches) is reported over all its calls. Rows are
    kept in the order modules first ran (forward execution order, input -> output).

    For the signal std of the whole step, the unit means of each call position (the ``k``-th call of a module in a
    micro-batch) are merged over the micro-batches as they come (:class:`lightning_init.reduce.UnitMeans`, on the
    device; :meth:`next_batch` starts a micro-batch); a module whose call position changes shape between
    micro-batches is ``mixed`` (its signal std stays pooled per call).

    ``enabled`` can be set to ``False`` to ignore calls (e.g. during a validation run in the middle of a step).
    """

    def __init__(self) -> None:
        self.hooks = HookSet()
        self.enabled = True
        self.rows: dict[str, list[Tensor]] = {}
        self.numels: dict[str, list[int]] = {}
        self.histograms: dict[str, dict[str, Tensor]] = {}
        self.bounded: dict[str, bool] = {}
        self._histograms = False
        #: Module name -> per-call :func:`lightning_init.stats.headroom_row` of outputs in a 16-bit format.
        self.headroom: dict[str, list[Tensor]] = {}
        self._precision: str | None = None
        #: Module name -> per call position moments merged over the micro-batches; ``mixed``: shapes changed.
        self.unit_means: dict[str, list[UnitMeans]] = {}
        self.mixed: set[str] = set()
        self._calls: dict[str, int] = {}

    @property
    def active(self) -> bool:
        """Whether hooks are registered."""
        return len(self.hooks) > 0

    def next_batch(self) -> None:
        """The next micro-batch of the step begins: call positions count from the first again."""
        self._calls = {}

    def start(
        self, modules: Iterable[tuple[str, nn.Module]], *, histograms: bool = False, precision: str | None = None
    ) -> None:
        """Register a forward hook on each ``(name, module)``; clears previous records.

        ``precision`` (Lightning's flag): outputs in a 16-bit format, or headed for one under mixed precision
        (:func:`lightning_init.stats.headroom_format`), also get a headroom row per call.
        """
        self.stop()
        self._calls = {}
        self._histograms = histograms
        self._precision = precision
        self.enabled = True
        for name, module in modules:
            nl = nonlinearity_of(module)
            bounds = BOUNDED.get(nl) if nl is not None else None
            self.bounded[name] = bounds is not None
            self.hooks.add(module.register_forward_hook(self._hook(name, bounds)))

    def _hook(self, name: str, bounds: tuple[float, float] | None) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.enabled:
                return
            out = first_float_tensor(output)
            if out is None:
                return
            row, unit_means = activation_row_and_unit_means(out, bounds)
            self.rows.setdefault(name, []).append(row)
            self.numels.setdefault(name, []).append(out.numel())
            self._add_unit_means(name, out, unit_means, row)
            fmt = headroom_format(out.dtype, self._precision)
            if fmt is not None:
                self.headroom.setdefault(name, []).append(headroom_row(out, fmt))
            if self._histograms and name not in self.histograms:
                self.histograms[name] = histogram_columns([out], HISTOGRAM_BINS)

        return hook

    def _add_unit_means(self, name: str, out: Tensor, unit_means: Tensor, row: Tensor) -> None:
        k = self._calls.get(name, 0)
        self._calls[name] = k + 1
        if name in self.mixed:
            return
        if out.numel() == 0:
            self.mixed.add(name)
            return
        shape = tuple(out.shape[1:]) if out.ndim else ()
        call = UnitMeans.of_call(out.shape[0] if out.ndim else 1, shape, unit_means, row)
        states = self.unit_means.setdefault(name, [])
        if k == len(states):
            states.append(call)
        elif not states[k].add(call):
            self.mixed.add(name)

    def stop(self) -> None:
        """Remove the hooks (records stay until :meth:`clear`)."""
        self.hooks.remove()

    def clear(self) -> None:
        """Remove the hooks and drop every record."""
        self.stop()
        self.rows = {}
        self.numels = {}
        self.histograms = {}
        self.bounded = {}
        self.headroom = {}
        self.unit_means = {}
        self.mixed = set()
        self._calls = {}


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
