"""Per-layer monitors: ``WeightMonitor``, ``ActivationMonitor``, ``GradientMonitor`` (scheduling only).

When to measure lives here; the math is in :mod:`lightning_init.stats`, the hooks in :mod:`lightning_init.hooks`,
the writing in :mod:`lightning_init.writers`.

Step convention (``k`` = ``trainer.global_step`` while optimizer step ``k`` runs, i.e. the number of steps done):

- optimizer step ``k`` is a *logging step* when ``k == 0`` (the first step shows the initializer's own gradient and
  activation profile) or ``(k + 1) % every_n_steps == 0`` (Lightning's own ``log_every_n_steps`` rule, so our curves
  line up with ``self.log`` metrics); a *histogram step* when
  ``(k + 1) % histogram_every_n_steps == 0``;
- activations and gradients of step ``k`` (computed with the weights before the update) are logged at step ``k``;
- weights after the update of step ``k`` (and the ``update_ratio`` of that update) are logged at step ``k + 1``, the
  ``global_step`` once the update is done; the weights before any update are logged at fit start (step ``0`` on a
  fresh run). So with ``every_n_steps=50``: gradients/activations at 0, 49, 99, ...; weights at 0, 1, 50, 100, ...
- manual optimization: ``global_step`` counts every optimizer's steps (two per batch for a GAN), so the cadence
  applies to the batch count instead (Lightning's own logging counter); a logging batch logs the gradients of every
  optimizer it steps, each at its own ``global_step``.

Distributed (DDP): weights are replicated and gradients are read after the all-reduce, so every process measures the
same numbers; activation statistics are merged across processes (one ``all_gather`` per logging step, see
:mod:`lightning_init.reduce`) and describe the global batch. Every process therefore takes the same health decisions
(``on_anomaly="stop"`` stops every rank at the same step); only rank zero writes. Sharded strategies (FSDP,
DeepSpeed, ModelParallel) are refused by ``WeightMonitor`` and ``GradientMonitor`` at setup.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_init import writers
from lightning_init.activations import nonlinearity_of
from lightning_init.callbacks.weight_init import _refused_strategy as _sharded_strategy
from lightning_init.health import (
    DEAD_FRACTION,
    EXPLODING_ACTIVATION_RATIO,
    EXPLODING_GRAD_GROWTH,
    EXPLODING_GRAD_NORM,
    SATURATED_FRACTION,
    SYMMETRIC_SPREAD,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    VANISHING_ACTIVATION_RATIO,
    VANISHING_GRAD_FLOOR,
    VANISHING_GRAD_RATIO,
    Finding,
    HealthError,
    HealthThresholds,
    HealthTracker,
    Kind,
    OnAnomaly,
    merge_findings,
    profile_of,
)
from lightning_init.hooks import ActivationRecorder, compiled_regions, original_name
from lightning_init.reduce import local_moments, merge_moments, moment_order
from lightning_init.schemes import check_choice
from lightning_init.stats import (
    ACTIVATION_STATS,
    DEFAULT_ACTIVATION_STATS,
    DEFAULT_GRAD_STATS,
    DEFAULT_WEIGHT_STATS,
    GRAD_STATS,
    HISTOGRAM_BINS,
    WEIGHT_STATS,
    ActivationStat,
    GradStat,
    HostHistogram,
    Table,
    WeightStat,
    fetch,
    histogram_columns,
    host_histograms,
    repair,
    safe_ratio,
    tensor_columns,
    total_norm,
)

__all__ = ["ActivationMonitor", "GradientMonitor", "WeightMonitor"]

#: Histograms are costly (a pass, a scatter and a transfer per tensor) and TensorBoard shows ~30 of them per tag;
#: every 500 steps keeps them to a few hundred per tag over a long run.
DEFAULT_HISTOGRAM_EVERY_N_STEPS = 500

_ON_ANOMALY: tuple[str, ...] = get_args(OnAnomaly)


def _positive_or_none(arg: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{arg}` must be a positive int or None, got {value!r}.")
    return value


def _names(arg: str, value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"`{arg}` must be glob strings, got {item!r}.")
    return items


def _type_matches(module: nn.Module, module_types: tuple[str | type, ...]) -> bool:
    for cls in type(module).__mro__:
        for wanted in module_types:
            if cls is wanted or cls.__name__ == wanted:
                return True
    return False


def _batches_that_stepped(trainer: "pl.Trainer") -> int:
    """Lightning's logging counter: batches that stepped an optimizer, once per batch whatever the optimizers.

    No public attribute exposes it (``trainer.global_step`` counts every optimizer's steps); the private access is
    isolated here, falling back to ``global_step``.
    """
    counter = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", None)
    return counter if isinstance(counter, int) else trainer.global_step


def _amp_state(trainer: "pl.Trainer", optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], Tensor] | None:
    """The GradScaler's found-inf flags for ``optimizer``'s current step and its loss scale (device tensors).

    ``None`` without an enabled GradScaler (fp32, bf16) or before ``unscale_``. Lightning's ``MixedPrecision`` plugin
    calls ``scaler.unscale_(optimizer)`` right before ``on_before_optimizer_step``, which records per device whether
    the gradients hold inf/NaN; ``scaler.step`` then skips the update. torch exposes these flags only through the
    scaler's private per-optimizer state, read here and nowhere else (no host sync: the tensors join the monitor's
    one transfer).
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


