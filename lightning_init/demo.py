"""The reference experiments of ``lightning-init demo``: the seed's claims, measured with the product's own callbacks.

Every run is an ordinary Lightning fit with :class:`~lightning_init.WeightInit` and the three monitors attached and a
``TensorBoardLogger`` writing to ``{out}/{experiment}/{scheme}``. The numbers of the results table are read back from
those event files (the same numbers a user sees in TensorBoard) plus one validation pass.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_init.callbacks.activation_monitor import ActivationMonitor
from lightning_init.callbacks.gradient_monitor import GradientMonitor
from lightning_init.callbacks.weight_init import WeightInit
from lightning_init.callbacks.weight_monitor import WeightMonitor
from lightning_init.models import MLPClassifier, TeacherDataModule, XORDataModule

#: Health rule (tag ``health/{rule}``) -> the word the results table shows. ``update_ratio`` findings (frozen or
#: unstable learning) are not a verdict on the initializer and stay out of the table (they are in TensorBoard).
FINDING_WORDS: dict[str, str] = {
    "vanishing_grad": "vanishing",
    "vanishing_activation": "vanishing",
    "exploding_grad": "exploding",
    "exploding_activation": "exploding",
    "saturated": "saturated",
    "dead": "dead",
    "symmetric": "symmetric",
    "nonfinite": "NaN",
}


@dataclass(frozen=True)
class Scheme:
    """One initializer choice of a tournament: a ``WeightInit`` scheme name and its parameters."""

    scheme: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Run name: ``kaiming_normal``, ``normal_std=0.01``."""
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.scheme}_{extra}" if extra else self.scheme

    @classmethod
    def parse(cls, text: str) -> Scheme:
        """Parse ``name`` or ``name:key=value,key=value`` (values parsed as numbers where they are numbers)."""
        name, _, rest = text.partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"scheme parameters are written `name:key=value,...`, got {text!r}")
            params[key.strip()] = _number_or_text(value.strip())
        return cls(name.strip(), params)


