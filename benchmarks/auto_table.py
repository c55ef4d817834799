"""What ``WeightInit("auto")`` chooses on each zoo architecture, the residual presets, and loss at init / 30 steps.

Run from the repository root: ``python -m benchmarks.auto_table`` prints the Markdown; ``--write`` replaces the block
between ``<!-- auto-table:start -->`` and ``<!-- auto-table:end -->`` in README.md. Everything is measured: each
model is built from the zoo (``tests/zoo``, tiny sizes, seed 0), initialized with ``init_module(model, "auto",
example_input=model.example_input_array, seed=0)``, and the table groups the report's rows by what they got.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

DATE = "2026-12-02"
#: Seeds of the training table (model init, data and dropout all drawn from the seed).
SEEDS = (0, 1, 2)
START, END = "<!-- auto-table:start -->", "<!-- auto-table:end -->"

#: Why auto chose what it chose, by the report's label (the first matching pattern wins).
WHY: tuple[tuple[str, str], ...] = (
    (
        r"small_init \(embedding",
        "embedding normalized before any layer, in a transformer: small init sqrt(2/(5d)) (GPT-NeoX)",
    ),
    (
        r"small_init \(tied",
        "tied embedding + output in a transformer: small init, the residual stream at the blocks' scale; logits at "
        "std sqrt(2/5), loss ln V + 0.2",
    ),
    (
        r"small_init",
        "layer of a transformer block: small init sqrt(2/(5d)), d the residual width (Nguyen & Salazar 2019, GPT-NeoX)",
    ),
    (r"readout.*tied", "tied embedding + output layer: muP readout std 1/d, logits start near 0 (loss ln V)"),
    (r"readout", "output returned as logits: muP readout std 1/fan_in, loss at init ln(classes)"),
    (r"added to a tied", "summed with the tied embedding: the same std"),
    (r"kaiming_normal \((relu|gelu|silu|elu|softplus)\)", "followed (data flow) by a ReLU-shaped activation"),
    (r"kaiming_normal \(leaky_relu\)", "followed by LeakyReLU: Kaiming with its slope"),
    (r"xavier_normal \((tanh|sigmoid)\)", "followed by a bounded activation: Glorot"),
    (r"xavier_normal \(linear\) x3 blocks|xavier_normal x3 blocks", "fused q/k/v: Glorot per d x d block"),
    (r"xavier_normal \(linear\)", "followed by a layer, a residual add into a norm, or the output: Glorot"),
    (r"orthogonal", "recurrent weights: orthogonal per gate block"),
    (r"auto: xavier_normal$", "attention output projection (nn.MultiheadAttention): Glorot"),
    (r"zeros \(kept\)", "the model's own zero-init-last gamma: kept"),
    (r"^ones$", "norm weight 1 (bias 0)"),
    (r"^normal$", "embedding N(0, 1) (torch's default; a norm or a layer follows)"),
    (r"token", "class token: N(0, 1e-6) (timm ViT)"),
    (r"position embedding", "position embedding: trunc_normal std 0.02 (ViT/DeiT)"),
    (r"position table", "indexed by positions or a constant, not the input: position default trunc_normal 0.02"),
    (r"layer scale", "layer scale: the model's init_values kept (CaiT)"),
)


def _why(label: str, layer: str) -> str:
    if "weight_ih" in layer:
        return "RNN input weights: Glorot per gate block (sigmoid/tanh gates)"
    for pattern, why in WHY:
        if re.search(pattern, label):
            return why
    return ""


def _auto(model: torch.nn.Module, **kw: object):  # type: ignore[no-untyped-def]
    from lightning_init import init_module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return init_module(model, "auto", seed=0, example_input=model.example_input_array, **kw)  # type: ignore[arg-type]


def _build(name: str) -> torch.nn.Module:
    from tests.zoo.registry import ZOO

    torch.manual_seed(0)
    return ZOO[name].build()


def choices_table(names: list[str]) -> list[str]:
    """One line per (model, what a group of parameters got): count, std and fans of the first, why."""
    lines = ["| model | parameters | auto chose | std (fan_in, fan_out) of the first | why |", "|---|---|---|---|---|"]
    for name in names:
        report = _auto(_build(name))
        groups: OrderedDict[str, list] = OrderedDict()
        for row in report.rows:
            label = re.sub(r" x [0-9.]+$", "", row.scheme)
            groups.setdefault(label, []).append(row)
        for label, rows in groups.items():
            first = rows[0]
            std = "-" if not math.isfinite(first.expected_std) else f"{first.expected_std:.4g}"
            fans = f" ({first.fan_in}, {first.fan_out})" if first.fan_in is not None else ""
            short = first.layer.removeprefix("net.")
            more = f" + {len(rows) - 1} more" if len(rows) > 1 else ""
            lines.append(f"| {name} | `{short}`{more} | {label} | {std}{fans} | {_why(label, first.layer)} |")
    return lines


def presets_table() -> list[str]:
    """What each residual preset changes, measured on ResNet-18 and GPT-2."""
    lines = ["| preset | model | parameter | auto | with the preset | note |", "|---|---|---|---|---|---|"]
    picks = {
        "resnet18": ("layer1.0.bn2.weight", "layer1.0.conv2.weight", "layer1.0.conv1.weight", "fc.weight"),
        "gpt2": (
            "transformer.h.0.attn.c_proj.weight",
            "transformer.h.0.mlp.c_proj.weight",
            "transformer.h.0.mlp.c_fc.weight",
        ),
    }
    for preset in ("zero_last_norm", "scaled", "fixup"):
        for name, params in picks.items():
            plain = _build(name)
            _auto(plain)
            base_tensors = dict(plain.named_parameters())
            model = _build(name)
            rows = {r.layer: r for r in _auto(model, residual=preset).rows}
            tensors = dict(model.named_parameters())
            for p in params:
                key = f"net.{p}"
                if key not in rows:
                    continue
                before, after = _describe(base_tensors[key]), _describe(tensors[key])
                note = rows[key].note.split("; ")[-1] if before != after else "unchanged"
                lines.append(f"| `{preset}` | {name} | `{p}` | {before} | {after} | {note} |")
    return lines


def _describe(t: torch.Tensor) -> str:
    flat = t.detach().float().flatten()
    if bool((flat == flat[0]).all()):
        return f"all {float(flat[0]):g}"
    return f"std {float(flat.std(correction=0)):.4g}"


def _train(name: str, init: str, residual: str = "none", lr: float = 1.0) -> tuple[float, list[float]]:
    """(loss at init of seed 0, final losses per seed) of ``name`` under its own init or ``auto`` (+ preset)."""
    from benchmarks.auto_ratio import auto_init, build, train

    first, finals = math.nan, []
    for seed in SEEDS:
        model = build(name, seed)
        if init == "auto":
            auto_init(model, seed, residual=residual)
        l0, l30 = train(name, model, seed, lr=lr)
        first = l0 if seed == SEEDS[0] else first
        finals.append(l30)
    return first, finals


def _loader_of(name: str) -> object:
    """The zoo data function of entry ``name`` (its ``data`` is a lambda around one of ``tests.zoo.data``'s)."""
    from tests.zoo import data
    from tests.zoo.registry import ZOO

    closure = ZOO[name].data.__closure__ or ()
    for cell in closure:
        fn = cell.cell_contents
        if fn in (data.images, data.class_tokens, data.lm_tokens, data.teacher_vectors):
            return fn
    return None


def training_table() -> list[str]:
    """Loss at init vs chance, and after 30 steps over :data:`SEEDS`: auto (and presets) vs the model's own init."""
    lines = [
        "| model | chance ln(C) | init | loss at init | mean loss after 30 steps | ratio of means to the own init "
        "| per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    from tests.zoo import data
    from tests.zoo.registry import HEALTHY

    chance = {data.images: data.IMAGE_CLASSES, data.class_tokens: data.TOKEN_CLASSES, data.lm_tokens: data.VOCAB}
    for name in HEALTHY:
        loader = _loader_of(name)
        classes = chance.get(loader, 0)
        h0, own = _train(name, "hf")
        own_mean = sum(own) / len(own)
        label = "HF's own" if name in ("gpt2", "bert") else "the model's own"
        lines.append(f"| {name} | {math.log(classes):.3f} | {label} | {h0:.3f} | {own_mean:.3f} | 1 | |")
        variants = [("none", 1.0)]
        if name in ("gpt2", "bert"):
            variants += [("scaled", 1.0), ("fixup", 1.0), ("none", 2.0)]
        for residual, lr in variants:
            a0, finals = _train(name, "auto", residual, lr=lr)
            mean = sum(finals) / len(finals)
            label = "auto" if residual == "none" else f"auto, residual={residual!r}"
            label += f", lr x {lr:g}" if lr != 1.0 else ""
            per_seed = ", ".join(f"{a / o:.2f}" for a, o in zip(finals, own, strict=True))
            lines.append(
                f"| {name} | {math.log(classes):.3f} | {label} | {a0:.3f} | {mean:.3f} | {mean / own_mean:.3f} "
                f"| {per_seed} |"
            )
    return lines


def render() -> str:
    """The whole README block."""
    from tests.zoo.registry import HEALTHY

    torch.set_num_threads(1)
    parts = [
        START,
        f"Measured by `python -m benchmarks.auto_table` on the zoo (`tests/zoo`, seed 0), {DATE}.",
        "",
        *choices_table(list(HEALTHY)),
        "",
        "Residual presets (`residual=`), branches found from the data flow:",
        "",
        *presets_table(),
        "",
        "Loss at init (seed 0) and after 30 optimizer steps (each zoo model's own optimizer and lr; seeds "
        f"{', '.join(map(str, SEEDS))}: for each, the same init seed, data and dropout draws for every row; "
        "`benchmarks/auto_ratio.py` measures more seeds and the noise floor):",
        "",
        *training_table(),
        END,
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Print the block, or write it into README.md (``--write``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the block in README.md")
    args = parser.parse_args(argv)
    block = render()
    if not args.write:
        print(block)
        return 0
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"README.md has no {START} ... {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + block + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
