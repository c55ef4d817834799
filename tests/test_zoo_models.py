"""The zoo itself: every model trains under its own init, every broken variant is broken (loss and data only).

No health verdict is asserted here (that is issue 11's test); these tests pin down that the zoo is a fair test bed:
healthy models start near chance and learn within 20 steps, broken ones show their fault in numbers read from the
model, the loss or the data, independent of the monitors.
"""

import math

import pytest
import torch
from torch import nn

from tests.zoo import BROKEN, HEALTHY, ZOO, cached_run, check_consistent, findings, health_counts, run_zoo
from tests.zoo import data as zoo_data

#: Chance-level loss of each task: ln(number of classes) (uniform logits).
CHANCE = {
    "images": math.log(zoo_data.IMAGE_CLASSES),
    "lm": math.log(zoo_data.VOCAB),
    "tokens": math.log(zoo_data.TOKEN_CLASSES),
}
_TASK = {
    "bert": "tokens",
    "transformer_encoder": "tokens",
    "gpt2": "lm",
    "lstm_lm": "lm",
    "gru_lm": "lm",
}


def test_registry_is_complete():
    assert set(HEALTHY) >= {
        "resnet18",
        "resnet18_zero_init_last",
        "resnet10_zero_init_last",
        "mobilenet_v3",
        "efficientnet",
        "vit",
        "bert",
        "gpt2",
        "lstm_lm",
        "gru_lm",
        "transformer_encoder",
    }
    assert set(BROKEN) == {"gpt2_tied_normal", "deep_relu_xavier", "resnet18_lr100", "nan_data", "zero_mlp"}
    for name in BROKEN:
        assert ZOO[name].broken, name
        assert ZOO[name].expected_rule, name


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_model_starts_at_chance_and_learns(name, tmp_path):
    run = run_zoo(name, tmp_path, monitors=False)
    assert len(run.losses) == ZOO[name].steps
    assert all(math.isfinite(x) for x in run.losses), run.losses
    # The model's own init keeps the logits small: the first loss is within 15 % of chance, ln(classes).
    chance = CHANCE[_TASK.get(name, "images")]
    assert run.initial_loss == pytest.approx(chance, rel=0.15)
    # Learns: the mean of the last three batch losses is at least 10 % below the first. At chance, the batch-to-batch
    # spread of the loss is ~1 % (the samples are i.i.d. and the logits uniform), so 10 % is learning, not noise.
    assert run.final_loss < 0.9 * run.initial_loss, run.losses


def test_runs_are_deterministic_and_monitors_do_not_change_numerics(tmp_path):
    bare = run_zoo("vit", tmp_path / "bare", monitors=False)
    again = run_zoo("vit", tmp_path / "again", monitors=False)
    watched = run_zoo("vit", tmp_path / "watched")
    assert bare.losses == again.losses
    assert watched.losses == bare.losses
    # The harness reads every health count back from the event files, one value per logged step (every step; the
    # weights after the last update are logged at step `steps`, as the WeightMonitor's step convention says).
    assert watched.health, "no health/* scalars in the event files"
    steps = ZOO["vit"].steps
    for tag, values in watched.health.items():
        assert set(range(steps)) <= set(values) <= set(range(steps + 1)), (tag, sorted(values))
    assert set(health_counts(watched)) == set(watched.health)
    check_consistent(watched)
    assert set(findings(watched)) == {_key(f) for f in watched.captured}
    # Rows read back from the tags: the weight and gradient rows are exactly the model's parameters.
    params = {name for name, _ in watched.module.named_parameters()}
    assert set(watched.rows["weight"]) == params
    assert set(watched.rows["grad"]) == params
    assert watched.rows["activation"], "no activation rows"


def test_cached_run_fits_once_per_argument_set():
    first = cached_run("zero_mlp", steps=3)
    assert cached_run("zero_mlp", steps=3) is first
    assert cached_run("zero_mlp", steps=4) is not first
    assert len(first.losses) == 3
    assert first.log_dir.is_dir()


