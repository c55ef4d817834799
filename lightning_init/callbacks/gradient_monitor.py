"""``GradientMonitor``: when to measure the gradients (the math is in :mod:`lightning_init.stats`).

The step convention and the distributed behaviour shared by the three monitors are in
:mod:`lightning_init.callbacks._base`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_init import writers

# Runtime import: LightningCLI checks the restricted type while parsing (a YAML 0 is a parser error).
from lightning_init.argtypes import PositiveInt
from lightning_init.callbacks._base import (
    DEFAULT_HISTOGRAM_EVERY_N_STEPS,
    _document,
    _gc_paused,
    _LayerMonitor,
    _param_table,
)
from lightning_init.callbacks._compat import amp_state
from lightning_init.health import (
    EXPLODING_BACKPROP_GROWTH,
    EXPLODING_GRAD_GROWTH,
    EXPLODING_GRAD_NORM,
    OVERFLOW_FRACTION,
    UNDERFLOW_FRACTION,
    VANISHING_BACKPROP_RATIO,
    VANISHING_GRAD_FLOOR,
    VANISHING_GRAD_RATIO,
    Finding,
    HealthThresholds,
    HealthTracker,
    OnAnomaly,
    profile_of,
)
from lightning_init.hooks import OutputGradRecorder, original_name
from lightning_init.reduce import local_moments, merge_moment_rows, moment_rank
from lightning_init.sharded import local_tensor
from lightning_init.stats import (
    DEFAULT_GRAD_STATS,
    GRAD_STATS,
    HEADROOM_STATS,
    OUTPUT_GRAD_STATS,
    GradStat,
    Table,
    fetch,
    headroom_format,
    headroom_row,
    headroom_stats,
    output_grad_stats,
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
      of flagged parameters) at every logging step; the text ``health/grad_report``, the images
      ``health/grad_heatmap`` and ``health/grad_depth_profile``, and the shared ``health/total``;
    - with ``"output_grad"`` in ``stats`` (off by default: it adds backward hooks on the logging steps), the backprop
      signal: ``output_grad_norm/{module}`` (``||dL/dh||``, L2 over the step's whole batch) and
      ``output_grad_std/{module}`` of the output ``h`` of every module that owns a watched parameter, in data-flow
      order; divided by the GradScaler's loss scale under ``16-mixed``, over every accumulation micro-batch, merged
      across DDP processes (one ``all_gather``) as the gradient of the global mean loss; with ``health=True``
      ``health/nonfinite_output_grad``, ``health/vanishing_backprop``, ``health/exploding_backprop``, the text
      ``health/output_grad_report`` and the image ``health/output_grad_heatmap`` (modules x logged steps, colour =
      log10 of ``||dL/dh||``) at fit end (mid-run too with ``figure_every_n_steps``);
    - under 16-bit precision only (``16-mixed``, ``bf16-mixed``, ``*-true``, or gradients in float16/bfloat16; never
      under 32-bit): ``grad_underflow/{param}`` and ``grad_overflow/{param}``, the fractions of elements whose value
      times the GradScaler's loss scale (what lived in 16 bits during backward) is below the format's smallest normal
      / above half its largest value, and ``grad_dynamic_range/{param}``, ``log2(max / smallest non-zero |g|)`` in
      bits; health rules ``underflow`` / ``overflow`` (``health/underflow_grad``, ``health/overflow_grad``).

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
      ``grad_zero_scale_ratio`` of its shift's) is not judged as vanishing;
    - ``vanishing_backprop`` / ``exploding_backprop`` (with ``output_grad``): ``||dL/dh||`` below
      ``vanishing_backprop_ratio`` times the largest deeper module's / above ``exploding_backprop_growth`` times the
      smallest deeper module's. Theory keeps it constant across depth (exactly with orthogonal weights), unlike the
      weight gradients, which also scale with each layer's input.

    The backprop signal comes from tensor hooks on the module outputs (``Tensor.register_hook``), attached by forward
    hooks registered in ``on_train_batch_start`` of a logging step and removed before its optimizer step (and on any
    exception): nothing on the other steps, no retained graph, the gradients untouched. Modules called several times
    report the norm over every call; ``inplace=True`` activations after a module are fine (the hook sees the output
    as the module returned it). With several optimizers stepped in one batch (manual optimization) it covers the
    backward passes before the first optimizer step.

    Each finding is a ``UserWarning`` (once per (rule, parameter)) naming the parameters, the value against the
    threshold and a remedy. At fit end one line is printed when nothing was flagged, else the flagged rows; the full
    table (flagged rows first) goes to the Text tab as ``health/grad_report``; ``health/grad_heatmap`` (weights x
    logged steps, colour = log10 of the grad norm) and ``health/grad_depth_profile`` go to every logger that takes
    images at fit end (mid-run too with ``figure_every_n_steps``).

    Args:
        {cadence_args}
        include: glob(s) on parameter names to watch (default: all).
        exclude: glob(s) on parameter names to skip.
        module_types: watch only parameters owned directly by modules of these types (class names or classes).
        stats: statistics to log (default: ``norm, mean, std, abs_max, nonfinite, ratio``; add ``output_grad`` for the
            backprop signal).
        {health_args}
        vanishing_grad_ratio: a grad norm this many times smaller than a deeper layer's is vanishing.
        vanishing_grad_floor: a grad norm below this is vanishing (``0`` disables).
        exploding_grad_norm: a grad norm above this is exploding (``.inf`` disables).
        exploding_grad_growth: a grad norm this many times larger than a deeper layer's is exploding.
        vanishing_backprop_ratio: an ``||dL/dh||`` this many times smaller than a deeper module's is vanishing.
        exploding_backprop_growth: an ``||dL/dh||`` this many times larger than a deeper module's is exploding.
        underflow_fraction: under 16-bit precision, a gradient with more of its elements than this below the
            format's smallest normal (after the loss scale) underflows.
        overflow_fraction: the same for elements above half the format's largest value (``0``: any).
        {thresholds_arg}

    Raises:
        {value_error}
        RuntimeError: in ``setup``, under FSDPStrategy (FSDP1) or DeepSpeedStrategy (flattened shards).
        NotImplementedError: at the first measurement, for a ``DTensor`` layout the sharded statistics do not
            support (2-D meshes: HSDP, FSDP + tensor parallel; ``Partial`` placements; see
            :func:`lightning_init.sharded.check_supported`).

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
        every_n_steps: PositiveInt | None = None,
        histogram_every_n_steps: PositiveInt | None = DEFAULT_HISTOGRAM_EVERY_N_STEPS,
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
        vanishing_backprop_ratio: float = VANISHING_BACKPROP_RATIO,
        exploding_backprop_growth: float = EXPLODING_BACKPROP_GROWTH,
        underflow_fraction: float = UNDERFLOW_FRACTION,
        overflow_fraction: float = OVERFLOW_FRACTION,
        thresholds: HealthThresholds | None = None,
        per_layer_charts: bool = False,
        figure_every_n_steps: PositiveInt | None = None,
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
            per_layer_charts=per_layer_charts,
            figure_every_n_steps=figure_every_n_steps,
            thresholds={
                "vanishing_grad_ratio": vanishing_grad_ratio,
                "vanishing_grad_floor": vanishing_grad_floor,
                "exploding_grad_norm": exploding_grad_norm,
                "exploding_grad_growth": exploding_grad_growth,
                "vanishing_backprop_ratio": vanishing_backprop_ratio,
                "exploding_backprop_growth": exploding_backprop_growth,
                "underflow_fraction": underflow_fraction,
                "overflow_fraction": overflow_fraction,
            },
            base_thresholds=thresholds,
        )
        self._warned_skipped = False
        #: ``output_grad`` is measured by backward hooks, not from ``.grad``: kept apart from the parameter stats.
        self.output_grad = "output_grad" in self.stats
        self.stats = tuple(s for s in self.stats if s != "output_grad")
        self._backprop = OutputGradRecorder()
        self._backprop_step: int | None = None
        self._backprop_names: list[str] = []
        self._backprop_tracker: HealthTracker | None = HealthTracker("output_grad") if health else None
        self._backprop_heatmap_step: int | None = None

    # ------------------------------------------------------------------ output_grad: the backprop signal

    def _backprop_modules(self, pl_module: "pl.LightningModule") -> list[tuple[str, nn.Module]]:
        """Modules that directly own a watched parameter, in registration order (their outputs' ``dL/dh``)."""
        watched = {id(p) for _, p in self._watched_parameters(pl_module)}
        return [
            (original_name(name), m)
            for name, m in pl_module.named_modules()
            if any(id(p) in watched for p in m.parameters(recurse=False))
        ]

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.output_grad:
            writers.request_layout(trainer, "output_grad", OUTPUT_GRAD_STATS)
            if self.health:
                self._backprop_tracker = HealthTracker("output_grad")
                self._backprop_heatmap_step = None

    @override
    def on_train_batch_start(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        if not self.output_grad:
            return
        k = trainer.global_step
        if self._backprop_step is not None:
            if self._backprop_step == k:  # the next micro-batch of the step being recorded
                return
            self._backprop.clear()  # the recorded step never reached an optimizer step: drop it
            self._backprop_step = None
        if not self._logs_scalars(self._step_index(trainer)):
            return  # no hook at all on the other steps
        modules = self._backprop_modules(pl_module)
        self._backprop_names = [n for n, _ in modules]
        self._backprop_step = k
        self._backprop.start(modules)

    @override
    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._backprop.enabled = False

    @override
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._backprop.enabled = True

    @_gc_paused()
    def _finish_backprop(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        """Remove the hooks; merge the step's rows (across processes: one ``all_gather``), fetch once, log, judge.

        Called before the optimizer step, when every micro-batch's backward is done. The norms are divided by the
        GradScaler's loss scale (still the one backward used: the scaler updates after the step) and, under DDP, by
        the number of processes (see :func:`lightning_init.stats.output_grad_stats`).
        """
        rec, step = self._backprop, self._backprop_step
        rec.stop()
        self._backprop_step = None
        names = self._backprop_names
        distributed = trainer.world_size > 1
        if step is None or (not rec.rows and not distributed):
            rec.clear()
            return
        moments = local_moments(names, rec.ordered_rows(), rec.numels, device=pl_module.device)
        if distributed:
            gathered = trainer.strategy.all_gather(moments)
            moments = gathered.reshape(-1, *moments.shape)
        else:
            moments = moments[None]
        cols: dict[str, Any] = {"moments": moments}
        amp = amp_state(trainer, optimizer)
        if amp is not None:
            found, loss_scale = amp
            cols["amp"] = torch.stack([torch.stack([f.reshape(()).float() for f in found]).sum(), loss_scale.float()])
        host = fetch(cols)  # the one transfer
        rec.clear()
        skipped, scale = (host["amp"][0] > 0, host["amp"][1]) if amp is not None else (False, 1.0)
        scale *= trainer.world_size
        processes, watched, width = moments.shape
        arr = np.asarray(host["moments"], dtype=np.float64).reshape(processes, watched, width)
        merged = merge_moment_rows(arr)
        numel = np.where(arr[..., 0] > 0, arr[..., 0], 0.0).sum(axis=0).tolist()
        mean, std = merged["mean"].tolist(), merged["std"].tolist()
        abs_max, nonfinite = (merged["abs_max"] / scale).tolist(), merged["nonfinite"].tolist()
        table: Table = {}
        for i in moment_rank(arr).tolist():
            table[names[i]] = {
                **output_grad_stats(numel[i], mean[i], std[i], scale=scale),
                "abs_max": abs_max[i],
                "nonfinite": nonfinite[i],
            }
        if table:
            self._on_backprop_table(trainer, table, step, judge=not skipped)

    def _on_backprop_table(self, trainer: "pl.Trainer", table: Table, step: int, *, judge: bool) -> None:
        """Log ``output_grad_{norm,std}/{module}`` and judge the depth profile (the ``output_grad`` health kind)."""
        metrics = {f"output_grad_{stat}/{name}": row[stat] for stat in OUTPUT_GRAD_STATS for name, row in table.items()}
        findings: list[Finding] = []
        fresh: list[Finding] = []
        tracker = self._backprop_tracker
        if tracker is not None and judge:
            findings = self.thresholds.check("output_grad", table, step=step)
            fresh = tracker.update(step, findings, profile=profile_of("output_grad", table), layers=list(table))
            metrics.update(tracker.scalars())
        writers.log_scalars(trainer, metrics, step)
        for finding in fresh:
            rank_zero_warn(f"{type(self).__name__}: {finding.message}", category=UserWarning)
        if findings:
            self._on_findings(trainer, findings)

    @override
    def _log_figures(self, trainer: "pl.Trainer", step: int) -> None:
        super()._log_figures(trainer, step)
        self._log_backprop_heatmap(trainer, step)

    def _log_backprop_heatmap(self, trainer: "pl.Trainer", step: int) -> None:
        tracker = self._backprop_tracker
        if tracker is None or self._backprop_heatmap_step == step:
            return
        image = tracker.heatmap()
        if image is not None:
            writers.log_image(trainer, "health/output_grad_heatmap", image, step)
            self._backprop_heatmap_step = step

    @override
    def _report(self, trainer: "pl.Trainer", *, complete: bool = True) -> None:
        super()._report(trainer, complete=complete)
        tracker = self._backprop_tracker
        if tracker is None or not tracker.layers():
            return
        step = trainer.global_step
        table = tracker.to_markdown()
        rank_zero_info(f"{type(self).__name__} backprop-signal health report (step {step}):\n{table}")
        writers.log_text(trainer, "health/output_grad_report", table, step)
        self._log_backprop_heatmap(trainer, step)

    @override
    def _release(self) -> None:
        super()._release()
        self._backprop.clear()
        self._backprop_step = None

    @override
    def _watch_names(self, pl_module: "pl.LightningModule", *, trainable_only: bool = True) -> list[str]:
        return [n for n, p in self._watched_parameters(pl_module) if p.requires_grad or not trainable_only]

    @override
    def _nothing_why(self) -> str:
        return "every one is frozen, `requires_grad=False`: there are no gradients"

    @override
    def on_before_optimizer_step(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        if self._backprop_step is not None:
            self._finish_backprop(trainer, pl_module, optimizer)
        k = trainer.global_step  # the step the values are logged at
        index = self._step_index(trainer)  # the step the cadence applies to
        scalars, histograms = self._logs_scalars(index), self._logs_histograms(index)
        if scalars or histograms:
            self._figures_due = self._logs_figures(trainer, index)
            self._measure(trainer, pl_module, optimizer, k, scalars=scalars, histograms=histograms)

    @_gc_paused()
    @torch.no_grad()  # gradients and weights are read as they are: no detach() per tensor, no graph
    def _measure(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        optimizer: torch.optim.Optimizer,
        k: int,
        *,
        scalars: bool,
        histograms: bool,
    ) -> None:
        """The gradients of optimizer step ``k``: one table (one transfer), judged and logged; histograms."""
        optimizers = list(trainer.optimizers)
        position = next((i for i, o in enumerate(optimizers) if o is optimizer), 0)
        total_tag = "grad_norm/total" if len(optimizers) <= 1 else f"grad_norm/total_optimizer_{position}"
        amp = amp_state(trainer, optimizer) if scalars else None
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        named = [
            (n, p)
            for n, p in self._watched_parameters(pl_module)
            if p.requires_grad and id(p) in in_optimizer and p.grad is not None and not p.grad.is_sparse
        ]
        names = [n for n, _ in named]
        grads = [p.grad for _, p in named if p.grad is not None]
        wanted = self._table_stats if scalars else ()
        extra: dict[str, list[Tensor]] = {}
        norms: dict[str, list[Tensor]] = {}
        if "ratio" in wanted and named:
            norms["_wnorm"] = list(torch._foreach_norm([local_tensor(p) for _, p in named]))
        if amp is not None:
            found, scale = amp
            extra["_found_inf"] = [torch.stack([f.reshape(()).float() for f in found]).sum()]
            extra["_loss_scale"] = [scale.reshape(()).float()]
        precision = str(trainer.precision)
        by_dtype = {dtype: headroom_format(dtype, precision) for dtype in {g.dtype for g in grads}}
        formats = [by_dtype[g.dtype] for g in grads]
        headroom = [s for s in wanted if s in HEADROOM_STATS] if any(f is not None for f in formats) else []
        if headroom:
            # the values as they were in 16 bits: a 16-mixed run's float32 .grad is read unscaled here
            loss_scale = amp[1].reshape(()).float() if amp is not None else 1.0
            rows = [
                headroom_row(g, f, loss_scale) if f is not None else g.new_full((4,), math.nan, dtype=torch.float32)
                for g, f in zip(grads, formats, strict=True)
            ]
            for j, col in enumerate(("_hu", "_ho", "_hmax", "_hmin")):
                extra[col] = [r[j] for r in rows]
        needs_norm = [s for s in wanted if s != "ratio" and s not in HEADROOM_STATS] + (
            ["norm"] if "ratio" in wanted else []
        )
        with torch.no_grad():
            table, host, hists = _param_table(
                names,
                grads,
                needs_norm,
                extra=extra,
                norms=norms,
                histograms=histograms,
                count_nonfinite="nonfinite" in wanted,
                trainer=trainer,
                what="gradient",
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
            if headroom:
                for i, (name, g, f) in enumerate(zip(names, grads, formats, strict=True)):
                    if f is None:
                        continue
                    row = [host[c][i] for c in ("_hu", "_ho", "_hmax", "_hmin")]
                    table[name].update({s: v for s, v in headroom_stats([row], g.numel()).items() if s in headroom})
            # the global norm is a metric of the step, not a row of the table (no parameter stands for it)
            logged_norm = "norm" in self.stats and names
            step_metrics: dict[str, float] = {total_tag: total_norm(host["norm"])} if logged_norm else {}
            skipped = False
            if amp is not None:
                skipped = host["_found_inf"][0] > 0
                step_metrics.update({"amp/skipped_step": float(skipped), "amp/loss_scale": host["_loss_scale"][0]})
                if skipped and not self._warned_skipped:
                    self._warned_skipped = True
                    rank_zero_info(
                        f"{type(self).__name__}: the GradScaler skipped optimizer step {k} (inf/NaN gradients at loss "
                        f"scale {host['_loss_scale'][0]:g}); mixed precision does this while the loss scale adapts. "
                        "Such steps are logged as `amp/skipped_step` = 1 and not judged as exploding or NaN/Inf "
                        "gradients."
                    )
            self._parameter_context(pl_module, named)
            self._on_table(trainer, pl_module, table, k, extra_metrics=step_metrics, judge=not skipped)
        if histograms:
            self._log_histograms(trainer, names, hists, k)
