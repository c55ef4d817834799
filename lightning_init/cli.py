"""The ``lightning-init`` command: ``demo`` (the seed's claims, measured) and ``compare`` (a tournament on your config).

Exit codes: 0 success, 1 a claim of the demo did not hold, 2 a bad argument (one line on stderr).

Each subcommand is one :class:`Command` of :data:`COMMANDS`: its arguments (``add_arguments``) and what it does
(``run``). This module imports only the standard library at import time; torch and Lightning are imported inside a
command's ``run``, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from lightning_init.demo import RunResult

_EPILOG = "Open the runs with:  .venv/bin/tensorboard --logdir DIR  (or `tensorboard` in an activated environment)"
_VERBOSE_HELP = (
    "also print Lightning's info lines and each run's init report and end-of-fit health reports "
    "(by default they are only in TensorBoard's Text tab)"
)


class _Parser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def tensorboard_command(logdir: str | Path) -> str:
    """The shell command that opens ``logdir`` in TensorBoard, valid in a fresh shell from the current directory.

    ``tensorboard`` alone when the ``tensorboard`` on ``PATH`` is this interpreter's; otherwise the one beside
    ``sys.executable`` (``.venv/bin/tensorboard`` after ``make demo``), relative to the current directory when it is
    below it.
    """
    beside = Path(sys.executable).with_name("tensorboard")
    on_path = shutil.which("tensorboard")
    if on_path is not None and (not beside.exists() or Path(on_path).absolute() == beside.absolute()):
        program = "tensorboard"
    else:
        try:
            program = os.path.relpath(beside) if beside.absolute().is_relative_to(Path.cwd()) else str(beside)
        except ValueError:  # another drive (Windows)
            program = str(beside)
    return f"{program} --logdir {logdir}"


# ---------------------------------------------------------------------------------------------------------- demo


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_runs"), help="log directory (default: demo_runs)")
    parser.add_argument("--steps", type=_positive, default=300, help="optimizer steps per run (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, model and initializers (default: 0)")
    parser.add_argument("--every-n-steps", type=_positive, default=10, help="monitor logging interval (default: 10)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)


def _table_with_notes(results: Sequence[RunResult]) -> str:
    """The results table followed by its footnotes, if any."""
    from lightning_init.demo import format_notes, format_table

    notes = format_notes(results)
    return format_table(results) + (f"\n\n{notes}" if notes else "")


def _run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from lightning_init import demo

    results = demo.run_demo(
        args.out,
        steps=args.steps,
        seed=args.seed,
        every_n_steps=args.every_n_steps,
        progress=not args.no_progress,
        verbose=args.verbose,
    )
    claims = demo.check_claims(results)
    lines = [_table_with_notes(results), "", "The seed's claims, checked against this table:"]
    lines += [f"  [{'ok' if c.holds else 'FAILED'}] {c.text}: {c.evidence}" for c in claims]
    text = "\n".join(lines)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    print(f"\nResults saved to {args.out / 'results.md'}.")
    print(f"Open the dashboards with:\n  {tensorboard_command(args.out)}")
    return 0 if all(c.holds for c in claims) else 1


# ------------------------------------------------------------------------------------------------------- compare


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="LightningCLI YAML config")
    parser.add_argument("--schemes", nargs="+", required=True, help="schemes to compare, e.g. xavier_normal lsuv")
    parser.add_argument("--out", type=Path, default=Path("compare_runs"), help="log directory (default: compare_runs)")
    parser.add_argument("--steps", type=_positive, default=200, help="optimizer steps per scheme (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything and initializer seed (default: 0)")
    parser.add_argument("--every-n-steps", type=_positive, default=10, help="monitor logging interval (default: 10)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (the per-run lines stay)")
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)


def _run_compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.config.is_file():
        parser.exit(2, f"{parser.prog}: error: `--config` {str(args.config)!r} is not a file\n")
    from lightning_init import demo
    from lightning_init.callbacks.weight_init import WeightInit

    try:
        schemes = [demo.Scheme.parse(s) for s in args.schemes]
        for s in schemes:  # refuse a typo before any fit starts
            WeightInit(scheme=s.scheme, **s.params)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    results = demo.run_compare(
        args.config,
        schemes,
        out=args.out,
        steps=args.steps,
        seed=args.seed,
        every_n_steps=args.every_n_steps,
        progress=not args.no_progress,
        verbose=args.verbose,
    )
    print("\n" + _table_with_notes(results))
    print(f"\nOpen the dashboards with:\n  {tensorboard_command(args.out)}")
    return 0


# ---------------------------------------------------------------------------------------------------- coordcheck


def _coordcheck_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="LightningCLI YAML config")
    parser.add_argument("--width-arg", required=True, help="the config key of the width, e.g. model.init_args.width")
    parser.add_argument("--widths", type=_positive, nargs="+", required=True, help="at least 2 widths, e.g. 64 256")
    parser.add_argument("--steps", type=_positive, default=5, help="optimizer steps per width (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of every width (default: 0)")
    parser.add_argument(
        "--out", type=Path, default=Path("coordcheck_runs"), help="log directory (default: %(default)s)"
    )
    parser.add_argument("--threshold", type=float, default=0.25, help="largest slope that passes (default: 0.25)")
    parser.add_argument("--include", nargs="*", default=(), help="globs on module names (default: every leaf module)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)


def _run_coordcheck(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.config.is_file():
        parser.exit(2, f"{parser.prog}: error: `--config` {str(args.config)!r} is not a file\n")
    from lightning_init import coordcheck

    try:
        result = coordcheck.run_coordcheck(
            args.config,
            args.width_arg,
            args.widths,
            steps=args.steps,
            seed=args.seed,
            out=args.out,
            threshold=args.threshold,
            include=args.include,
            progress=not args.no_progress,
            verbose=args.verbose,
        )
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print("\n" + coordcheck.format_table(result) + "\n\n" + coordcheck.summary_line(result))
    print(f"\nFigure: {args.out / 'coordcheck.png'}\nOpen the runs with:\n  {tensorboard_command(args.out)}")
    return 1 if result.failed else 0


# ------------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Command:
    """One subcommand of ``lightning-init``.

    Args:
        name: the subcommand (``lightning-init NAME``).
        help: one line for ``lightning-init --help``.
        description: the paragraph of ``lightning-init NAME --help``.
        add_arguments: adds the subcommand's options to its parser (standard library only).
        run: does the work and returns the exit code; imports what it needs (torch, Lightning) itself.
        epilog: the line under ``lightning-init NAME --help``.
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], int]
    epilog: str = _EPILOG


