"""`lightning-init demo` and `lightning-init compare`: arguments, exit codes, the seed's claims, one run per scheme."""

import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_init.cli import main
from lightning_init.demo import (
    CHATTY_LOGGERS,
    DepthRatio,
    Scheme,
    check_claims,
    format_notes,
    format_table,
    quiet,
    read_scalars,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["demo", "--steps", "0"], "--steps: expected a positive integer, got '0'"),
        (["demo", "--stpes", "3"], "unrecognized arguments: --stpes"),
        (["compare", "--schemes", "xavier_normal"], "the following arguments are required: --config"),
        (["compare", "--config", "missing.yaml", "--schemes", "xavier_normal"], "is not a file"),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_bad_arguments_are_one_line_with_exit_code_2(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert match in err
    assert err.count("\n") == 1, err


def test_compare_refuses_a_scheme_typo_before_any_fit(capsys):
    config = EXAMPLES / "configs" / "mlp_auto.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--config", str(config), "--schemes", "xavier_normal", "kaiming_norml"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "did you mean 'kaiming_normal'?" in err.lower()
    assert err.count("\n") == 1, err


def test_help_documents_every_option():
    for command, options in {
        "demo": ["--out", "--steps", "--seed", "--every-n-steps", "--no-progress", "--verbose"],
        "compare": [
            "--config",
            "--schemes",
            "--out",
            "--steps",
            "--seed",
            "--every-n-steps",
            "--no-progress",
            "--verbose",
        ],
    }.items():
        out = subprocess.run(
            [sys.executable, "-m", "lightning_init.cli", command, "--help"], capture_output=True, text=True, check=True
        ).stdout
        for option in options:
            assert option in out, (command, option)


def test_help_and_argument_errors_import_neither_torch_nor_lightning():
    """`lightning-init --help` answers at once: the heavy imports happen inside a subcommand's `run`."""
    probe = (
        "import sys\n"
        "from lightning_init.cli import main\n"
        "for argv in (['--help'], ['demo', '--help'], ['compare', '--help'], ['demo', '--steps', '0'], ['bogus']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'lightning', 'tensorboard', 'matplotlib', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]", out


def test_subcommands_come_from_one_table():
    from lightning_init.cli import COMMANDS, build_parser

    parser, parsers = build_parser()
    assert list(parsers) == [c.name for c in COMMANDS]
    help_text = parser.format_help()
    for command in COMMANDS:
        assert command.name in help_text
        assert command.help[:30] in help_text


def test_scheme_parsing():
    assert Scheme.parse("normal:std=0.01") == Scheme("normal", {"std": 0.01})
    assert Scheme.parse("kaiming_normal:nonlinearity=leaky_relu,a=0.1").params == {
        "nonlinearity": "leaky_relu",
        "a": 0.1,
    }
    assert Scheme.parse("xavier_normal").label == "xavier_normal"
    with pytest.raises(ValueError, match="name:key=value"):
        Scheme.parse("normal:std")


@pytest.mark.slow
@pytest.mark.timeout(1200)  # includes the session's one full demo run
def test_demo_reproduces_the_seeds_claims(demo_run):
    out, results = demo_run
    by = {(r.experiment, r.scheme): r for r in results}
    # XOR: zeros stays at chance (ln 2) with symmetric hidden units; both random inits solve it.
    zeros = by["xor", "zeros"]
    assert zeros.val_acc == 0.5
    assert zeros.val_loss == pytest.approx(math.log(2), abs=0.01)
    assert "symmetric" in zeros.findings
    assert by["xor", "xavier_normal"].val_acc == 1.0
    assert by["xor", "kaiming_normal"].val_acc == 1.0
    # Deep ReLU: Kaiming trains best; normal(0.01) vanishes, normal(1.0) explodes.
    deep = {s: r for (e, s), r in by.items() if e == "deep_relu"}
    kaiming = deep["kaiming_normal_nonlinearity=relu"]
    for other in (deep["xavier_normal"], deep["normal_std=0.01"], deep["normal_std=1.0"]):
        assert kaiming.val_loss < (other.val_loss if not math.isnan(other.val_loss) else math.inf), other.scheme
    assert "vanishing" in deep["normal_std=0.01"].findings
    assert "exploding" in deep["normal_std=1.0"].findings
    # Deep tanh: Xavier healthy, normal(1.0) saturated, normal(0.01) vanishing.
    assert by["deep_tanh", "xavier_normal"].findings == []
    assert "saturated" in by["deep_tanh", "normal_std=1.0"].findings
    assert "vanishing" in by["deep_tanh", "normal_std=0.01"].findings
    assert all(c.holds for c in check_claims(results)), check_claims(results)
    # One TensorBoard run per experiment/scheme, and the table's numbers come from those event files.
    for r in results:
        assert Path(r.log_dir).is_relative_to(out)
        assert any(t.startswith("grad_norm/") for t in read_scalars(r.log_dir))
    table = format_table(results)
    assert table.count("\n") == len(results) + 1
    assert "| xor        | zeros" in table


@pytest.mark.slow
def test_compare_gives_one_row_and_one_run_per_scheme(tmp_path, capsys):
    config = EXAMPLES / "configs" / "mlp_auto.yaml"
    code = main(
        [
            "compare",
            "--config",
            str(config),
            "--schemes",
            "xavier_normal",
            "kaiming_normal:nonlinearity=relu",
            "--steps",
            "12",
            "--every-n-steps",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out
    # Progress while it runs: tqdm's bar on stderr, one line per finished fit on stdout.
    assert "lightning-init compare" in captured.err
    assert "24/24" in captured.err, captured.err[-500:]
    run_lines = [line for line in out.splitlines() if line.startswith("[")]
    assert run_lines[0].startswith("[1/2] mlp_auto/xavier_normal: "), run_lines
    assert run_lines[1].startswith("[2/2] mlp_auto/kaiming_normal_nonlinearity=relu: "), run_lines
    assert " s, " in run_lines[0]
    assert "| mlp_auto   | xavier_normal " in out
    assert "| mlp_auto   | kaiming_normal_nonlinearity=relu " in out
    runs = sorted(p.name for p in (tmp_path / "compare").iterdir())
    assert runs == ["kaiming_normal_nonlinearity=relu", "xavier_normal"]
    for run in runs:
        scalars = read_scalars(tmp_path / "compare" / run)
        assert [s for s, _ in scalars["grad_norm/total"]] == [0, 2, 5, 8, 11]


def _depth(values, abs_max=(None, None)):
    return DepthRatio("grad norm", 0, ("net.0.weight", "net.2.weight"), values, abs_max)


@pytest.mark.parametrize(
    ("depth", "cell", "note"),
    [
        (_depth((0.5, 2.0), (0.1, 0.3)), "0.25", None),
        (_depth((None, 2.0)), "n/a", None),
        (_depth((math.nan, 2.0)), "NaN", None),
        (_depth((0.0, 0.0), (0.0, 0.0)), "0 / 0", "all gradient elements exactly 0"),
        (_depth((0.0, 1e-3), (4.9e-26, 2e-3)), "underflow", "largest |value| was 4.9e-26"),
        (_depth((0.0, 0.0), (4.9e-26, 4e-25)), "underflow", "net.0.weight and net.2.weight was stored as 0"),
        (_depth((3.0, 0.0), (1.0, 0.0)), "3 / 0", "net.2.weight is 0"),
    ],
)
def test_depth_ratio_cells_say_what_was_measured(depth, cell, note):
    text, footnote = depth.cell()
    assert text == cell
    if note is None:
        assert footnote is None
    else:
        assert note in footnote


def test_quiet_silences_lightning_infos_and_restores_levels(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    before = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    caplog.set_level(logging.INFO)  # caplog's handler sits on the root logger: records must propagate to be seen
    with quiet():
        rank_zero_info("hidden line")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("kept warning")
    rank_zero_info("shown line")
    assert "hidden line" not in caplog.text
    assert "kept warning" in caplog.text
    assert "shown line" in caplog.text
    assert {name: logging.getLogger(name).level for name in CHATTY_LOGGERS} == before


@pytest.mark.slow
@pytest.mark.timeout(1200)  # includes the session's one full demo run
def test_demo_table_marks_zero_and_underflowed_ratios_with_notes_from_the_event_files(demo_run):
    _, results = demo_run
    table, notes = format_table(results), format_notes(results).splitlines()
    markers = [m for m in (f"[{i}]" for i in range(1, len(notes) + 1)) if m in table]
    assert len(markers) == len(notes)
    by = {(r.experiment, r.scheme): r for r in results}
    # A zero init: the weight gradients of the 2-8-2 net are exactly 0 at step 0 (read back independently).
    zeros = read_scalars(by["xor", "zeros"].log_dir)
    assert _value_at(zeros, "grad_abs_max/net.0.weight", 0) == 0.0
    assert _value_at(zeros, "grad_abs_max/net.2.weight", 0) == 0.0
    assert by["xor", "zeros"].grad_depth.cell()[0] == "0 / 0"
    # normal(0.01) on 20 ReLU layers: the first layer's gradient is tiny but not zero. The table says "underflow" when
    # the stored norm is 0 (float32 sum of squares), and a ratio otherwise; never a made-up number.
    small = by["deep_relu", "normal_std=0.01"]
    scalars = read_scalars(small.log_dir)
    assert 0.0 < _value_at(scalars, "grad_abs_max/net.0.weight", 0) < 1e-20
    text, _ = small.grad_depth.cell()
    if _value_at(scalars, "grad_norm/net.0.weight", 0) == 0.0:
        assert text == "underflow"
    else:
        assert float(text) < 1.0


def _value_at(scalars, tag, step):
    return next(v for s, v in scalars[tag] if s == step)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # includes the session's one full demo run
def test_readme_demo_table_is_this_demos_output(demo_run):
    """The table pasted into README.md has the rows, accuracies and findings the demo produces (fixed seeds)."""
    _, results = demo_run
    readme = (EXAMPLES.parent / "README.md").read_text().splitlines()
    start = readme.index(format_table(results).splitlines()[0])
    pasted = readme[start + 2 : start + 2 + len(results)]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in pasted]
    expected = [[r.experiment, r.scheme, f"{100 * r.val_acc:.1f} %", r.verdict] for r in results]
    assert [[row[0], row[1], row[3], row[-1]] for row in rows] == expected
