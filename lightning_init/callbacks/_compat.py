"""Every access to a private Lightning or torch attribute, each with why no public API serves.

One place to look when Lightning or torch changes its internals: each function reads one private attribute, falls back
to a safe answer when it is absent, and says in its docstring which public API would be preferred and why it does not
serve. No Lightning import at module level, so the pure-torch modules (:mod:`lightning_init.hooks`) may use the
torch-only helpers without importing Lightning.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = [
    "amp_state",
    "batches_that_stepped",
    "compiled_by_lightning",
    "event_file_writer",
    "logger_prefix",
    "optimized_module_type",
    "sharded_strategy",
    "suspended_fsdp_hooks",
]


def batches_that_stepped(trainer: "pl.Trainer") -> int:
    """Lightning's logging counter: batches that stepped an optimizer, once per batch whatever the optimizers.

    Private: ``trainer.fit_loop.epoch_loop._batches_that_stepped``. No public attribute exposes it
    (``trainer.global_step`` counts every optimizer's steps, two per batch for a GAN), yet it is the counter
    ``log_every_n_steps`` applies to. Falls back to ``global_step``.
    """
    counter = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", None)
    return counter if isinstance(counter, int) else trainer.global_step


def amp_state(trainer: "pl.Trainer", optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], Tensor] | None:
    """The GradScaler's found-inf flags for ``optimizer``'s current step and its loss scale (device tensors).

    ``None`` without an enabled GradScaler (fp32, bf16) or before ``unscale_``. Lightning's ``MixedPrecision`` plugin
    calls ``scaler.unscale_(optimizer)`` right before ``on_before_optimizer_step``, which records per device whether
    the gradients hold inf/NaN; ``scaler.step`` then skips the update.

    Private: ``scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]`` and ``scaler._scale``. torch's
    public ``get_scale()`` syncs the host (``.item()``) and nothing public exposes the found-inf flags before
    ``scaler.step``; reading the tensors keeps them on the device, to join the monitor's one transfer.
    """
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
        return None
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer))
    found = list((state or {}).get("found_inf_per_device", {}).values())
    scale = getattr(scaler, "_scale", None)
    if not found or not isinstance(scale, Tensor):
        return None
    return found, scale


def sharded_strategy(strategy: object, *, model_parallel: bool = True) -> str | None:
    """The name of ``strategy``'s class when it shards parameters (FSDP, DeepSpeed, ModelParallel), else ``None``.

    FSDPStrategy (FSDP1) and DeepSpeedStrategy flatten parameters into shards; ``model_parallel=False`` leaves out
    ModelParallelStrategy, whose FSDP2 / tensor-parallel parameters are ``DTensor``s (see
    :mod:`lightning_init.sharded`).

    Not a private attribute but the one place that knows which strategies shard: Lightning has no public
    "does this strategy shard parameters" property, so the classes are named. ``getattr`` because DeepSpeed /
    ModelParallel are absent from some Lightning versions.
    """
    from lightning.pytorch import strategies

    names = ("FSDPStrategy", "DeepSpeedStrategy", *(("ModelParallelStrategy",) if model_parallel else ()))
    refused = tuple(cls for cls in (getattr(strategies, n, None) for n in names) if isinstance(cls, type))
    return type(strategy).__name__ if isinstance(strategy, refused) else None


def compiled_by_lightning(module: nn.Module) -> bool:
    """Whether Lightning runs ``module``'s own ``forward`` compiled (``trainer.fit(torch.compile(model))``).

    Private: ``module._compiler_ctx``. Lightning unwraps the ``OptimizedModule`` it is given and marks the
    LightningModule with this attribute (``lightning.pytorch.utilities.compile``); no public API says whether the
    module being fitted was compiled.
    """
    return getattr(module, "_compiler_ctx", None) is not None


def optimized_module_type() -> type | None:
    """``torch.compile``'s wrapper class (``OptimizedModule``), or ``None`` when nothing was ever compiled.

    Private: ``torch._dynamo.eval_frame.OptimizedModule``; torch exports no public name for the wrapper. Read from
    ``sys.modules`` so that asking never imports Dynamo (it is imported by the first ``torch.compile``).
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    optimized = getattr(eval_frame, "OptimizedModule", None)
    return optimized if isinstance(optimized, type) else None


def event_file_writer(writer: Any) -> Any | None:
    """The event-file writer behind a TensorBoard ``SummaryWriter`` (torch or tensorboardX), or ``None``.

    Private: ``writer._get_file_writer()``. ``SummaryWriter`` has no public method that takes a ready ``Summary``
    proto (``add_scalar`` builds and queues one proto per value); handing one proto with every value of a logging step
    to the file writer is what keeps logging one call per step.
    """
    get = getattr(writer, "_get_file_writer", None)
    return get() if callable(get) else None


def logger_prefix(logger: Any) -> str:
    """The prefix a Lightning logger puts before every metric key (``Logger(prefix=...)``), ``""`` if none.

    Private: ``logger._prefix``. Lightning applies it inside ``log_metrics`` (``_add_prefix``) and exposes no public
    getter; writing a built ``Summary`` bypasses ``log_metrics``, so the prefix is applied here the same way.
    """
    prefix = getattr(logger, "_prefix", "")
    return prefix if isinstance(prefix, str) else ""


@contextmanager
def suspended_fsdp_hooks(module: nn.Module) -> Iterator[None]:
    """Run the body with the forward hooks of every FSDP2 module under ``module`` taken away, then put them back.

    Private: ``nn.Module._forward_pre_hooks`` / ``_forward_hooks``. ``fully_shard`` registers its unshard/reshard
    hooks on the module and keeps the handles in its private state; torch has no public way to pause them. While
    ``WeightInit`` initializes whole-shape copies of the sharded parameters
    (:func:`lightning_init.sharded.init_sharded_`), a data-flow trace (``torch.fx`` or a probe forward of
    ``example_input_array``) would otherwise run FSDP's pre-forward hook: an all-gather that puts the sharded
    parameters back mid-init and FSDP's one-time lazy init outside training ("FSDP state has already been lazily
    initialized" at the first real forward).
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        yield
        return
    saved = []
    for m in module.modules():
        if isinstance(m, FSDPModule):
            saved.append((m, m._forward_pre_hooks, m._forward_hooks))
            m._forward_pre_hooks, m._forward_hooks = OrderedDict(), OrderedDict()
    try:
        yield
    finally:
        for m, pre, post in saved:
            m._forward_pre_hooks, m._forward_hooks = pre, post
