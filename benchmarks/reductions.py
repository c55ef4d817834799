"""Micro-benchmark of the statistics kernels: the first formulations (before) against the current ones (after).

One command, seconds::

    .venv/bin/python benchmarks/reductions.py
    .venv/bin/python benchmarks/reductions.py --quick     # tiny tensors, one run each (the suite's smoke test)

MLP-sized tensors (20 weights 512x512 + 20 biases; 40 layer outputs 256x512, half after a ReLU), one thread, min and
median of 9 runs. The "before" functions are the formulations the package used before the overhead fixes of issue 6,
kept here verbatim as references; "after" calls the package.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lightning_init import stats, writers

# ----------------------------------------------------------------------------------------------- before


def old_std_mean(t: Tensor) -> tuple[Tensor, Tensor]:
    x = t.detach().float()
    return torch.std_mean(x, correction=1 if x.numel() > 1 else 0)


def old_tensor_columns(tensors: Sequence[Tensor], wanted: Sequence[str]) -> dict[str, list[Tensor]]:
    cols = {"abs_max": list(torch._foreach_norm(tensors, float("inf")))}
    if "norm" in wanted:
        cols["norm"] = list(torch._foreach_norm(tensors, 2))
    pairs = [old_std_mean(t) for t in tensors]
    cols["mean"] = [m for _, m in pairs]
    cols["std"] = [s for s, _ in pairs]
    if "row_spread" in wanted:
        cols["row_spread"] = [old_row_spread(t) for t in tensors]
    return cols


def old_row_spread(weight: Tensor) -> Tensor:
    if weight.ndim < 2 or weight.shape[0] < 2:
        return torch.full((), math.nan)
    w = weight.detach().flatten(1).float()
    spread = (w - w.mean(dim=0, keepdim=True)).abs().amax()
    scale = w.abs().amax()
    return torch.where(scale > 0, spread / scale.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(scale))


def old_activation_row(output: Tensor) -> Tensor:
    x = output.detach().float()
    n = x.numel()
    std, mean = torch.std_mean(x, correction=1 if n > 1 else 0)
    amax = torch.linalg.vector_norm(x, float("inf"))
    zeros = n - torch.count_nonzero(x)
    nonfinite = n - torch.isfinite(x).sum()
    return torch.stack([mean, std, amax, zeros.float(), torch.zeros(()), nonfinite.float()])


# ----------------------------------------------------------------------------------------------- harness


REPS = 9


def bench(name: str, fn: Callable[[], Any]) -> None:
    reps = REPS
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    print(f"| {name} | {1e3 * min(times):.2f} | {1e3 * statistics.median(times):.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    global REPS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny tensors, one run each")
    args = parser.parse_args(argv)
    width, batch = (16, 8) if args.quick else (512, 256)
    REPS = 1 if args.quick else 9
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(width, width, generator=g) * 0.04 for _ in range(20)]
    ws += [torch.randn(width, generator=g) * 0.01 for _ in range(20)]
    acts = [torch.relu(torch.randn(batch, width, generator=g)) for _ in range(20)]
    acts += [torch.randn(batch, width, generator=g) for _ in range(20)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread")
    print("| kernel | min ms | median ms |\n|---|---:|---:|")
    bench("1. mean/std of 40 weights, before: torch.std_mean", lambda: [old_std_mean(w) for w in ws])
    bench("1. mean/std of 40 weights, after: sum + vector_norm(x - mean)", lambda: [stats._mean_std(w) for w in ws])
    bench("2. abs_max, before: _foreach_norm(xs, inf)", lambda: torch._foreach_norm(ws, float("inf")))
    bench(
        "2. abs_max, after: amax + amin per shape group + one maximum", lambda: stats.tensor_columns(ws, [])["abs_max"]
    )
    for wanted in (["mean", "std", "norm", "abs_max"], ["mean", "std", "norm", "abs_max", "row_spread"]):
        label = "+ row_spread" if "row_spread" in wanted else "mean, std, norm, abs_max"
        bench(f"weights {label} + fetch, before", lambda w=wanted: stats.fetch(old_tensor_columns(ws, w)))
        bench(f"weights {label} + fetch, after", lambda w=wanted: stats.fetch(stats.tensor_columns(ws, w)))
    bench("3. 40 activation rows, before", lambda: [old_activation_row(a) for a in acts])
    bench("3. 40 activation rows, after", lambda: [stats.activation_row(a) for a in acts])
    bench("3. zeros, before: n - count_nonzero(x)", lambda: [a.numel() - torch.count_nonzero(a) for a in acts])
    bench("3. zeros, after: n - x.bool().sum()", lambda: [a.numel() - a.bool().sum() for a in acts])
    bench("3. NaN/Inf, before: n - isfinite(x).sum()", lambda: [a.numel() - torch.isfinite(a).sum() for a in acts])
    bench("3. NaN/Inf, after: (x * 0).bool().sum()", lambda: [(a * 0).bool().sum() for a in acts])

    logger = TensorBoardLogger(tempfile.mkdtemp(prefix="li_reductions_"), name="tb")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=[logger], enable_progress_bar=False)
    metrics = {f"weight_std/net.{i}.weight": 0.1 * i for i in range(650)}
    step = [0]

    def via_log_metrics() -> None:
        step[0] += 1
        logger.log_metrics(metrics, step=step[0])

    def via_one_summary() -> None:
        step[0] += 1
        writers.log_scalars(trainer, metrics, step[0])

    bench("4. 650 scalars, before: TensorBoardLogger.log_metrics", via_log_metrics)
    bench("4. 650 scalars, after: one Summary", via_one_summary)

    moved = [w + 1e-4 for w in ws]

    def old_snapshot() -> Any:
        snap = [p.clone() for p in ws]
        norms = torch._foreach_norm(ws)
        return torch._foreach_norm(torch._foreach_sub(moved, snap)), norms

    buffers = [torch.empty_like(p) for p in ws]

    def new_snapshot() -> Any:
        torch._foreach_copy_(buffers, ws)
        norms = torch._foreach_norm(ws)
        torch._foreach_sub_(buffers, moved)
        return torch._foreach_norm(buffers), norms

    bench("5. update_ratio, before: clone + _foreach_sub", old_snapshot)
    bench("5. update_ratio, after: _foreach_copy_ into kept buffers + _foreach_sub_", new_snapshot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
