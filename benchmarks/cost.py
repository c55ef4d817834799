"""The cost of the monitors against their physical limit (issue 14): one command, one process, one table.

    .venv/bin/python benchmarks/cost.py                  # the full table (~10 min on a quiet 2-core machine)
    .venv/bin/python benchmarks/cost.py --quick          # tiny sizes, seconds (the suite's smoke test)
    .venv/bin/python benchmarks/cost.py --device cuda    # the same on a GPU (benchmarks/cost_gpu.py: skips on CPU)

What it prints:

- per model (MLP 20x512 batch 256, the zoo's ResNet-18-style net, the zoo's GPT-2 tiny), the time per step of a bare
  fit and the ratios against it, measured in the same process with the configurations interleaved (A B C A B C ...,
  ``--repeats`` times; the ratio is the median over repeats of ``time(config) / time(bare)`` of the same repeat):
  all three monitors at every step (scalars and health, histograms off), Lightning's ``grad_norm`` recipe at every
  step, and all three monitors every 50 steps with histograms every 500;
- the extra cost of a histogram step, in bare steps;
- the depth sweep ``L x (Linear(8, 8) + Tanh)``: the extra time of a logging step of all three monitors over a bare
  step, for each ``L``, and its least-squares slope in ms per watched layer;
- per model, the bytes the monitors must read per logging step (each watched weight, gradient and module output
  once) and the time that takes at this machine's measured memory bandwidth (the physical limit);
- the RSS of a long run with all three monitors at every step (flat = growth below 1 % of the parameter bytes).

Times are CPU time of this process (``time.process_time``; on CUDA: wall time after a synchronize): on a machine
shared with other jobs the wall clock measures the neighbours as much as the code. One torch thread.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.zoo: the model zoo

import lightning  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning.pytorch.utilities import grad_norm  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from lightning_init import ActivationMonitor, GradientMonitor, WeightMonitor  # noqa: E402
from lightning_init.models import MLPClassifier  # noqa: E402

_MB = 1024.0**2


# ----------------------------------------------------------------------------------------------- clock and data


class StepClock(Callback):
    """Stamps the time at the start of every training batch (CPU time, or wall time after a CUDA synchronize)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())
        else:
            self.stamps.append(time.process_time())


