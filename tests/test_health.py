import itertools
import math
import pickle
import statistics
import tracemalloc

import pytest

from lightning_init.health import (
    RULES,
    RULES_BY_KIND,
    Finding,
    HealthError,
    HealthThresholds,
    HealthTracker,
    check_activations,
    check_grads,
    check_weights,
    health_tag,
    merge_findings,
    profile_of,
)

DEPTH = 12


def mlp_names(depth=DEPTH):
    """Parameter names of nn.Sequential(Linear, ReLU, Linear, ReLU, ..., Linear)."""
    return [f"net.{2 * i}" for i in range(depth)]


def grad_table(weight_norms, bias_norms):
    table = {}
    for layer, w, b in zip(mlp_names(len(weight_norms)), weight_norms, bias_norms, strict=True):
        table[f"{layer}.weight"] = {"norm": w, "nonfinite": 0.0, "abs_max": w / 10}
        table[f"{layer}.bias"] = {"norm": b, "nonfinite": 0.0, "abs_max": b / 10}
    return table


def activation_table(linear_stds, relu_zero=0.5, nonlinearity="relu", saturation=0.0):
    """Module table + nonlinearities for Linear, act, Linear, act, ..., Linear."""
    table, nls = {}, {}
    for i, std in enumerate(linear_stds):
        table[f"net.{2 * i}"] = {"mean": 0.0, "std": std, "abs_max": 4 * std, "nonfinite": 0.0}
        nls[f"net.{2 * i}"] = None
        if i < len(linear_stds) - 1:
            row = {"mean": std / 2, "std": std / 2, "abs_max": 4 * std, "nonfinite": 0.0, "zero_fraction": relu_zero}
            if nonlinearity in ("tanh", "sigmoid"):
                row["saturation"] = saturation
                row["zero_fraction"] = 0.0
            table[f"net.{2 * i + 1}"] = row
            nls[f"net.{2 * i + 1}"] = nonlinearity
    return table, nls


def weight_table(depth=DEPTH, spread=0.9, update=1e-3):
    table = {}
    for layer in mlp_names(depth):
        table[f"{layer}.weight"] = {"mean": 0.0, "std": 0.1, "norm": 25.6, "abs_max": 0.4, "row_spread": spread}
        table[f"{layer}.weight"]["update_ratio"] = update
        table[f"{layer}.bias"] = {"mean": 0.0, "std": 0.0, "norm": 0.0, "abs_max": 0.0, "row_spread": math.nan}
        table[f"{layer}.bias"]["update_ratio"] = math.inf  # zero-initialized bias: ||db|| / 0
    return table


# Profiles measured on a 12-layer width-256 ReLU MLP (cross-entropy, batch 64) at step 0, rounded.
KAIMING_W = [0.71, 2.3, 2.5, 2.7, 2.8, 3.5, 3.7, 4.1, 4.9, 4.7, 5.0, 6.1]
KAIMING_B = [0.15, 0.17, 0.17, 0.19, 0.19, 0.22, 0.23, 0.26, 0.27, 0.28, 0.28, 0.32]
XAVIER_RELU_B = [3.8e-3, 5.9e-3, 8.5e-3, 1.2e-2, 1.8e-2, 2.5e-2, 3.3e-2, 5.3e-2, 7.4e-2, 0.11, 0.16, 0.16]


def theory_profile(gain, depth=DEPTH, top=0.16):
    """Backward: the gradient is multiplied by `gain` per layer on its way to the input (bias grads)."""
    return [top * gain ** (depth - 1 - i) for i in range(depth)]


# ------------------------------------------------------------------------------------------------ healthy


