"""``ActivationMonitor``: when to record module outputs (hooks in :mod:`lightning_init.hooks`).

The merge across calls and processes is in :mod:`lightning_init.reduce`. The step convention and the distributed
behaviour shared by the three monitors are in :mod:`lightning_init.callbacks._base`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_init.activations import nonlinearity_of

# Runtime import: LightningCLI checks the restricted type while parsing (a YAML 0 is a parser error).
from lightning_init.argtypes import PositiveInt
from lightning_init.callbacks._base import (
    DEFAULT_HISTOGRAM_EVERY_N_STEPS,
    _document,
    _gc_paused,
    _LayerMonitor,
    _type_matches,
)
from lightning_init.health import (
    DEAD_FRACTION,
    EXPLODING_ACTIVATION_RATIO,
    OVERFLOW_FRACTION,
    SATURATED_FRACTION,
    UNDERFLOW_FRACTION,
    VANISHING_ACTIVATION_RATIO,
    HealthThresholds,
    OnAnomaly,
)
from lightning_init.health.context import activation_context
from lightning_init.hooks import ActivationRecorder, compiled_regions
from lightning_init.reduce import (
    SIGNAL_CAPACITY,
    exact_signal_std,
    local_signal,
    merge_moment_rows,
    merge_signal,
    moment_rank,
    signal_capacity,
)
from lightning_init.stats import (
    ACTIVATION_STATS,
    DEFAULT_ACTIVATION_STATS,
    HISTOGRAM_BINS,
    ActivationStat,
    Table,
    fetch,
    headroom_stats,
    host_histograms,
)

__all__ = ["ActivationMonitor"]


def _all_gather(trainer: "pl.Trainer", table: Tensor) -> Tensor:
    """``[world, *table.shape]``: every process's ``table``, through the strategy's collective."""
    gathered = trainer.strategy.all_gather(table)
    return gathered.reshape(-1, *table.shape)


def _loss_of(outputs: Any) -> Tensor | None:
    """The loss ``training_step`` returned (a tensor or ``{"loss": tensor}``), or ``None``."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss if isinstance(loss, Tensor) and loss.numel() == 1 and loss.is_floating_point() else None


