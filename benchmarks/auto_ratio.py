"""30-step loss of ``WeightInit("auto")`` relative to each zoo model's own init, over several seeds (issue 12).

Run from the repository root (one CPU thread)::

    python -m benchmarks.auto_ratio                      # every healthy zoo model, seeds 0 1 2
    python -m benchmarks.auto_ratio gpt2 bert --seeds 10 --noise

For each model and seed ``s``: the model is built with ``torch.manual_seed(s)`` (its own init: HF ``post_init``,
torchvision / timm-style code in ``tests/zoo``), once as built and once re-initialized by ``init_module(model, "auto",
example_input=model.example_input_array, seed=s)``; both are trained for 30 steps of the zoo model's own optimizer and
learning rate on the same data (the zoo loader of seed ``s``) with the same dropout draws (torch's RNG is re-seeded
before the first step), and the loss is the mean of the last three steps. The ratio ``auto / own`` per seed, and the
ratio of the mean losses over the seeds (the acceptance: ``<= 1.1`` for GPT-2 and BERT), are printed.

``--noise`` adds the noise floor: the model's own init drawn again from another seed (``s + 1000``), trained on the
same data; its ratio to the own init is what chance alone gives (on BERT's 4-class task at 30 steps it ranges
0.5-1.6 per seed: the loss is leaving its plateau there, so single seeds say little).
"""

from __future__ import annotations

import argparse
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

STEPS = 30


@dataclass
class Ratios:
    """Final losses of one model: its own init, auto (and the noise floor) per seed."""

    model: str
    seeds: list[int]
    own: list[float] = field(default_factory=list)
    auto: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    auto_initial: list[float] = field(default_factory=list)

    @staticmethod
    def _mean(x: list[float]) -> float:
        return sum(x) / len(x) if x else math.nan

    @property
    def ratio(self) -> float:
        """Mean auto loss / mean own-init loss over the seeds."""
        return self._mean(self.auto) / self._mean(self.own)

    @property
    def noise_ratio(self) -> float:
        """Mean re-drawn own-init loss / mean own-init loss (``nan`` without ``--noise``)."""
        return self._mean(self.noise) / self._mean(self.own) if self.noise else math.nan


def build(name: str, seed: int) -> torch.nn.Module:
    """Zoo model ``name`` with its own init drawn from ``torch.manual_seed(seed)``."""
    from tests.zoo.registry import ZOO

    torch.manual_seed(seed)
    return ZOO[name].build()


def auto_init(model: torch.nn.Module, seed: int, **kw: object) -> torch.nn.Module:
    """``model`` re-initialized by ``auto`` (warnings silenced: the report is not the point here)."""
    from lightning_init import init_module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init_module(model, "auto", seed=seed, example_input=model.example_input_array, **kw)  # type: ignore[arg-type]
    return model


def train(name: str, model: torch.nn.Module, seed: int, steps: int = STEPS, lr: float = 1.0) -> tuple[float, float]:
    """``(loss at init, mean loss of the last three of steps+1 evaluations)`` under the zoo's optimizer, lr x ``lr``."""
    from tests.zoo.registry import ZOO

    model.lr *= lr  # type: ignore[operator]
    opt = model.configure_optimizers()  # type: ignore[operator]
    torch.manual_seed(10_000 + seed)  # the same dropout draws for every init of this seed
    losses: list[float] = []
    for i, batch in enumerate(ZOO[name].data(seed, steps + 1)):
        loss = model.loss(batch)  # type: ignore[operator]
        losses.append(float(loss.detach()))
        if i == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses[0], sum(losses[-3:]) / 3


def measure(
    name: str,
    seeds: Sequence[int],
    *,
    noise: bool = False,
    residual: str = "none",
    log: Callable[[str], None] | None = None,
) -> Ratios:
    """The own-init and auto losses of ``name`` for each seed (and the noise floor with ``noise``)."""
    out = Ratios(name, list(seeds))
    for s in seeds:
        out.own.append(train(name, build(name, s), s)[1])
        a0, a30 = train(name, auto_init(build(name, s), s, residual=residual), s)
        out.auto_initial.append(a0)
        out.auto.append(a30)
        if noise:
            out.noise.append(train(name, build(name, s + 1000), s)[1])
        if log is not None:
            log(f"{name} seed {s}: own {out.own[-1]:.3f}, auto {a30:.3f} (ratio {a30 / out.own[-1]:.3f})")
    return out


def table(results: Sequence[Ratios]) -> list[str]:
    """Markdown: one line per model (ratio of means, per-seed ratios, noise floor)."""
    lines = [
        f"| model | seeds | own init, mean loss after {STEPS} steps | auto | ratio of means | per seed "
        "| noise floor (own init re-drawn) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per_seed = ", ".join(f"{a / o:.2f}" for a, o in zip(r.auto, r.own, strict=True))
        floor = "-" if not r.noise else f"{r.noise_ratio:.3f}"
        lines.append(
            f"| {r.model} | {len(r.seeds)} | {Ratios._mean(r.own):.3f} | {Ratios._mean(r.auto):.3f} | "
            f"{r.ratio:.3f} | {per_seed} | {floor} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table for the models named (default: every healthy zoo model)."""
    from tests.zoo.registry import HEALTHY

    parser = argparse.ArgumentParser(prog="python -m benchmarks.auto_ratio", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"zoo models (default: {', '.join(HEALTHY)})")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    parser.add_argument("--noise", action="store_true", help="also the own init re-drawn: the noise floor")
    parser.add_argument("--residual", default="none", help="auto's residual preset (default none)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in HEALTHY]
    if unknown:
        parser.error(f"unknown zoo models {unknown}; choose from {', '.join(HEALTHY)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    results = [
        measure(n, range(args.seeds), noise=args.noise, residual=args.residual, log=lambda s: print(s, flush=True))
        for n in args.names or HEALTHY
    ]
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