def test_healthy_profiles_have_no_finding():
    assert check_grads(grad_table(KAIMING_W, KAIMING_B), step=0) == []
    assert check_grads(grad_table([0.03] * DEPTH, XAVIER_RELU_B), step=0) == []
    kaiming_std = [1.0, 1.0, 1.0, 1.0, 1.0, 1.1, 1.1, 1.1, 1.1, 1.0, 1.1, 0.81]
    assert check_activations(*activation_table(kaiming_std), step=0) == []
    # Xavier + ReLU: (1/sqrt 2)^11 = 0.022 on the deepest layer, still above 1e-2.
    xavier = [(1 / math.sqrt(2)) ** i for i in range(DEPTH)]
    assert check_activations(*activation_table(xavier), step=0) == []
    assert check_activations(*activation_table([0.5] * DEPTH, nonlinearity="tanh", saturation=0.01), step=0) == []
    assert check_weights(weight_table(), step=5) == []


# ------------------------------------------------------------------------------------------------ gradients


def _flagged_by_deeper_median(norms, ratio, below=True):
    """Reference semantics: flagged where norm < ratio * median(deeper norms) (or > for growth)."""
    out = []
    for i, n in enumerate(norms[:-1]):
        ref = statistics.median(norms[i + 1 :])
        if (n < ratio * ref) if below else (n > ratio * ref):
            out.append(i)
    return out


def test_deeper_median_equals_statistics_median_of_the_deeper_usable_rows():
    """The O(n log n) suffix medians of the gradient depth profile against ``statistics.median`` of each suffix."""
    import numpy as np

    from lightning_init.health.rules import _deeper_median

    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(0, 30))
        values = rng.choice([0.5, 1.0, 2.0], n) if trial % 2 else rng.lognormal(size=n)  # ties, then none
        groups, usable = rng.integers(0, 3, n), rng.random(n) > 0.3
        got = _deeper_median(values, groups, usable)
        for i in range(n):
            deeper = [values[j] for j in range(i + 1, n) if groups[j] == groups[i] and usable[j]]
            if deeper:
                assert got[i] == statistics.median(deeper), (trial, i)
            else:
                assert math.isnan(got[i]), (trial, i)


def test_vanishing_grads_by_depth_profile():
    # normal(std=0.01), width 256: gain 0.01 * sqrt(256 / 2) = 0.113 per layer, for weight and bias gradients alike
    # (a weight's gradient is its bias's times the input's scale, here 10).
    gain = 0.01 * math.sqrt(128)
    biases = theory_profile(gain)
    table = grad_table([10 * b for b in biases], biases)
    found = check_grads(table, step=7, vanishing_grad_floor=0.0)  # isolate the depth-profile rule
    assert {f.rule for f in found} == {"vanishing_grad"}
    flagged = [f.layers[0] for f in found]
    # each parameter against the median of the deeper ones of its kind: layer i against ~gain^((12 - i) / 2) x its
    # own norm, below 1e-4 for i <= 3 (gain^4.5 = 5.5e-5; gain^4 = 1.6e-4 is not)
    layers = _flagged_by_deeper_median(biases, 1e-4)
    assert layers == [0, 1, 2, 3]
    expected = [f"net.{2 * i}.{p}" for i in layers for p in ("weight", "bias")]
    assert flagged == expected
    first = found[0]
    assert first.value == pytest.approx(biases[0] / statistics.median(biases[1:]), rel=1e-9)
    # With the default floor, the tiny layers are also below 1e-9: still one rule, counted once per layer.
    assert {f.layers[0] for f in check_grads(table, step=7)} >= set(expected)
    assert first.threshold == 1e-4
    assert first.step == 7
    assert "vanishing" in first.message
    assert "net.0.weight" in first.message
    assert "Kaiming" in first.message
    assert "Xavier" in first.message


def test_depth_profile_does_not_cascade_from_one_tiny_deep_gradient():
    # A healthy Kaiming profile with one tiny (but not structurally zero) weight gradient deep in the net: the
    # first version compared every shallower layer with the smallest deeper one and flagged all eleven as exploding.
    weights = list(KAIMING_W)
    weights[10] = 1e-7
    found = check_grads(grad_table(weights, [w / 10 for w in weights]), step=0)
    assert {(f.rule, f.layers[0]) for f in found} == {
        ("vanishing_grad", "net.20.weight"),  # 1e-7 against the deepest (6.1)
        ("vanishing_grad", "net.20.bias"),
    }
    # Against the median of the deeper ones, net.18 (4.7) sees median(1e-7, 6.1) = 3.05: not exploding.


