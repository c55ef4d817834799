"""Layer-sequential unit-variance (LSUV) initialization on a real batch.

Mishkin & Matas 2016, "All you need is a good init": orthogonal pre-initialization, then, layer by layer in the order
the forward pass executes them, divide each layer's weight by the standard deviation of its output on a batch until that
output's variance is 1 within a tolerance. Biases are set to zero. The function here is pure torch (no Lightning):
``WeightInit(scheme="lsuv")`` calls it with a forward that knows the LightningModule.

Side effects, exactly: the weights and biases of the handled layers change, and nothing else. Every submodule's
``training`` flag, ``requires_grad`` flags, buffers (the passes run in eval mode, so BatchNorm statistics are not
updated), torch's global CPU and CUDA RNG states (so a DataLoader that shuffles from the global RNG keeps its order),
and the module's hooks are as they were, also when the forward raises.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import ParametrizationList as _ParametrizationList
from torch.utils.hooks import RemovableHandle

from lightning_init.schemes import orthogonal_

#: Module types LSUV rescales (subclasses included): their output is linear in ``weight`` once the bias is zero.
LSUV_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

__all__ = ["LSUV_LAYER_TYPES", "LSUVLayer", "LSUVReport", "LSUVSkipped", "check_lsuv_args", "lsuv_"]


@dataclass(frozen=True)
class LSUVLayer:
    """What LSUV did to one layer.

    Attributes:
        name: Qualified module name (``""`` is the root module).
        kind: Module class name.
        iterations: Number of rescalings applied to the weight.
        initial_variance: Output variance on the batch after the orthogonal pre-init (and zero bias), before any
            rescaling; ``nan`` when it could not be measured.
        final_variance: Output variance on the batch after the last rescaling.
        converged: ``|final_variance - 1| <= tol``.
        reason: Why the layer did not converge (empty when it did).
    """

    name: str
    kind: str
    iterations: int
    initial_variance: float
    final_variance: float
    converged: bool
    reason: str = ""


@dataclass(frozen=True)
class LSUVSkipped:
    """A module with parameters that LSUV left untouched, and why.

    Attributes:
        name: Qualified module name.
        kind: Module class name.
        reason: Why LSUV did not rescale it (the caller initializes it with its base scheme).
    """

    name: str
    kind: str
    reason: str


@dataclass(frozen=True)
class LSUVReport:
    """Result of :func:`lsuv_`: rescaled layers in forward execution order, then skipped modules.

    Attributes:
        layers: One record per rescaled layer, in the order the forward pass first executed them.
        skipped: Modules with parameters that were not rescaled, in ``named_modules`` order.
        tol: The tolerance used.
        max_iters: The iteration limit used.
    """

    layers: tuple[LSUVLayer, ...]
    skipped: tuple[LSUVSkipped, ...]
    tol: float
    max_iters: int

    @property
    def converged(self) -> bool:
        """Whether every rescaled layer ended within ``tol`` of unit variance."""
        return all(layer.converged for layer in self.layers)

    def to_markdown(self) -> str:
        """Render the report as Markdown tables (rescaled layers, then skipped modules)."""
        lines = [
            f"LSUV (tol={self.tol:g}, max_iters={self.max_iters}): "
            f"{sum(layer.converged for layer in self.layers)}/{len(self.layers)} layers converged",
            "",
            "| layer | type | iterations | initial variance | final variance | converged | reason |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.layers:
            lines.append(
                f"| {_display(r.name)} | {r.kind} | {r.iterations} | {r.initial_variance:.4g} | "
                f"{r.final_variance:.4g} | {'yes' if r.converged else 'no'} | {r.reason} |"
            )
        if self.skipped:
            lines += ["", "| skipped module | type | reason |", "|---|---|---|"]
            lines += [f"| {_display(s.name)} | {s.kind} | {s.reason} |" for s in self.skipped]
        return "\n".join(lines)


def lsuv_(
    module: nn.Module,
    batch: Any,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    tol: float = 0.1,
    max_iters: int = 10,
    generator: torch.Generator | None = None,
    orthogonal_preinit: bool = True,
    layers: Sequence[str] | None = None,
) -> LSUVReport:
    """Initialize ``module`` in place with LSUV on ``batch`` and report per-layer iterations and variances.

    Steps: (1) one forward pass records the order in which layers execute (forward hooks); (2) each handled layer that
    ran gets an orthogonal weight (QR of a Gaussian matrix with sign correction, the weight flattened to
    ``(out, -1)``, drawn from ``generator``) and a zero bias; (3) in execution order, the layer's output variance over
    all elements of its output on ``batch`` is measured and the weight divided by its square root until
    ``|var - 1| <= tol`` or ``max_iters`` rescalings. With a zero bias the output is linear in the weight, so one
    rescaling usually suffices; a layer called several times per forward (shared weights) is measured over all its
    calls pooled, and may need more. Each measurement stops the forward right after the layer's last call.

    Handled: ``nn.Linear`` and ``nn.Conv1d/2d/3d`` (and subclasses) whose ``weight`` is a plain parameter. Everything
    else with parameters (normalization, embeddings, RNNs, transposed convs, reparametrized weights, layers the
    forward never calls, layers not in ``layers``) is left untouched and listed in ``report.skipped`` with the reason.
    A layer whose output variance is zero or not finite (zero output, dead or NaN input), or whose rescaled weight
    would not be finite, keeps its weight and is reported with ``converged=False`` and the reason.

    Mode: the passes run with every submodule in eval mode (dropout off, BatchNorm uses and does not update its
    running statistics, so the result is deterministic and draws no random numbers); each submodule's ``training``
    flag is restored exactly afterwards. Everything runs under ``torch.no_grad()`` and inside ``torch.random.fork_rng``,
    so even a ``forward`` that draws random numbers leaves torch's global RNG state as it was. Hooks added are removed
    also on exceptions. ``batch`` is used as given: move it to the module's device first.

    Args:
        module: The model to initialize in place.
        batch: A batch of real inputs, e.g. the first batch of the training dataloader.
        forward: ``forward(module, batch)`` runs the model on the batch. Default: ``module(batch)`` for a tensor,
            ``module(batch[0])`` for a tuple/list (the ``(x, y)`` convention of LightningModule batches),
            ``module(batch["x"])`` for a mapping with an ``"x"`` key; anything else needs ``forward``.
        tol: Tolerance on the output variance, ``|var - 1| <= tol``; in ``(0, 1)``.
        max_iters: Maximum number of rescalings per layer; ``>= 1``.
        generator: A CPU generator, the source of randomness for the orthogonal pre-init (the same sampler as
            ``WeightInit(scheme="orthogonal")``: :func:`lightning_init.schemes.orthogonal_`); when ``None`` a private
            generator is seeded nondeterministically. torch's global RNG is never used.
        orthogonal_preinit: Replace the handled layers' weights with orthogonal ones first (the paper's method); when
            ``False`` the current weights are only rescaled.
        layers: Qualified names of the layers to rescale (default: every handled layer); the others are untouched.

    Returns:
        The :class:`LSUVReport`.

    Raises:
        ValueError: On an out-of-range ``tol``/``max_iters``, a name in ``layers`` that is not a handled layer of
            ``module``, or a ``batch`` the default forward cannot use.

    Example::

        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
        report = lsuv_(model, torch.randn(64, 8), generator=torch.Generator().manual_seed(0))
        print(report.to_markdown())
    """
    check_lsuv_args(tol, max_iters)
    if forward is None:
        _check_default_batch(batch)
    run_forward = forward if forward is not None else default_forward
    named = dict(module.named_modules(remove_duplicate=True))
    selected = _select(named, layers)

    skipped: dict[str, str] = {}
    for name, m in named.items():
        if not isinstance(m, LSUV_LAYER_TYPES):
            # a ParametrizationList holds the parametrized layer's tensors; the layer itself is reported
            if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, _ParametrizationList):
                skipped[name] = f"{type(m).__name__} is not rescaled by LSUV (handled: Linear, Conv1d/2d/3d)"
        elif not _has_plain_weight(m):
            skipped[name] = "weight is reparametrized (parametrize / weight_norm)"
        elif name not in selected:
            skipped[name] = "not in `layers`"

    records: list[LSUVLayer] = []
    with isolated(module), torch.no_grad():
        calls = _execution_order(module, batch, run_forward, [named[n] for n in selected if n not in skipped])
        order = [name for name, _ in sorted(((n, c) for n, c in calls.items()), key=lambda nc: nc[1][0])]
        for name in selected:
            if name not in skipped and name not in calls:
                skipped[name] = "not called during the forward pass"
        if orthogonal_preinit:
            gen = generator if generator is not None else _private_generator()
            for name in order:
                orthogonal_(_weight(named[name]), 1.0, gen)
        for name in order:
            bias = getattr(named[name], "bias", None)
            if isinstance(bias, Tensor):
                bias.zero_()
        for name in order:
            records.append(_rescale(module, batch, run_forward, name, named[name], calls[name][1], tol, max_iters))

    skipped_records = tuple(LSUVSkipped(n, type(named[n]).__name__, skipped[n]) for n in named if n in skipped)
    return LSUVReport(layers=tuple(records), skipped=skipped_records, tol=float(tol), max_iters=max_iters)


def check_lsuv_args(
    tol: float,
    max_iters: int,
    batch: Any = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    *,
    prefix: str = "",
) -> None:
    """Validate :func:`lsuv_`'s arguments without touching any module (callers check before they initialize anything).

    Args:
        tol: Must be a number in ``(0, 1)``.
        max_iters: Must be an integer ``>= 1``.
        batch: Checked against the default forward's conventions when ``forward`` is ``None``; ``None`` skips the
            check (no batch yet).
        forward: The custom forward, if any.
        prefix: Prefix of the argument names in messages (``"lsuv_"`` for ``WeightInit`` / ``init_module``).

    Raises:
        ValueError: Naming the argument and the value received.
    """
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"`{prefix}tol` must be a number in (0, 1), got {tol!r}")
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"`{prefix}max_iters` must be an integer >= 1, got {max_iters!r}")
    if forward is None and batch is not None:
        _check_default_batch(batch)


class _StopForward(Exception):
    """Raised from a forward hook once the measured layer has produced all its outputs: the rest is not needed."""


def default_forward(module: nn.Module, batch: Any) -> Any:
    """The default forward of LSUV and of lazy materialization on a batch.

    ``module(batch)`` for a tensor, ``module(batch[0])`` for a tuple/list, ``module(batch["x"])`` for a mapping.
    """
    if isinstance(batch, Tensor):
        return module(batch)
    if isinstance(batch, (tuple, list)):
        return module(batch[0])
    return module(batch["x"])


def _check_default_batch(batch: Any) -> None:
    if isinstance(batch, Tensor):
        return
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError("`batch` is an empty sequence; pass a tensor, an (x, y) pair, or `forward=`")
        return
    if isinstance(batch, Mapping):
        if "x" not in batch:
            raise ValueError(
                f"`batch` is a mapping without an 'x' key (keys: {sorted(map(str, batch))[:10]}); pass "
                "`forward=lambda module, batch: module(...)` to say how the model consumes it"
            )
        return
    raise ValueError(
        f"`batch` must be a tensor, a tuple/list whose first element is the input, or a mapping with an 'x' key "
        f"when `forward` is not given, got {type(batch).__name__}"
    )


def _select(named: dict[str, nn.Module], layers: Sequence[str] | None) -> list[str]:
    handled = [n for n, m in named.items() if isinstance(m, LSUV_LAYER_TYPES)]
    if layers is None:
        return handled
    if isinstance(layers, str):
        raise ValueError(f"`layers` must be a sequence of qualified module names, got the string {layers!r}")
    for name in layers:
        if name not in named:
            close = difflib.get_close_matches(name, list(named), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; some names: {handled[:5]}"
            raise ValueError(f"`layers` names {name!r}, which is not a submodule of the model{hint}")
        if not isinstance(named[name], LSUV_LAYER_TYPES):
            raise ValueError(
                f"`layers` names {name!r}, a {type(named[name]).__name__}; LSUV rescales Linear and Conv1d/2d/3d only"
            )
    wanted = set(layers)
    return [n for n in handled if n in wanted]


def _has_plain_weight(m: nn.Module) -> bool:
    return isinstance(m._parameters.get("weight"), nn.Parameter)


def _weight(m: nn.Module) -> Tensor:
    w = m._parameters["weight"]
    assert w is not None  # checked by _has_plain_weight
    return w


def _display(name: str) -> str:
    return name or "(root)"


def _private_generator() -> torch.Generator:
    gen = torch.Generator()
    gen.seed()  # nondeterministic seed from std::random_device or time; touches no global state
    return gen


@contextmanager
def isolated(module: nn.Module) -> Iterator[None]:
    """Eval mode on every submodule and a forked global RNG; restores each ``training`` flag exactly on exit."""
    flags = [(m, m.training) for m in module.modules()]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            for m, _ in flags:
                m.training = False  # set the attribute, not .eval(): a custom train() may have side effects
            yield
    finally:
        for m, training in flags:
            m.training = training


def _execution_order(
    module: nn.Module, batch: Any, forward: Callable[[nn.Module, Any], Any], candidates: list[nn.Module]
) -> dict[str, tuple[int, int]]:
    """Run one forward; return ``{name: (index of first call, number of calls)}`` for the candidates that ran."""
    wanted = {id(c) for c in candidates}
    names = {id(m): n for n, m in module.named_modules() if id(m) in wanted}
    seen: dict[str, tuple[int, int]] = {}
    counter = [0]

    def hook(m: nn.Module, args: Any, output: Any) -> None:
        name = names[id(m)]
        first, count = seen.get(name, (counter[0], 0))
        seen[name] = (first, count + 1)
        counter[0] += 1

    handles: list[RemovableHandle] = []
    try:
        handles = [c.register_forward_hook(hook) for c in candidates]
        forward(module, batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def _measure(
    module: nn.Module, batch: Any, forward: Callable[[nn.Module, Any], Any], layer: nn.Module, n_calls: int
) -> float:
    """Variance over all output elements of ``layer`` (all its calls pooled), float64; ``nan`` when it did not run."""
    count, mean, m2 = 0, 0.0, 0.0

    def hook(m: nn.Module, args: Any, output: Any) -> None:
        nonlocal count, mean, m2
        if count_calls[0] < n_calls and isinstance(output, Tensor) and output.numel() > 0:
            var, mu = torch.var_mean(output.detach().double(), correction=0)
            n, v, u = output.numel(), float(var), float(mu)
            total = count + n  # Chan et al. pooled mean / sum of squared deviations
            delta = u - mean
            m2 = m2 + v * n + delta * delta * count * n / total
            mean = mean + delta * n / total
            count = total
        count_calls[0] += 1
        if count_calls[0] >= n_calls:
            raise _StopForward

    count_calls = [0]
    handle = layer.register_forward_hook(hook)
    try:
        forward(module, batch)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return m2 / count if count else math.nan


def _rescale(
    module: nn.Module,
    batch: Any,
    forward: Callable[[nn.Module, Any], Any],
    name: str,
    layer: nn.Module,
    n_calls: int,
    tol: float,
    max_iters: int,
) -> LSUVLayer:
    weight = _weight(layer)
    var = initial = _measure(module, batch, forward, layer, n_calls)
    iterations = 0
    reason = ""
    while True:
        if not math.isfinite(var):
            reason = "output variance is not finite (NaN/inf in the input or an earlier layer)"
            break
        if var <= 0.0:
            reason = "output variance is zero (zero or dead input); weight left as it was"
            break
        if abs(var - 1.0) <= tol:
            break
        if iterations >= max_iters:
            reason = f"variance {var:.4g} not within {tol:g} of 1 after max_iters={max_iters} rescalings"
            break
        scaled = (weight.double() / math.sqrt(var)).to(weight.dtype)
        if not bool(torch.isfinite(scaled).all()):
            reason = f"output variance {var:.3g} too small to rescale without overflow; weight left as it was"
            break
        weight.copy_(scaled)
        iterations += 1
        var = _measure(module, batch, forward, layer, n_calls)
    converged = math.isfinite(var) and abs(var - 1.0) <= tol
    return LSUVLayer(name, type(layer).__name__, iterations, initial, var, converged, "" if converged else reason)
