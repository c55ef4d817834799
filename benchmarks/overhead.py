"""Overhead of the lightning_init monitors against a bare Lightning fit and against what users run instead.

One command, one process::

    .venv/bin/python benchmarks/overhead.py                 # full matrix (about an hour on 2 busy cores)
    .venv/bin/python benchmarks/overhead.py --quick         # seconds: tiny models, for the smoke test
    .venv/bin/python benchmarks/overhead.py --models mlp --configs 'bare' 'all e1*' 'naive*'

What is measured (see benchmarks/README.md):

- every configuration is a fresh ``Trainer.fit`` of the same model (same seed, same initial weights) on ONE fixed
  in-memory batch fed ``warmup + steps + 1`` times (an iterable repeating it, so no data loading is measured), with a
  ``TensorBoardLogger`` into a temporary directory for every configuration (writing costs count equally);
- a clock callback (first in the callback list) stamps ``time.perf_counter()`` in every ``on_train_batch_start``;
  the measured time is ``stamp[warmup + steps] - stamp[warmup]``: exactly ``steps`` whole training steps (forward,
  backward, optimizer, every callback hook, logger writes), warm-up and fit setup/teardown excluded;
- configurations run interleaved (A B C A B C ...) ``repeats`` times; the table shows the median steps/s, the
  median over repeats of the slowdown ``time(config) / time(bare)`` of the same repeat (adjacent runs, same process)
  with its min-max spread, the median duration of one step (for ``every_n_steps=50`` that is a step that does not
  log), and the peak RSS seen during the runs of the configuration;
- then the RSS growth over ``rss_steps`` steps with all three monitors at ``every_n_steps=1`` (histograms every
  ``hist_every``), sampled every 10 steps: flat means growth below 1 % of the model's parameter bytes.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import gc
import importlib
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning
import lightning.pytorch as pl
import psutil
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from torch import Tensor, nn

from lightning_init import ActivationMonitor, GradientMonitor, WeightMonitor
from lightning_init.models import BlobImagesDataModule, MLPClassifier, SmallCNN, TeacherDataModule
from lightning_init.stats import DEFAULT_GRAD_STATS

_PROC = psutil.Process()
_MB = 1024.0**2


def _rss() -> int:
    return int(_PROC.memory_info().rss)


# ----------------------------------------------------------------------------------------------- timing


class StepClock(Callback):
    """Stamps ``perf_counter`` at the start of every training batch (and samples RSS every ``rss_every`` batches)."""

    def __init__(self, rss_every: int = 1) -> None:
        self.stamps: list[float] = []
        self.rss: list[tuple[int, int]] = []  # (batch index, bytes)
        self.rss_every = rss_every

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.stamps.append(time.perf_counter())
        if i % self.rss_every == 0:
            self.rss.append((i, _rss()))


class RepeatBatch:
    """An iterable that yields the same in-memory batch ``n`` times (no data loading is measured)."""

    def __init__(self, batch: tuple[Tensor, Tensor], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return itertools.repeat(self.batch, self.n)


# ----------------------------------------------------------------------------------------------- peers


class NaiveMonitor(Callback):
    """The monitor users write today: per-layer ``.item()`` statistics and ``add_histogram`` on every logging step.

    On a logging step: forward hooks (always registered, gated by a flag) log each layer output's mean/std with
    ``.item()`` and its histogram; in ``on_before_optimizer_step`` every parameter's weight mean/std/norm and gradient
    norm/mean/std go out one ``.item()`` at a time, with a histogram of the weight and of the gradient.
    """

    def __init__(self, every_n_steps: int) -> None:
        self.every = every_n_steps
        self.active = False
        self.handles: list[Any] = []

    def _writer(self, trainer: pl.Trainer) -> Any:
        return trainer.logger.experiment  # type: ignore[union-attr]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, module in pl_module.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ReLU)):
                self.handles.append(module.register_forward_hook(self._hook(trainer, name)))

    def _hook(self, trainer: pl.Trainer, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            if not self.active:
                return
            w = self._writer(trainer)
            step = trainer.global_step
            w.add_scalar(f"act_mean/{name}", out.detach().mean().item(), step)
            w.add_scalar(f"act_std/{name}", out.detach().std().item(), step)
            w.add_histogram(f"act/{name}", out.detach(), step)

        return hook

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.active = (trainer.global_step + 1) % self.every == 0

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.active:
            return
        self.active = False
        w = self._writer(trainer)
        step = trainer.global_step
        for name, p in pl_module.named_parameters():
            w.add_scalar(f"weight_mean/{name}", p.detach().mean().item(), step)
            w.add_scalar(f"weight_std/{name}", p.detach().std().item(), step)
            w.add_scalar(f"weight_norm/{name}", p.detach().norm().item(), step)
            w.add_histogram(f"weight/{name}", p.detach(), step)
            if p.grad is not None:
                w.add_scalar(f"grad_norm/{name}", p.grad.norm().item(), step)
                w.add_scalar(f"grad_mean/{name}", p.grad.mean().item(), step)
                w.add_scalar(f"grad_std/{name}", p.grad.std().item(), step)
                w.add_histogram(f"grad/{name}", p.grad, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class GradNormLogger(Callback):
    """Lightning's documented recipe: ``self.log_dict(grad_norm(self, norm_type=2))`` in ``on_before_optimizer_step``.

    Computed every ``every_n_steps`` steps; Lightning writes the logged values to the logger on its own
    ``log_every_n_steps`` cadence.
    """

    def __init__(self, every_n_steps: int) -> None:
        self.every = every_n_steps

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if (trainer.global_step + 1) % self.every == 0:
            pl_module.log_dict(grad_norm(pl_module, norm_type=2))


class WandbWatch(Callback):
    """``wandb.watch(model, log="all", log_freq=K)`` on an offline run (``WANDB_MODE=offline``, temporary dir)."""

    def __init__(self, wandb: Any, log_freq: int, root: str) -> None:
        self.wandb = wandb
        self.log_freq = log_freq
        self.root = root
        self.run: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run = self.wandb.init(mode="offline", dir=self.root, project="overhead", reinit="finish_previous")
        self.wandb.watch(pl_module, log="all", log_freq=self.log_freq)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.wandb.unwatch(pl_module)
        self.run.finish()


def _import_wandb() -> Any:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="wandb_bench_"))
    try:
        return importlib.import_module("wandb")
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------- configurations


@dataclass
class Config:
    name: str
    make: Callable[[str], list[Callback]]  # tmp dir -> callbacks
    logs_every: int | None = None  # scalar cadence, for the "logging steps in the window" column
    hist_every: int | None = None


def _monitors(which: str, every: int, hist: int | None) -> list[Callback]:
    kinds = {"weight": WeightMonitor, "act": ActivationMonitor, "grad": GradientMonitor}
    chosen = list(kinds) if which == "all" else [which]
    return [kinds[k](every_n_steps=every, histogram_every_n_steps=hist) for k in chosen]


def build_configs(cadences: list[int], hist_every: int, wandb: Any) -> list[Config]:
    configs = [Config("bare", lambda tmp: [])]
    for which in ("all", "weight", "act", "grad"):
        for every in cadences:
            for hist in (None, hist_every):
                suffix = f" h{hist}" if hist else ""

                def monitors(tmp: str, w: str = which, e: int = every, h: int | None = hist) -> list[Callback]:
                    return _monitors(w, e, h)

                configs.append(Config(f"{which} e{every}{suffix}", monitors, every, hist))
    for every in cadences:
        # the backprop signal (backward hooks on the logging steps) on top of the default gradient statistics
        def backprop(tmp: str, e: int = every) -> list[Callback]:
            return [
                GradientMonitor(
                    every_n_steps=e, histogram_every_n_steps=None, stats=[*DEFAULT_GRAD_STATS, "output_grad"]
                )
            ]

        configs.append(Config(f"grad+output_grad e{every}", backprop, every))

        def naive(tmp: str, e: int = every) -> list[Callback]:
            return [NaiveMonitor(e)]

        def norms(tmp: str, e: int = every) -> list[Callback]:
            return [GradNormLogger(e)]

        def watch(tmp: str, e: int = every) -> list[Callback]:
            return [WandbWatch(wandb, e, tmp)]

        configs.append(Config(f"naive e{every}", naive, every, every))
        configs.append(Config(f"grad_norm e{every}", norms, every))
        if wandb is not None:
            configs.append(Config(f"wandb e{every}", watch, every, every))
    return configs


# ----------------------------------------------------------------------------------------------- models


@dataclass
class ModelSpec:
    name: str
    make: Callable[[], pl.LightningModule]
    batch: tuple[Tensor, Tensor]
    param_bytes: int = 0


def build_models(args: argparse.Namespace) -> list[ModelSpec]:
    specs = []
    for name in args.models:
        if name == "mlp":
            dm: pl.LightningDataModule = TeacherDataModule(
                in_features=args.in_features, n_train=args.mlp_batch, n_val=1, batch_size=args.mlp_batch, seed=0
            )

            def make(a: argparse.Namespace = args) -> pl.LightningModule:
                return MLPClassifier(in_features=a.in_features, depth=a.depth, width=a.width)

        else:
            dm = BlobImagesDataModule(
                image_size=args.image_size, n_train=args.cnn_batch, n_val=1, batch_size=args.cnn_batch
            )

            def make(a: argparse.Namespace = args) -> pl.LightningModule:
                return SmallCNN(channels=tuple(a.channels), image_size=a.image_size)

        dm.setup("fit")
        x, y = next(iter(dm.train_dataloader()))
        torch.manual_seed(args.seed)
        spec = ModelSpec(name, make, (x.contiguous(), y.contiguous()))
        spec.param_bytes = sum(p.numel() * p.element_size() for p in make().parameters())
        specs.append(spec)
    return specs


# ----------------------------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    seconds: float
    step_ms_median: float
    peak_rss: int
    rss: list[tuple[int, int]] = field(default_factory=list)


def run_once(
    spec: ModelSpec,
    callbacks: Callable[[str], list[Callback]],
    warmup: int,
    steps: int,
    seed: int,
    log_every_n_steps: int,
    rss_every: int = 1,
) -> RunResult:
    """One fresh fit of ``spec`` for ``warmup + steps + 1`` batches; times ``steps`` whole steps after warm-up."""
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="li_bench_") as tmp:
        torch.manual_seed(seed)
        model = spec.make()
        clock = StepClock(rss_every)
        total = warmup + steps + 1
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=total,
            logger=TensorBoardLogger(tmp, name="tb"),
            callbacks=[clock, *callbacks(tmp)],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            log_every_n_steps=log_every_n_steps,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(model, train_dataloaders=RepeatBatch(spec.batch, total))
        if len(clock.stamps) < warmup + steps + 1:
            raise RuntimeError(f"only {len(clock.stamps)} batches ran, expected {total}")
        s = clock.stamps
        window = s[warmup : warmup + steps + 1]
        durations = [b - a for a, b in itertools.pairwise(window)]
        result = RunResult(
            seconds=window[-1] - window[0],
            step_ms_median=1000.0 * statistics.median(durations),
            peak_rss=max(r for _, r in clock.rss),
            rss=clock.rss,
        )
        del trainer, model, clock
    gc.collect()
    return result


def _count(cadence: int | None, warmup: int, steps: int) -> int:
    """Optimizer steps ``k`` in the window ``[warmup, warmup + steps)`` with ``(k + 1) % cadence == 0``."""
    if not cadence:
        return 0
    return sum(1 for k in range(warmup, warmup + steps) if (k + 1) % cadence == 0)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"])
    p.add_argument("--configs", nargs="+", default=["*"], help="glob(s) on configuration names; 'bare' always runs")
    p.add_argument("--steps", type=int, default=500, help="timed steps per run (after warm-up)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps at the start of each run")
    p.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats of every configuration (0: RSS run only)"
    )
    p.add_argument("--cadences", nargs="+", type=int, default=[1, 50], help="every_n_steps / log_freq values")
    p.add_argument("--hist-every", type=int, default=500, help="histogram_every_n_steps of the '... hN' configs")
    p.add_argument("--depth", type=int, default=20, help="MLP Linear layers")
    p.add_argument("--width", type=int, default=512, help="MLP width")
    p.add_argument("--in-features", type=int, default=512, help="MLP input size")
    p.add_argument("--mlp-batch", type=int, default=256)
    p.add_argument("--channels", nargs="+", type=int, default=[32, 32, 64, 64, 64, 64], help="CNN channels")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--cnn-batch", type=int, default=64)
    p.add_argument("--rss-steps", type=int, default=2000, help="steps of the RSS-growth run (0: skip)")
    p.add_argument(
        "--rss-configs", nargs="+", choices=["all", "bare"], default=["all"], help="RSS runs: monitors and/or bare"
    )
    p.add_argument("--rss-model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (1: robust when other processes share the cores)"
    )
    p.add_argument("--log-every-n-steps", type=int, default=50, help="Trainer(log_every_n_steps=...) of every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, 1 repeat, the 'all' monitor configs and the peers: seconds"
    )
    args = p.parse_args(argv)
    if args.quick:  # tiny defaults; options given explicitly on the command line still win
        p.set_defaults(
            steps=10,
            warmup=2,
            repeats=1,
            depth=3,
            width=16,
            in_features=8,
            mlp_batch=8,
            channels=[4, 4],
            image_size=8,
            cnn_batch=4,
            cadences=[1, 5],
            hist_every=5,
            rss_steps=30,
            configs=["all*", "naive*", "grad_norm*", "wandb*"],
        )
        args = p.parse_args(argv)
    return args


def _quiet() -> None:
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=r".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=r".*`validation_step` but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=r".*is deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _print_header(args: argparse.Namespace, models: list[ModelSpec], wandb: Any) -> None:
    print("# lightning_init overhead benchmark")
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs, "
        f"{platform.system()} {platform.release()}"
    )
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}, "
        f"wandb {getattr(wandb, '__version__', 'not installed')}"
    )
    print(f"torch.set_num_threads({args.threads}) -> torch.get_num_threads() = {torch.get_num_threads()}")
    print(
        f"each timed run: {args.warmup} warm-up + {args.steps} timed steps (+1), repeats {args.repeats} interleaved, "
        f"TensorBoardLogger in a temp dir for every run, Trainer(log_every_n_steps={args.log_every_n_steps})"
    )
    for m in models:
        n = m.param_bytes // 4
        print(f"model {m.name}: {n:,} parameters ({m.param_bytes / _MB:.1f} MB), batch {tuple(m.batch[0].shape)}")
    if wandb is None:
        print(
            "note: `import wandb` failed: the wandb.watch configurations are skipped "
            "(install wandb, e.g. into a separate --target dir on PYTHONPATH, to include them)"
        )
    print(flush=True)


def benchmark(args: argparse.Namespace, models: list[ModelSpec], configs: list[Config]) -> None:
    for spec in models:
        results: dict[str, list[RunResult]] = {c.name: [] for c in configs}
        print(f"## {spec.name}: running {len(configs)} configurations x {args.repeats} repeats", flush=True)
        for r in range(args.repeats):
            t0 = time.perf_counter()
            for cfg in configs:
                results[cfg.name].append(
                    run_once(spec, cfg.make, args.warmup, args.steps, args.seed, args.log_every_n_steps)
                )
            print(f"   repeat {r + 1}/{args.repeats} done in {time.perf_counter() - t0:.0f} s", flush=True)
        bare = results["bare"]
        print()
        print(
            "| config | model | logs/hists in window | steps/s | slowdown vs bare (min-max) | overhead | "
            "median step ms | peak RSS MB |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for cfg in configs:
            runs = results[cfg.name]
            sps = statistics.median(args.steps / x.seconds for x in runs)
            ratios = [x.seconds / b.seconds for x, b in zip(runs, bare, strict=True)]
            ratio = statistics.median(ratios)
            step_ms = statistics.median(x.step_ms_median for x in runs)
            peak = max(x.peak_rss for x in runs) / _MB
            logs = _count(cfg.logs_every, args.warmup, args.steps)
            hists = _count(cfg.hist_every, args.warmup, args.steps)
            print(
                f"| {cfg.name} | {spec.name} | {logs}/{hists} | {sps:.2f} | {ratio:.3f}x "
                f"({min(ratios):.3f}-{max(ratios):.3f}) | {100 * (ratio - 1):+.1f} % | {step_ms:.1f} | {peak:.0f} |"
            )
        print(flush=True)


def rss_growth(args: argparse.Namespace, models: list[ModelSpec], which: str) -> None:
    spec = next((m for m in models if m.name == args.rss_model), models[0])
    warm = max(args.warmup, args.rss_steps // 10)
    what = (
        f"all three monitors every_n_steps=1, histograms every {args.hist_every}"
        if which == "all"
        else "bare (reference: Lightning + TensorBoardLogger alone)"
    )
    print(
        f"## RSS growth: {spec.name}, {what}, "
        f"{args.rss_steps} steps after {warm} warm-up steps (RSS sampled every 10 steps)",
        flush=True,
    )
    res = run_once(
        spec,
        (lambda tmp: _monitors("all", 1, args.hist_every)) if which == "all" else (lambda tmp: []),
        warm,
        args.rss_steps,
        args.seed,
        args.log_every_n_steps,
        rss_every=10,
    )
    samples = [(i, r) for i, r in res.rss if i >= warm]
    start, end = samples[0][1], samples[-1][1]
    xs = [float(i) for i, _ in samples]
    ys = [float(r) for _, r in samples]
    slope = statistics.linear_regression(xs, ys).slope if len(samples) > 2 else 0.0
    trend = slope * args.rss_steps
    limit = 0.01 * spec.param_bytes
    print(
        f"steps/s {args.rss_steps / res.seconds:.2f}; model parameters {spec.param_bytes / _MB:.2f} MB, "
        f"1 % = {limit / 1024:.0f} KiB"
    )
    print(f"RSS after warm-up {start / _MB:.1f} MB, at the end {end / _MB:.1f} MB, peak {res.peak_rss / _MB:.1f} MB")
    print(
        f"growth end - start: {(end - start) / 1024:+.0f} KiB; least-squares trend over {args.rss_steps} steps: "
        f"{trend / 1024:+.0f} KiB; max - start: {(max(ys) - start) / 1024:+.0f} KiB"
    )
    verdict = "flat" if max(end - start, trend) < limit else "GROWS"
    print(f"verdict: {verdict} (growth < 1 % of the model's parameter bytes)")
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    _quiet()
    wandb = _import_wandb()
    models = build_models(args)
    configs = [
        c
        for c in build_configs(args.cadences, args.hist_every, wandb)
        if c.name == "bare" or any(fnmatch.fnmatchcase(c.name, g) for g in args.configs)
    ]
    _print_header(args, models, wandb)
    if args.repeats > 0:
        benchmark(args, models, configs)
    if args.rss_steps > 0:
        for which in args.rss_configs:
            rss_growth(args, models, which)
    return 0


if __name__ == "__main__":
    sys.exit(main())
