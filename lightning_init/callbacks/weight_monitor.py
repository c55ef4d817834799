"""``WeightMonitor``: when to measure the weights (the math is in :mod:`lightning_init.stats`).

The step convention and the distributed behaviour shared by the three monitors are in
:mod:`lightning_init.callbacks._base`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

# Runtime import: LightningCLI checks the restricted type while parsing (a YAML 0 is a parser error).
from lightning_init.argtypes import PositiveInt
from lightning_init.callbacks._base import (
    DEFAULT_HISTOGRAM_EVERY_N_STEPS,
    _document,
    _gc_paused,
    _LayerMonitor,
    _param_table,
)
from lightning_init.health import (
    SYMMETRIC_SPREAD,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    HealthThresholds,
    OnAnomaly,
)
from lightning_init.health.context import adaptive_warmup
from lightning_init.sharded import local_tensor
from lightning_init.stats import (
    DEFAULT_WEIGHT_STATS,
    WEIGHT_STATS,
    WeightStat,
    safe_ratio,
)

__all__ = ["WeightMonitor"]


@_document
class WeightMonitor(_LayerMonitor):
    """Log per-parameter weight statistics (and histograms) during training.

    Weights are measured before any update (at fit start) and after the update of every logging step; see the module
    docstring for the step convention. A fit resumed from a checkpoint at step ``k`` does not measure at fit start:
    the run that saved the checkpoint logged the weights at ``k``, so every tag holds each step once. For
    ``update_ratio`` the watched weights are copied in ``on_before_optimizer_step`` of logging steps only, into
    buffers allocated on the first such step and reused
    (one copy of the watched weights while fitting, released at fit end, on exception and in teardown), so memory
    does not grow with the number of steps.

    Logged metrics (``{param}`` is the qualified parameter name, e.g. ``net.0.weight``):

    - ``weight_mean/{param}``, ``weight_std/{param}`` (unbiased, as ``Tensor.std()``), ``weight_norm/{param}`` (L2),
      ``weight_abs_max/{param}``;
    - ``weight_update_ratio/{param}``: ``‖w_after - w_before‖ / ‖w_before‖`` over the optimizer step (healthy
      training sits near 1e-3; not logged at fit start, and not logged for a step whose ``‖w_before‖`` is 0, e.g.
      the first update of a zero-initialized bias: the ratio is undefined there, not ``+inf``);
    - ``weight_row_spread/{param}`` only when asked for in ``stats``;
    - histograms ``weight/{param}`` (TensorBoard only) on histogram steps and at fit start;
    - with ``health=True`` (see "Health checks"): ``health/nonfinite_weight``, ``health/symmetric``,
      ``health/update_ratio`` (number of flagged parameters) at every logging step; the text
      ``health/weight_report`` and the images ``health/weight_heatmap``, ``health/weight_depth_profile``, and the
      shared ``health/total`` (layers flagged by any monitor's rule).

    Health checks (thresholds justified in :class:`~lightning_init.health.HealthThresholds`):

    - ``nonfinite``: a weight holds NaN/Inf ("NaN/Inf weights");
    - ``symmetric``: ``row_spread`` (computed for this check, not logged unless in ``stats``) at or below
      ``symmetric_spread`` at two logged steps in a row: every output unit has the same weights, as after a zero or
      constant init, and an update did not make them differ (a zero last layer of a residual branch or a zero readout
      has identical units at init that its first update separates: not symmetric);
    - ``update_ratio`` (only when ``update_ratio`` is logged; biases and norm shifts not judged): a non-zero ratio
      below ``update_ratio_low`` on 10 logged steps in a row (frozen learning), or an update above
      ``update_ratio_high`` of the parameter's scale (the larger of its norm and its unit-scale norm) on 2 in a row,
      past an adaptive optimizer's warm-up (unstable learning).

    Each finding is a ``UserWarning`` (once per (rule, parameter)) naming the parameters, the value against the
    threshold and a remedy. At fit end one line is printed (``rank_zero_info``) when nothing was flagged, else the
    flagged rows; the full table (flagged rows first) goes to the Text tab as ``health/weight_report``;
    ``health/weight_heatmap`` (parameters x logged steps, colour = log10 of ``update_ratio``) and
    ``health/weight_depth_profile`` (one line per logged step across the parameters) go to every logger that takes
    images at fit end (mid-run too with ``figure_every_n_steps``).

    Args:
        {cadence_args}
        include: glob(s) on parameter names to watch (default: all).
        exclude: glob(s) on parameter names to skip.
        module_types: watch only parameters owned directly by modules of these types (class names such as
            ``"Linear"`` or classes; subclasses match). Default: every module that owns parameters.
        stats: statistics to log (default ``mean, std, norm, abs_max, update_ratio``).
        {health_args}
        symmetric_spread: ``row_spread`` at or below this is symmetric.
        update_ratio_low: a non-zero update ratio below this is frozen learning (``0`` disables).
        update_ratio_high: an update ratio above this is unstable learning (``.inf`` disables).
        {thresholds_arg}

    Raises:
        {value_error}
        RuntimeError: in ``setup``, under FSDPStrategy (FSDP1) or DeepSpeedStrategy (flattened shards).
        NotImplementedError: at the first measurement, for a ``DTensor`` layout the sharded statistics do not
            support (2-D meshes: HSDP, FSDP + tensor parallel; ``Partial`` placements; see
            :func:`lightning_init.sharded.check_supported`).

    Example::

        import lightning.pytorch as pl
        from lightning_init import WeightMonitor

        trainer = pl.Trainer(max_steps=10, callbacks=[WeightMonitor(every_n_steps=5)])
    """

    kind = "weight"
    _valid_stats = WEIGHT_STATS
    _default_stats = DEFAULT_WEIGHT_STATS
    _health_stats = ("abs_max", "row_spread")

    def __init__(
        self,
        every_n_steps: PositiveInt | None = None,
        histogram_every_n_steps: PositiveInt | None = DEFAULT_HISTOGRAM_EVERY_N_STEPS,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        module_types: Sequence[str | type[nn.Module]] | None = None,
        stats: Sequence[WeightStat] | None = None,
        health: bool = True,
        on_anomaly: OnAnomaly = "warn",
        symmetric_spread: float = SYMMETRIC_SPREAD,
        update_ratio_low: float = UPDATE_RATIO_LOW,
        update_ratio_high: float = UPDATE_RATIO_HIGH,
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
                "symmetric_spread": symmetric_spread,
                "update_ratio_low": update_ratio_low,
                "update_ratio_high": update_ratio_high,
            },
            base_thresholds=thresholds,
        )
        self._pending: int | None = None  # the optimizer step whose result is to be logged
        self._pending_histograms = False
        self._pending_scalars = False
        #: Copies of the watched weights before the update of a logging step (for ``update_ratio``): allocated once,
        #: refilled in place on each logging step (no fresh allocation, no page faults), dropped by ``_release``.
        self._snapshot: list[Tensor] = []
        self._snapshot_norms: list[Tensor] = []
        self._snapshot_taken = False
        self._snapshot_named: list[tuple[str, nn.Parameter]] = []
        self._warmup: set[int] = set()  # ids of the parameters in their adaptive optimizer's warm-up

    @override
    def _release(self) -> None:
        self._pending = None
        self._snapshot = []
        self._snapshot_norms = []
        self._snapshot_taken = False
        self._snapshot_named = []

    @_gc_paused()
    @torch.no_grad()  # the parameters are read as they are: no detach() per tensor, no graph
    def _measure(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        step: int,
        *,
        scalars: bool,
        histograms: bool,
    ) -> None:
        # the parameters listed for the snapshot of this step (no second walk of the model), else a fresh list
        named = self._snapshot_named if self._snapshot_taken else self._watched_parameters(pl_module)
        names = [n for n, _ in named]
        tensors: list[Tensor] = [p for _, p in named]
        local = [local_tensor(t) for t in tensors]  # FSDP2: this process's shards (the snapshot is kept per shard)
        stats = [s for s in self._table_stats if s != "update_ratio"]
        norms: dict[str, list[Tensor]] = {}
        snapshot_ok = (
            scalars
            and "update_ratio" in self._table_stats
            and self._snapshot_taken
            and len(self._snapshot) == len(local) > 0
            and all(s.shape == t.shape for s, t in zip(self._snapshot, local, strict=True))
        )
        if snapshot_ok:
            torch._foreach_sub_(self._snapshot, local)  # before - after, in place in the snapshot buffers
            norms = {"_diff": list(torch._foreach_norm(self._snapshot)), "_before": self._snapshot_norms}
        self._snapshot_taken, self._snapshot_norms, self._snapshot_named = False, [], []
        table, host, hists = _param_table(
            names, tensors, stats if scalars else [], norms=norms, histograms=histograms, trainer=trainer
        )
        if scalars:
            if snapshot_ok:
                for i, name in enumerate(names):
                    if host["_before"][i] != 0.0:  # undefined for a weight of norm 0 (a zero bias's first update)
                        table[name]["update_ratio"] = safe_ratio(host["_diff"][i], host["_before"][i])
                    table[name]["update_norm"] = host["_diff"][i]  # read by the health rules, not logged
            self._parameter_context(pl_module, named)
            warm = frozenset(n for n, p in named if id(p) in self._warmup)
            self._context = dataclasses.replace(self._context, warmup=warm)
            self._on_table(trainer, pl_module, table, step)
        if histograms:
            self._log_histograms(trainer, names, hists, step)

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_start(trainer, pl_module)
        if self._every is None and self.histogram_every_n_steps is None:
            return
        if trainer.ckpt_path is not None and trainer.global_step > 0:
            # Resumed at step k: the run that saved the checkpoint logged these weights at k (if k was a logging
            # step); logging them again would write every weight tag twice at k (and a health count without the
            # update ratio). The next logging step continues the curves.
            return
        with torch.no_grad():
            self._measure(
                trainer,
                pl_module,
                trainer.global_step,
                scalars=self._every is not None,
                histograms=self.histogram_every_n_steps is not None,
            )

    @override
    def on_before_optimizer_step(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        k = trainer.global_step
        if self._pending is not None:  # second optimizer of the same batch: one snapshot is enough
            return
        index = self._step_index(trainer)  # the cadence's counter (batches in manual optimization)
        scalars, histograms = self._logs_scalars(index), self._logs_histograms(index)
        if not (scalars or histograms):
            return
        self._pending = k
        self._pending_histograms = histograms
        self._pending_scalars = scalars
        self._figures_due = self._logs_figures(trainer, index)
        if scalars and self.health:
            self._warmup = adaptive_warmup(optimizer, k)
        if scalars and "update_ratio" in self._table_stats:
            self._take_snapshot(pl_module)

    @_gc_paused()
    @torch.no_grad()
    def _take_snapshot(self, pl_module: "pl.LightningModule") -> None:
        """Copy the watched weights into the reused snapshot buffers (before the update of a logging step)."""
        self._snapshot_named = self._watched_parameters(pl_module)
        params = [local_tensor(p) for _, p in self._snapshot_named]
        reusable = len(self._snapshot) == len(params) and all(
            s.shape == p.shape and s.dtype == p.dtype and s.device == p.device
            for s, p in zip(self._snapshot, params, strict=True)
        )
        if not reusable:
            self._snapshot = [torch.empty_like(p) for p in params]
        if params:
            torch._foreach_copy_(self._snapshot, params)
        self._snapshot_norms = list(torch._foreach_norm(params)) if params else []
        self._snapshot_taken = True

    @override
    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is None or trainer.global_step <= self._pending:
            return
        self._pending = None
        with torch.no_grad():
            self._measure(
                trainer,
                pl_module,
                trainer.global_step,
                scalars=self._pending_scalars,
                histograms=self._pending_histograms,
            )