def _number_or_text(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


@dataclass(frozen=True)
class Experiment:
    """A model and data on which several schemes are compared."""

    name: str
    description: str
    model: Callable[[], pl.LightningModule]
    data: Callable[[int], pl.LightningDataModule]
    schemes: tuple[Scheme, ...]


def default_experiments(depth: int = 20, width: int = 64) -> list[Experiment]:
    """The three reference experiments of the demo (XOR, deep ReLU MLP, deep tanh MLP)."""
    return [
        Experiment(
            name="xor",
            description="2-8-2 tanh MLP on XOR: a zero init keeps every hidden unit identical",
            model=lambda: MLPClassifier(in_features=2, num_classes=2, depth=2, width=8, activation="tanh", lr=0.1),
            data=lambda seed: XORDataModule(seed=seed),
            schemes=(Scheme("zeros"), Scheme("xavier_normal"), Scheme("kaiming_normal")),
        ),
        Experiment(
            name="deep_relu",
            description=f"{depth}-layer width-{width} ReLU MLP, SGD: the depth profile decides whether it trains",
            model=lambda: MLPClassifier(depth=depth, width=width, activation="relu"),
            data=lambda seed: TeacherDataModule(seed=seed),
            schemes=(
                Scheme("normal", {"std": 0.01}),
                Scheme("normal", {"std": 1.0}),
                Scheme("xavier_normal"),
                Scheme("kaiming_normal", {"nonlinearity": "relu"}),
                Scheme("lsuv"),
            ),
        ),
        Experiment(
            name="deep_tanh",
            description=f"{depth}-layer width-{width} tanh MLP, SGD: Xavier keeps tanh in its linear range",
            model=lambda: MLPClassifier(depth=depth, width=width, activation="tanh"),
            data=lambda seed: TeacherDataModule(seed=seed),
            schemes=(
                Scheme("normal", {"std": 0.01}),
                Scheme("normal", {"std": 1.0}),
                Scheme("xavier_normal"),
                Scheme("lsuv"),
            ),
        ),
    ]


@dataclass(frozen=True)
class DepthRatio:
    """One statistic of the first logged step in two layers (``num`` over ``den``), as the results table shows it.

    The largest ``|value|`` of each layer's tensor (``*_abs_max`` tags) tells an exact zero (every value is 0, as the
    gradients of a zero-initialized layer) from a float32 underflow (the values are tiny but not 0, and the statistic,
    a root of a sum of squares, was stored as 0). ``None`` means the run logged no such tag.
    """

    stat: str
    step: int | None
    layers: tuple[str, str]
    values: tuple[float | None, float | None]
    abs_max: tuple[float | None, float | None] = (None, None)

    @property
    def value(self) -> float:
        """``num / den``; nan when a value is missing or NaN, or both are 0; inf for ``x / 0``."""
        num, den = self.values
        if num is None or den is None:
            return math.nan
        return _ratio(num, den)

    def underflowed(self) -> list[int]:
        """Indices (0 = numerator, 1 = denominator) of values stored as 0 although the tensor was not all zeros."""
        return [i for i in (0, 1) if self.values[i] == 0.0 and (self.abs_max[i] or 0.0) > 0.0]

    def cell(self) -> tuple[str, str | None]:
        """The table cell and, when the ratio alone would mislead, a footnote saying what the run measured."""
        num, den = self.values
        if num is None or den is None:
            return "n/a", None
        if math.isnan(num) or math.isnan(den):
            return "NaN", None
        what = "outputs" if self.stat.startswith("activation") else "gradient elements"
        at = f"at step {self.step}" if self.step is not None else "at the first logged step"
        under = self.underflowed()
        if under:
            names = " and ".join(self.layers[i] for i in under)
            peaks = " and ".join(f"{self.abs_max[i]:.2g}" for i in under)
            return "underflow", (
                f"{at} the {self.stat} of {names} was stored as 0 although the largest |value| was {peaks}: the "
                f"float32 sum of squares underflowed (values below ~3e-23 square to 0); the {what} are tiny, not zero"
            )
        if num == 0.0 and den == 0.0:
            exact = all(m == 0.0 for m in self.abs_max)
            return "0 / 0", (
                f"{at} the {self.stat} of {self.layers[0]} and of {self.layers[1]} is 0"
                + (f" (all {what} exactly 0)" if exact else "")
            )
        if den == 0.0:
            return f"{num:.3g} / 0", f"{at} the {self.stat} of {self.layers[1]} is 0"
        return format(self.value, ".3g"), None


_MISSING_RATIO = DepthRatio("", None, ("", ""), (None, None))


@dataclass
class RunResult:
    """What one run measured; every number is read from the run itself."""

    experiment: str
    scheme: str
    log_dir: str
    metrics: dict[str, float]
    findings: list[str]
    seconds: float
    #: ``activation_std`` of the last layer over the first's, at the first logged step.
    activation_depth: DepthRatio = _MISSING_RATIO
    #: ``grad_norm`` of the first layer's weight over the last's, at the first logged step.
    grad_depth: DepthRatio = _MISSING_RATIO

    @property
    def activation_ratio(self) -> float:
        """Activation std of the last layer over the first (the initializer's depth profile); nan if undefined."""
        return self.activation_depth.value

    @property
    def grad_ratio(self) -> float:
        """Grad norm of the first layer's weight over the last's (the initializer's depth profile); nan if undefined."""
        return self.grad_depth.value

    @property
    def val_loss(self) -> float:
        """Final loss (the demo's validation cross-entropy), nan when the run has none."""
        return self.metrics.get("final loss", math.nan)

    @property
    def val_acc(self) -> float:
        """Final accuracy in [0, 1], nan when the run has none."""
        return self.metrics.get("accuracy", math.nan)

    @property
    def verdict(self) -> str:
        """The findings in the table's words, or ``healthy``."""
        return ", ".join(self.findings) if self.findings else "healthy"


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``log_dir`` as ``{tag: [(step, value), ...]}`` (EventAccumulator)."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def depth_ends(model: torch.nn.Module) -> tuple[str, str]:
    """Names of the first and the last module (registration order) that own a weight matrix or kernel."""
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), torch.nn.Parameter) and module.weight.ndim >= 2
    ]
    if not names:
        raise ValueError(f"{type(model).__name__} has no module with a weight matrix to compare across depth")
    return names[0], names[-1]