def test_baseline_script_prints_the_table(tmp_path, capsys):
    from tests.zoo.baseline import main

    out = tmp_path / "baseline.md"
    main(["zero_mlp", "--no-auto", "--out", str(out)])
    text = out.read_text()
    assert "| zero_mlp | own |" in text
    assert text in capsys.readouterr().out


def _key(finding) -> str:
    return f"nonfinite_{finding.kind}" if finding.rule == "nonfinite" else finding.rule


def test_runs_under_a_weight_init_scheme_are_deterministic(tmp_path):
    # WeightInit seeds a private generator from the OS unless told otherwise; the harness passes the run's seed.
    first = run_zoo("zero_mlp", tmp_path / "a", init="kaiming_normal", monitors=False, steps=3)
    second = run_zoo("zero_mlp", tmp_path / "b", init="kaiming_normal", monitors=False, steps=3)
    other = run_zoo("zero_mlp", tmp_path / "c", init="kaiming_normal", monitors=False, steps=3, seed=1)
    assert first.losses == second.losses
    assert first.losses != other.losses


def test_gpt2_with_unit_normal_tied_embedding_starts_far_above_chance(tmp_path):
    run = run_zoo("gpt2_tied_normal", tmp_path, monitors=False, steps=3)
    net = run.module.net
    assert net.lm_head.weight is net.transformer.wte.weight  # the head shares the broken embedding
    assert run.initial_loss > 3 * CHANCE["lm"], run.losses


def test_deep_relu_mlp_under_xavier_loses_its_signal(tmp_path):
    torch.manual_seed(0)
    module = ZOO["deep_relu_xavier"].build()
    linears = [m for m in module.net if isinstance(m, nn.Linear)]
    assert len(linears) == 30
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach())) for m in linears]
    x, _ = zoo_data.teacher_tensors(256, seed=0)
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    # Xavier (gain 1) under ReLU halves the second moment per layer: 29 hidden layers shrink the std ~2^-14.5.
    ratio = (outputs[-2].std() / outputs[0].std()).item()
    assert ratio < 1e-3, ratio
    run = run_zoo("deep_relu_xavier", tmp_path, monitors=False)
    assert run.final_loss > 0.97 * run.initial_loss, run.losses  # stuck at chance


def test_resnet_with_lr_100x_diverges(tmp_path):
    healthy_lr = ZOO["resnet18"].build().lr
    assert ZOO["resnet18_lr100"].build().lr == pytest.approx(100 * healthy_lr)
    run = run_zoo("resnet18_lr100", tmp_path, monitors=False)
    worst = max(x if math.isfinite(x) else math.inf for x in run.losses)
    assert worst > 3 * run.initial_loss, run.losses
    assert not run.final_loss < run.initial_loss, run.losses  # nothing learned (NaN also counts)


def test_nan_data_poisons_the_loss_from_its_step(tmp_path):
    run = run_zoo("nan_data", tmp_path, monitors=False, steps=8)
    assert all(math.isfinite(x) for x in run.losses[:5]), run.losses
    assert all(math.isnan(x) for x in run.losses[5:]), run.losses


def test_zero_initialized_mlp_keeps_identical_units(tmp_path):
    run = run_zoo("zero_mlp", tmp_path, monitors=False)
    linears = [m for m in run.module.net if isinstance(m, nn.Linear)]
    for m in linears:  # every output unit (row) of every layer is still the same as the first
        assert torch.equal(m.weight, m.weight[:1].expand_as(m.weight)), m
    assert run.final_loss > 0.97 * run.initial_loss, run.losses


def test_harness_refuses_a_monitor_whose_findings_it_cannot_capture():
    from lightning.pytorch.callbacks import Callback

    from tests.zoo.harness import _capture_findings

    class Opaque(Callback):
        health = True

    with pytest.raises(RuntimeError, match="_on_findings"):
        _capture_findings(Opaque(), [])