def _all_gather(trainer: "pl.Trainer", table: Tensor) -> Tensor:
    """``[world, *table.shape]``: every process's ``table``, through the strategy's collective."""
    gathered = trainer.strategy.all_gather(table)
    return gathered.reshape(-1, *table.shape)


class _LayerMonitor(Callback):
    """Shared scheduling of the three monitors.

    After every logging step a monitor holds a host-side table ``{name: {stat: value}}`` ordered from input to output
    and hands it to :meth:`_on_table`, the one place to extend (the default logs the selected statistics as
    ``{kind}_{stat}/{name}`` scalars to every logger and, with ``health=True``, judges the table with
    :mod:`lightning_init.health`). Rows may carry more statistics than are logged (see ``_extra_stats``).
    """

    kind: ClassVar[Kind]
    _valid_stats: ClassVar[tuple[str, ...]]
    _default_stats: ClassVar[tuple[str, ...]]
    #: Statistics the health rules of this kind read (computed into the table when ``health=True``, not logged).
    _health_stats: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        every_n_steps: int | None = None,
        histogram_every_n_steps: int | None = DEFAULT_HISTOGRAM_EVERY_N_STEPS,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        module_types: Sequence[str | type[nn.Module]] | None = None,
        stats: Sequence[str] | None = None,
        *,
        health: bool = True,
        on_anomaly: OnAnomaly = "warn",
        thresholds: Mapping[str, float] | None = None,
    ) -> None:
        self.every_n_steps = _positive_or_none("every_n_steps", every_n_steps)
        self.histogram_every_n_steps = _positive_or_none("histogram_every_n_steps", histogram_every_n_steps)
        self.include = _names("include", include)
        self.exclude = _names("exclude", exclude)
        types = () if module_types is None else tuple(module_types)
        for t in types:
            if not (isinstance(t, str) or (isinstance(t, type) and issubclass(t, nn.Module))):
                raise ValueError(f"`module_types` must be nn.Module class names or classes, got {t!r}.")
        self.module_types: tuple[str | type, ...] = types
        chosen = self._default_stats if stats is None else ((stats,) if isinstance(stats, str) else tuple(stats))
        for s in chosen:
            check_choice("stats", s, self._valid_stats)
        self.stats: tuple[str, ...] = tuple(dict.fromkeys(chosen))
        if not isinstance(health, bool):
            raise ValueError(f"`health` must be True or False, got {health!r}.")
        check_choice("on_anomaly", on_anomaly, _ON_ANOMALY)
        self.health = health
        self.on_anomaly: OnAnomaly = on_anomaly
        #: The validated thresholds (this monitor reads only those of its own rules).
        self.thresholds = HealthThresholds(**dict(thresholds or {}))
        self._tracker: HealthTracker | None = HealthTracker(self.kind) if health else None
        self._heatmap_step: int | None = None
        #: Statistics computed into the table but not logged (e.g. ``row_spread`` for a health verdict).
        self._extra_stats: tuple[str, ...] = self._health_stats if health else ()
        self._every: int | None = None
        self._warned_no_logger = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_steps=self.every_n_steps,
            include=self.include,
            exclude=self.exclude,
            module_types=tuple(t if isinstance(t, str) else t.__qualname__ for t in self.module_types),
            stats=self.stats,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"health": self._tracker.state_dict()} if self._tracker is not None else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._tracker is not None and "health" in state_dict:
            self._tracker.load_state_dict(state_dict["health"])

    # ------------------------------------------------------------------ scheduling

    @property
    def _table_stats(self) -> tuple[str, ...]:
        return self.stats + tuple(s for s in self._extra_stats if s not in self.stats)

    def _step_index(self, trainer: "pl.Trainer") -> int:
        """The counter the logging cadence applies to.

        In automatic optimization, the optimizer step ``trainer.global_step``. In manual optimization
        ``global_step`` counts the steps of every optimizer (two per batch for a GAN), so the cadence applies to the
        number of batches that stepped (Lightning's own logging counter): a logging batch logs every optimizer it
        steps.
        """
        if trainer.lightning_module.automatic_optimization:
            return trainer.global_step
        return _batches_that_stepped(trainer)

    def _logs_scalars(self, k: int) -> bool:
        # Step 0 always logs: the gradients and activations of the very first step are the initializer's own depth
        # profile (a bad init can turn everything into NaN/Inf before step ``every_n_steps - 1``).
        return self._every is not None and (k == 0 or (k + 1) % self._every == 0)

    def _logs_histograms(self, k: int) -> bool:
        h = self.histogram_every_n_steps
        return h is not None and (k + 1) % h == 0

    def _selected(self, name: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(name, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, g) for g in self.exclude)

    def _watched_parameters(self, pl_module: "pl.LightningModule") -> list[tuple[str, nn.Parameter]]:
        """Parameters in registration order, tied ones once; with ``module_types`` only those owned by such modules."""
        if not self.module_types:
            named = [(original_name(n), p) for n, p in pl_module.named_parameters()]
        else:
            seen: set[int] = set()
            named = []
            for mname, module in pl_module.named_modules():
                if not _type_matches(module, self.module_types):
                    continue
                for pname, p in module.named_parameters(prefix=mname, recurse=False):
                    if id(p) not in seen:
                        seen.add(id(p))
                        named.append((original_name(pname), p))
            order = {id(p): i for i, (_, p) in enumerate(pl_module.named_parameters())}
            named.sort(key=lambda item: order.get(id(item[1]), len(order)))
        return [(n, p) for n, p in named if self._selected(n)]

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        sharded = _sharded_strategy(trainer.strategy)
        if sharded is not None and self.kind != "activation":
            raise RuntimeError(
                f"{type(self).__name__} does not support `{sharded}`: its {self.kind}s are sharded across processes, "
                f"so per-parameter statistics would describe one shard only. Use `strategy='ddp'`, or keep "
                f"`ActivationMonitor` (module outputs are not sharded) and drop `{type(self).__name__}`."
            )
        self._every = (
            self.every_n_steps
            if self.every_n_steps is not None
            else (getattr(trainer, "log_every_n_steps", None) or None)
        )
        if not trainer.loggers and not self._warned_no_logger:
            self._warned_no_logger = True
            rank_zero_warn(
                f"{type(self).__name__}: the Trainer has no logger (`logger=False`), nothing will be logged."
            )
        writers.request_layout(trainer, self.kind, self.stats)
        if self.health:
            self._tracker = HealthTracker(self.kind)  # a new fit, a new report (a resumed one is restored after setup)
            self._heatmap_step = None
            writers.request_health_chart(trainer)

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        writers.write_layout(trainer)

    # ------------------------------------------------------------------ the seam

    def _row_tag(self, name: str) -> str:
        """The tag suffix of a table row (the row's name; see ``GradientMonitor``'s total row)."""
        return name

    def _on_table(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        table: Table,
        step: int,
        *,
        extra_metrics: Mapping[str, float] | None = None,
        judge: bool = True,
    ) -> None:
        """Receive the host-side table of a logging step (ordered input -> output), judge it and log its scalars.

        Override (calling ``super()``) to add to it; ``step`` is the step the values are logged at. ``extra_metrics``
        are logged with the table's scalars; ``judge=False`` logs without applying the health rules (a step the
        GradScaler skipped).
        """
        metrics = {
            f"{self.kind}_{stat}/{self._row_tag(name)}": value
            for stat in self.stats
            for name, row in table.items()
            if (value := row.get(stat)) is not None
        }
        metrics.update(extra_metrics or {})
        findings: list[Finding] = []
        fresh: list[Finding] = []
        if self._tracker is not None and judge:
            nls = self._nonlinearities()
            findings = self.thresholds.check(self.kind, table, step=step, nonlinearities=nls)
            fresh = self._tracker.update(
                step, findings, profile=profile_of(self.kind, table, nls), layers=[n for n in table if n != "total"]
            )
            metrics.update(self._tracker.scalars())
        writers.log_scalars(trainer, metrics, step)
        for finding in fresh:  # once per (rule, layer): the tracker remembers what it returned
            rank_zero_warn(f"{type(self).__name__}: {finding.message}", category=UserWarning)
        if findings:
            self._on_findings(trainer, findings)

    def _on_findings(self, trainer: "pl.Trainer", findings: list[Finding]) -> None:
        """Apply ``on_anomaly`` to the findings of one logging step.

        The decision is a function of the table alone (any finding at all), and every process judges the same table:
        weights are replicated, gradients are read after DDP's all-reduce and activation statistics are gathered
        from every process before judging. So under DDP every rank stops (or raises) at the same step, with no
        extra collective.
        """
        if self.on_anomaly == "stop":
            if not trainer.should_stop:
                first = merge_findings(findings)[0]
                rank_zero_info(f"{type(self).__name__}: stopping training (`on_anomaly='stop'`): {first.message}")
            trainer.should_stop = True
        elif self.on_anomaly == "raise":
            raise HealthError(merge_findings(findings)[0])

    def _nonlinearities(self) -> Mapping[str, str | None] | None:
        """Module name -> nonlinearity of the rows of the last table (activations only)."""
        return None

    def _log_histograms(
        self, trainer: "pl.Trainer", names: Sequence[str], hists: Sequence[HostHistogram | None], step: int
    ) -> None:
        writers.log_histograms(
            trainer, {f"{self.kind}/{n}": h for n, h in zip(names, hists, strict=True) if h is not None}, step
        )
        self._log_heatmap(trainer, step)  # the depth-profile picture at the histograms' (rare) cadence too

    def _log_heatmap(self, trainer: "pl.Trainer", step: int) -> None:
        """Write the depth-profile heatmap ``health/{kind}_heatmap`` at ``step`` (once per step)."""
        if self._tracker is None or self._heatmap_step == step:
            return
        image = self._tracker.heatmap()
        if image is None:
            return
        writers.log_image(trainer, f"health/{self.kind}_heatmap", image, step)
        self._heatmap_step = step

    def _report(self, trainer: "pl.Trainer") -> None:
        """End of fit: the per-layer health table (printed and to the Text tab) and the final heatmap."""
        if self._tracker is None or not self._tracker.layers():
            return  # no logging step happened: nothing was judged, nothing to report
        step = trainer.global_step
        table = self._tracker.to_markdown()
        rank_zero_info(f"{type(self).__name__} health report (step {step}):\n{table}")
        writers.log_text(trainer, f"health/{self.kind}_report", table, step)
        self._log_heatmap(trainer, step)

    # ------------------------------------------------------------------ cleanup

    def _release(self) -> None:
        """Drop hooks and every reference to modules or tensors (idempotent)."""

    @override
    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._release()
        self._report(trainer)

    @override
    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._release()

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._release()