class RepeatBatch:
    """The same in-memory batch ``n`` times (no data loading is measured)."""

    def __init__(self, batch: tuple[Tensor, ...], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        return itertools.repeat(self.batch, self.n)


class GradNorm(Callback):
    """Lightning's recipe: ``self.log_dict(grad_norm(self, norm_type=2))`` in ``on_before_optimizer_step``."""

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        pl_module.log_dict(grad_norm(pl_module, norm_type=2))


def monitors(every: int, hist: int | None) -> list[Callback]:
    """All three monitors, scalars and health at ``every``, histograms at ``hist``."""
    return [
        WeightMonitor(every_n_steps=every, histogram_every_n_steps=hist),
        GradientMonitor(every_n_steps=every, histogram_every_n_steps=hist),
        ActivationMonitor(every_n_steps=every, histogram_every_n_steps=hist),
    ]


# ----------------------------------------------------------------------------------------------- models


class DeepTanh(pl.LightningModule):
    """``depth x (Linear(8, 8) + Tanh)``, mean-square loss, SGD: the depth sweep's model."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.net = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(8, 8), nn.Tanh())])

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


@dataclass
class Model:
    name: str
    what: str
    make: Callable[[], pl.LightningModule]
    batch: tuple[Tensor, ...]


def build_models(args: argparse.Namespace) -> list[Model]:
    from tests.zoo import data as zoo_data
    from tests.zoo import models as zoo_models

    out: list[Model] = []
    g = torch.Generator().manual_seed(0)
    if "mlp" in args.models:
        d, w, b = args.mlp_depth, args.mlp_width, args.mlp_batch
        x = torch.randn(b, w, generator=g)
        y = torch.randint(0, 10, (b,), generator=g)
        out.append(
            Model(
                "mlp",
                f"MLPClassifier {d}x{w} (ReLU), batch {b}",
                lambda: MLPClassifier(in_features=w, depth=d, width=w, num_classes=10),
                (x, y),
            )
        )
    if "resnet18" in args.models:
        # the case: a real ResNet-18 (widths 64-512, the zoo's CIFAR-style ResNet class), 32x32 images
        size, widths = args.resnet_image_size, tuple(args.resnet_widths)
        x = torch.randn(args.resnet_batch, zoo_data.IMAGE_CHANNELS, size, size, generator=g)
        y = torch.randint(0, zoo_data.IMAGE_CLASSES, (args.resnet_batch,), generator=g)

        def resnet18() -> pl.LightningModule:
            net = zoo_models.ResNet((2, 2, 2, 2), widths)
            return zoo_models.ZooModule(net, task="classify", optimizer="sgd", lr=0.05, example_input_array=x[:2])

        out.append(
            Model(
                "resnet18",
                f"ResNet-18 [2,2,2,2] widths {'-'.join(map(str, widths))}, {tuple(x.shape)} images",
                resnet18,
                (x, y),
            )
        )
    if "resnet_tiny" in args.models:
        x, y = next(iter(zoo_data.images(seed=0, steps=1, batch_size=args.image_batch)))
        out.append(
            Model(
                "resnet_tiny",
                f"tests.zoo ResNet-18 layout [2,2,2,2] widths 8-64, {tuple(x.shape)} images",
                zoo_models.build_resnet,
                (x, y),
            )
        )
    if "gpt2" in args.models:
        x, y = next(iter(zoo_data.lm_tokens(seed=0, steps=1, batch_size=args.token_batch)))
        out.append(
            Model(
                "gpt2",
                f"tests.zoo GPT-2 tiny (2 layers, n_embd 64), {tuple(x.shape)} tokens",
                zoo_models.build_gpt2,
                (x, y),
            )
        )
    return out


# ----------------------------------------------------------------------------------------------- one fit


def fit(
    make: Callable[[], pl.LightningModule],
    batch: tuple[Tensor, ...],
    callbacks: list[Callback],
    steps: int,
    *,
    device: str,
    log_every_n_steps: int,
    seed: int = 0,
    extra: list[Callback] | None = None,
) -> list[float]:
    """One fresh fit for ``steps + 1`` batches; returns the duration of each of the ``steps`` steps (seconds)."""
    gc.collect()
    cuda = device == "cuda"
    clock = StepClock(cuda)
    with tempfile.TemporaryDirectory(prefix="li_cost_") as tmp:
        torch.manual_seed(seed)
        model = make()
        trainer = pl.Trainer(
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            max_steps=steps + 1,
            logger=TensorBoardLogger(tmp, name="tb"),
            callbacks=[clock, *callbacks, *(extra or [])],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            log_every_n_steps=log_every_n_steps,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(model, train_dataloaders=RepeatBatch(batch, steps + 1))
        durations = [b - a for a, b in itertools.pairwise(clock.stamps)]
        del trainer, model
    gc.collect()
    return durations


# ----------------------------------------------------------------------------------------------- the table


@dataclass
class Row:
    model: Model
    bare_ms: float
    every_step: list[float]  # ratios per repeat
    grad_norm: list[float]
    every_50: list[float]
    hist_extra_bare_steps: float
    bytes_read: int
    limit_ms: float


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def measure_model(model: Model, args: argparse.Namespace, bandwidth: float) -> Row:
    warm = args.warmup
    e1_steps, e50_steps = args.steps, args.steps_e50
    runs: dict[str, list[list[float]]] = {k: [] for k in ("bare1", "all1", "gn1", "bare50", "all50", "hist")}
    for _ in range(args.repeats):
        for key, cbs, n, every in (
            ("bare1", [], warm + e1_steps, 1),
            ("all1", monitors(1, None), warm + e1_steps, 1),
            ("gn1", [GradNorm()], warm + e1_steps, 1),
            ("bare50", [], warm + e50_steps, 50),
            ("all50", monitors(50, 500), warm + e50_steps, 50),
            # a histogram step at k = 49 (with its logging step); compared below with all50's logging step k = 49
            ("hist", monitors(50, 50), 50, 50),
        ):
            runs[key].append(fit(model.make, model.batch, cbs, n, device=args.device, log_every_n_steps=every))
        print(f"   {model.name}: repeat done", flush=True)

    def window(d: list[float], n: int) -> float:
        return sum(d[warm : warm + n])

    ratios = {
        k: [window(a, n) / window(b, n) for a, b in zip(runs[k], runs[base], strict=True)]
        for k, base, n in (("all1", "bare1", e1_steps), ("gn1", "bare1", e1_steps), ("all50", "bare50", e50_steps))
    }
    bare_ms = 1e3 * _med([_med(d[warm:]) for d in runs["bare1"]])
    # histogram step k = 49 (durations[49]) minus the plain logging step k = 49 of the e50 run, in bare steps
    hist = _med([h[49] - a[49] for h, a in zip(runs["hist"], runs["all50"], strict=True)]) * 1e3 / bare_ms
    read = bytes_read(model)
    return Row(model, bare_ms, ratios["all1"], ratios["gn1"], ratios["all50"], hist, read, 1e3 * read / bandwidth)


def bytes_read(model: Model) -> int:
    """Bytes the monitors must read per logging step: every watched weight, gradient and module output, once."""
    torch.manual_seed(0)
    module = model.make()
    probe = ActivationMonitor()
    outputs = 0

    def count(_m: nn.Module, _a: Any, out: Any) -> None:
        nonlocal outputs
        t = out if isinstance(out, Tensor) else next((o for o in _flatten(out) if isinstance(o, Tensor)), None)
        if t is not None and t.is_floating_point():
            outputs += t.numel() * t.element_size()

    handles = [m.register_forward_hook(count) for _, m in probe._watched_modules(module)]  # the default watch list
    try:
        module.training_step(model.batch, 0)
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    return 2 * params + outputs  # weights and gradients once each, module outputs once


def _flatten(out: Any) -> Iterator[Any]:
    if isinstance(out, (list, tuple)):
        for o in out:
            yield from _flatten(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _flatten(o)
    else:
        yield out


def memory_bandwidth(device: str) -> float:
    """Read bandwidth in bytes/s: the best of 5 ``sum`` passes over a 256 MB float32 tensor.

    CPU time on CPU (the clock of the whole benchmark: a shared machine's neighbours do not count), wall time after
    a synchronize on CUDA.
    """
    x = torch.ones(64 * 1024 * 1024, device=device)
    clock = time.perf_counter if device == "cuda" else time.process_time
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t = clock()
        x.sum().item()
        best = min(best, clock() - t)
    return x.numel() * x.element_size() / best


# ----------------------------------------------------------------------------------------------- depth sweep


def depth_sweep(args: argparse.Namespace) -> tuple[list[tuple[int, float, float]], float]:
    """``[(L, bare step ms, logging step extra ms)]`` and the least-squares slope in ms per watched layer."""
    every, steps = 5, 12
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    points = []
    for depth in args.depths:
        extras, bares = [], []
        for _ in range(args.depth_repeats):

            def make(d: int = depth) -> pl.LightningModule:
                return DeepTanh(d)

            bare = fit(make, (x,), [], steps, device=args.device, log_every_n_steps=50)
            mon = fit(make, (x,), monitors(every, None), steps, device=args.device, log_every_n_steps=50)
            base = _med(bare[2:])
            # logging steps k = 4, 9 (their durations include the weights measured after the update)
            logging = [mon[k] for k in range(2, steps) if (k + 1) % every == 0]
            extras.append(1e3 * (min(logging) - base))
            bares.append(1e3 * base)
        points.append((depth, _med(bares), _med(extras)))
        print(f"   depth {depth}: bare {points[-1][1]:.1f} ms, logging step +{points[-1][2]:.0f} ms", flush=True)
    slope = statistics.linear_regression([float(d) for d, _, _ in points], [e for _, _, e in points]).slope
    return points, slope


# ----------------------------------------------------------------------------------------------- RSS


def rss_run(args: argparse.Namespace) -> str:
    """RSS over ``--rss-steps`` steps of a small MLP with all three monitors at every step (histograms every 500)."""
    proc = psutil.Process()
    samples: list[tuple[int, int]] = []

    class Sampler(Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, b: Any, i: int) -> None:
            if i % 50 == 0:
                samples.append((i, int(proc.memory_info().rss)))

    w = args.rss_width
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(64, w, generator=g), torch.randint(0, 10, (64,), generator=g))

    def make() -> pl.LightningModule:
        return MLPClassifier(in_features=w, depth=8, width=w, num_classes=10)

    fit(make, batch, monitors(1, 500), args.rss_steps, device=args.device, log_every_n_steps=50, extra=[Sampler()])
    params = sum(p.numel() * 4 for p in make().parameters())
    warm = [(i, r) for i, r in samples if i >= args.rss_steps // 10]
    start, end = warm[0][1], warm[-1][1]
    trend = statistics.linear_regression([float(i) for i, _ in warm], [float(r) for _, r in warm]).slope
    growth = max(end - start, trend * (warm[-1][0] - warm[0][0]))
    limit = max(0.01 * params, 1024 * 1024)
    verdict = "flat" if growth < limit else "GROWS"
    return (
        f"RSS over {args.rss_steps} steps (MLP 8x{w}, all three monitors every step, histograms every 500; from step "
        f"{warm[0][0]}): {start / _MB:.1f} MB -> {end / _MB:.1f} MB, growth {(end - start) / 1024:+.0f} KiB, trend "
        f"{trend * (warm[-1][0] - warm[0][0]) / 1024:+.0f} KiB: {verdict} (limit max(1 % of parameter bytes, 1 MiB))"
    )


def print_table(rows: list[Row]) -> None:
    """The models' table, then what each model is."""
    print(
        "| model | bare ms/step | every step, all three | Lightning `grad_norm` | every 50 steps (hist. every 500) "
        "| histogram step (bare steps) | bytes read per logging step | at memory bandwidth |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.model.name} | {r.bare_ms:.1f} | {_med(r.every_step):.3f}x ({min(r.every_step):.2f}-"
            f"{max(r.every_step):.2f}) | {_med(r.grad_norm):.3f}x | {_med(r.every_50):.3f}x | "
            f"{r.hist_extra_bare_steps:+.2f} | {r.bytes_read / _MB:.1f} MB | {r.limit_ms:.2f} ms |"
        )
    for r in rows:
        print(f"- {r.model.name}: {r.model.what}")
    print(flush=True)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--models",
        nargs="*",
        choices=["mlp", "resnet18", "resnet_tiny", "gpt2"],
        default=["mlp", "resnet18", "gpt2"],
        help="resnet18: the issue's ResNet-18 (widths 64-512, 32x32, batch 16); resnet_tiny: the zoo's (widths 8-64)",
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each fit")
    p.add_argument("--steps", type=int, default=20, help="timed steps of the every-step runs")
    p.add_argument("--steps-e50", type=int, default=100, help="timed steps of the every-50-steps runs")
    p.add_argument("--depths", nargs="*", type=int, default=[100, 250, 500, 1000, 2000], help="[]: skip")
    p.add_argument("--depth-repeats", type=int, default=1, help="fits per depth (bare and monitored)")
    p.add_argument("--mlp-depth", type=int, default=20)
    p.add_argument("--mlp-width", type=int, default=512)
    p.add_argument("--mlp-batch", type=int, default=256)
    p.add_argument("--image-batch", type=int, default=32, help="resnet_tiny's batch")
    p.add_argument("--resnet-batch", type=int, default=16)
    p.add_argument("--resnet-image-size", type=int, default=32)
    p.add_argument("--resnet-widths", nargs=4, type=int, default=[64, 128, 256, 512])
    p.add_argument("--token-batch", type=int, default=16)
    p.add_argument("--rss-steps", type=int, default=5000, help="0: skip")
    p.add_argument("--rss-width", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(
            repeats=1,
            steps=3,
            steps_e50=50,
            depths=[10, 20],
            mlp_depth=3,
            mlp_width=16,
            mlp_batch=8,
            image_batch=2,
            resnet_batch=2,
            resnet_image_size=8,
            resnet_widths=[4, 8, 8, 8],
            token_batch=2,
            rss_steps=100,
            rss_width=8,
            warmup=1,
        )
        args = p.parse_args(argv)
    return args


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device (torch.cuda.is_available() is False); run on a GPU machine as is")
        return 0
    torch.set_num_threads(1)
    _quiet()
    bandwidth = memory_bandwidth(args.device)
    print("# lightning_init monitoring cost (issue 14)")
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(
        f"machine: {platform.machine()} {os.cpu_count()} logical CPUs{gpu}, {platform.system()} {platform.release()}; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    clock = "wall time after a synchronize" if args.device == "cuda" else "CPU time of this process"
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}; "
        f"torch threads {torch.get_num_threads()}; times: {clock}"
    )
    print(f"measured memory read bandwidth: {bandwidth / 1e9:.1f} GB/s")
    print(flush=True)
    rows = [measure_model(m, args, bandwidth) for m in build_models(args)]
    print()
    if rows:
        print_table(rows)
    if args.depths:
        points, slope = depth_sweep(args)
        print()
        print("| depth L (watched layers: 2L modules, 4L parameters) | bare step ms | logging step extra ms |")
        print("|---:|---:|---:|")
        for d, bare, extra in points:
            print(f"| {d} | {bare:.1f} | +{extra:.0f} |")
        print(f"depth-sweep slope: {slope:.3f} ms per layer (Linear + Tanh; all three monitors, scalars + health)")
        print(flush=True)
    if args.rss_steps > 0:
        print(rss_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
