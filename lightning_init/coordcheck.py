"""``lightning-init coordcheck``: does the parametrization keep every layer's activations width-stable?

The coordinate check of Yang et al. (2022, *Tensor Programs V*, muP): train the same LightningCLI config for a few
steps at several widths (fixed seed, fixed data, the config's ``WeightInit`` and monitors) and record, per layer and
per step, the scale of the layer's output. If the parametrization transfers across width, the scale of every layer
is the same at every width (flat lines on log-log axes); a layer whose scale grows with width blows up when the model
is scaled up, so a learning rate tuned on a small model does not transfer.

The scale is the ``std`` of the layer's output over all its elements (the batch and every coordinate), the same
statistic as :class:`~lightning_init.ActivationMonitor`'s ``activation_std`` (and computed by the same
:class:`~lightning_init.hooks.ActivationRecorder`). Step ``t`` is the forward pass of training step ``t``: step 1 is
the initialization, step ``t`` has seen ``t - 1`` optimizer updates (the convention of the ``mup`` package's
``get_coord_data``). Per layer and step, the slope is the least-squares fit of ``log2 scale`` against
``log2 width``: the exponent ``a`` of ``scale ~ width^a``.

Reading the slope: theory (Tensor Programs V, section 5 and table 3) says that after a few Adam steps the standard
parametrization (one learning rate for every layer) moves a hidden layer's output by ``~lr * width``: exponent 1 (1/2
under SGD); muP keeps every layer at exponent 0. :data:`DEFAULT_THRESHOLD` = 0.25 is halfway between 0 and the
smallest exponent of a known failure (1/2), and above the noise of one seed: at width 64 a layer's scale varies by
10-30 % from seed to seed (finite-width fluctuations), which moves a slope fitted over 64..1024 by up to ~0.15 (the
muP MLP of ``examples/configs/coordcheck_mup.yaml`` measures at most +0.14). A layer above the threshold at some
step is flagged ``grows`` and makes the command exit with code 1: the verdict takes the largest slope over steps
``1..k``, because standard Adam blows up at the first update and partly recovers over the next ones, which the last
step alone can hide. A layer below ``-threshold`` at the last step is reported ``shrinks`` (its signal fades as width
grows, e.g. a readout multiplied by ``1/width``, which muP allows at initialization) but does not fail the check.
The slope measured after ``k`` steps lies between the initialization's (usually 0) and the asymptotic exponent: a
learning rate small enough that the updates have not yet dominated the initial weights shows a smaller slope.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch import nn

__all__ = [
    "DEFAULT_THRESHOLD",
    "CoordCheckResult",
    "LayerVerdict",
    "check_width_arg",
    "fit_slopes",
    "format_table",
    "run_coordcheck",
    "verdict",
]

#: A layer whose scale grows faster than ``width ** DEFAULT_THRESHOLD`` fails the check (see the module docstring).
DEFAULT_THRESHOLD = 0.25
#: Verdicts, in the order of severity.
VERDICTS: tuple[str, ...] = ("stable", "shrinks", "undefined", "grows", "nonfinite")
#: The verdicts that make the command exit with code 1.
FAILING: frozenset[str] = frozenset({"grows", "nonfinite"})


# ------------------------------------------------------------------------------------------ pure math


def fit_slopes(widths: Sequence[int], scales: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``log2 scale`` against ``log2 width`` along the first axis of ``scales``.

    Args:
        widths: ``W >= 2`` distinct positive widths.
        scales: ``[W, ...]`` array; the slope is fitted independently for every trailing index.

    Returns:
        The slopes, shape ``scales.shape[1:]``; NaN where some scale is not a positive finite number (a layer that
        is exactly zero, or diverged, at some width has no exponent).
    """
    x = np.log2(np.asarray(widths, dtype=np.float64))
    if x.size < 2 or np.unique(x).size != x.size:
        raise ValueError(f"`widths` must hold at least 2 distinct values, got {list(widths)!r}")
    s = np.asarray(scales, dtype=np.float64)
    valid = np.all(np.isfinite(s) & (s > 0), axis=0)
    y = np.log2(np.where(np.isfinite(s) & (s > 0), s, 1.0))
    xc = (x - x.mean()).reshape((-1,) + (1,) * (s.ndim - 1))
    slope = (xc * (y - y.mean(axis=0))).sum(axis=0) / float((xc**2).sum())
    return np.where(valid, slope, np.nan)


