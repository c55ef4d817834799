"""The reference experiments of ``lightning-init demo``: the seed's claims, measured with the product's own callbacks.

Every run is an ordinary Lightning fit with :class:`~lightning_init.WeightInit` and the three monitors attached and a
``TensorBoardLogger`` writing to ``{out}/{experiment}/{scheme}``. The numbers of the results table are read back from
those event files (the same numbers a user sees in TensorBoard) plus one validation pass.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_init.callbacks.monitors import ActivationMonitor, GradientMonitor, WeightMonitor
from lightning_init.callbacks.weight_init import WeightInit
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


@dataclass
class RunResult:
    """What one run measured; every number is read from the run itself."""

    experiment: str
    scheme: str
    log_dir: str
    metrics: dict[str, float]
    activation_ratio: float
    grad_ratio: float
    findings: list[str]
    seconds: float

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


def _first(series: list[tuple[int, float]] | None) -> float:
    return series[0][1] if series else math.nan


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
) -> tuple[float, float, list[str]]:
    """Depth ratios at the first logged step and the findings in the table's words.

    Returns:
        ``activation_std`` of the last layer over the first, ``grad_norm`` of the first layer's weight over the
        last's (both at the first step each was logged, i.e. the initializer's own profile), and the sorted words of
        the health rules that flagged at least one layer at any step.
    """
    act = _ratio(
        _first(scalars.get(f"activation_std/{last_layer}")), _first(scalars.get(f"activation_std/{first_layer}"))
    )
    grad = _ratio(
        _first(scalars.get(f"grad_norm/{first_layer}.weight")), _first(scalars.get(f"grad_norm/{last_layer}.weight"))
    )
    words = {
        FINDING_WORDS[rule]
        for tag, series in scalars.items()
        if tag.startswith("health/") and (rule := _rule_of(tag)) in FINDING_WORDS and any(v > 0 for _, v in series)
    }
    return act, grad, sorted(words)


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
        activation_ratio=act,
        grad_ratio=grad,
        findings=findings,
        seconds=time.perf_counter() - start,
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
) -> list[RunResult]:
    """Run every scheme of every experiment; return one :class:`RunResult` per run."""
    from tqdm.auto import tqdm

    out = Path(out)
    experiments = list(default_experiments() if experiments is None else experiments)
    runs = [(e, s) for e in experiments for s in e.schemes]
    results = []
    with tqdm(total=steps * len(runs), desc="lightning-init demo", unit="step", disable=not progress) as bar:
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
    return "n/a" if math.isnan(value) else format(value, spec)


def format_table(results: Sequence[RunResult]) -> str:
    """The results as a Markdown pipe table (readable in a terminal, pasted as-is into README)."""
    keys = list(dict.fromkeys(k for r in results for k in r.metrics))
    header = ["experiment", "scheme", *keys, "act std last/first", "grad norm first/last", "findings"]

    def metric(key: str, value: float) -> str:
        if key == "accuracy":
            return _fmt(100 * value, ".1f") + ("" if math.isnan(value) else " %")
        return _fmt(value, ".4g")

    rows = [
        [
            r.experiment,
            r.scheme,
            *(metric(k, r.metrics.get(k, math.nan)) for k in keys),
            _fmt(r.activation_ratio, ".3g"),
            _fmt(r.grad_ratio, ".3g"),
            r.verdict,
        ]
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


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
) -> list[RunResult]:
    """One short fit per scheme on a user's LightningCLI config; the config's ``WeightInit`` is replaced.

    The config is read by ``LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
    subclass_mode_data=True)``, so ``model`` and ``data`` are given with ``class_path``. Its logger is replaced by a
    ``TensorBoardLogger`` writing ``{out}/compare/{scheme}``; monitors are added unless the config has them. A config
    that LightningCLI rejects fails exactly as it would in the user's own script.
    """
    import json

    from lightning.pytorch.cli import LightningCLI

    results = []
    for scheme in schemes:
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
        cli = LightningCLI(
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
        trainer.callbacks = [init, *kept, *added]  # type: ignore[attr-defined]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(cli.model, datamodule=cli.datamodule)
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1}
        log_dir = str(trainer.logger.log_dir) if trainer.logger is not None else ""
        trainer.logger.experiment.flush()  # type: ignore[union-attr]
        act, grad, findings = summarize(read_scalars(log_dir), *depth_ends(cli.model))
        results.append(
            RunResult(
                experiment=Path(config).stem,
                scheme=scheme.label,
                log_dir=log_dir,
                metrics=metrics,
                activation_ratio=act,
                grad_ratio=grad,
                findings=findings,
                seconds=time.perf_counter() - start,
            )
        )
    return results
