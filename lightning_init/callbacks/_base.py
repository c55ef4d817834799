"""What the three monitors share: ``_LayerMonitor`` (cadence, selection, the table seam, health, cleanup).

The monitors are :class:`~lightning_init.callbacks.weight_monitor.WeightMonitor`,
:class:`~lightning_init.callbacks.gradient_monitor.GradientMonitor` and
:class:`~lightning_init.callbacks.activation_monitor.ActivationMonitor` (scheduling only). When to measure lives
in them; the math is in :mod:`lightning_init.stats`, the hooks in :mod:`lightning_init.hooks`,
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
(``on_anomaly="stop"`` stops every rank at the same step); only rank zero writes.

Sharded (FSDP2 ``fully_shard`` through ``ModelParallelStrategy``): parameters and gradients are ``DTensor`` shards;
``WeightMonitor`` and ``GradientMonitor`` report the statistics of the whole tensors, computed from the local shards
and completed with ONE ``all_gather`` of a small per-shard table per monitor per logging step
(:mod:`lightning_init.sharded`; never ``full_tensor()``), so the table, tags and health decisions are those of the
unsharded run on every rank; histograms show rank zero's shards. FSDP1 (``FSDPStrategy``) and DeepSpeed flatten
parameters into shards and are refused by ``WeightMonitor`` and ``GradientMonitor`` at setup.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_init import writers

# Runtime import: LightningCLI checks the restricted type while parsing (a YAML 0 is a parser error).
from lightning_init.argtypes import PositiveInt
from lightning_init.callbacks._compat import batches_that_stepped, sharded_strategy
from lightning_init.checks import check_choice, did_you_mean
from lightning_init.health import (
    Finding,
    HealthError,
    HealthThresholds,
    HealthTracker,
    Kind,
    OnAnomaly,
    health_tag,
    merge_findings,
    profile_of,
)
from lightning_init.health.context import flow_order, in_flow_order, parameter_context
from lightning_init.health.rules import Context
from lightning_init.hooks import compiled_regions, original_name
from lightning_init.sharded import check_supported, is_sharded, local_tensor, sharded_columns
from lightning_init.stats import (
    HEADROOM_STATS,
    HISTOGRAM_BINS,
    HostHistogram,
    Table,
    fetch,
    headroom_format,
    histogram_columns,
    host_histograms,
    repair,
    tensor_columns,
)

__all__: list[str] = []

#: Histograms are costly (a pass, a scatter and a transfer per tensor) and TensorBoard shows ~30 of them per tag;
#: every 500 steps keeps them to a few hundred per tag over a long run.
DEFAULT_HISTOGRAM_EVERY_N_STEPS = 500

_ON_ANOMALY: tuple[str, ...] = get_args(OnAnomaly)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a monitor does the host work of a logging step.

    A logging step allocates tens of thousands of short-lived container objects (tensor wrappers, rows, tags); with
    the collector on they trigger ~100 young-generation collections and, every step or two, a full collection that
    scans every tracked object of the process (~0.5 M in a Lightning + TensorBoard process: 0.1-0.4 s on these CPUs,
    more than all the statistics). Reference counting frees everything the monitors allocate (they create no
    reference cycles: checked with ``gc.DEBUG_SAVEALL`` over logging steps), so nothing is kept longer; the collector
    is re-enabled on the way out, also on an exception, and left alone when it was already off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _headroom_tags(kind: Kind) -> set[str]:
    """The ``health/*`` tags of the 16-bit headroom rules of ``kind`` (written only when the table has headroom)."""
    return {health_tag(rule, kind) for rule in ("underflow", "overflow")}


#: Docstring text the three monitors share, written once: a line ``{key}`` in a monitor's docstring is replaced by
#: :func:`_document` when the class is created, so ``help()``, Sphinx and LightningCLI's ``--help`` read the full text.
_SHARED_DOCS: dict[str, str] = {
    "cadence_args": """\
every_n_steps: log every this many optimizer steps; ``None`` uses ``Trainer(log_every_n_steps=...)``.
histogram_every_n_steps: histograms every this many optimizer steps; ``None`` turns them off.
figure_every_n_steps: also draw the health figures (depth-profile heatmap and chart, Images tab) on the logging
    steps ``k`` with ``(k + 1) % figure_every_n_steps == 0``; ``None`` (default): only at fit end, where they hold
    the whole history (each figure costs ~0.1 s of CPU, more than a step of a small model).
per_layer_charts: also add one custom-scalars chart per statistic with every layer on it (``False``: only the
    health and summary charts, which stay fast with many layers and many runs).""",
    "health_args": """\
health: judge every logged table with the health rules below (``False``: measure only).
on_anomaly: on a finding, ``"warn"`` only (a ``UserWarning`` once per (rule, layer)), ``"stop"`` training
    gracefully after the current step (``trainer.should_stop``), or ``"raise"``
    :class:`~lightning_init.health.HealthError` (hooks are removed on the way out).""",
    "thresholds_arg": """\
thresholds: a :class:`~lightning_init.health.HealthThresholds` with every threshold (e.g. one object shared by
    the three monitors); the threshold arguments of this monitor that differ from their defaults override it.""",
    "value_error": """\
ValueError: on a non-positive ``every_n_steps`` / ``histogram_every_n_steps``, an unknown statistic, an
    unknown ``on_anomaly`` or a threshold out of its range.""",
}

_M = TypeVar("_M", bound=type)


def _document(cls: _M) -> _M:
    """Fill the ``{key}`` lines of ``cls.__doc__`` with :data:`_SHARED_DOCS`, indented as the line."""
    lines = []
    for line in (cls.__doc__ or "").split("\n"):
        key = line.strip()
        if key.startswith("{") and key.endswith("}") and key[1:-1] in _SHARED_DOCS:
            indent = line[: len(line) - len(line.lstrip())]
            lines += [indent + text for text in _SHARED_DOCS[key[1:-1]].split("\n")]
        else:
            lines.append(line)
    cls.__doc__ = "\n".join(lines)
    return cls


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
        every_n_steps: PositiveInt | None = None,
        histogram_every_n_steps: PositiveInt | None = DEFAULT_HISTOGRAM_EVERY_N_STEPS,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        module_types: Sequence[str | type[nn.Module]] | None = None,
        stats: Sequence[str] | None = None,
        *,
        health: bool = True,
        on_anomaly: OnAnomaly = "warn",
        thresholds: Mapping[str, float] | HealthThresholds | None = None,
        base_thresholds: HealthThresholds | None = None,
        per_layer_charts: bool = False,
        figure_every_n_steps: PositiveInt | None = None,
    ) -> None:
        if not isinstance(per_layer_charts, bool):
            raise ValueError(f"`per_layer_charts` must be True or False, got {per_layer_charts!r}.")
        #: Whether the custom-scalars layout gets one multi-line chart per statistic with every layer on it.
        self.per_layer_charts = per_layer_charts
        self.every_n_steps = _positive_or_none("every_n_steps", every_n_steps)
        self.histogram_every_n_steps = _positive_or_none("histogram_every_n_steps", histogram_every_n_steps)
        self.figure_every_n_steps = _positive_or_none("figure_every_n_steps", figure_every_n_steps)
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
        if not chosen:
            raise ValueError(
                f"`stats` is empty ({stats!r}): {type(self).__name__} would log nothing. Give at least one of "
                f"{', '.join(map(repr, self._valid_stats))} (default {list(self._default_stats)}), or remove the "
                "monitor."
            )
        self.stats: tuple[str, ...] = tuple(dict.fromkeys(chosen))
        if not isinstance(health, bool):
            raise ValueError(f"`health` must be True or False, got {health!r}.")
        check_choice("on_anomaly", on_anomaly, _ON_ANOMALY)
        self.health = health
        self.on_anomaly: OnAnomaly = on_anomaly
        #: The validated thresholds (this monitor reads only those of its own rules): ``base_thresholds`` (a
        #: :class:`HealthThresholds` the user passed as ``thresholds=``) with the monitor's own threshold arguments
        #: that differ from the defaults applied on top.
        if isinstance(thresholds, HealthThresholds):
            base_thresholds, thresholds = thresholds, None
        if base_thresholds is not None and not isinstance(base_thresholds, HealthThresholds):
            raise ValueError(f"`thresholds` must be a HealthThresholds, got {type(base_thresholds).__name__}.")
        defaults = HealthThresholds()
        own = {k: v for k, v in dict(thresholds or {}).items() if base_thresholds is None or v != getattr(defaults, k)}
        self.thresholds = (base_thresholds or defaults).replace(**own) if own else (base_thresholds or defaults)
        self._context_key: tuple[int, ...] | None = None
        # the watched parameters of the last selection and its key (parameter identities and filters), and the
        # data-flow order of the last table's rows: both reused while the model and its rows stay the same
        self._watch_params_key: tuple[Any, ...] | None = None
        self._watch_params: list[tuple[str, nn.Parameter]] = []
        self._flow_rows: tuple[list[str], tuple[str, ...], list[str]] | None = None
        self._tags: tuple[tuple[tuple[str, ...], tuple[str, ...]], dict[str, list[str]]] | None = None
        self._context = Context()
        self._tracker: HealthTracker | None = HealthTracker(self.kind) if health else None
        self._heatmap_step: int | None = None
        #: Whether the table of the logging step being measured is followed by the figures (``figure_every_n_steps``;
        #: set where the step's cadence is decided, read by :meth:`_on_table`).
        self._figures_due = False
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
        return batches_that_stepped(trainer)

    def _logs_scalars(self, k: int) -> bool:
        # Step 0 always logs: the gradients and activations of the very first step are the initializer's own depth
        # profile (a bad init can turn everything into NaN/Inf before step ``every_n_steps - 1``).
        return self._every is not None and (k == 0 or (k + 1) % self._every == 0)

    def _logs_histograms(self, k: int) -> bool:
        h = self.histogram_every_n_steps
        return h is not None and (k + 1) % h == 0

    def _logs_figures(self, trainer: "pl.Trainer", k: int) -> bool:
        """Whether logging step ``k`` draws the figures mid-run (they need a judged table: health on, scalars on).

        Not on the last step of a fit of known length: fit end draws them one step later.
        """
        f = self.figure_every_n_steps
        if f is None or self._tracker is None or not self._logs_scalars(k) or (k + 1) % f:
            return False
        return not (trainer.max_steps > 0 and k >= trainer.max_steps - 1)

    def _selected(self, name: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(name, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, g) for g in self.exclude)

    def _watched_parameters(self, pl_module: "pl.LightningModule") -> list[tuple[str, nn.Parameter]]:
        """Parameters in registration order, tied ones once; with ``module_types`` only those owned by such modules.

        Unmaterialized lazy parameters are left out until a forward materializes them.
        """
        every = list(pl_module.named_parameters())
        key = (tuple(id(p) for _, p in every), self.module_types, self.include, self.exclude)
        if key == self._watch_params_key:
            return list(self._watch_params)
        if not self.module_types:
            named = [(original_name(n), p) for n, p in every]
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
            order = {id(p): i for i, (_, p) in enumerate(every)}
            named.sort(key=lambda item: order.get(id(item[1]), len(order)))
        # a lazy module's parameters (nn.LazyLinear) exist only after its first forward: skipped until then (and the
        # selection is not kept: materializing keeps the parameter's identity)
        out = [(n, p) for n, p in named if self._selected(n) and not isinstance(p, nn.parameter.UninitializedParameter)]
        lazy = any(isinstance(p, nn.parameter.UninitializedParameter) for _, p in every)
        self._watch_params_key, self._watch_params = (None, []) if lazy else (key, out)
        return out

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        _FLOW_ORDERS.pop(trainer, None)  # a new fit: the model may have changed
        sharded = sharded_strategy(trainer.strategy, model_parallel=False)
        if sharded is not None and self.kind != "activation":
            raise RuntimeError(
                f"{type(self).__name__} does not support `{sharded}`: it flattens {self.kind}s into shards, so "
                "per-parameter statistics cannot be completed. Use `ModelParallelStrategy` with `fully_shard` in "
                f"`configure_model` (FSDP2: supported), `strategy='ddp'`, or keep `ActivationMonitor` (module outputs "
                f"are not sharded) and drop `{type(self).__name__}`."
            )
        self._every = (
            self.every_n_steps
            if self.every_n_steps is not None
            else (getattr(trainer, "log_every_n_steps", None) or None)
        )
        self._figures_due = False
        if not trainer.loggers and not self._warned_no_logger:
            self._warned_no_logger = True
            rank_zero_warn(
                f"{type(self).__name__}: the Trainer has no logger (`logger=False`), nothing will be logged."
            )
        sixteen_bit = headroom_format(torch.float32, str(getattr(trainer, "precision", None))) is not None
        # the 16-bit headroom charts only where there is headroom to chart (not under 32-bit precision)
        charted = [s for s in self.stats if sixteen_bit or s not in HEADROOM_STATS]
        writers.request_layout(trainer, self.kind, charted, per_layer=self.per_layer_charts)
        if self.health:
            self._tracker = HealthTracker(self.kind)  # a new fit, a new report (a resumed one is restored after setup)
            self._heatmap_step = None
            writers.request_health_chart(trainer, self.kind, list(self._tracker.scalars()))
            _health_total(trainer).counts[self.kind] = 0

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._check_selection(pl_module)
        writers.write_layout(trainer)

    # ------------------------------------------------------------------ selection

    #: What the monitor watches, for messages ("parameters", "modules").
    _watches: ClassVar[str] = "parameters"

    def _watch_names(self, pl_module: "pl.LightningModule", *, trainable_only: bool = True) -> list[str]:
        """The names this monitor watches with its current filters (``trainable_only``: gradient monitors)."""
        return [n for n, _ in self._watched_parameters(pl_module)]

    @contextlib.contextmanager
    def _filters(
        self, module_types: tuple[str | type, ...], include: tuple[str, ...], exclude: tuple[str, ...]
    ) -> Iterator[None]:
        saved = self.module_types, self.include, self.exclude
        self.module_types, self.include, self.exclude = module_types, include, exclude
        try:
            yield
        finally:
            self.module_types, self.include, self.exclude = saved

    def _selection(
        self, pl_module: "pl.LightningModule", module_types: tuple[str | type, ...], include: tuple[str, ...],
        exclude: tuple[str, ...],
    ) -> list[str]:  # fmt: skip
        with self._filters(module_types, include, exclude):
            return self._watch_names(pl_module, trainable_only=False)

    def _check_selection(self, pl_module: "pl.LightningModule") -> None:
        """Refuse filters that leave nothing to watch, before the first batch; name the filter that emptied it.

        ``module_types``, then ``include``, then ``exclude`` are applied in turn; the first one that leaves nothing is
        a ``ValueError``. When something else is the reason (a frozen model for ``GradientMonitor``, compiled code for
        ``ActivationMonitor``), one warning says so instead; a model with nothing of the kind at all (no parameters)
        is silent. A ``module_types`` entry that matches no module while the others do is a warning (with a "did
        you mean").
        """
        me = type(self).__name__
        model = type(pl_module).__name__
        present = sorted({c.__name__ for m in pl_module.modules() for c in type(m).__mro__ if issubclass(c, nn.Module)})
        for wanted in self.module_types:
            name = wanted if isinstance(wanted, str) else wanted.__name__
            if self.module_types != (wanted,) and not any(_type_matches(m, (wanted,)) for m in pl_module.modules()):
                rank_zero_warn(
                    f"{me}: `module_types` entry {name!r} matches no module of {model}.{did_you_mean(name, present)}"
                )
        if self._watch_names(pl_module):
            return
        if not self._selection(pl_module, (), (), ()):
            return  # a model without parameters (or modules) to watch: nothing to say, nothing to log
        typed = self._selection(pl_module, self.module_types, (), ())
        if self.module_types and not typed:
            names = [t if isinstance(t, str) else t.__name__ for t in self.module_types]
            hint = "".join(did_you_mean(n, present) for n in names[:1])
            raise ValueError(
                f"{me}: `module_types`={names!r} matches no module of {model}, so there is nothing to watch."
                f"{hint} Module types in the model: {', '.join(present[:12])}{' ...' if len(present) > 12 else ''}."
            )
        included = self._selection(pl_module, self.module_types, self.include, ())
        if self.include and not included:
            raise ValueError(
                f"{me}: `include`={list(self.include)!r} matches none of the {len(typed)} {self._watches} "
                f"(e.g. {', '.join(map(repr, typed[:5]))}), so there is nothing to watch."
            )
        if self.exclude and not self._selection(pl_module, self.module_types, self.include, self.exclude):
            raise ValueError(
                f"{me}: `exclude`={list(self.exclude)!r} removes all {len(included)} {self._watches} left to watch "
                f"(e.g. {', '.join(map(repr, included[:5]))})."
            )
        rank_zero_warn(f"{me}: none of the selected {self._watches} of {model} can be watched ({self._nothing_why()}).")

    def _nothing_why(self) -> str:
        """Why the selected names are not watched when no filter is the reason (for the warning)."""
        return "no reason known"

    # ------------------------------------------------------------------ the seam

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
        order = _flow_order(trainer, pl_module)
        if order:  # the depth axis of the profiles and figures: data flow, not registration order
            names = tuple(table)
            cached = self._flow_rows
            if cached is None or cached[0] is not order or cached[1] != names:
                cached = self._flow_rows = (order, names, in_flow_order(names, order))
            table = {name: table[name] for name in cached[2]}
        key = (tuple(table), self.stats)
        if self._tags is None or self._tags[0] != key:  # the tags of these rows, per statistic (kept: they repeat)
            self._tags = (key, {stat: [f"{self.kind}_{stat}/{name}" for name in key[0]] for stat in self.stats})
        rows = list(table.values())
        metrics = {
            tag: value
            for stat, tags in self._tags[1].items()
            for tag, row in zip(tags, rows, strict=True)
            if (value := row.get(stat)) is not None
        }
        metrics.update(extra_metrics or {})
        findings: list[Finding] = []
        fresh: list[Finding] = []
        if self._tracker is not None and judge:
            context = self._health_context(pl_module, table)
            nls = context.nonlinearities or None  # activation tables: module -> nonlinearity
            judged = self._tracker.confirm(
                self.thresholds.check(self.kind, table, step=step, nonlinearities=nls, context=context)
            )
            findings = [f for f in judged if not f.info]
            fresh = self._tracker.update(
                step,
                judged,
                profile=profile_of(self.kind, table, nls, roles=context.roles),
                layers=list(table),
            )
            counts = self._tracker.scalars()
            if not any("underflow" in row or "overflow" in row for row in table.values()):
                # 32-bit tensors have no 16-bit headroom: no underflow/overflow tag at all, not a count of 0
                counts = {k: v for k, v in counts.items() if k not in _headroom_tags(self.kind)}
            metrics.update(counts)
            total = _health_total(trainer)
            if total.group is not None and trainer.global_step != total.group:
                _write_health_total(trainer)  # the previous logging batch is complete
            total.counts[self.kind] = len({layer for f in findings for layer in f.layers})
            total.group = trainer.global_step
        writers.log_scalars(trainer, metrics, step)
        for finding in fresh:  # once per (rule, layer): the tracker remembers what it returned
            if finding.info:  # e.g. structurally zero gradients: worth knowing, nothing to fix
                rank_zero_info(f"{type(self).__name__}: {finding.message}")
            else:
                rank_zero_warn(f"{type(self).__name__}: {finding.message}", category=UserWarning)
        if self._figures_due:
            self._figures_due = False
            self._log_figures(trainer, step)
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

    def _health_context(self, pl_module: "pl.LightningModule", table: Table) -> Context:
        """What the rules need to know about the model for ``table`` (see ``_parameter_context``)."""
        return self._context

    def _parameter_context(self, pl_module: "pl.LightningModule", named: Sequence[tuple[str, nn.Parameter]]) -> None:
        """Roles and unit-scale norms of the watched parameters, recomputed only when the parameter set changes."""
        key = tuple(id(p) for _, p in named)
        if self.health and key != self._context_key:
            self._context = parameter_context(pl_module, named)
            self._context_key = key

    def _log_histograms(
        self, trainer: "pl.Trainer", names: Sequence[str], hists: Sequence[HostHistogram | None], step: int
    ) -> None:
        writers.log_histograms(
            trainer, {f"{self.kind}/{n}": h for n, h in zip(names, hists, strict=True) if h is not None}, step
        )

    def _log_figures(self, trainer: "pl.Trainer", step: int) -> None:
        """Write the figures ``health/{kind}_heatmap`` and ``health/{kind}_depth_profile`` at ``step`` (once per step;
        drawn only if some logger takes images).
        """  # noqa: D205
        if self._tracker is None or self._heatmap_step == step or not len(self._tracker.history):
            return
        writers.log_image(trainer, f"health/{self.kind}_heatmap", self._tracker.heatmap, step)
        writers.log_image(trainer, f"health/{self.kind}_depth_profile", self._tracker.depth_profile, step)
        self._heatmap_step = step

    def _report(self, trainer: "pl.Trainer", *, complete: bool = True) -> None:
        """End of fit: one console line when healthy, else the flagged rows; the full table (flagged rows first) to
        the Text tab; the final figures. ``complete=False`` (a fit stopped by an exception): the pending
        ``health/total`` is not written, its batch was cut short (a resumed run writes it at that step).
        """  # noqa: D205
        if self._tracker is None or not self._tracker.layers():
            return  # no logging step happened: nothing was judged, nothing to report
        if complete:
            _write_health_total(trainer)
        step = trainer.global_step
        rank_zero_info(self.console_report(step))
        writers.log_text(trainer, f"health/{self.kind}_report", self._tracker.to_markdown(), step)
        self._log_figures(trainer, step)

    def console_report(self, steps: int) -> str:
        """What the console shows at fit end: ``"GradientMonitor: 62 parameters, healthy over 300 steps"``, or the
        flagged rows of the health table.
        """  # noqa: D205
        if self._tracker is None:
            return f"{type(self).__name__}: health off"
        rows = self._tracker.layers()
        noun = "modules" if self.kind == "activation" else "parameters"
        if not self._tracker.flagged():
            return f"{type(self).__name__}: {len(rows)} {noun}, healthy over {steps} steps"
        return (
            f"{type(self).__name__} health report after {steps} steps, flagged rows only (every row: the Text tab's "
            f"health/{self.kind}_report): {self._tracker.to_markdown(only_flagged=True)}"
        )

    # ------------------------------------------------------------------ cleanup

    def _release(self) -> None:
        """Drop hooks and every reference to modules or tensors (idempotent)."""

    @override
    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._release()
        self._report(trainer)

    @override
    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        """Release everything, then leave what fit end would (a run stopped by Ctrl-C, a crash or ``on_anomaly=
        "raise"`` keeps its health report and figures: drawn at fit end only, they would be lost otherwise).

        Lightning calls this before it finalizes the loggers. The report is host-side (no collective, so a crash of
        one DDP process cannot hang here); a failure while writing it is a warning, never a second exception that
        would hide the first.
        """  # noqa: D205
        self._release()
        try:
            self._report(trainer, complete=False)
        except Exception as err:  # the fit's own exception is the one the user must see
            rank_zero_warn(f"{type(self).__name__}: the health report after {type(exception).__name__} failed: {err!r}")

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._release()


class _HealthTotal:
    """``health/total`` of one trainer: each health monitor's number of flagged layers at its latest judged step.

    The monitors of one logging batch judge at different hooks (gradients before the optimizer step, activations and
    the updated weights after it) and log at different steps (``k`` and ``k + 1``). The total is written once per
    batch, at ``trainer.global_step`` of the batch's last judgement, when the next batch's first judgement comes (or
    at fit end): one value per step, after every monitor of that batch.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.group: int | None = None  # ``trainer.global_step`` at the latest judgement
        self.written: int | None = None  # the step ``health/total`` was last written at


_HEALTH_TOTALS: weakref.WeakKeyDictionary[Any, _HealthTotal] = weakref.WeakKeyDictionary()


def _health_total(trainer: "pl.Trainer") -> _HealthTotal:
    return _HEALTH_TOTALS.setdefault(trainer, _HealthTotal())


#: Trainer -> (id of the LightningModule, its modules in data-flow order): built once per fit, shared by the monitors.
_FLOW_ORDERS: weakref.WeakKeyDictionary[pl.Trainer, tuple[int, list[str]]] = weakref.WeakKeyDictionary()


def _flow_order(trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> list[str]:
    """``pl_module``'s modules in data-flow order (:func:`lightning_init.health.context.flow_order`), ``[]`` if none.

    From one side-effect-free forward of ``example_input_array`` when the module has one, else ``torch.fx``; not
    under a sharding strategy (FSDP, DeepSpeed, ModelParallel: a forward would all-gather, a collective outside the
    logging step's one) or for compiled modules (the forward would compile), where the tables keep registration /
    execution order.
    """
    cached = _FLOW_ORDERS.get(trainer)
    if cached is not None and cached[0] == id(pl_module):
        return cached[1]
    order: list[str] = []
    sharded = sharded_strategy(trainer.strategy) is not None or any(is_sharded(p) for p in pl_module.parameters())
    if not sharded and not compiled_regions(pl_module):
        example = pl_module.example_input_array
        if example is not None:
            from lightning.fabric.utilities.apply_func import move_data_to_device

            example = move_data_to_device(example, pl_module.device)
        order = flow_order(pl_module, example)
    _FLOW_ORDERS[trainer] = (id(pl_module), order)
    return order


def _write_health_total(trainer: "pl.Trainer") -> None:
    """Write the pending ``health/total`` (flagged layers, summed over the trainer's health monitors) once."""
    total = _health_total(trainer)
    if total.group is None or total.group == total.written:
        return
    writers.log_scalars(trainer, {writers.HEALTH_TOTAL: float(sum(total.counts.values()))}, total.group)
    total.written = total.group


def _param_table(
    names: Sequence[str],
    tensors: Sequence[Tensor],
    stats: Sequence[str],
    *,
    extra: dict[str, list[Tensor]] | None = None,
    norms: dict[str, list[Tensor]] | None = None,
    histograms: bool = False,
    count_nonfinite: bool = False,
    trainer: "pl.Trainer | None" = None,
    what: str = "parameter",
) -> tuple[Table, dict[str, list[float]], list[HostHistogram | None]]:
    """Statistics of ``tensors`` (one transfer), repaired; returns the table, raw host columns and histograms.

    ``norms`` are extra columns of L2 norms, one per tensor, of the tensors' local shards; ``extra`` columns pass
    through as they are. When the tensors are ``DTensor`` shards (FSDP2), the statistics and ``norms`` are those of
    the whole tensors, completed with ONE ``trainer.strategy.all_gather`` of a small per-shard table
    (:mod:`lightning_init.sharded`; no gather of the tensors); histograms then show this process's shards.
    """
    sharded = trainer is not None and any(is_sharded(t) for t in tensors)
    cols: dict[str, Any]
    if sharded:
        assert trainer is not None
        check_supported(list(zip(names, tensors, strict=True)), trainer.world_size, what=what)
        cols = dict(
            sharded_columns(
                tensors,
                stats,
                gather=trainer.strategy.all_gather,
                rank=trainer.global_rank,
                norms=norms,
                count_nonfinite=count_nonfinite,
            )
        )
    else:
        cols = dict(tensor_columns(tensors, stats))
        cols.update(norms or {})
    if extra:
        cols.update(extra)
    if histograms and tensors:
        cols.update(histogram_columns([local_tensor(t) for t in tensors], HISTOGRAM_BINS))
    host = fetch(cols)
    if not sharded:  # the sharded table is robust by construction (moments of x / max|x|, float64 merge)
        repair(tensors, host, count_nonfinite=count_nonfinite)
    hists = (
        host_histograms(host["counts"], host["meta"], len(tensors), HISTOGRAM_BINS) if histograms and tensors else []
    )
    wanted = [s for s in stats if s in host]
    if wanted:  # row dicts from the columns (one zip per row, no per-value indexing)
        rows = zip(*(host[s] for s in wanted), strict=True)
        table = {n: dict(zip(wanted, values, strict=True)) for n, values in zip(names, rows, strict=True)}
    else:
        table = {n: {} for n in names}
    return table, host, hists