def verdict(slopes: Sequence[float], scales: Sequence[float], threshold: float = DEFAULT_THRESHOLD) -> str:
    """The word for one layer: ``nonfinite``, ``grows``, ``shrinks``, ``stable`` or ``undefined``.

    Args:
        slopes: the layer's slope at each step ``1..k``.
        scales: every scale of the layer (every width, every step).
        threshold: see :data:`DEFAULT_THRESHOLD`.

    ``nonfinite``: a scale is NaN/Inf (the run diverged at some width). ``grows``: the slope exceeds ``threshold`` at
    some step: a parametrization that blows up after the first update and partly recovers later (standard Adam
    does) is still one that blows up. Otherwise the last step decides: ``undefined`` when it has no slope (a scale
    is 0 at some width, e.g. a zero-initialized readout), ``shrinks`` below ``-threshold``, else ``stable``.
    """
    if any(not math.isfinite(v) for v in scales):
        return "nonfinite"
    finite = [s for s in slopes if not math.isnan(s)]
    if finite and max(finite) > threshold:
        return "grows"
    last = slopes[-1] if len(slopes) else math.nan
    if math.isnan(last):
        return "undefined"
    if last < -threshold:
        return "shrinks"
    return "stable"


@dataclass(frozen=True)
class LayerVerdict:
    """One row of the coordinate check's table."""

    layer: str
    #: The slope at the last step.
    slope: float
    #: The largest slope over steps ``1..k`` and its step (``nan``, 0 when no step has one).
    peak: float
    peak_step: int
    #: Scale (``activation_std``) of the layer at each width, at the last step.
    scales: tuple[float, ...]
    verdict: str

    @property
    def failed(self) -> bool:
        """Whether this row makes the check fail (exit code 1)."""
        return self.verdict in FAILING


@dataclass
class CoordCheckResult:
    """What a coordinate check measured: ``scales[w, t, l]`` of layer ``layers[l]`` at ``widths[w]``, step ``t + 1``.

    ``layers`` are in data-flow order (the order the modules first ran at the smallest width).
    """

    widths: list[int]
    steps: int
    layers: list[str]
    scales: np.ndarray
    threshold: float = DEFAULT_THRESHOLD
    out: Path | None = None

    @property
    def slopes(self) -> np.ndarray:
        """``[steps, layers]``: the fitted exponent of every layer at every step."""
        return fit_slopes(self.widths, self.scales)

    def rows(self) -> list[LayerVerdict]:
        """The verdict of every layer, in data-flow order."""
        slopes = self.slopes
        out = []
        for i, layer in enumerate(self.layers):
            column = [float(v) for v in slopes[:, i]]
            finite = [(v, t + 1) for t, v in enumerate(column) if not math.isnan(v)]
            peak, peak_step = max(finite) if finite else (math.nan, 0)
            every = [float(v) for v in self.scales[:, :, i].ravel()]
            out.append(
                LayerVerdict(
                    layer=layer,
                    slope=column[-1],
                    peak=peak,
                    peak_step=peak_step,
                    scales=tuple(float(v) for v in self.scales[:, -1, i]),
                    verdict=verdict(column, every, self.threshold),
                )
            )
        return out

    @property
    def failed(self) -> bool:
        """Whether some layer grows with width (or diverged) at some step."""
        return any(r.failed for r in self.rows())


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}"


