"""The README's zoo table: health findings on every zoo model under its own init and under WeightInit("auto"),
and the rule that catches each broken variant.

Run from the repository root: ``python benchmarks/zoo_table.py`` (a few minutes on one CPU thread). Every run trains
its entry's steps (20 unless the registry says more) with the three monitors at every step and default thresholds;
the counts are the layers flagged per rule over the run, read back from the findings the monitors reported
(cross-checked against the ``health/*`` event counts by the zoo harness).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.zoo

os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.zoo import BROKEN, HEALTHY, ZOO, check_consistent, findings, run_zoo

#: Broken variant -> the healthy model it breaks (rows of the table); variants without one get their own row.
BASE = {"gpt2_tied_normal": "gpt2", "resnet18_lr100": "resnet18", "nan_data": "resnet10_zero_init_last"}


def _cell(found: dict[str, list[str]]) -> str:
    if not found:
        return "0"
    return ", ".join(f"{rule}: {len(layers)}" for rule, layers in sorted(found.items()))


def _first(run, rule: str) -> str:
    steps = sorted(f.step for f in run.captured if (f"nonfinite_{f.kind}" if f.rule == "nonfinite" else f.rule) == rule)
    return f" (step {steps[0]})" if steps else ""


def measure(names_healthy: list[str], names_broken: list[str]) -> list[str]:
    """The Markdown table rows."""
    longer = ", ".join(f"{n} {ZOO[n].steps}" for n in names_healthy if ZOO[n].steps != 20)
    lines = [
        f"Measured {datetime.date(2026, 12, 2).isoformat()} by `python benchmarks/zoo_table.py` (20 steps"
        f"{f' ({longer})' if longer else ''}, the three monitors at every step, default thresholds; layers flagged per "
        "rule over the run).",
        "",
        "| model | own init: findings | `auto`: findings | broken variant | caught by |",
        "|---|---|---|---|---|",
    ]
    broken_of = {BASE.get(b, b): b for b in names_broken}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [*names_healthy, *[b for b in names_broken if b not in BASE]]:
            cells = []
            if ZOO[name].healthy:
                for init in (None, "auto"):
                    run = run_zoo(name, Path(tmp) / f"{name}-{init}", init=init)
                    check_consistent(run)
                    cells.append(_cell(findings(run)))
            else:
                cells = ["-", "-"]
            variant = broken_of.get(name)
            caught = "-"
            if variant is not None:
                run = run_zoo(variant, Path(tmp) / variant)
                found = findings(run)
                caught = ", ".join(f"`{rule}`{_first(run, rule)}" for rule in sorted(found)) or "NOT CAUGHT"
                variant = f"{variant}: {ZOO[variant].broken}"
            lines.append(f"| {name} | {cells[0]} | {cells[1]} | {variant or '-'} | {caught} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="zoo entries (default: all)")
    args = parser.parse_args()
    healthy = [n for n in HEALTHY if not args.only or n in args.only]
    broken = [n for n in BROKEN if not args.only or n in args.only or BASE.get(n) in args.only]
    print("\n".join(measure(healthy, broken)))


if __name__ == "__main__":
    main()