#: Every subcommand, in ``--help`` order.
COMMANDS: tuple[Command, ...] = (
    Command(
        name="demo",
        help="run the reference experiments (XOR, deep ReLU MLP, deep tanh MLP) under several initializers",
        description="Fits small models under several initializers with WeightInit and the three monitors attached, "
        "prints one results table and checks the seed's claims against it. Every run is a TensorBoard run.",
        add_arguments=_demo_arguments,
        run=_run_demo,
    ),
    Command(
        name="compare",
        help="fit your LightningCLI config once per scheme and compare",
        description="One short fit per scheme on a LightningCLI config whose `model` and `data` have a class_path. "
        "The config's WeightInit is replaced by each scheme in turn, the monitors are added unless present, and "
        "each run is logged to TensorBoard side by side.",
        add_arguments=_compare_arguments,
        run=_run_compare,
        epilog=_EPILOG + ". Schemes take parameters as NAME:KEY=VALUE,... e.g. normal:std=0.01",
    ),
    Command(
        name="coordcheck",
        help="train your LightningCLI config at several widths: does each layer's activation scale stay flat?",
        description="The coordinate check of Yang et al. (2022, muP): a few steps of your config at each width (fixed "
        "seed and data, the config's WeightInit and monitors), then per layer the slope of log activation std vs log "
        "width. Exit code 1 when a layer's slope exceeds --threshold: it blows up when the model is scaled up.",
        add_arguments=_coordcheck_arguments,
        run=_run_coordcheck,
        epilog=_EPILOG + ". The figure is also saved as DIR/coordcheck.png.",
    ),
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser of ``lightning-init`` and each subcommand's parser, from :data:`COMMANDS`."""
    parser = _Parser(prog="lightning-init", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    parsers: dict[str, argparse.ArgumentParser] = {}
    for command in COMMANDS:
        parsers[command.name] = sub.add_parser(
            command.name, help=command.help, description=command.description, epilog=command.epilog
        )
        command.add_arguments(parsers[command.name])
    return parser, parsers


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-init`` console script."""
    parser, parsers = build_parser()
    args = parser.parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    return command.run(args, parsers[command.name])


if __name__ == "__main__":
    sys.exit(main())