def test_vanishing_grads_absolute_floor_on_flat_tiny_profile():
    table = grad_table([2.6e-11] * DEPTH, [1.0] * DEPTH)
    found = check_grads(table, step=0)
    assert [f.layers[0] for f in found] == [f"{n}.weight" for n in mlp_names()]
    assert all(f.rule == "vanishing_grad" and f.threshold == 1e-9 for f in found)
    assert check_grads(table, step=0, vanishing_grad_floor=1e-12) == []


def test_exploding_grads_ceiling_and_growth():
    found = [f for f in check_grads(grad_table([4e11] * DEPTH, [1.0] * DEPTH), step=0) if not f.info]
    assert {f.rule for f in found} == {"exploding_grad"}
    assert len(found) == DEPTH
    assert "exploding" in found[0].message
    assert "gradient_clip" in found[0].message
    assert "learning rate" in found[0].message
    # Growth toward the input (std=1.0: gain 11.3 per layer), norms all under the ceiling; weight gradients are
    # their biases' times the input scale (10), capped like them.
    gain = math.sqrt(128)
    biases = [min(b, 9e2) for b in theory_profile(gain, top=1e-6)]
    found = check_grads(grad_table([10 * b for b in biases], biases), step=0)
    assert found
    assert {f.rule for f in found} == {"exploding_grad"}
    layers = _flagged_by_deeper_median(biases, 1e4, below=False)
    assert layers
    assert [f.layers[0] for f in found] == [f"net.{2 * i}.{p}" for i in layers for p in ("weight", "bias")]
    assert all(f.value > 1e4 for f in found)
    # The deeper layers are the reference: never flagged as vanishing.
    assert not any(f.rule == "vanishing_grad" for f in found)


def test_grad_rules_skip_missing_stats_and_a_parameter_named_total_is_a_parameter():
    assert check_grads({"a.weight": {"mean": 0.0}}, step=0) == []
    # no row stands for the global norm (it is the metric grad_norm/total): a parameter named "total" is judged
    found = check_grads({"a.weight": {"norm": 1.0, "nonfinite": 0.0}, "total": {"norm": 1.0, "nonfinite": 3.0}}, step=0)
    assert [(f.rule, f.layers) for f in found] == [("nonfinite", ("total",))]


def test_nonfinite_grads_only_nonfinite_rule():
    table = grad_table(KAIMING_W, KAIMING_B)
    table["net.4.weight"] = {"norm": math.inf, "nonfinite": 3.0, "abs_max": math.inf}
    found = check_grads(table, step=11)
    assert [(f.rule, f.layers) for f in found] == [("nonfinite", ("net.4.weight",))]
    assert "NaN/Inf" in found[0].message
    assert found[0].value == 3
    # Without a nonfinite stat, a non-finite abs_max tells.
    found = check_grads({"a.weight": {"norm": math.nan, "abs_max": math.nan}}, step=2)
    assert [f.rule for f in found] == ["nonfinite"]


# -------------------------------------------------------------------------------------------- activations


def test_vanishing_and_exploding_activations():
    found = check_activations(*activation_table([0.1**i for i in range(DEPTH)]), step=3)
    vanishing = [f for f in found if f.rule == "vanishing_activation"]
    # ratio 0.1^i < 1e-2 for i >= 3 (0.1^2 = 1e-2 is not below).
    assert [f.layers[0] for f in vanishing] == [f"net.{2 * i}" for i in range(3, DEPTH)]
    assert vanishing[-1].value == pytest.approx(1e-11)
    assert "vanishing" in vanishing[-1].message
    assert "net.0" in vanishing[-1].message  # the reference layer is named
    found = check_activations(*activation_table([11.3**i for i in range(DEPTH)]), step=3)
    assert {f.rule for f in found} == {"exploding_activation"}
    assert found[0].layers == ("net.4",)  # 11.3^2 = 128 > 100, 11.3 is not
    assert "exploding" in found[0].message


