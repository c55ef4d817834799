"""``GradientMonitor``: when to measure the gradients (the math is in :mod:`lightning_init.stats`).

The step convention and the distributed behaviour shared by the three monitors are in
:mod:`lightning_init.callbacks._base`.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_init.callbacks._base import (
    DEFAULT_HISTOGRAM_EVERY_N_STEPS,
    _document,
    _LayerMonitor,
    _param_table,
)
from lightning_init.callbacks._compat import amp_state
from lightning_init.health import (
    EXPLODING_GRAD_GROWTH,
    EXPLODING_GRAD_NORM,
    VANISHING_GRAD_FLOOR,
    VANISHING_GRAD_RATIO,
    HealthThresholds,
    OnAnomaly,
)
from lightning_init.stats import (
    DEFAULT_GRAD_STATS,
    GRAD_STATS,
    GradStat,
    safe_ratio,
    total_norm,
)

__all__ = ["GradientMonitor"]


@_document
class GradientMonitor(_LayerMonitor):
    """Log per-parameter gradient statistics (and histograms) during training.

    Gradients are read in ``on_before_optimizer_step``, where they are final for the step: after AMP unscaling, after
    every accumulation micro-batch and after DDP's all-reduce, before gradient clipping (in ``on_after_backward`` a
    16-bit run shows them still scaled by the GradScaler). Only parameters of the optimizer being stepped that have a
    dense ``.grad`` are reported; tied parameters once. Values are logged at the step they belong to
    (``trainer.global_step`` before the update).

    Logged metrics (``{param}`` is the qualified parameter name):

    - ``grad_norm/{param}`` (L2), ``grad_mean/{param}``, ``grad_std/{param}``, ``grad_abs_max/{param}``;
    - ``grad_nonfinite/{param}``: number of NaN/Inf elements (the other statistics then are NaN/Inf);
    - ``grad_ratio/{param}``: ``‖g‖ / ‖w‖``;
    - ``grad_norm/total``: L2 norm over all reported gradients (with ``norm``); with several optimizers (manual
      optimization) one ``grad_norm/total_optimizer_{i}`` per optimizer, ``i`` its position in
      ``configure_optimizers``;
    - ``amp/skipped_step`` (1 when the GradScaler skips the step for inf/NaN gradients, else 0) and
      ``amp/loss_scale`` (the GradScaler's scale), with ``precision="16-mixed"`` only. A skipped step's statistics are
      logged as measured but not judged (its inf gradients are the scaler probing its scale, not the model
      exploding); the first one is announced once with ``rank_zero_info``;
    - histograms ``grad/{param}`` of the finite values (TensorBoard only) on histogram steps;
    - with ``health=True``: ``health/nonfinite_grad``, ``health/vanishing_grad``, ``health/exploding_grad`` (number
      of flagged parameters) at every logging step; the text ``health/grad_report`` and the image
      ``health/grad_heatmap`` (TensorBoard only).

    Health checks (thresholds justified in :class:`~lightning_init.health.HealthThresholds`; depth profiles compare
    each parameter with the median of the deeper ones of its role group (:mod:`lightning_init.roles`: weights,
    biases, norm scales, norm shifts, embeddings, free parameters), input -> output):

    - ``nonfinite``: a gradient holds NaN/Inf ("NaN/Inf gradients");
    - ``vanishing_grad``: a grad norm below ``vanishing_grad_ratio`` times that median, or below
      ``vanishing_grad_floor``;
    - ``exploding_grad``: a grad norm above ``exploding_grad_norm``, or above ``exploding_grad_growth`` times that
      median;
    - ``grad_zero`` (information, once, never counted): a gradient that is structurally zero (exactly 0, a bias-like
      gradient below ``grad_zero_ratio`` of its module's weight gradient, a norm scale's below
      ``grad_zero_scale_ratio`` of its shift's) is not judged as vanishing.

    Each finding is a ``UserWarning`` (once per (rule, parameter)) naming the parameters, the value against the
    threshold and a remedy. At fit end the per-parameter health table is printed and written to TensorBoard's Text tab
    as ``health/grad_report``; ``health/grad_heatmap`` (weights x logged steps, colour = log10 of the grad norm) goes
    to the Images tab at fit end and on histogram steps.

    Args:
        {cadence_args}
        include: glob(s) on parameter names to watch (default: all).
        exclude: glob(s) on parameter names to skip.
        module_types: watch only parameters owned directly by modules of these types (class names or classes).
        stats: statistics to log (default: all of ``norm, mean, std, abs_max, nonfinite, ratio``).
        {health_args}
        vanishing_grad_ratio: a grad norm this many times smaller than a deeper layer's is vanishing.
        vanishing_grad_floor: a grad norm below this is vanishing (``0`` disables).
        exploding_grad_norm: a grad norm above this is exploding (``.inf`` disables).
        exploding_grad_growth: a grad norm this many times larger than a deeper layer's is exploding.
        {thresholds_arg}

    Raises:
        {value_error}
        RuntimeError: in ``setup``, under a strategy that shards parameters (FSDP, DeepSpeed, ModelParallel).

    Example::

        import lightning.pytorch as pl
        from lightning_init import GradientMonitor

        trainer = pl.Trainer(max_steps=10, callbacks=[GradientMonitor(every_n_steps=5)])
    """

    kind = "grad"
    _valid_stats = GRAD_STATS
    _default_stats = DEFAULT_GRAD_STATS
    _health_stats = ("norm", "nonfinite")

    def __init__(
        self,
        every_n_steps: int | None = None,
        histogram_every_n_steps: int | None = DEFAULT_HISTOGRAM_EVERY_N_STEPS,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        module_types: Sequence[str | type[nn.Module]] | None = None,
        stats: Sequence[GradStat] | None = None,
        health: bool = True,
        on_anomaly: OnAnomaly = "warn",
        vanishing_grad_ratio: float = VANISHING_GRAD_RATIO,
        vanishing_grad_floor: float = VANISHING_GRAD_FLOOR,
        exploding_grad_norm: float = EXPLODING_GRAD_NORM,
        exploding_grad_growth: float = EXPLODING_GRAD_GROWTH,
        thresholds: HealthThresholds | None = None,
    ) -> None:
        super().__init__(
            every_n_steps,
            histogram_every_n_steps,
            include,
            exclude,
            module_types,
            stats,
            health=health,
            on_anomaly=on_anomaly,
            thresholds={
                "vanishing_grad_ratio": vanishing_grad_ratio,
                "vanishing_grad_floor": vanishing_grad_floor,
                "exploding_grad_norm": exploding_grad_norm,
                "exploding_grad_growth": exploding_grad_growth,
            },
            base_thresholds=thresholds,
        )
        self._total_tag = "total"
        self._warned_skipped = False

    @override
    def _row_tag(self, name: str) -> str:
        return self._total_tag if name == "total" else name

    @override
    def on_before_optimizer_step(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        k = trainer.global_step  # the step the values are logged at
        index = self._step_index(trainer)  # the step the cadence applies to
        scalars, histograms = self._logs_scalars(index), self._logs_histograms(index)
        if not (scalars or histograms):
            return
        optimizers = list(trainer.optimizers)
        position = next((i for i, o in enumerate(optimizers) if o is optimizer), 0)
        self._total_tag = "total" if len(optimizers) <= 1 else f"total_optimizer_{position}"
        amp = amp_state(trainer, optimizer) if scalars else None
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        named = [
            (n, p)
            for n, p in self._watched_parameters(pl_module)
            if p.requires_grad and id(p) in in_optimizer and p.grad is not None and not p.grad.is_sparse
        ]
        names = [n for n, _ in named]
        grads = [p.grad.detach() for _, p in named if p.grad is not None]
        wanted = self._table_stats if scalars else ()
        extra: dict[str, list[Tensor]] = {}
        if "ratio" in wanted and named:
            extra["_wnorm"] = list(torch._foreach_norm([p.detach() for _, p in named]))
        if amp is not None:
            found, scale = amp
            extra["_found_inf"] = [torch.stack([f.reshape(()).float() for f in found]).sum()]
            extra["_loss_scale"] = [scale.reshape(()).float()]
        needs_norm = [s for s in wanted if s != "ratio"] + (["norm"] if "ratio" in wanted else [])
        with torch.no_grad():
            table, host, hists = _param_table(
                names, grads, needs_norm, extra=extra, histograms=histograms, count_nonfinite="nonfinite" in wanted
            )
        if scalars:
            if "nonfinite" in wanted:
                for i, name in enumerate(names):
                    table[name]["nonfinite"] = host["nonfinite"][i]
            if "ratio" in wanted:
                for i, name in enumerate(names):
                    table[name]["ratio"] = safe_ratio(host["norm"][i], host["_wnorm"][i])
                    if "norm" not in wanted:
                        del table[name]["norm"]
            if "norm" in wanted and names:
                table["total"] = {"norm": total_norm(host["norm"])}
            amp_metrics: dict[str, float] = {}
            skipped = False
            if amp is not None:
                skipped = host["_found_inf"][0] > 0
                amp_metrics = {"amp/skipped_step": float(skipped), "amp/loss_scale": host["_loss_scale"][0]}
                if skipped and not self._warned_skipped:
                    self._warned_skipped = True
                    rank_zero_info(
                        f"{type(self).__name__}: the GradScaler skipped optimizer step {k} (inf/NaN gradients at loss "
                        f"scale {host['_loss_scale'][0]:g}); mixed precision does this while the loss scale adapts. "
                        "Such steps are logged as `amp/skipped_step` = 1 and not judged as exploding or NaN/Inf "
                        "gradients."
                    )
            self._parameter_context(pl_module, named)
            self._on_table(trainer, pl_module, table, k, extra_metrics=amp_metrics, judge=not skipped)
        if histograms:
            self._log_histograms(trainer, names, hists, k)