def _first(series: list[tuple[int, float]] | None) -> tuple[int | None, float | None]:
    return (series[0][0], series[0][1]) if series else (None, None)


def _at(series: list[tuple[int, float]] | None, step: int | None) -> float | None:
    return next((v for s, v in series or () if s == step), None)


def depth_ratio(scalars: dict[str, list[tuple[int, float]]], kind: str, stat: str, num: str, den: str) -> DepthRatio:
    """``{kind}_{stat}`` of ``num`` over ``den`` at the first step each was logged, with their ``abs_max`` there."""
    (s_num, v_num), (s_den, v_den) = (_first(scalars.get(f"{kind}_{stat}/{name}")) for name in (num, den))
    return DepthRatio(
        stat=f"{kind} {stat}",
        step=s_num if s_num == s_den else None,
        layers=(num, den),
        values=(v_num, v_den),
        abs_max=(_at(scalars.get(f"{kind}_abs_max/{num}"), s_num), _at(scalars.get(f"{kind}_abs_max/{den}"), s_den)),
    )


def _ratio(num: float, den: float) -> float:
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0:
        return math.inf if num > 0 else math.nan
    return num / den


def _rule_of(tag: str) -> str:
    """``health/vanishing_grad`` -> ``vanishing_grad``; ``health/nonfinite_grad`` -> ``nonfinite`` (one per kind)."""
    rule = tag.split("/", 1)[1]
    return "nonfinite" if rule.startswith("nonfinite") else rule


def summarize(
    scalars: dict[str, list[tuple[int, float]]], first_layer: str, last_layer: str
) -> tuple[DepthRatio, DepthRatio, list[str]]:
    """Depth ratios at the first logged step and the findings in the table's words.

    Returns:
        ``activation_std`` of the last layer over the first, ``grad_norm`` of the first layer's weight over the
        last's (both at the first step they were logged, i.e. the initializer's own profile), and the sorted words
        of the health rules that flagged at least one layer at any step.
    """
    act = depth_ratio(scalars, "activation", "std", last_layer, first_layer)
    grad = depth_ratio(scalars, "grad", "norm", f"{first_layer}.weight", f"{last_layer}.weight")
    words = {
        FINDING_WORDS[rule]
        for tag, series in scalars.items()
        if tag.startswith("health/") and (rule := _rule_of(tag)) in FINDING_WORDS and any(v > 0 for _, v in series)
    }
    return act, grad, sorted(words)


#: Loggers whose INFO lines (Lightning's "GPU available: ...", "Seed set to ...", and this package's
#: ``rank_zero_info``: the init reports and the monitors' end-of-fit health tables) :func:`quiet` silences.
CHATTY_LOGGERS: tuple[str, ...] = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",  # "Seed set to ..."
    "lightning_fabric",
    "lightning_utilities",
)


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Raise :data:`CHATTY_LOGGERS` to WARNING while the block runs, then restore their levels.

    ``rank_zero_info`` (Lightning's and this package's) logs through these loggers, so the demo's terminal shows its
    progress bar and its table only; the per-layer reports stay in TensorBoard's Text tab.
    """
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch's CPU ops on one intra-op thread while the block runs, then restore the previous count.

    The demo's models are tiny (64-wide MLPs on batches of 128, a 2-8-2 net on XOR): a second thread buys nothing,
    and on a 2-core machine where anything else runs its spin-waiting makes every step far slower (measured: the 12
    runs at 30 steps took 10.7 s on one thread and 230 s on two while another process used the second core).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def monitors(every_n_steps: int, histogram_every_n_steps: int | None) -> list[Callback]:
    """The three monitors as the demo and ``compare`` attach them."""
    return [
        WeightMonitor(every_n_steps=every_n_steps, histogram_every_n_steps=histogram_every_n_steps),
        ActivationMonitor(every_n_steps=every_n_steps, histogram_every_n_steps=histogram_every_n_steps),
        GradientMonitor(every_n_steps=every_n_steps, histogram_every_n_steps=histogram_every_n_steps),
    ]


class _StepProgress(Callback):
    """Advances one progress bar shared by every run of the demo."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.bar.update(1)