def test_dead_relu():
    table, nls = activation_table([1.0] * 3, relu_zero=0.97)
    found = check_activations(table, nls, step=0)
    assert [(f.rule, f.layers[0]) for f in found] == [("dead", "net.1"), ("dead", "net.3")]
    assert "dead" in found[0].message
    assert "Kaiming" in found[0].message
    assert check_activations(*activation_table([1.0] * 3, relu_zero=0.9), step=0) == []  # not above 0.9
    # A leaky ReLU is never "dead".
    nls = {k: ("leaky_relu" if v else None) for k, v in nls.items()}
    assert check_activations(table, nls, step=0) == []


@pytest.mark.parametrize("nonlinearity", ["tanh", "sigmoid"])
def test_saturated(nonlinearity):
    table, nls = activation_table([1.0] * 3, nonlinearity=nonlinearity, saturation=0.89)
    found = check_activations(table, nls, step=0)
    assert [f.rule for f in found] == ["saturated", "saturated"]
    assert "saturated" in found[0].message
    assert nonlinearity in found[0].message
    assert "Xavier" in found[0].message
    # A missing or NaN saturation (user did not log it) does not fire.
    for row in table.values():
        row["saturation"] = math.nan
    assert check_activations(table, nls, step=0) == []


def test_nonfinite_activation():
    table, nls = activation_table([1.0] * 3)
    table["net.2"]["nonfinite"] = 5.0
    table["net.2"]["std"] = math.nan
    found = check_activations(table, nls, step=4)
    assert [(f.rule, f.layers[0], f.step) for f in found] == [("nonfinite", "net.2", 4)]
    assert "NaN/Inf activations" in found[0].message


# ------------------------------------------------------------------------------------------------ weights


def test_symmetric_weights():
    table = weight_table(depth=3, spread=0.0)
    found = check_weights(table, step=0)
    assert [f.layers[0] for f in found] == ["net.0.weight", "net.2.weight", "net.4.weight"]  # never the biases
    assert all(f.rule == "symmetric" for f in found)
    assert "symmetric" in found[0].message
    assert "non-zero random" in found[0].message
    assert check_weights(weight_table(depth=3, spread=2e-6), step=0) == []
    assert len(check_weights(weight_table(depth=3, spread=1e-7), step=0)) == 3  # float32 residue of a constant


def test_update_ratio_frozen_unstable_and_exemptions():
    low = check_weights(weight_table(depth=2, update=1e-8), step=9)
    assert [(f.rule, f.layers[0]) for f in low] == [("update_ratio", "net.0.weight"), ("update_ratio", "net.2.weight")]
    assert "frozen" in low[0].message
    high = check_weights(weight_table(depth=2, update=0.5), step=9)
    assert len(high) == 2
    assert "unstable" in high[0].message
    assert "learning rate" in high[0].message
    # lr = 0 / not in the optimizer: exactly zero update -> not judged; non-finite ratio -> not judged.
    assert check_weights(weight_table(depth=2, update=0.0), step=9) == []
    assert check_weights(weight_table(depth=2, update=math.inf), step=9) == []
    # Step 0: no update_ratio logged yet.
    table = weight_table(depth=2)
    for row in table.values():
        del row["update_ratio"]
    assert check_weights(table, step=0) == []


def test_nonfinite_weights():
    table = weight_table(depth=2)
    table["net.2.weight"]["abs_max"] = math.inf
    found = check_weights(table, step=1)
    assert [(f.rule, f.layers[0]) for f in found] == [("nonfinite", "net.2.weight")]
    assert "NaN/Inf weights" in found[0].message


# --------------------------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("vanishing_grad_ratio", 1.0),
        ("vanishing_grad_ratio", -1e-3),
        ("vanishing_grad_floor", math.inf),
        ("exploding_grad_norm", 0.0),
        ("exploding_grad_growth", 0.5),
        ("vanishing_activation_ratio", 2.0),
        ("exploding_activation_ratio", 1.0),
        ("dead_fraction", 1.5),
        ("saturated_fraction", -0.1),
        ("symmetric_spread", math.nan),
        ("update_ratio_low", -1.0),
        ("dead_fraction", True),
        ("dead_fraction", "0.9"),
    ],
)
def test_threshold_validation(name, value):
    with pytest.raises(ValueError, match=f"`{name}`.*{value!r}".replace("(", r"\(").replace(")", r"\)")):
        HealthThresholds(**{name: value})