def _param_table(
    names: Sequence[str],
    tensors: Sequence[Tensor],
    stats: Sequence[str],
    *,
    extra: dict[str, list[Tensor]] | None = None,
    histograms: bool = False,
    count_nonfinite: bool = False,
) -> tuple[Table, dict[str, list[float]], list[HostHistogram | None]]:
    """Statistics of ``tensors`` (one transfer), repaired; returns the table, raw host columns and histograms."""
    cols: dict[str, Any] = dict(tensor_columns(tensors, stats))
    if extra:
        cols.update(extra)
    if histograms and tensors:
        cols.update(histogram_columns(tensors, HISTOGRAM_BINS))
    host = fetch(cols)
    repair(tensors, host, count_nonfinite=count_nonfinite)
    hists = (
        host_histograms(host["counts"], host["meta"], len(tensors), HISTOGRAM_BINS) if histograms and tensors else []
    )
    wanted = [s for s in stats if s in host]
    table = {n: {s: host[s][i] for s in wanted} for i, n in enumerate(names)}
    return table, host, hists


class WeightMonitor(_LayerMonitor):
    """Log per-parameter weight statistics (and histograms) during training.

    Weights are measured before any update (at fit start) and after the update of every logging step; see the module
    docstring for the step convention. For ``update_ratio`` the watched weights are copied in
    ``on_before_optimizer_step`` of logging steps only, into buffers allocated on the first such step and reused
    (one copy of the watched weights while fitting, released at fit end, on exception and in teardown), so memory
    does not grow with the number of steps.

    Logged metrics (``{param}`` is the qualified parameter name, e.g. ``net.0.weight``):

    - ``weight_mean/{param}``, ``weight_std/{param}`` (unbiased, as ``Tensor.std()``), ``weight_norm/{param}`` (L2),
      ``weight_abs_max/{param}``;
    - ``weight_update_ratio/{param}``: ``‖w_after - w_before‖ / ‖w_before‖`` over the optimizer step (healthy
      training sits near 1e-3; not logged at fit start);
    - ``weight_row_spread/{param}`` only when asked for in ``stats``;
    - histograms ``weight/{param}`` (TensorBoard only) on histogram steps and at fit start;
    - with ``health=True`` (see "Health checks"): ``health/nonfinite_weight``, ``health/symmetric``,
      ``health/update_ratio`` (number of flagged parameters) at every logging step; the text
      ``health/weight_report`` and the image ``health/weight_heatmap`` (TensorBoard only).

    Health checks (thresholds justified in :class:`~lightning_init.health.HealthThresholds`):

    - ``nonfinite``: a weight holds NaN/Inf ("NaN/Inf weights");
    - ``symmetric``: ``row_spread`` (computed for this check, not logged unless in ``stats``) at or below
      ``symmetric_spread``: every output unit has the same weights, as after a zero or constant init;
    - ``update_ratio`` (only when ``update_ratio`` is logged; biases not judged): a non-zero ratio below
      ``update_ratio_low`` (frozen learning) or above ``update_ratio_high`` (unstable learning).

    Each finding is a ``UserWarning`` (once per (rule, parameter)) naming the parameters, the value against the
    threshold and a remedy. At fit end the per-parameter health table is printed (``rank_zero_info``) and written to
    TensorBoard's Text tab as ``health/weight_report``; ``health/weight_heatmap`` (parameters x logged steps, colour =
    log10 of ``update_ratio``) goes to the Images tab at fit end and on histogram steps.

    Args:
        every_n_steps: log every this many optimizer steps; ``None`` uses ``Trainer(log_every_n_steps=...)``.
        histogram_every_n_steps: histograms every this many optimizer steps; ``None`` turns them off.
        include: glob(s) on parameter names to watch (default: all).
        exclude: glob(s) on parameter names to skip.
        module_types: watch only parameters owned directly by modules of these types (class names such as
            ``"Linear"`` or classes; subclasses match). Default: every module that owns parameters.
        stats: statistics to log (default ``mean, std, norm, abs_max, update_ratio``).
        health: judge every logged table with the health rules below (``False``: measure only).
        on_anomaly: on a finding, ``"warn"`` only (a ``UserWarning`` once per (rule, layer)), ``"stop"`` training
            gracefully after the current step (``trainer.should_stop``), or ``"raise"``
            :class:`~lightning_init.health.HealthError` (hooks are removed on the way out).
        symmetric_spread: ``row_spread`` at or below this is symmetric.
        update_ratio_low: a non-zero update ratio below this is frozen learning (``0`` disables).
        update_ratio_high: an update ratio above this is unstable learning (``.inf`` disables).

    Raises:
        ValueError: on a non-positive ``every_n_steps`` / ``histogram_every_n_steps``, an unknown statistic, an
            unknown ``on_anomaly`` or a threshold out of its range.
        RuntimeError: in ``setup``, under a strategy that shards parameters (FSDP, DeepSpeed, ModelParallel).

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
        every_n_steps: int | None = None,
        histogram_every_n_steps: int | None = DEFAULT_HISTOGRAM_EVERY_N_STEPS,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        module_types: Sequence[str | type[nn.Module]] | None = None,
        stats: Sequence[WeightStat] | None = None,
        health: bool = True,
        on_anomaly: OnAnomaly = "warn",
        symmetric_spread: float = SYMMETRIC_SPREAD,
        update_ratio_low: float = UPDATE_RATIO_LOW,
        update_ratio_high: float = UPDATE_RATIO_HIGH,
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
                "symmetric_spread": symmetric_spread,
                "update_ratio_low": update_ratio_low,
                "update_ratio_high": update_ratio_high,
            },
        )
        self._pending: int | None = None  # the optimizer step whose result is to be logged
        self._pending_histograms = False
        self._pending_scalars = False
        #: Copies of the watched weights before the update of a logging step (for ``update_ratio``): allocated once,
        #: refilled in place on each logging step (no fresh allocation, no page faults), dropped by ``_release``.
        self._snapshot: list[Tensor] = []
        self._snapshot_norms: list[Tensor] = []
        self._snapshot_taken = False

    @override
    def _release(self) -> None:
        self._pending = None
        self._snapshot = []
        self._snapshot_norms = []
        self._snapshot_taken = False

    def _measure(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        step: int,
        *,
        scalars: bool,
        histograms: bool,
    ) -> None:
        named = self._watched_parameters(pl_module)
        names = [n for n, _ in named]
        tensors = [p.detach() for _, p in named]
        stats = [s for s in self._table_stats if s != "update_ratio"]
        extra: dict[str, list[Tensor]] = {}
        snapshot_ok = (
            scalars
            and "update_ratio" in self._table_stats
            and self._snapshot_taken
            and len(self._snapshot) == len(tensors) > 0
            and all(s.shape == t.shape for s, t in zip(self._snapshot, tensors, strict=True))
        )
        if snapshot_ok:
            torch._foreach_sub_(self._snapshot, tensors)  # before - after, in place in the snapshot buffers
            extra = {"_diff": list(torch._foreach_norm(self._snapshot)), "_before": self._snapshot_norms}
        self._snapshot_taken, self._snapshot_norms = False, []
        table, host, hists = _param_table(names, tensors, stats if scalars else [], extra=extra, histograms=histograms)
        if scalars:
            if snapshot_ok:
                for i, name in enumerate(names):
                    table[name]["update_ratio"] = safe_ratio(host["_diff"][i], host["_before"][i])
            self._on_table(trainer, pl_module, table, step)
        if histograms:
            self._log_histograms(trainer, names, hists, step)

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_start(trainer, pl_module)
        if self._every is None and self.histogram_every_n_steps is None:
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
        if scalars and "update_ratio" in self._table_stats:
            with torch.no_grad():
                params = [p.detach() for _, p in self._watched_parameters(pl_module)]
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
    weights with weights and biases with biases, input -> output):

    - ``nonfinite``: a gradient holds NaN/Inf ("NaN/Inf gradients");
    - ``vanishing_grad``: a grad norm below ``vanishing_grad_ratio`` times the largest of the deeper layers', or below
      ``vanishing_grad_floor``;
    - ``exploding_grad``: a grad norm above ``exploding_grad_norm``, or above ``exploding_grad_growth`` times the
      smallest of the deeper layers'.

    Each finding is a ``UserWarning`` (once per (rule, parameter)) naming the parameters, the value against the
    threshold and a remedy. At fit end the per-parameter health table is printed and written to TensorBoard's Text tab
    as ``health/grad_report``; ``health/grad_heatmap`` (weights x logged steps, colour = log10 of the grad norm) goes
    to the Images tab at fit end and on histogram steps.

    Args:
        every_n_steps: log every this many optimizer steps; ``None`` uses ``Trainer(log_every_n_steps=...)``.
        histogram_every_n_steps: histograms every this many optimizer steps; ``None`` turns them off.
        include: glob(s) on parameter names to watch (default: all).
        exclude: glob(s) on parameter names to skip.
        module_types: watch only parameters owned directly by modules of these types (class names or classes).
        stats: statistics to log (default: all of ``norm, mean, std, abs_max, nonfinite, ratio``).
        health: judge every logged table with the health rules below (``False``: measure only).
        on_anomaly: on a finding, ``"warn"`` only (a ``UserWarning`` once per (rule, layer)), ``"stop"`` training
            gracefully after the current step (``trainer.should_stop``), or ``"raise"``
            :class:`~lightning_init.health.HealthError` (hooks are removed on the way out).
        vanishing_grad_ratio: a grad norm this many times smaller than a deeper layer's is vanishing.
        vanishing_grad_floor: a grad norm below this is vanishing (``0`` disables).
        exploding_grad_norm: a grad norm above this is exploding (``.inf`` disables).
        exploding_grad_growth: a grad norm this many times larger than a deeper layer's is exploding.

    Raises:
        ValueError: on a non-positive ``every_n_steps`` / ``histogram_every_n_steps``, an unknown statistic, an
            unknown ``on_anomaly`` or a threshold out of its range.
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
        amp = _amp_state(trainer, optimizer) if scalars else None
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
            self._on_table(trainer, pl_module, table, k, extra_metrics=amp_metrics, judge=not skipped)
        if histograms:
            self._log_histograms(trainer, names, hists, k)


class ActivationMonitor(_LayerMonitor):
    """Log per-module output statistics (and histograms) of training steps that log.

    Forward hooks are registered in ``on_train_batch_start`` only when the optimizer step the batch belongs to logs,
    and removed as soon as that step is done (never during sanity checking or validation; no hook work at all on the
    other steps). A hook keeps only small float32 reductions of the module's output (the first floating-point tensor
    of a tuple/list/dict output), never the tensor. With gradient accumulation the statistics cover every
    micro-batch of the step (merged exactly); a module called several times per step is reported over all calls.

    Watched by default: every non-root module that owns parameters directly (``Linear``, ``Conv``, norms...) plus every
    activation module (``lightning_init.activations.nonlinearity_of`` is not None: ``ReLU``, ``Tanh``...), since
    dead units and saturation are properties of activation outputs. Functional activations (``F.relu``) cannot be
    hooked. Rows are ordered by forward execution (input -> output).

    Under DDP the statistics describe the global batch: each process merges its calls into per-module moments on the
    device, the processes exchange them in one ``all_gather`` per logging step, and every process merges them the
    same way (mean and std exactly, max of maxima, sums of counts; :mod:`lightning_init.reduce`). Histograms show
    rank zero's outputs.

    Logged metrics at the step of the batch (``{module}`` is the qualified module name, e.g. ``net.3``):

    - ``activation_mean/{module}``, ``activation_std/{module}`` (unbiased), ``activation_abs_max/{module}``;
    - ``activation_zero_fraction/{module}``: fraction of exactly-zero outputs (dead units after ReLU-like layers);
    - ``activation_saturation/{module}`` (bounded activations only: tanh, sigmoid and their hard variants): fraction
      of outputs within 0.01 of a bound of the output range, i.e. ``|y| > 0.99`` for tanh, ``y < 0.01`` or
      ``y > 0.99`` for sigmoid;
    - ``activation_nonfinite/{module}``: number of NaN/Inf outputs;
    - histograms ``activation/{module}`` (TensorBoard only) of the first micro-batch of a histogram step;
    - with ``health=True``: ``health/nonfinite_activation``, ``health/vanishing_activation``,
      ``health/exploding_activation``, ``health/dead``, ``health/saturated`` (number of flagged modules) at every
      logging step; the text ``health/activation_report`` and the image ``health/activation_heatmap`` (TensorBoard
      only).

    Health checks (thresholds justified in :class:`~lightning_init.health.HealthThresholds`; the statistics they read
    are computed whatever ``stats`` logs):

    - ``nonfinite``: a module output holds NaN/Inf ("NaN/Inf activations");
    - ``vanishing_activation`` / ``exploding_activation``: ``activation_std`` of a parameterized layer divided by the
      first parameterized layer's below ``vanishing_activation_ratio`` / above ``exploding_activation_ratio``;
    - ``dead``: ``zero_fraction`` above ``dead_fraction`` after a ReLU-like module ("dead ReLU units");
    - ``saturated``: ``saturation`` above ``saturated_fraction`` after tanh/sigmoid ("saturated tanh units").

    Each finding is a ``UserWarning`` (once per (rule, module)) naming the modules, the value against the threshold
    and a remedy. At fit end the per-module health table is printed and written to TensorBoard's Text tab as
    ``health/activation_report``; ``health/activation_heatmap`` (parameterized layers x logged steps, colour = log10
    of ``activation_std``) goes to the Images tab at fit end and on histogram steps.

    Args:
        every_n_steps: log every this many optimizer steps; ``None`` uses ``Trainer(log_every_n_steps=...)``.
        histogram_every_n_steps: histograms every this many optimizer steps; ``None`` turns them off.
        include: glob(s) on module names to watch.
        exclude: glob(s) on module names to skip.
        module_types: watch modules of these types instead of the default (class names or classes).
        stats: statistics to log (default: all of ``mean, std, abs_max, zero_fraction, saturation, nonfinite``).
        health: judge every logged table with the health rules below (``False``: measure only).
        on_anomaly: on a finding, ``"warn"`` only (a ``UserWarning`` once per (rule, layer)), ``"stop"`` training
            gracefully after the current step (``trainer.should_stop``), or ``"raise"``
            :class:`~lightning_init.health.HealthError` (hooks are removed on the way out).
        vanishing_activation_ratio: a layer's activation std relative to the first layer's below this is vanishing.
        exploding_activation_ratio: the same ratio above this is exploding.
        dead_fraction: ``zero_fraction`` above this after a ReLU-like module is dead.
        saturated_fraction: ``saturation`` above this after tanh/sigmoid is saturated.

    Raises:
        ValueError: on a non-positive ``every_n_steps`` / ``histogram_every_n_steps``, an unknown statistic, an
            unknown ``on_anomaly`` or a threshold out of its range.

    Example::

        import lightning.pytorch as pl
        from lightning_init import ActivationMonitor

        trainer = pl.Trainer(max_steps=10, callbacks=[ActivationMonitor(every_n_steps=5)])
    """

    kind = "activation"
    _valid_stats = ACTIVATION_STATS
    _default_stats = DEFAULT_ACTIVATION_STATS
    _health_stats = ("std", "zero_fraction", "saturation", "nonfinite")

    def __init__(
        self,
        every_n_steps: int | None = None,
        histogram_every_n_steps: int | None = DEFAULT_HISTOGRAM_EVERY_N_STEPS,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        module_types: Sequence[str | type[nn.Module]] | None = None,
        stats: Sequence[ActivationStat] | None = None,
        health: bool = True,
        on_anomaly: OnAnomaly = "warn",
        vanishing_activation_ratio: float = VANISHING_ACTIVATION_RATIO,
        exploding_activation_ratio: float = EXPLODING_ACTIVATION_RATIO,
        dead_fraction: float = DEAD_FRACTION,
        saturated_fraction: float = SATURATED_FRACTION,
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
                "vanishing_activation_ratio": vanishing_activation_ratio,
                "exploding_activation_ratio": exploding_activation_ratio,
                "dead_fraction": dead_fraction,
                "saturated_fraction": saturated_fraction,
            },
        )
        self._recorder = ActivationRecorder()
        self._recording: int | None = None  # the optimizer step being recorded
        self._watched_names: list[str] = []  # same list and order on every process
        self._recording_scalars = False
        self._recording_histograms = False
        self._warned_compiled = False
        #: Module name -> nonlinearity name (None for parameterized layers) of the modules of the last table.
        self.nonlinearities: dict[str, str | None] = {}

    def _watched_modules(self, pl_module: "pl.LightningModule") -> list[tuple[str, nn.Module]]:
        compiled = compiled_regions(pl_module)
        if compiled and not self._warned_compiled:
            self._warned_compiled = True
            where = "The LightningModule" if "" in compiled else ", ".join(compiled)
            rank_zero_warn(
                f"ActivationMonitor: {where} runs compiled by `torch.compile`; forward hooks cannot record inside "
                "compiled code, so activations of the modules it runs are not logged (weights and gradients are). "
                "Monitor activations on an uncompiled run."
            )
        out = []
        for name, module in pl_module.named_modules():
            if not name or any(r == "" or name == r or name.startswith(f"{r}.") for r in compiled):
                continue
            if self.module_types:
                keep = _type_matches(module, self.module_types)
            else:
                keep = nonlinearity_of(module) is not None or next(module.parameters(recurse=False), None) is not None
            if keep and self._selected(name):
                out.append((name, module))
        return out

    @override
    def _release(self) -> None:
        self._recorder.clear()
        self._recording = None

    @override
    def _nonlinearities(self) -> Mapping[str, str | None] | None:
        return self.nonlinearities

    @override
    def on_train_batch_start(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        k = trainer.global_step
        if self._recording is not None:
            if self._recording == k:  # next micro-batch of the step being recorded
                return
            self._finish(trainer, pl_module)  # the step ended without our noticing (should not happen)
        index = self._step_index(trainer)
        scalars, histograms = self._logs_scalars(index), self._logs_histograms(index)
        if not (scalars or histograms):
            return
        self._recording = k
        self._recording_scalars, self._recording_histograms = scalars, histograms
        watched = self._watched_modules(pl_module)
        self._watched_names = [name for name, _ in watched]
        self._recorder.start(watched, histograms=histograms)

    @override
    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._recording is not None and trainer.global_step > self._recording:
            self._finish(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._recording is not None:
            self._finish(trainer, pl_module)

    @override
    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._recorder.enabled = False

    @override
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._recorder.enabled = True

    def _finish(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Remove the hooks; merge the records (across processes: one ``all_gather``), fetch once, log.

        Under DDP every process reaches this at the same optimizer step (the step's end), enters the one collective
        even when its watched modules did not run, and ends with the same table: the statistics of the global batch.
        Histograms show this process's (rank zero's) first micro-batch.
        """
        rec, step = self._recorder, self._recording
        rec.stop()
        self._recording = None
        names = self._watched_names
        distributed = trainer.world_size > 1
        if step is None or (not rec.rows and not distributed):
            rec.clear()
            return
        moments = local_moments(names, rec.rows, rec.numels, device=pl_module.device)
        # [processes, modules, columns]: the logging step's one collective, or this process alone
        moments = _all_gather(trainer, moments) if distributed else moments[None]
        hist_names = [n for n in rec.rows if n in rec.histograms] if self._recording_histograms else []
        cols: dict[str, Any] = {"moments": moments}
        for i, n in enumerate(hist_names):
            cols[f"c{i}"] = rec.histograms[n]["counts"]
            cols[f"m{i}"] = rec.histograms[n]["meta"]
        host = fetch(cols)  # the one transfer
        processes, watched, width = moments.shape
        flat = host["moments"]
        parts = [
            [flat[(p * watched + i) * width : (p * watched + i + 1) * width] for i in range(watched)]
            for p in range(processes)
        ]
        index = {n: i for i, n in enumerate(names)}
        modules = dict(pl_module.named_modules())
        table: Table = {}
        self.nonlinearities = {}
        for n in moment_order(names, parts):
            full = merge_moments([rows[index[n]] for rows in parts], bounded=rec.bounded.get(n, False))
            table[n] = {s: full[s] for s in self._table_stats if s in full}
            self.nonlinearities[n] = nonlinearity_of(modules[n]) if n in modules else None
        hists = [host_histograms(host[f"c{i}"], host[f"m{i}"], 1, HISTOGRAM_BINS)[0] for i in range(len(hist_names))]
        rec.clear()
        if self._recording_scalars and table:
            self._on_table(trainer, pl_module, table, step)
        if hist_names:
            self._log_histograms(trainer, hist_names, hists, step)
