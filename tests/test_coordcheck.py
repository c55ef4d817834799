"""`lightning-init coordcheck`: slopes of a power law, SP vs muP under Adam (theory: exponent 1 vs 0), bad input."""

import math
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_init.cli import main
from lightning_init.coordcheck import DEFAULT_THRESHOLD, CoordCheckResult, fit_slopes, format_table, verdict

#: A 4-layer ReLU MLP (input, two hidden, readout) trained with Adam at lr 0.01, LeCun-normal init by the config's
#: WeightInit, all three monitors. Under "standard" every parameter has lr 0.01; under "mup" the readout is multiplied
#: by base_width / width and the hidden weights train at lr * base_width / fan_in (Tensor Programs V, Adam).
CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
WIDTHS = ["64", "256", "1024"]
STEPS = 3


def _config(tmp_path, parametrization):
    return CONFIGS / f"coordcheck_{parametrization}.yaml"


def _scalars(log_dir, prefix):
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    return {t: {e.step: e.value for e in ea.Scalars(t)} for t in tags["scalars"] if t.startswith(prefix)}, tags


def _run(tmp_path, parametrization, capsys):
    out = tmp_path / f"runs_{parametrization}"
    argv = ["coordcheck", "--config", str(_config(tmp_path, parametrization)), "--width-arg"]
    argv += ["model.init_args.width", "--widths", *WIDTHS, "--steps", str(STEPS), "--out", str(out), "--no-progress"]
    code = main(argv)
    slopes, tags = _scalars(out / "summary", "coordcheck/slope/")
    per_step = {tag.rsplit("/", 1)[1]: series for tag, series in slopes.items()}
    return code, per_step, out, tags, capsys.readouterr().out


def test_slopes_recover_the_exponent_of_a_power_law():
    widths = [32, 64, 128, 256]
    w = np.asarray(widths, dtype=float)
    scales = np.stack([3.0 * w**1.0, 0.5 * w**0.0, 7.0 * w**-0.5, np.zeros(4), w * np.nan], axis=1)
    slopes = fit_slopes(widths, scales)
    np.testing.assert_allclose(slopes[:3], [1.0, 0.0, -0.5], atol=1e-12)
    assert math.isnan(slopes[3])  # a zero scale has no exponent
    assert math.isnan(slopes[4])
    assert [verdict([s], [1.0, 2.0]) for s in (1.0, 0.0, -0.5)] == ["grows", "stable", "shrinks"]
    assert verdict([0.0, 1.0, 0.1], [1.0]) == "grows"  # a blow-up at step 2 fails, even if step 3 looks flat
    assert verdict([0.0, -1.0], [1.0]) == "shrinks"  # the last step decides between stable and shrinks
    assert verdict([0.0, math.nan], [0.0, 1.0]) == "undefined"
    assert verdict([0.0, math.nan], [math.nan, 1.0]) == "nonfinite"
    with pytest.raises(ValueError, match="at least 2 distinct"):
        fit_slopes([64, 64], np.ones((2, 1)))


def test_table_lists_every_layer_with_its_verdict():
    result = CoordCheckResult(
        widths=[32, 64], steps=1, layers=["a", "b"], scales=np.array([[[1.0, 1.0]], [[2.0, 1.0]]])
    )
    table = format_table(result)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "+1.00" in rows["a"]
    assert "grows" in rows["a"]
    assert "stable" in rows["b"]
    assert result.failed


@pytest.mark.slow
def test_standard_parametrization_under_adam_grows_with_width_and_fails(tmp_path, capsys):
    code, slopes, out, _, printed = _run(tmp_path, "standard", capsys)
    # Theory: an Adam step moves a hidden layer's output by ~lr * width (exponent 1); the first update shows it
    after_one_update = {layer: series[2] for layer, series in slopes.items()}
    assert max(after_one_update.values()) > 0.4, slopes
    assert max(slopes["net.0"].values()) < DEFAULT_THRESHOLD  # the input layer's fan-in does not grow: flat

    assert code == 1
    assert "grows" in printed
    assert "FAILED" in printed
    assert (out / "coordcheck.png").stat().st_size > 10_000
    # every width is its own run, with the config's ActivationMonitor tags beside the coordinate check's
    for width in WIDTHS:
        scalars, _ = _scalars(out / f"width_{width}", "")
        assert set(scalars["coordcheck/activation_std/net.0"]) == set(range(1, STEPS + 1))
        assert "activation_std/net.0" in scalars


@pytest.mark.slow
def test_mup_under_adam_stays_flat_and_passes(tmp_path, capsys):
    code, slopes, _, tags, printed = _run(tmp_path, "mup", capsys)
    assert set(slopes) == {f"net.{i}" for i in range(7)}
    # Theory: exponent 0 for every layer at every step (the threshold 0.25 is halfway to the smallest SP exponent,
    # 1/2, and above one seed's finite-width noise; see lightning_init.coordcheck)
    assert max(v for series in slopes.values() for v in series.values()) < DEFAULT_THRESHOLD, slopes
    # ...except the readout at initialization: multiplied by base_width / width, exponent -1 exactly
    assert slopes["net.6"][1] == pytest.approx(-1.0, abs=0.1)
    assert code == 0, printed
    assert "ok: no layer grows" in printed
    assert "coordcheck/figure" in tags["images"]


@pytest.mark.parametrize(
    ("width_arg", "match"),
    [
        ("model.init_args.widht", "did you mean 'model.init_args.width'"),
        ("model.init_args.parametrization", "not an integer width"),
    ],
)
def test_a_width_arg_the_config_does_not_have_is_refused_naming_its_keys(tmp_path, capsys, width_arg, match):
    argv = ["coordcheck", "--config", str(_config(tmp_path, "standard")), "--width-arg", width_arg]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--widths", "32", "64", "--out", str(tmp_path / "runs"), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert match in err.lower()
    assert err.count("\n") == 1, err
    if "widht" in width_arg:
        assert "'model.init_args.depth'" in err
        assert "'model.init_args.base_width'" in err
    assert not (tmp_path / "runs").exists()  # refused before any fit


def test_one_width_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "coordcheck",
                "--config",
                str(_config(tmp_path, "standard")),
                "--width-arg",
                "model.init_args.width",
                "--widths",
                "64",
                "--no-progress",
            ]
        )
    assert exc.value.code == 2
    assert "at least 2 distinct" in capsys.readouterr().err