def test_threshold_validation_in_check_functions_and_order():
    with pytest.raises(ValueError, match="`dead_fraction`"):
        check_activations({}, {}, step=0, dead_fraction=2.0)
    with pytest.raises(ValueError, match="`update_ratio_high` must be greater"):
        HealthThresholds(update_ratio_low=0.1, update_ratio_high=0.01)
    HealthThresholds(exploding_grad_norm=math.inf, vanishing_grad_ratio=0.0)  # disabling bounds is allowed


def test_thresholds_forward_to_check_functions():
    t = HealthThresholds(dead_fraction=0.99)
    table, nls = activation_table([1.0] * 3, relu_zero=0.97)
    assert t.check("activation", table, step=0, nonlinearities=nls) == []
    assert len(HealthThresholds().check("activation", table, step=0, nonlinearities=nls)) == 2
    assert HealthThresholds().check("grad", grad_table(KAIMING_W, KAIMING_B), step=0) == []
    assert len(HealthThresholds().check("weight", weight_table(depth=2, spread=0.0), step=0)) == 2
    with pytest.raises(ValueError, match="`kind`"):
        t.check("weights", {}, step=0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- findings, tracker


def test_merge_findings_names_all_layers_and_worst():
    found = check_grads(grad_table([2e-11, 5e-12, 3e-11], [1.0] * 3), step=2)
    merged = merge_findings(found)
    assert len(merged) == 1
    assert merged[0].layers == ("net.0.weight", "net.2.weight", "net.4.weight")
    assert merged[0].value == 5e-12
    assert "3 layers" in merged[0].message
    assert "worst: net.2.weight" in merged[0].message


def test_tracker_warns_once_per_rule_and_layer_and_counts():
    tracker = HealthTracker("activation")
    table, nls = activation_table([1.0] * 3, relu_zero=0.97)
    new = tracker.update(0, check_activations(table, nls, step=0), profile_of("activation", table, nls))
    assert len(new) == 1  # merged: one warning naming both layers
    assert new[0].layers == ("net.1", "net.3")
    assert tracker.scalars()[health_tag("dead", "activation")] == 2.0
    assert tracker.scalars()["health/saturated"] == 0.0
    assert set(tracker.scalars()) == {health_tag(r, "activation") for r in RULES_BY_KIND["activation"]}
    # Same findings at a later step: counted, not warned again.
    assert tracker.update(10, check_activations(table, nls, step=10)) == []
    assert tracker.counts["dead"] == 2
    # A new layer for the same rule, and a new rule for a known layer, are warned.
    table["net.1"]["nonfinite"] = 1.0
    new = tracker.update(20, check_activations(table, nls, step=20))
    assert [(f.rule, f.layers) for f in new] == [("nonfinite", ("net.1",))]
    assert tracker.counts == {"nonfinite": 1, "vanishing_activation": 0, "exploding_activation": 0, "dead": 1,
                              "saturated": 0, "output_scale": 0, "underflow": 0, "overflow": 0}  # fmt: skip
    # Healthy step: counts back to zero.
    assert tracker.update(30, []) == []
    assert set(tracker.scalars().values()) == {0.0}


def test_tracker_markdown_table():
    tracker = HealthTracker("grad")
    table = grad_table([2.6e-11, 1.0, 1.0], [1.0, 1.0, 1.0])
    tracker.update(5, check_grads(table, step=5), profile_of("grad", table))
    table["net.0.weight"]["norm"] = 1.3e-11
    tracker.update(9, check_grads(table, step=9), profile_of("grad", table))
    md = tracker.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "1 of 3 layers flagged (gradients)."
    assert lines[2] == "| layer | kind | health | first step | last step | last value |"
    assert "| net.0.weight | grad | vanishing_grad | 5 | 9 | vanishing_grad: 1.3e-11 < 0.0001 |" in lines
    assert "| net.2.weight | grad | ok | | | |" in lines
    assert HealthTracker("weight").to_markdown() == "No layers monitored."


def test_tracker_memory_is_flat_over_5000_steps():
    tracker = HealthTracker("grad", max_columns=64)
    table = grad_table([2.6e-11] * DEPTH, [1.0] * DEPTH)

    def feed(start, stop):
        for step in range(start, stop):
            tracker.update(step, check_grads(table, step=step), profile_of("grad", table))

    feed(0, 500)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    feed(500, 5000)
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert after - before < 50_000  # bytes; a per-step history would be > 4500 * 12 floats * ~30 B
    values, layers, steps = tracker.history.matrix()
    assert values.shape[0] == DEPTH
    assert len(layers) == DEPTH
    assert values.shape[1] <= 65
    assert steps[-1] == 4999  # the picture ends at the last step
    assert steps == sorted(steps)
    # Uniform decimation: equal spacing among the kept columns (the latest excepted).
    gaps = {b - a for a, b in itertools.pairwise(steps[:-1])}
    assert len(gaps) == 1


def test_tracker_state_dict_round_trip():
    tracker = HealthTracker("activation", max_columns=4)
    table, nls = activation_table([1.0] * 3, relu_zero=0.97)
    for step in range(7):
        tracker.update(step, check_activations(table, nls, step=step), profile_of("activation", table, nls))
    state = pickle.loads(pickle.dumps(tracker.state_dict()))
    restored = HealthTracker("activation", max_columns=4)
    restored.load_state_dict(state)
    assert restored.to_markdown() == tracker.to_markdown()
    assert restored.update(7, check_activations(table, nls, step=7)) == []  # already warned before the restart
    a, b = tracker.history.matrix(), restored.history.matrix()
    assert a[1:] == b[1:]
    assert (a[0] == b[0]).all()


def test_health_error_carries_finding_and_pickles():
    finding = check_weights(weight_table(depth=1, spread=0.0), step=0)[0]
    err = HealthError(finding)
    assert isinstance(err, RuntimeError)
    assert str(err) == finding.message
    again = pickle.loads(pickle.dumps(err))
    assert again.finding == finding
    with pytest.raises(HealthError, match="symmetric"):
        raise err


def test_rule_names_and_tags():
    assert set(RULES) == {r for rules in RULES_BY_KIND.values() for r in rules}
    assert health_tag("dead", "activation") == "health/dead"
    tags = {health_tag(r, k) for k, rules in RULES_BY_KIND.items() for r in rules}
    assert len(tags) == sum(len(r) for r in RULES_BY_KIND.values())  # no two monitors write the same tag
    assert Finding.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_tracker_markdown_says_not_finite_for_a_nan_weight():
    tracker = HealthTracker("weight")
    table = {"net.0.weight": {"abs_max": math.nan, "row_spread": math.nan}}
    tracker.update(3, check_weights(table, step=3), layers=list(table))
    md = tracker.to_markdown()
    assert "nonfinite: nan (not finite)" in md, md


def test_readme_rule_table_is_the_rule_table():
    from pathlib import Path

    from lightning_init.health import RULE_TABLE, THRESHOLDS, rule_table_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert rule_table_markdown() in readme
    assert {s.threshold for s in RULE_TABLE if s.threshold} == {t.name for t in THRESHOLDS}  # every threshold used


def test_thresholds_object_shared_by_monitors_and_own_arguments_override():
    from lightning_init import ActivationMonitor, GradientMonitor, WeightMonitor

    strict = HealthThresholds(vanishing_grad_ratio=1e-3, dead_fraction=0.8)
    assert GradientMonitor(thresholds=strict).thresholds.vanishing_grad_ratio == 1e-3
    assert ActivationMonitor(thresholds=strict).thresholds.dead_fraction == 0.8
    assert WeightMonitor(thresholds=strict).thresholds == strict
    assert GradientMonitor(thresholds=strict, vanishing_grad_floor=1e-12).thresholds.vanishing_grad_floor == 1e-12
    with pytest.raises(ValueError, match="`thresholds` must be a HealthThresholds"):
        GradientMonitor(thresholds={"dead_fraction": 0.5})  # type: ignore[arg-type]


def test_update_ratio_judged_against_the_unit_scale_and_after_warmup():
    from lightning_init.health import Context

    # a class token at std 1e-6 (norm 1.4e-5) moved by Adam's first step (lr 1e-3 per element, 192 elements)
    update = 1e-3 * math.sqrt(192)
    table = {"cls_token": {"norm": update, "abs_max": 1e-3, "update_ratio": update / 1.4e-5, "update_norm": update}}
    ctx = Context(roles={"cls_token": "free"}, scales={"cls_token": math.sqrt(192)})
    assert check_weights(table, step=1) != []  # against its own norm: 1e3 x the bound
    assert check_weights(table, step=1, context=ctx) == []  # against its unit-scale norm: 1e-3
    big = {"w": {"norm": 1.0, "abs_max": 0.1, "update_ratio": 0.5, "update_norm": 0.5}}
    assert [f.rule for f in check_weights(big, step=3, context=Context(scales={"w": 1.0}))] == ["update_ratio"]
    assert check_weights(big, step=3, context=Context(scales={"w": 1.0}, warmup=frozenset({"w"}))) == []


def test_tracker_requires_persistence_for_update_ratio():
    tracker = HealthTracker("weight")
    table = weight_table(depth=1, update=0.5)
    assert tracker.confirm(check_weights(table, step=1)) == []  # one step: a candidate
    assert [f.rule for f in tracker.confirm(check_weights(table, step=2))] == ["update_ratio"]  # two in a row
    assert tracker.confirm([]) == []
    assert tracker.confirm(check_weights(table, step=4)) == []  # the streak ended


def test_grad_zero_bias_against_its_weight_and_exact_zero():
    from lightning_init.health import Context

    table = {
        "bn.weight": {"norm": 0.3, "nonfinite": 0.0, "abs_max": 0.1},
        "bn.bias": {"norm": 4e-9, "nonfinite": 0.0, "abs_max": 1e-9},  # 1.3e-8 of its weight's: float noise
        "conv.weight": {"norm": 0.0, "nonfinite": 0.0, "abs_max": 0.0},  # exactly zero: behind a zero gamma
        "fc.weight": {"norm": 0.5, "nonfinite": 0.0, "abs_max": 0.1},
        "fc.bias": {"norm": 0.05, "nonfinite": 0.0, "abs_max": 0.01},
    }
    found = check_grads(table, step=0)
    assert [(f.rule, f.layers[0], f.info) for f in found] == [
        ("grad_zero", "bn.bias", True),
        ("grad_zero", "conv.weight", True),
    ]
    tracker = HealthTracker("grad")
    fresh = tracker.update(0, found)
    assert [(f.rule, f.layers) for f in fresh] == [("grad_zero", ("bn.bias",)), ("grad_zero", ("conv.weight",))]
    assert set(tracker.scalars().values()) == {0.0}  # never counted
    assert tracker.update(1, found) == []  # reported once
    assert "grad_zero at step 0: information" in tracker.to_markdown()
    # a norm scale the loss is invariant to: gamma's gradient 1e-3 of beta's (MobileNetV3's ReLU blocks)
    norm = {"bn.weight": {"norm": 6e-7, "abs_max": 1e-7}, "bn.bias": {"norm": 5e-4, "abs_max": 1e-4}}
    ctx = Context(roles={"bn.weight": "norm_weight", "bn.bias": "norm_bias"})
    assert [(f.rule, f.layers[0]) for f in check_grads(norm, step=0, context=ctx)] == [("grad_zero", "bn.weight")]
    assert check_grads(norm, step=0) == []  # without roles a name cannot tell a norm scale: no grad_zero