def format_table(result: CoordCheckResult) -> str:
    """The result as a Markdown pipe table.

    Columns: layer, its scale at the smallest and at the largest width (last step), the slope at the last step, the
    largest slope over the steps (with its step) and the verdict.
    """
    lo, hi = result.widths[0], result.widths[-1]
    header = ["layer", f"std @ {lo}", f"std @ {hi}", f"slope @ step {result.steps}", "peak slope (step)", "verdict"]
    body = [
        [
            r.layer,
            f"{r.scales[0]:.3g}",
            f"{r.scales[-1]:.3g}",
            _signed(r.slope),
            f"{_signed(r.peak)} ({r.peak_step})" if r.peak_step else "n/a",
            r.verdict,
        ]
        for r in result.rows()
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def summary_line(result: CoordCheckResult) -> str:
    """One sentence: how many layers grow, and the largest slope."""
    rows = result.rows()
    failed = [r.layer for r in rows if r.failed]
    finite = [r for r in rows if not math.isnan(r.peak)]
    top = max(finite, key=lambda r: r.peak) if finite else None
    peak = f"; largest slope {top.peak:+.2f} ({top.layer}, step {top.peak_step})" if top is not None else ""
    span = f"widths {result.widths[0]}..{result.widths[-1]}, steps 1..{result.steps}"
    if failed:
        return (
            f"FAILED: {len(failed)} of {len(rows)} layers grow with width faster than width^{result.threshold:g} "
            f"or diverge ({span}){peak}."
        )
    return f"ok: no layer grows with width faster than width^{result.threshold:g} ({span}){peak}."


# ------------------------------------------------------------------------------------------ the config


def _cli_args(config: Path, extra: Sequence[str]) -> list[str]:
    return [f"--config={config}", *extra]


def _parse_only(config: Path) -> Any:
    """The full parsed config (class defaults filled in) of a LightningCLI config, without instantiating anything."""
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    class _ParseOnly(LightningCLI):
        def instantiate_classes(self) -> None:  # parse and validate only
            return None

    cli = _ParseOnly(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=_cli_args(config, []),
        save_config_callback=None,
    )
    return cli.config


def _keys_under(cfg: Any, prefix: str) -> list[str]:
    """Every leaf key of ``cfg`` (a jsonargparse Namespace), as dotted names, that starts with ``prefix``."""
    return [k for k in cfg.keys() if k.startswith(prefix) and k != "config"]  # noqa: SIM118 (a Namespace)


def check_width_arg(config: str | Path, width_arg: str) -> int:
    """Check that ``width_arg`` is an integer option of the LightningCLI ``config``; return its configured value.

    Raises:
        ValueError: the config has no such key (the message names the keys it has under the same parent, or its
            model's keys, with the closest as "did you mean"), or its value is not an integer.
    """
    import difflib

    cfg = _parse_only(Path(config))
    if width_arg not in cfg or isinstance(cfg.get(width_arg), type(cfg)):
        parent = width_arg.rpartition(".")[0]
        siblings = (
            [k for k in _keys_under(cfg, parent + ".") if not isinstance(cfg.get(k), type(cfg))] if parent else []
        )
        candidates = siblings or [k for k in _keys_under(cfg, "model.") if not isinstance(cfg.get(k), type(cfg))]
        close = difflib.get_close_matches(width_arg, candidates, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        where = f"under {parent!r}" if siblings else "under 'model'"
        listed = ", ".join(repr(k) for k in candidates) or "none"
        raise ValueError(
            f"`--width-arg` {width_arg!r} is not a key of {str(config)!r}; its keys {where}: {listed}.{hint}"
        )
    value = cfg.get(width_arg)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`--width-arg` {width_arg!r} of {str(config)!r} is {value!r}, not an integer width.")
    return value


# ------------------------------------------------------------------------------------------ recording


def _leaf_modules(model: nn.Module, include: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """Every leaf module (no children) of ``model`` whose name matches one of the ``include`` globs (all if empty)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if name
        and not any(True for _ in m.children())
        and (not include or any(fnmatch.fnmatch(name, g) for g in include))
    ]


def _recorder_callback(bar: Any, include: Sequence[str]) -> Any:
    """A callback recording ``activation_std`` of every leaf module at every optimizer step (built lazily)."""
    from lightning.pytorch.callbacks import Callback

    from lightning_init.hooks import ActivationRecorder
    from lightning_init.reduce import local_moments, merge_moments
    from lightning_init.stats import fetch
    from lightning_init.writers import log_scalars

    class _ScaleRecorder(Callback):
        """Forward hooks from the first batch of each optimizer step to its last; one host transfer per step."""

        def __init__(self) -> None:
            self.recorder = ActivationRecorder()
            self.names: list[str] = []
            #: step (1-based) -> {module: std}, modules in the order they first ran.
            self.scales: dict[int, dict[str, float]] = {}
            self._step_at_start: int | None = None

        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            if not self.recorder.active:
                modules = _leaf_modules(pl_module, include)
                self.names = [n for n, _ in modules]
                self.recorder.start(modules)
                self._step_at_start = trainer.global_step

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            if self._step_at_start is None or trainer.global_step == self._step_at_start:
                return  # an accumulation micro-batch: keep recording until the optimizer steps
            step = self._step_at_start + 1
            table = local_moments(self.names, self.recorder.rows, self.recorder.numels)
            ran = [n for n in self.recorder.rows if self.recorder.rows[n]]
            host = fetch({"table": table})["table"]  # one transfer per step
            self.recorder.clear()
            self._step_at_start = None
            width = table.shape[1]
            index = {n: i for i, n in enumerate(self.names)}
            stds = {
                n: merge_moments([host[index[n] * width : (index[n] + 1) * width]], bounded=False)["std"] for n in ran
            }
            self.scales[step] = stds
            log_scalars(trainer, {f"coordcheck/activation_std/{n}": v for n, v in stds.items()}, step)
            bar.update(1)

        def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
            self.recorder.clear()

        def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            self.recorder.clear()

    return _ScaleRecorder()


@contextlib.contextmanager
def _quiet_fit(verbose: bool) -> Iterator[None]:
    from lightning_init.demo import quiet, single_thread

    with quiet(not verbose), single_thread(), warnings.catch_warnings():
        if not verbose:  # the monitors' health warnings of each width are not the subject here
            warnings.simplefilter("ignore")
        yield


def _fit_width(
    config: Path, width_arg: str, width: int, *, steps: int, seed: int, out: Path, bar: Any, include: Sequence[str]
) -> dict[int, dict[str, float]]:
    """Fit ``config`` at ``width`` for ``steps`` optimizer steps; return step -> {module: activation std}."""
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import TensorBoardLogger

    logger_config = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(out), "name": "", "version": f"width_{width}", "default_hp_metric": False},
    }
    args = _cli_args(
        config,
        [
            f"--seed_everything={seed}",
            f"--{width_arg}={width}",
            f"--trainer.max_steps={steps}",
            "--trainer.max_epochs=-1",
            "--trainer.log_every_n_steps=1",
            f"--trainer.logger={json.dumps(logger_config)}",
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ],
    )
    cli = LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=args,
        save_config_callback=None,
    )
    recorder = _recorder_callback(bar, include)
    trainer = cli.trainer
    trainer.callbacks = [*trainer.callbacks, recorder]  # type: ignore[attr-defined]
    trainer.fit(cli.model, datamodule=cli.datamodule)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.flush()
    scales: dict[int, dict[str, float]] = recorder.scales
    return scales


def _assemble(
    widths: Sequence[int], steps: int, per_width: Sequence[dict[int, dict[str, float]]]
) -> tuple[list[str], np.ndarray]:
    """Layers present at every width (data-flow order of the smallest width) and the ``[W, steps, L]`` scales."""
    first = per_width[0]
    order = list(dict.fromkeys(n for t in sorted(first) for n in first[t]))
    layers = [n for n in order if all(any(n in s for s in run.values()) for run in per_width)]
    scales = np.full((len(widths), steps, len(layers)), np.nan)
    for w, run in enumerate(per_width):
        for t in range(steps):
            row = run.get(t + 1, {})
            for i, n in enumerate(layers):
                scales[w, t, i] = row.get(n, math.nan)
    return layers, scales


# ------------------------------------------------------------------------------------------ pictures


def figure(result: CoordCheckResult) -> Any:
    """A matplotlib figure: one log-log panel per step, ``activation std`` against width, one line per layer."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    steps = result.steps
    cols = min(steps, 5)
    rows = math.ceil(steps / cols)
    n = len(result.layers)
    legend = 0 < n <= 16
    width_in = 3.0 * cols + (1.6 if legend else 0.8)
    fig = Figure(figsize=(width_in, 2.9 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    cmap = matplotlib.colormaps["viridis"]
    slopes = result.slopes
    for t in range(rows * cols):
        ax = axes[t // cols][t % cols]
        if t >= steps:
            ax.axis("off")
            continue
        for i, layer in enumerate(result.layers):
            y = result.scales[:, t, i]
            ok = np.isfinite(y) & (y > 0)
            if ok.any():
                ax.plot(
                    np.asarray(result.widths)[ok], y[ok], marker="o", ms=3, color=cmap(i / max(n - 1, 1)), label=layer
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        finite = slopes[t][np.isfinite(slopes[t])]
        peak = f", max slope {finite.max():+.2f}" if finite.size else ""
        ax.set_title(f"step {t + 1}{peak}", fontsize=9)
        ax.set_xlabel("width")
        if t % cols == 0:
            ax.set_ylabel("activation std")
    right = 1.0 - (1.5 if legend else 0.0) / width_in
    fig.suptitle(f"coordinate check: {summary_line(result)}", fontsize=9)
    fig.tight_layout(rect=(0, 0, right, 0.94))
    if legend:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=7, title="layer")
    else:
        sm = ScalarMappable(cmap=cmap, norm=Normalize(0, max(n - 1, 1)))
        fig.colorbar(sm, ax=axes.ravel().tolist(), label="layer (data-flow order)")
    return fig


def _write_summary(result: CoordCheckResult, out: Path) -> Path:
    """Write ``out/coordcheck.png`` and a TensorBoard run ``out/summary`` (``coordcheck/*`` tags); return the PNG."""
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    fig = figure(result)
    png = out / "coordcheck.png"
    fig.savefig(png, dpi=110)
    slopes = result.slopes
    writer = SummaryWriter(log_dir=str(out / "summary"))
    try:
        for t in range(result.steps):
            for i, layer in enumerate(result.layers):
                if math.isfinite(slopes[t, i]):
                    writer.add_scalar(f"coordcheck/slope/{layer}", float(slopes[t, i]), global_step=t + 1)
        for w, width in enumerate(result.widths):
            for i, layer in enumerate(result.layers):
                value = float(result.scales[w, -1, i])
                if math.isfinite(value):
                    writer.add_scalar(f"coordcheck/activation_std_vs_width/{layer}", value, global_step=width)
        writer.add_figure("coordcheck/figure", fig, global_step=result.steps, close=False)
        writer.add_text("coordcheck/table", summary_line(result) + "\n\n" + format_table(result), result.steps)
    finally:
        writer.close()
    return png


# ------------------------------------------------------------------------------------------ the driver


def run_coordcheck(
    config: str | Path,
    width_arg: str,
    widths: Sequence[int],
    *,
    steps: int = 5,
    seed: int = 0,
    out: str | Path = "coordcheck_runs",
    threshold: float = DEFAULT_THRESHOLD,
    include: Sequence[str] = (),
    progress: bool = True,
    verbose: bool = False,
) -> CoordCheckResult:
    """Train ``config`` for ``steps`` optimizer steps at each of ``widths`` and fit each layer's width exponent.

    Each width is one fit of the LightningCLI config (``model`` and ``data`` given with ``class_path``) with
    ``--{width_arg}={width}`` and ``--seed_everything={seed}``: the same data order and the config's own callbacks
    (``WeightInit``, monitors) at every width. Validation and checkpointing are off, the config's logger is replaced
    by a ``TensorBoardLogger`` writing ``{out}/width_{width}`` (the monitors' tags plus
    ``coordcheck/activation_std/{layer}`` per step), and ``{out}/summary`` gets ``coordcheck/slope/{layer}`` (per
    step), ``coordcheck/activation_std_vs_width/{layer}`` (x axis: width, at the last step), the figure and the
    table; the figure is also saved as ``{out}/coordcheck.png``.

    Args:
        config: LightningCLI YAML config.
        width_arg: The dotted config key of the width, e.g. ``model.init_args.width``.
        widths: At least 2 distinct widths (sorted here).
        steps: Optimizer steps per width (the scale is recorded at every one).
        seed: ``seed_everything`` of every width.
        out: Output directory.
        threshold: Slope above which a layer fails (``grows``); see :data:`DEFAULT_THRESHOLD`.
        include: Globs on module names; default: every leaf module.
        progress: Show a progress bar (one tick per optimizer step).
        verbose: Show Lightning's info lines and the monitors' warnings.

    Raises:
        ValueError: a bad ``widths``/``steps``/``threshold``, or a ``width_arg`` the config does not have.
    """
    from tqdm.auto import tqdm

    widths = sorted(int(w) for w in widths)
    if len(widths) < 2 or len(set(widths)) != len(widths) or widths[0] < 1:
        raise ValueError(f"`--widths` must be at least 2 distinct positive integers, got {widths!r}")
    if steps < 1:
        raise ValueError(f"`--steps` must be >= 1, got {steps!r}")
    if not math.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"`--threshold` must be a positive number, got {threshold!r}")
    config, out = Path(config), Path(out)
    with _quiet_fit(verbose):
        check_width_arg(config, width_arg)
        per_width = []
        bar = tqdm(total=steps * len(widths), desc="lightning-init coordcheck", unit="step", disable=not progress)
        with bar:
            for width in widths:
                bar.set_postfix_str(f"width {width}")
                per_width.append(
                    _fit_width(config, width_arg, width, steps=steps, seed=seed, out=out, bar=bar, include=include)
                )
    layers, scales = _assemble(widths, steps, per_width)
    if not layers:
        raise ValueError(f"no module of {str(config)!r} produced a floating-point output at every width")
    result = CoordCheckResult(widths=widths, steps=steps, layers=layers, scales=scales, threshold=threshold, out=out)
    _write_summary(result, out)
    return result
