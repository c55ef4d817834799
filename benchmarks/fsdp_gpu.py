"""GPU check: the monitors under FSDP2 (``fully_shard``) through Lightning's ``ModelParallelStrategy``, one device.

Runs as is where a CUDA device exists; on a machine without one it says so and exits 0::

    .venv/bin/python benchmarks/fsdp_gpu.py               # ~1 min on one GPU
    .venv/bin/python benchmarks/fsdp_gpu.py --steps 100 --width 2048 --depth 12

What it does (same process, same seed, same initial weights, one fixed in-memory batch repeated):

1. **Agreement**: fits the MLP with the three monitors (``every_n_steps=1``) twice, unsharded (``strategy="auto"``)
   and FSDP2-sharded (``ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)``, ``fully_shard`` on
   every Linear and the root in ``configure_model``), and prints the largest relative difference of every logged
   ``weight_*`` / ``grad_*`` / ``activation_*`` value (float rounding only: a few 1e-6 expected). Counts the
   monitors' collectives per logging step (``torch.distributed`` calls made from a monitor).
2. **Overhead**: times ``--steps`` steps after ``--warmup`` of the sharded fit bare and with the three monitors at
   ``every_n_steps`` 1 and 50, interleaved ``--repeats`` times, and prints steps/s and the median ratio
   ``time(monitors) / time(bare)`` of adjacent runs.

With one device the mesh has one process, so FSDP2 does not split the tensors; the check exercises the DTensor path
(``to_local``, the per-shard table, the one gather, the device-side merge) on a real GPU, not multi-GPU scaling.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import math
import statistics
import sys
import time
from typing import Any

import torch


def _skip_without_cuda() -> None:
    if not torch.cuda.is_available():
        print("fsdp_gpu: skipped: no CUDA device here (this check needs one GPU: FSDP2 through ModelParallelStrategy).")
        sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _skip_without_cuda()

    import lightning.pytorch as pl
    import torch.distributed as dist
    import torch.nn.functional as F
    from lightning.pytorch.strategies import ModelParallelStrategy
    from lightning.pytorch.utilities import rank_zero_only
    from torch import nn

    from lightning_init import ActivationMonitor, GradientMonitor, WeightMonitor

    class MLP(pl.LightningModule):
        def __init__(self, sharded: bool) -> None:
            super().__init__()
            torch.manual_seed(0)
            layers: list[nn.Module] = []
            for _ in range(args.depth):
                layers += [nn.Linear(args.width, args.width), nn.ReLU()]
            self.net = nn.Sequential(*layers, nn.Linear(args.width, 10))
            self.sharded = sharded

        def configure_model(self) -> None:
            if self.sharded:
                from torch.distributed.fsdp import fully_shard

                mesh = self.device_mesh["data_parallel"]
                for layer in self.net:
                    if isinstance(layer, nn.Linear):
                        fully_shard(layer, mesh=mesh)
                fully_shard(self, mesh=mesh)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(args.batch, args.width, generator=g), torch.randint(0, 10, (args.batch,), generator=g))

    class Repeat(torch.utils.data.IterableDataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __iter__(self):  # type: ignore[no-untyped-def]
            for _ in range(self.n):
                yield batch

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_start(self, trainer: pl.Trainer, *_: Any) -> None:
            torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())

    class Recorder(pl.loggers.Logger):
        def __init__(self) -> None:
            super().__init__()
            self.values: dict[tuple[str, int], float] = {}

        @property
        def name(self) -> str:
            return "recorder"

        @property
        def version(self) -> str:
            return "0"

        @rank_zero_only
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            for k, v in metrics.items():
                self.values[(k, int(step or 0))] = float(v)

        @rank_zero_only
        def log_hyperparams(self, *a: Any, **k: Any) -> None:
            pass

    calls: collections.Counter[str] = collections.Counter()
    for name in ("all_gather", "all_gather_into_tensor", "all_reduce", "broadcast", "barrier"):
        inner = getattr(dist, name)

        def counting(*a: Any, _inner: Any = inner, **k: Any) -> Any:
            for frame in inspect.stack()[1:12]:
                owner = frame.frame.f_locals.get("self")
                if isinstance(owner, (WeightMonitor, GradientMonitor, ActivationMonitor)):
                    calls[type(owner).__name__] += 1
                    break
            return _inner(*a, **k)

        setattr(dist, name, counting)

    def fit(sharded: bool, monitors: list[pl.Callback], steps: int, logger: pl.loggers.Logger | None) -> Clock:
        clock = Clock()
        strategy: Any = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1) if sharded else "auto"
        trainer = pl.Trainer(
            accelerator="cuda", devices=1, strategy=strategy, max_steps=steps, logger=logger or False,
            log_every_n_steps=50, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[clock, *monitors],
        )  # fmt: skip
        trainer.fit(MLP(sharded), torch.utils.data.DataLoader(Repeat(steps + 1), batch_size=None))
        return clock

    def three(every: int) -> list[pl.Callback]:
        return [
            WeightMonitor(every_n_steps=every, histogram_every_n_steps=None),
            GradientMonitor(every_n_steps=every, histogram_every_n_steps=None),
            ActivationMonitor(every_n_steps=every, histogram_every_n_steps=None),
        ]

    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; MLP depth {args.depth} x {args.width}")
    # 1. agreement, sharded vs unsharded
    logs = {}
    for sharded in (False, True):
        recorder = Recorder()
        calls.clear()
        fit(sharded, three(1), 10, recorder)
        logs[sharded] = recorder.values
        if sharded:
            counted = dict(calls)
    worst: dict[str, float] = {}
    for key, want in logs[False].items():
        kind = key[0].split("_")[0]
        if kind not in ("weight", "grad", "activation") or key not in logs[True]:
            continue
        got = logs[True][key]
        if math.isnan(want) and math.isnan(got):
            continue
        rel = abs(got - want) / max(abs(want), 1e-12)
        worst[kind] = max(worst.get(kind, 0.0), rel)
    missing = [k for k in logs[False] if k not in logs[True] and k[0].split("_")[0] in ("weight", "grad")]
    print(f"agreement (10 steps, every step logged): max relative difference {worst}; missing tags: {len(missing)}")
    print(
        f"monitor collectives in the sharded run: {counted} (one per logging step: 10 steps, plus the initial "
        "weights for WeightMonitor -> expect 11 / 10 / 10)"
    )

    # 2. overhead of the monitors on the sharded fit
    configs = {"bare": lambda: [], "all e1": lambda: three(1), "all e50": lambda: three(50)}
    times: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for name, make in configs.items():
            clock = fit(True, make(), args.warmup + args.steps + 1, None)
            times[name].append(clock.stamps[args.warmup + args.steps] - clock.stamps[args.warmup])
    print(f"\n| config | steps/s | ratio vs bare (median of {args.repeats}) |\n|---|---|---|")
    for name in configs:
        ratios = [t / b for t, b in zip(times[name], times["bare"], strict=True)]
        rate = args.steps / statistics.median(times[name])
        print(f"| {name} | {rate:.1f} | {statistics.median(ratios):.3f}x |")


if __name__ == "__main__":
    main()