@_document
class ActivationMonitor(_LayerMonitor):
    """Log per-module output statistics (and histograms) of training steps that log.

    Forward hooks are registered in ``on_train_batch_start`` only when the optimizer step the batch belongs to logs,
    and removed as soon as that step is done (never during sanity checking or validation; no hook work at all on the
    other steps). A hook keeps only small float32 reductions of the module's output (the first floating-point tensor
    of a tuple/list/dict output), never the tensor itself: a small output (at most 16 Ki elements) is copied into a
    reused staging buffer of its shape and reduced with the step's other outputs of that shape at the step's end
    (bounded: 64 MiB per device, kept between logging steps, released at fit end; see
    :class:`~lightning_init.hooks.ActivationRecorder`). With gradient accumulation the statistics cover every
    micro-batch of the step (merged exactly); a module called several times per step is reported over all calls.

    Watched by default: every non-root module that owns parameters directly (``Linear``, ``Conv``, norms...) plus every
    activation module (``lightning_init.activations.nonlinearity_of`` is not None: ``ReLU``, ``Tanh``...), since
    dead units and saturation are properties of activation outputs. Functional activations (``F.relu``) cannot be
    hooked. Rows are ordered by forward execution (input -> output).

    Under DDP the statistics describe the global batch: each process merges its calls into per-module moments on the
    device, the processes exchange them in one ``all_gather`` per logging step, and every process merges them the
    same way (mean and std exactly, max of maxima, sums of counts, the signal std from each module's unit means,
    which travel in the same collective; :mod:`lightning_init.reduce`). Histograms show rank zero's outputs.

    Logged metrics at the step of the batch (``{module}`` is the qualified module name, e.g. ``net.3``):

    - ``activation_mean/{module}``, ``activation_std/{module}`` (unbiased, over all elements),
      ``activation_abs_max/{module}``;
    - ``activation_signal_std/{module}``: the signal std, each unit's std across the samples of the batch pooled over
      the units (per-unit offsets such as a bias are not signal); what the health rules and the heatmap read;
    - ``activation_zero_fraction/{module}``: fraction of exactly-zero outputs (dead units after ReLU-like layers);
    - ``activation_saturation/{module}`` (bounded activations only: tanh, sigmoid and their hard variants): fraction
      of outputs within 0.01 of a bound of the output range, i.e. ``|y| > 0.99`` for tanh, ``y < 0.01`` or
      ``y > 0.99`` for sigmoid;
    - ``activation_nonfinite/{module}``: number of NaN/Inf outputs;
    - under 16-bit precision only (outputs in float16/bfloat16, or any output under ``16-mixed``/``bf16-mixed``,
      measured against the format it is cast to; never under 32-bit): ``activation_underflow/{module}`` and
      ``activation_overflow/{module}``, the fractions of elements below the format's smallest normal (non-zero) /
      above half its largest value (Inf included), and ``activation_dynamic_range/{module}``, ``log2(max /
      smallest non-zero |y|)`` in bits; this process's outputs under DDP; health rules ``underflow`` / ``overflow``
      (``health/underflow_activation``, ``health/overflow_activation``);
    - histograms ``activation/{module}`` (TensorBoard only) of the first micro-batch of a histogram step;
    - with ``health=True``: ``health/nonfinite_activation``, ``health/vanishing_activation``,
      ``health/exploding_activation``, ``health/dead``, ``health/saturated``, ``health/output_scale`` (number of
      flagged modules) at every logging step; the text ``health/activation_report``, the images
      ``health/activation_heatmap`` and ``health/activation_depth_profile``, and the shared ``health/total``.

    Health checks (thresholds justified in :class:`~lightning_init.health.HealthThresholds`; the statistics they read
    are computed whatever ``stats`` logs):

    - ``nonfinite``: a module output holds NaN/Inf ("NaN/Inf activations");
    - ``vanishing_activation`` / ``exploding_activation``: ``activation_signal_std`` of a judged layer divided by the
      first judged layer's below ``vanishing_activation_ratio`` / above ``exploding_activation_ratio``; judged: weight
      layers whose output the next module does not renormalize (not a conv before its BatchNorm), embeddings
      excepted; the model output only for exploding (a small head is by design);
    - ``output_scale``: the step's training loss above ``output_loss_ratio`` x ln(classes) while the model output's
      signal std is large: the logits are far too large (an N(0, 1) embedding tied to the head);
    - ``dead``: ``zero_fraction`` above ``dead_fraction`` after a ReLU-like module ("dead ReLU units");
    - ``saturated``: ``saturation`` above ``saturated_fraction`` after tanh/sigmoid ("saturated tanh units").

    Each finding is a ``UserWarning`` (once per (rule, module)) naming the modules, the value against the threshold
    and a remedy. At fit end one line is printed when nothing was flagged, else the flagged rows; the full table
    (flagged rows first) goes to the Text tab as ``health/activation_report``; ``health/activation_heatmap``
    (parameterized layers x logged steps, colour = log10 of the activation std) and
    ``health/activation_depth_profile`` go to every logger that takes images at fit end (mid-run too with
    ``figure_every_n_steps``).

    Args:
        {cadence_args}
        include: glob(s) on module names to watch.
        exclude: glob(s) on module names to skip.
        module_types: watch modules of these types instead of the default (class names or classes).
        stats: statistics to log (default: all of ``mean, std, abs_max, zero_fraction, saturation, nonfinite``).
        {health_args}
        vanishing_activation_ratio: a layer's activation std relative to the first layer's below this is vanishing.
        exploding_activation_ratio: the same ratio above this is exploding.
        dead_fraction: ``zero_fraction`` above this after a ReLU-like module is dead.
        saturated_fraction: ``saturation`` above this after tanh/sigmoid is saturated.
        underflow_fraction: under 16-bit precision, an output with more of its elements than this below the
            format's smallest normal underflows.
        overflow_fraction: the same for elements above half the format's largest value (``0``: any).
        {thresholds_arg}

    Raises:
        {value_error}

    Example::

        import lightning.pytorch as pl
        from lightning_init import ActivationMonitor

        trainer = pl.Trainer(max_steps=10, callbacks=[ActivationMonitor(every_n_steps=5)])
    """

    kind = "activation"
    _valid_stats = ACTIVATION_STATS
    _default_stats = DEFAULT_ACTIVATION_STATS
    _health_stats = ("std", "signal_std", "zero_fraction", "saturation", "nonfinite")

    def __init__(
        self,
        every_n_steps: PositiveInt | None = None,
        histogram_every_n_steps: PositiveInt | None = DEFAULT_HISTOGRAM_EVERY_N_STEPS,
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
                "vanishing_activation_ratio": vanishing_activation_ratio,
                "exploding_activation_ratio": exploding_activation_ratio,
                "dead_fraction": dead_fraction,
                "saturated_fraction": saturated_fraction,
                "underflow_fraction": underflow_fraction,
                "overflow_fraction": overflow_fraction,
            },
            base_thresholds=thresholds,
        )
        self._recorder = ActivationRecorder()
        self._recording: int | None = None  # the optimizer step being recorded
        self._watched_names: list[str] = []  # same list and order on every process
        self._recording_scalars = False
        self._recording_histograms = False
        self._warned_compiled = False
        #: Floats of unit means in the collective (the same on every process: agreed from the gathered layouts).
        self._signal_capacity = SIGNAL_CAPACITY
        # the watched modules of the last selection and the key it was made for (the module tree, the filters, the
        # compiled regions): a logging step of an unchanged model reuses it instead of classifying every module again
        self._watch_key: tuple[Any, ...] | None = None
        self._watch_list: list[tuple[str, nn.Module]] = []
        self._nonlinearity_cache: dict[str, str | None] = {}
        self._watched_by_name: dict[str, nn.Module] = {}
        self._watched_nonlinearities: dict[str, str | None] = {}

    _watches = "modules"

    @override
    def _watch_names(self, pl_module: "pl.LightningModule", *, trainable_only: bool = True) -> list[str]:
        return [n for n, _ in self._watched_modules(pl_module)]

    @override
    def _nothing_why(self) -> str:
        return "they run compiled by `torch.compile`"

    def _watched_modules(self, pl_module: "pl.LightningModule") -> list[tuple[str, nn.Module]]:
        named = list(pl_module.named_modules())
        compiled = compiled_regions(pl_module, named)
        if compiled and not self._warned_compiled:
            self._warned_compiled = True
            where = "The LightningModule" if "" in compiled else ", ".join(compiled)
            rank_zero_warn(
                f"ActivationMonitor: {where} runs compiled by `torch.compile`; forward hooks cannot record inside "
                "compiled code, so activations of the modules it runs are not logged (weights and gradients are). "
                "Monitor activations on an uncompiled run."
            )
        key = (tuple(id(m) for _, m in named), tuple(compiled), self.module_types, self.include, self.exclude)
        if key == self._watch_key:
            return self._watch_list
        out = []
        nonlinearities: dict[str, str | None] = {}
        for name, module in named:
            if not name or any(r == "" or name == r or name.startswith(f"{r}.") for r in compiled):
                continue
            nl = nonlinearity_of(module)
            if self.module_types:
                keep = _type_matches(module, self.module_types)
            else:
                keep = nl is not None or next(module.parameters(recurse=False), None) is not None
            if keep and self._selected(name):
                out.append((name, module))
                nonlinearities[name] = nl
        self._watch_key, self._watch_list, self._nonlinearity_cache = key, out, nonlinearities
        return out

    @override
    def _release(self) -> None:
        self._recorder.clear()
        self._recording = None

    @override
    def on_train_batch_start(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        k = trainer.global_step
        if self._recording is not None:
            if self._recording == k:  # next micro-batch of the step being recorded
                self._recorder.next_batch()
                return
            self._finish(trainer, pl_module)  # the step ended without our noticing (should not happen)
        index = self._step_index(trainer)
        scalars, histograms = self._logs_scalars(index), self._logs_histograms(index)
        if not (scalars or histograms):
            return
        self._recording = k
        self._recording_scalars, self._recording_histograms = scalars, histograms
        self._figures_due = self._logs_figures(trainer, index)
        self._start(trainer, pl_module)

    @_gc_paused()
    def _start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        watched = self._watched_modules(pl_module)
        self._watched_names = [name for name, _ in watched]
        self._watched_by_name = dict(watched)
        self._watched_nonlinearities = self._nonlinearity_cache
        self._recorder.start(watched, histograms=self._recording_histograms, precision=str(trainer.precision))

    @override
    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._recording is not None and trainer.global_step > self._recording:
            self._finish(trainer, pl_module, loss=_loss_of(outputs))

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

    @_gc_paused()
    def _finish(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: Tensor | None = None) -> None:
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
        if step is None or (not rec.calls and not distributed):
            rec.reset()
            return
        moments = rec.moments(device=pl_module.device)
        vector: Tensor | None = None
        segments: list[tuple[int, int, int]] = []
        if distributed or rec.micro_batches > 1:
            # the signal std over every sample of the step's micro-batches (exact where each call position kept its
            # shape); one micro-batch on one process: the moments' pooled signal columns are that already
            capacity = self._signal_capacity if distributed else 0
            signal, layout, vector, segments = local_signal(
                names, rec.unit_means, rec.mixed, capacity=capacity, device=moments.device
            )
            moments[:, 8:10] = torch.where(signal[:, 2:] > 0, signal[:, :2], moments[:, 8:10])
        # the step's loss (for the output_scale rule) travels as one more row of the same collective
        loss_row = torch.full_like(moments[:1], math.nan)
        if loss is not None:
            loss_row[0, 0] = loss.detach().reshape(()).to(loss_row)
        moments = torch.cat([moments, loss_row])
        cols: dict[str, Any] = {}
        if distributed and vector is not None:
            # the logging step's one collective: the moment table, the signal layout and the unit means
            a, b = moments.numel(), layout.numel()
            gathered = _all_gather(trainer, torch.cat([moments.reshape(-1), layout.reshape(-1), vector]))
            layouts = gathered[:, a : a + b].reshape(-1, *layout.shape)
            cols["signal"] = merge_signal(layouts, gathered[:, a + b :], segments)
            cols["layout"] = layouts
            moments = gathered[:, :a].reshape(-1, *moments.shape)  # [processes, modules + 1, columns]
        else:
            moments = moments[None]  # this process alone
        ran = list(dict.fromkeys(rec.names[i] for i in rec.calls))  # the order modules first ran
        hist_names = [n for n in ran if n in rec.histograms] if self._recording_histograms else []
        cols["moments"] = moments
        for i, n in enumerate(hist_names):
            cols[f"c{i}"] = rec.histograms[n]["counts"]
            cols[f"m{i}"] = rec.histograms[n]["meta"]
        headroom_names = [n for n in names if rec.headroom.get(n)]
        for i, n in enumerate(headroom_names):
            cols[f"h{i}"] = torch.stack(rec.headroom[n])
        host = fetch(cols)  # the one transfer
        processes, rows_per_process, width = moments.shape
        watched = rows_per_process - 1
        arr = np.asarray(host["moments"], dtype=np.float64).reshape(processes, rows_per_process, width)
        losses = arr[:, watched, 0].tolist()
        step_loss = sum(losses) / len(losses) if losses and all(math.isfinite(v) for v in losses) else None
        arr = arr[:, :watched]
        merged = merge_moment_rows(arr)
        wanted = [s for s in self._table_stats if s in merged]
        signal_std = merged["signal_std"]
        between, units = host.get("signal", []), {i: length for i, _, length in segments}
        if "layout" in host:
            self._signal_capacity = signal_capacity(self._signal_capacity, host["layout"], processes, len(names))
        if between:
            for i, length in units.items():
                if between[2 * i + 1] > 0:  # every process: the same layout, exact
                    signal_std[i] = exact_signal_std(arr[:, i].tolist(), between[2 * i], length)
        columns = {s: merged[s].tolist() for s in wanted}
        plain = [s for s in wanted if s != "saturation"]
        nls = self._watched_nonlinearities
        table: Table = {}
        nonlinearities: dict[str, str | None] = {}
        for i in moment_rank(arr).tolist():
            n = names[i]
            row = {s: columns[s][i] for s in plain}
            if "saturation" in columns and rec.bounded.get(n, False):
                row["saturation"] = columns["saturation"][i]
            table[n] = row
            nonlinearities[n] = nls.get(n)
        numels = rec.numels
        for i, n in enumerate(headroom_names):  # this process's outputs
            if n in table:
                flat_h = host[f"h{i}"]
                rows = [flat_h[4 * c : 4 * c + 4] for c in range(len(flat_h) // 4)]
                extra = headroom_stats(rows, float(sum(numels.get(n, ()))))
                table[n].update({s: v for s, v in extra.items() if s in self._table_stats})
        hists = [host_histograms(host[f"c{i}"], host[f"m{i}"], 1, HISTOGRAM_BINS)[0] for i in range(len(hist_names))]
        rec.reset()
        if self.health:
            modules = self._watched_by_name
            self._context = activation_context(modules, list(table), nonlinearities, loss=step_loss)
        if self._recording_scalars and table:
            self._on_table(trainer, pl_module, table, step)
        if hist_names:
            self._log_histograms(trainer, hist_names, hists, step)