def run_one(
    experiment: Experiment,
    scheme: Scheme,
    *,
    out: Path,
    steps: int,
    seed: int,
    every_n_steps: int,
    extra_callbacks: Iterable[Callback] = (),
) -> RunResult:
    """Fit ``experiment``'s model under ``scheme`` and measure it."""
    start = time.perf_counter()
    pl.seed_everything(seed, verbose=False)
    model = experiment.model()
    data = experiment.data(seed)
    logger = TensorBoardLogger(save_dir=str(out), name=experiment.name, version=scheme.label, default_hp_metric=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=logger,
        callbacks=[
            WeightInit(scheme=scheme.scheme, seed=seed, **scheme.params),  # type: ignore[arg-type]
            *monitors(every_n_steps, histogram_every_n_steps=max(steps // 4, 1)),
            *extra_callbacks,
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=every_n_steps,
    )
    with warnings.catch_warnings():
        # The health verdicts are the demo's subject: they go into the table, not onto the terminal.
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
    val_loss, val_acc = evaluate(model, data)
    logger.experiment.flush()
    act, grad, findings = summarize(read_scalars(logger.log_dir), *depth_ends(model))
    return RunResult(
        experiment=experiment.name,
        scheme=scheme.label,
        log_dir=logger.log_dir,
        metrics={"final loss": val_loss, "accuracy": val_acc},
        findings=findings,
        seconds=time.perf_counter() - start,
        activation_depth=act,
        grad_depth=grad,
    )


@torch.no_grad()
def evaluate(model: pl.LightningModule, data: pl.LightningDataModule) -> tuple[float, float]:
    """Cross-entropy and accuracy of ``model`` on ``data``'s validation set (after fit; the model is left in eval)."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in data.val_dataloader():
        logits = model(x)
        total_loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
        count += len(y)
    return total_loss / count, correct / count


def run_demo(
    out: str | Path = "demo_runs",
    *,
    steps: int = 300,
    seed: int = 0,
    every_n_steps: int = 10,
    experiments: Sequence[Experiment] | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> list[RunResult]:
    """Run every scheme of every experiment; return one :class:`RunResult` per run.

    Lightning's info lines and the callbacks' per-run reports are silenced unless ``verbose`` (see :func:`quiet`);
    torch runs on one thread (see :func:`single_thread`).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    experiments = list(default_experiments() if experiments is None else experiments)
    runs = [(e, s) for e in experiments for s in e.schemes]
    results = []
    bar = tqdm(total=steps * len(runs), desc="lightning-init demo", unit="step", disable=not progress)
    with quiet(not verbose), single_thread(), bar:
        for experiment, scheme in runs:
            bar.set_postfix_str(f"{experiment.name}/{scheme.label}")
            results.append(
                run_one(
                    experiment,
                    scheme,
                    out=out,
                    steps=steps,
                    seed=seed,
                    every_n_steps=every_n_steps,
                    extra_callbacks=[_StepProgress(bar)],
                )
            )
    return results


def _fmt(value: float, spec: str) -> str:
    return "NaN" if math.isnan(value) else format(value, spec)


def _table(results: Sequence[RunResult]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and footnotes of the results table (one place, so the markers and the notes agree)."""
    keys = list(dict.fromkeys(k for r in results for k in r.metrics))
    header = ["experiment", "scheme", *keys, "act std last/first", "grad norm first/last", "findings"]
    notes: list[str] = []

    def metric(key: str, r: RunResult) -> str:
        if key not in r.metrics:
            return "n/a"
        value = r.metrics[key]
        if key == "accuracy":
            return _fmt(100 * value, ".1f") + ("" if math.isnan(value) else " %")
        return _fmt(value, ".4g")

    def ratio(r: RunResult, depth: DepthRatio) -> str:
        text, note = depth.cell()
        if note is None:
            return text
        notes.append(f"[{len(notes) + 1}] {r.experiment}/{r.scheme}: {note}.")
        return f"{text} [{len(notes)}]"

    rows = [
        [
            r.experiment,
            r.scheme,
            *(metric(k, r) for k in keys),
            ratio(r, r.activation_depth),
            ratio(r, r.grad_depth),
            r.verdict,
        ]
        for r in results
    ]
    return header, rows, notes


def format_table(results: Sequence[RunResult]) -> str:
    """The results as a Markdown pipe table (readable in a terminal, pasted as-is into README).

    Cells: ``NaN`` where the run measured NaN (a diverged loss), ``n/a`` where it logged nothing to compute the cell
    from; a ``[n]`` marker points to :func:`format_notes` where a ratio alone would mislead (``0 / 0``, underflow).
    """
    header, rows, _ = _table(results)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def format_notes(results: Sequence[RunResult]) -> str:
    """The footnotes of :func:`format_table` (what each ``[n]`` marker stands for), one per line; empty if none."""
    return "\n".join(_table(results)[2])


@dataclass(frozen=True)
class Claim:
    """One claim of the seed and whether this run of the demo reproduced it."""

    text: str
    holds: bool
    evidence: str


def check_claims(results: Sequence[RunResult]) -> list[Claim]:
    """Check the seed's claims against the demo's results (only claims whose runs are present)."""
    by = {(r.experiment, r.scheme): r for r in results}
    claims: list[Claim] = []

    def get(exp: str, scheme: str) -> RunResult | None:
        return by.get((exp, scheme))

    zeros, xav, kai = get("xor", "zeros"), get("xor", "xavier_normal"), get("xor", "kaiming_normal")
    if zeros and xav and kai:
        claims.append(
            Claim(
                "a zero init cannot learn XOR (symmetric units), random inits solve it",
                zeros.val_acc < 1.0 and "symmetric" in zeros.findings and xav.val_acc == 1.0 and kai.val_acc == 1.0,
                f"zeros {100 * zeros.val_acc:.0f} % (loss {zeros.val_loss:.3f}, ln 2 = {math.log(2):.3f}), "
                f"xavier {100 * xav.val_acc:.0f} %, kaiming {100 * kai.val_acc:.0f} %",
            )
        )
    deep = {r.scheme: r for r in results if r.experiment == "deep_relu"}
    kaiming = next((r for s, r in deep.items() if s.startswith("kaiming_normal")), None)
    others = [r for s, r in deep.items() if s.startswith(("xavier", "normal"))]
    if kaiming and others:
        best_other = min(others, key=lambda r: _loss_key(r.val_loss))
        claims.append(
            Claim(
                "on a deep ReLU net Kaiming trains better than Xavier and the plain normal inits",
                all(_loss_key(kaiming.val_loss) < _loss_key(r.val_loss) for r in others),
                f"kaiming loss {kaiming.val_loss:.3g} vs best other {best_other.scheme} {best_other.val_loss:.3g}",
            )
        )
    small, large = deep.get("normal_std=0.01"), deep.get("normal_std=1.0")
    if small:
        claims.append(
            Claim(
                "too-small weights vanish with depth",
                "vanishing" in small.findings,
                f"normal(0.01): {small.verdict}, activation std last/first {small.activation_ratio:.2g}",
            )
        )
    if large:
        claims.append(
            Claim(
                "too-large weights explode with depth",
                "exploding" in large.findings,
                f"normal(1.0): {large.verdict}, activation std last/first {large.activation_ratio:.2g}",
            )
        )
    tanh_xavier = get("deep_tanh", "xavier_normal")
    if tanh_xavier:
        claims.append(
            Claim(
                "Xavier keeps a deep tanh net healthy",
                not tanh_xavier.findings,
                f"xavier on deep tanh: {tanh_xavier.verdict}",
            )
        )
    return claims


def _loss_key(loss: float) -> float:
    return math.inf if math.isnan(loss) else loss


def run_compare(
    config: str | Path,
    schemes: Sequence[Scheme],
    *,
    out: str | Path = "compare_runs",
    steps: int = 200,
    seed: int = 0,
    every_n_steps: int = 10,
    progress: bool = True,
    verbose: bool = False,
) -> list[RunResult]:
    """One short fit per scheme on a user's LightningCLI config; the config's ``WeightInit`` is replaced.

    The config is read by ``LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
    subclass_mode_data=True)``, so ``model`` and ``data`` are given with ``class_path``. Its logger is replaced by a
    ``TensorBoardLogger`` writing ``{out}/compare/{scheme}``; monitors are added unless the config has them. A config
    that LightningCLI rejects fails exactly as it would in the user's own script. Lightning's info lines and the
    callbacks' reports are silenced unless ``verbose`` (see :func:`quiet`).

    While it runs, one progress bar (tqdm, on stderr, as the demo's) counts the steps of every fit, unless
    ``progress=False``; after each fit one line on stdout says how it went (:func:`run_line`).
    """
    from tqdm.auto import tqdm

    results: list[RunResult] = []
    bar = tqdm(total=steps * len(schemes), desc="lightning-init compare", unit="step", disable=not progress)
    with bar:
        for i, scheme in enumerate(schemes, 1):
            bar.set_postfix_str(scheme.label)
            with quiet(not verbose), warnings.catch_warnings():
                # The health verdicts go into the table; LightningCLI's "args and sys.argv both given" note is ours.
                warnings.simplefilter("ignore")
                result = _compare_one(
                    config,
                    scheme,
                    out=out,
                    steps=steps,
                    seed=seed,
                    every_n_steps=every_n_steps,
                    extra_callbacks=[_StepProgress(bar)],
                )
            results.append(result)
            bar.write(f"[{i}/{len(schemes)}] {run_line(result)}", file=sys.stdout)
    return results


def run_line(result: RunResult) -> str:
    """One line about a finished run: name, wall time, metrics, verdict."""
    metrics = ", ".join(f"{k} {_fmt(v, '.4g')}" for k, v in result.metrics.items())
    return f"{result.experiment}/{result.scheme}: {result.seconds:.1f} s, {metrics or 'no metrics'}; {result.verdict}"


def _compare_one(
    config: str | Path,
    scheme: Scheme,
    *,
    out: str | Path,
    steps: int,
    seed: int,
    every_n_steps: int,
    extra_callbacks: Iterable[Callback] = (),
) -> RunResult:
    """One fit of :func:`run_compare`."""
    import json

    from lightning_init.lightning_cli import LightningInitCLI  # config mistakes: one parser-error line, exit code 2

    start = time.perf_counter()
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(out), "name": "compare", "version": scheme.label, "default_hp_metric": False},
    }
    args = [
        f"--config={config}",
        f"--seed_everything={seed}",
        f"--trainer.max_steps={steps}",
        f"--trainer.log_every_n_steps={every_n_steps}",
        f"--trainer.logger={json.dumps(logger)}",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    cli = LightningInitCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=args,
        save_config_callback=None,
    )
    trainer = cli.trainer
    # `Trainer.callbacks` is a public attribute that the callback connector sets (untyped for mypy).
    callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
    kept = [c for c in callbacks if not isinstance(c, WeightInit)]
    has_monitors = {type(c) for c in kept} & {WeightMonitor, ActivationMonitor, GradientMonitor}
    added = [] if has_monitors else monitors(every_n_steps, histogram_every_n_steps=max(steps // 4, 1))
    init = WeightInit(scheme=scheme.scheme, seed=seed, **scheme.params)  # type: ignore[arg-type]
    trainer.callbacks = [init, *kept, *added, *extra_callbacks]  # type: ignore[attr-defined]
    trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1}
    log_dir = str(trainer.logger.log_dir) if trainer.logger is not None else ""
    trainer.logger.experiment.flush()  # type: ignore[union-attr]
    act, grad, findings = summarize(read_scalars(log_dir), *depth_ends(cli.model))
    return RunResult(
        experiment=Path(config).stem,
        scheme=scheme.label,
        log_dir=log_dir,
        metrics=metrics,
        findings=findings,
        seconds=time.perf_counter() - start,
        activation_depth=act,
        grad_depth=grad,
    )
