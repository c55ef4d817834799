"""The ``lightning-init`` command: ``demo`` (the seed's claims, measured) and ``compare`` (a tournament on your config).

Exit codes: 0 success, 1 a claim of the demo did not hold, 2 a bad argument (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from lightning_init.demo import RunResult

_EPILOG = "Open the runs with:  tensorboard --logdir DIR"
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-init`` (every option documented in ``--help``)."""
    parser = _Parser(prog="lightning-init", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="run the reference experiments (XOR, deep ReLU MLP, deep tanh MLP) under several initializers",
        description="Fits small models under several initializers with WeightInit and the three monitors attached, "
        "prints one results table and checks the seed's claims against it. Every run is a TensorBoard run.",
        epilog=_EPILOG,
    )
    demo.add_argument("--out", type=Path, default=Path("demo_runs"), help="log directory (default: demo_runs)")
    demo.add_argument("--steps", type=_positive, default=300, help="optimizer steps per run (default: 300)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, model and initializers (default: 0)")
    demo.add_argument("--every-n-steps", type=_positive, default=10, help="monitor logging interval (default: 10)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)

    compare = sub.add_parser(
        "compare",
        help="fit your LightningCLI config once per scheme and compare",
        description="One short fit per scheme on a LightningCLI config whose `model` and `data` have a class_path. "
        "The config's WeightInit is replaced by each scheme in turn, the monitors are added unless present, and "
        "each run is logged to TensorBoard side by side.",
        epilog=_EPILOG + ". Schemes take parameters as NAME:KEY=VALUE,... e.g. normal:std=0.01",
    )
    compare.add_argument("--config", type=Path, required=True, help="LightningCLI YAML config")
    compare.add_argument("--schemes", nargs="+", required=True, help="schemes to compare, e.g. xavier_normal lsuv")
    compare.add_argument("--out", type=Path, default=Path("compare_runs"), help="log directory (default: compare_runs)")
    compare.add_argument("--steps", type=_positive, default=200, help="optimizer steps per scheme (default: 200)")
    compare.add_argument("--seed", type=int, default=0, help="seed_everything and initializer seed (default: 0)")
    compare.add_argument("--every-n-steps", type=_positive, default=10, help="monitor logging interval (default: 10)")
    compare.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)

    coord = sub.add_parser(
        "coordcheck",
        help="train your LightningCLI config at several widths: does each layer's activation scale stay flat?",
        description="The coordinate check of Yang et al. (2022, muP): a few steps of your config at each width (fixed "
        "seed and data, the config's WeightInit and monitors), then per layer the slope of log activation std vs log "
        "width. Exit code 1 when a layer's slope exceeds --threshold (it will blow up when the model is scaled up).",
        epilog=_EPILOG + ". The figure is also saved as DIR/coordcheck.png.",
    )
    coord.add_argument("--config", type=Path, required=True, help="LightningCLI YAML config")
    coord.add_argument("--width-arg", required=True, help="the config key of the width, e.g. model.init_args.width")
    coord.add_argument("--widths", type=_positive, nargs="+", required=True, help="at least 2 widths, e.g. 64 128 256")
    coord.add_argument("--steps", type=_positive, default=5, help="optimizer steps per width (default: 5)")
    coord.add_argument("--seed", type=int, default=0, help="seed_everything of every width (default: 0)")
    coord.add_argument(
        "--out", type=Path, default=Path("coordcheck_runs"), help="log directory (default: coordcheck_runs)"
    )
    coord.add_argument(
        "--threshold", type=float, default=0.25, help="largest slope that passes (default: 0.25, see the docs)"
    )
    coord.add_argument("--include", nargs="*", default=(), help="globs on module names (default: every leaf module)")
    coord.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    coord.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    return parser


def _table_with_notes(results: Sequence[RunResult]) -> str:
    """The results table followed by its footnotes, if any."""
    from lightning_init.demo import format_notes, format_table

    notes = format_notes(results)
    return format_table(results) + (f"\n\n{notes}" if notes else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-init`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command == "coordcheck":
        return _coordcheck(parser, args)

    from lightning_init import demo  # heavy imports only after the arguments are known to be good
    from lightning_init.callbacks.weight_init import WeightInit

    if args.command == "demo":
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
        print(f"Open the dashboards with:\n  tensorboard --logdir {args.out}")
        return 0 if all(c.holds for c in claims) else 1

    if not args.config.is_file():
        parser.exit(2, f"lightning-init compare: error: `--config` {str(args.config)!r} is not a file\n")
    try:
        schemes = [demo.Scheme.parse(s) for s in args.schemes]
        for s in schemes:  # refuse a typo before any fit starts
            WeightInit(scheme=s.scheme, **s.params)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        parser.exit(2, f"lightning-init compare: error: {err}\n")
    results = demo.run_compare(
        args.config,
        schemes,
        out=args.out,
        steps=args.steps,
        seed=args.seed,
        every_n_steps=args.every_n_steps,
        verbose=args.verbose,
    )
    print("\n" + _table_with_notes(results))
    print(f"\nOpen the dashboards with:\n  tensorboard --logdir {args.out}")
    return 0


def _coordcheck(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``lightning-init coordcheck``: exit code 0 when every layer is width-stable, 1 when one grows, 2 on bad input."""
    if not args.config.is_file():
        parser.exit(2, f"lightning-init coordcheck: error: `--config` {str(args.config)!r} is not a file\n")
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
        parser.exit(2, f"lightning-init coordcheck: error: {err}\n")
    print("\n" + coordcheck.format_table(result) + "\n\n" + coordcheck.summary_line(result))
    print(f"\nFigure: {args.out / 'coordcheck.png'}\nOpen the runs with:\n  tensorboard --logdir {args.out}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
