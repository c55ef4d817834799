"""Zoo baseline: each model under its own init and under ``WeightInit("auto")``, each broken variant; findings per rule.

Run from the repository root: ``python -m tests.zoo.baseline`` (``--help`` for options). Prints a Markdown table:
loss at init and at the end (mean of the last three steps), the number of layers each health rule flagged over the
run (read from the findings the monitors reported; the ``health/*`` event counts are checked against them), the
number of health warnings, and any crash (a crash is recorded, not raised).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests.zoo.harness import check_consistent, findings, first_flagged, flagged_by_kind, run_zoo
from tests.zoo.registry import ZOO


@dataclass
class Row:
    """One line of the baseline table."""

    model: str
    init: str
    initial: float = math.nan
    final: float = math.nan
    seconds: float = math.nan
    flagged: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, list[str]] = field(default_factory=dict)
    by_kind: dict[str, list[str]] = field(default_factory=dict)
    first: dict[str, int] = field(default_factory=dict)
    warnings: int = 0
    error: str = ""

    @property
    def ratio(self) -> float:
        return self.final / self.initial if self.initial > 0 else math.nan


def measure(name: str, init: str | None, steps: int | None, seed: int, tmp: Path) -> Row:
    """Run one zoo entry; a crash becomes the row's ``error``."""
    row = Row(model=name, init=init or "own")
    start = time.perf_counter()
    try:
        run = run_zoo(name, tmp / (init or "own"), init=init, steps=steps, seed=seed)
    except Exception as e:  # a crash is a result here
        row.seconds = time.perf_counter() - start
        where = traceback.extract_tb(e.__traceback__)[-1]
        row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160]} ({Path(where.filename).name}:{where.lineno})"
        return row
    row.initial, row.final, row.seconds = run.initial_loss, run.final_loss, run.seconds
    row.flagged = findings(run)
    row.rows = run.rows
    row.by_kind = flagged_by_kind(run)
    row.first = first_flagged(run)
    row.warnings = len(run.health_warnings)
    try:
        check_consistent(run)
    except AssertionError as e:
        row.error = f"event counts disagree with findings: {e}"
    return row


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3g}"


def _cell(r: Row) -> str:
    if not r.flagged:
        return "none"
    return ", ".join(
        f"{rule} {len(layers)}" + (f" (from step {r.first[rule]})" if rule in r.first else "")
        for rule, layers in sorted(r.flagged.items())
    )


def _flagged_of(r: Row) -> str:
    """``k/n`` per kind (weight, grad, activation): distinct layers any rule flagged / rows the monitor logged."""
    return " ".join(f"{len(r.by_kind.get(kind, []))}/{len(names)}" for kind, names in r.rows.items())


def table(rows: Sequence[Row]) -> str:
    """The Markdown table of ``rows``."""
    lines = [
        "| model | init | loss init -> final (ratio) | s | flagged w/g/a | findings (layers per rule) | warnings "
        "| note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spec = ZOO[r.model]
        loss = f"{_fmt(r.initial)} -> {_fmt(r.final)} ({_fmt(r.ratio)})"
        note = r.error or (f"broken: {spec.broken}; expected: {', '.join(spec.expected_rule)}" if spec.broken else "")
        lines.append(
            f"| {r.model} | {r.init} | {loss} | {r.seconds:.1f} | {_flagged_of(r)} | {_cell(r)} | {r.warnings} | "
            f"{note.replace('|', '/')} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.zoo.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"zoo entries (default: all): {', '.join(ZOO)}")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: each entry's own, 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-auto", action="store_true", help="skip the WeightInit('auto') runs")
    parser.add_argument("--details", action="store_true", help="also list the flagged layers of every rule")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in ZOO]
    if unknown:
        parser.error(f"unknown zoo entries {unknown}; choose from {', '.join(ZOO)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.names or list(ZOO):
            inits: list[str | None] = [None] if (args.no_auto or not ZOO[name].healthy) else [None, "auto"]
            for init in inits:
                rows.append(measure(name, init, args.steps, args.seed, Path(d) / name))
                print(f"done {name} ({rows[-1].init}) in {rows[-1].seconds:.1f} s", flush=True)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    text = f"Zoo baseline ({today}; all three monitors every step, seed {args.seed}, one CPU thread)\n\n{table(rows)}\n"
    if args.details:
        for r in rows:
            for rule, layers in sorted(r.flagged.items()):
                text += f"\n- {r.model} ({r.init}) {rule}: {', '.join(layers)}"
        text += "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
