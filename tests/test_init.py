import math

import pytest
import torch
from torch import nn

from lightning_init import InitReport, InitRule, init_module

# Linear(1000, 1000) weights have N = 1e6 samples: the sample std's relative standard error is 1/sqrt(2N) = 0.07 %,
# so 2 % separates Xavier (sqrt(2/2000) = 0.0316) from Kaiming (sqrt(2/1000) = 0.0447) with no chance of overlap.
TOL = 0.02
XAVIER, KAIMING = math.sqrt(2 / 2000), math.sqrt(2 / 1000)


class CallsActivations(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second, self.third = nn.Linear(1000, 1000), nn.Linear(1000, 1000), nn.Linear(1000, 1000)
        self.tanh, self.relu = nn.Tanh(), nn.ReLU()

    def forward(self, x):
        return self.third(self.relu(self.second(self.tanh(self.first(x)))))


def _std(p):
    return p.detach().double().std().item()


def test_auto_on_sequential():
    m = nn.Sequential(nn.Linear(1000, 1000), nn.Tanh(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 1000))
    report = init_module(m, seed=0)
    assert _std(m[0].weight) == pytest.approx(XAVIER, rel=TOL)
    assert _std(m[2].weight) == pytest.approx(KAIMING, rel=TOL)
    assert _std(m[4].weight) == pytest.approx(XAVIER, rel=TOL)  # followed by nothing
    assert torch.all(m[0].bias == 0)
    assert [r.layer for r in report.rows] == ["0.weight", "2.weight", "4.weight"]


class DataDependent(CallsActivations):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it symbolically
            x = x + 0
        return super().forward(x)


def test_auto_on_module_calling_activations_in_forward():
    m = DataDependent()
    with pytest.warns(UserWarning, match=r"could not tell.*first, second, third"):
        init_module(m, seed=0)  # no example input, no symbolic trace: nothing resolvable, one warning naming all three
    init_module(m, seed=0, example_input=torch.randn(2, 1000))
    for scheme_input in ({}, {"example_input": torch.randn(2, 1000)}):  # torch.fx traces the plain one without input
        init_module(m := CallsActivations(), seed=0, **scheme_input)
        assert _std(m.first.weight) == pytest.approx(XAVIER, rel=TOL)
        assert _std(m.second.weight) == pytest.approx(KAIMING, rel=TOL)
    m = DataDependent()
    init_module(m, seed=0, example_input=torch.randn(2, 1000))
    assert _std(m.first.weight) == pytest.approx(XAVIER, rel=TOL)
    assert _std(m.second.weight) == pytest.approx(KAIMING, rel=TOL)
    assert _std(m.third.weight) == pytest.approx(XAVIER, rel=TOL)


def test_auto_selu_and_nonlinearity_override():
    m = nn.Sequential(nn.Linear(1000, 1000), nn.SELU())
    init_module(m, seed=0)
    assert _std(m[0].weight) == pytest.approx(math.sqrt(1 / 1000), rel=TOL)  # LeCun normal
    init_module(m, seed=0, nonlinearity="leaky_relu", a=0.5)
    assert _std(m[0].weight) == pytest.approx(math.sqrt(2 / 1.25 / 1000), rel=TOL)


def test_norms_embeddings_recurrent_and_bias_constant():
    lstm = nn.LSTM(50, 200)
    m = nn.ModuleDict({"bn": nn.BatchNorm1d(8), "emb": nn.Embedding(1000, 100, padding_idx=3), "lstm": lstm})
    with torch.no_grad():
        m["bn"].weight.fill_(3.0)
    init_module(m, "kaiming_normal", nonlinearity="relu", bias=0.1, seed=0)
    assert torch.all(m["bn"].weight == 1)
    assert torch.all(m["bn"].bias == 0)
    emb = m["emb"].weight
    assert torch.all(emb[3] == 0)
    assert _std(torch.cat([emb[:3], emb[4:]])) == pytest.approx(1.0, rel=6 / math.sqrt(2 * 99900))
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    for k in range(4):  # per gate block: (200, 50) Kaiming relu on fan_in 50; recurrent (200, 200) orthogonal
        block = w_hh[200 * k : 200 * (k + 1)].double()
        assert torch.allclose(block @ block.T, torch.eye(200, dtype=torch.float64), atol=1e-5)
    assert _std(w_ih) == pytest.approx(math.sqrt(2 / 50), rel=6 / math.sqrt(2 * w_ih.numel()))
    assert torch.all(lstm.bias_ih_l0 == 0.1)
    assert torch.all(lstm.bias_hh_l0 == 0.1)


def test_rules_skip_and_override():
    m = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 100))
    before = m[0].weight.clone()
    rules = [InitRule(name="0", scheme="skip"), {"type": "Linear", "scheme": "constant", "value": 0.5, "bias": 1.0}]
    with pytest.warns(UserWarning, match="behaves like a single unit"):
        report = init_module(m, "xavier_normal", rules=rules, seed=0)
    assert torch.equal(m[0].weight, before)
    assert torch.all(m[2].weight == 0.5)
    assert torch.all(m[2].bias == 1.0)
    assert report.skipped == ["0"]
    assert report.symmetric == ["2.weight"]
    with pytest.raises(ValueError, match="matches no layer"):
        init_module(m, rules=[InitRule(name="head", scheme="zeros")])


def test_only_rules_leaves_other_layers():
    m = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))
    before = m[0].weight.clone()
    init_module(m, only_rules=True, rules=[InitRule(name="2", scheme="normal", std=0.01)], seed=0)
    assert torch.equal(m[0].weight, before)
    assert m[2].weight.std().item() < 0.02
    assert torch.all(m[2].bias == 0)


@pytest.mark.parametrize("scheme", ["zeros", "ones", "constant"])
def test_symmetry_warning_in_seed_terms(scheme):
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    params = {"value": 0.3} if scheme == "constant" else {}
    with pytest.warns(UserWarning, match=r"0.weight: .*Every unit of such a layer computes the same output") as rec:
        report = init_module(m, scheme, **params)
    assert report.symmetric == ["0.weight"]  # a single output unit (2.weight) has no symmetry to break
    assert sum("single unit" in str(w.message) for w in rec) == 1


def test_seed_reproducible_and_global_rng_untouched():
    m1, m2 = nn.Linear(20, 20), nn.Linear(20, 20)
    state = torch.get_rng_state()
    init_module(m1, "orthogonal", seed=7)
    torch.manual_seed(1)
    init_module(m2, "orthogonal", seed=7)
    assert torch.equal(m1.weight, m2.weight)
    torch.set_rng_state(state)
    init_module(m1, "kaiming_uniform")  # no seed
    assert torch.equal(torch.get_rng_state(), state)


def test_report_renders():
    m = nn.Sequential(nn.Conv2d(64, 128, 3), nn.ReLU())
    report = init_module(m, "kaiming_normal", nonlinearity="relu", seed=0)
    assert isinstance(report, InitReport)
    row = report.rows[0]
    assert (row.layer, row.shape, row.fan_in, row.fan_out) == ("0.weight", (128, 64, 3, 3), 576, 1152)
    assert row.expected_std == pytest.approx(math.sqrt(2 / 576))
    md = report.to_markdown()
    assert md.startswith("| layer | shape | scheme | fan_in | fan_out | gain | expected std | actual std |")
    assert "| 0.weight | 128x64x3x3 | kaiming_normal | 576 | 1152 |" in md
    assert "0.weight" in str(report)
    assert "576" in str(report)


def test_bad_input():
    with pytest.raises(ValueError, match=r"Did you mean 'xavier_uniform'\?"):
        init_module(nn.Linear(2, 2), "xavier_unifrom")
    with pytest.raises(ValueError, match=r"`std`=0.1 is not a parameter of scheme 'kaiming_normal'"):
        init_module(nn.Linear(2, 2), "kaiming_normal", std=0.1)


# ---------------------------------------------------------------- LSUV through init_module


class MixedLSUV(nn.Module):
    """Embedding -> Linear -> LayerNorm -> tanh -> frozen Linear -> Linear -> tanh -> head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1 = nn.Linear(16, 64)
        self.norm = nn.LayerNorm(64)
        self.frozen = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 64)

    def forward(self, idx):
        h = torch.tanh(self.norm(self.fc1(self.emb(idx).mean(1))))
        return self.head(torch.tanh(self.fc2(self.frozen(h))))


def _linear_output_variances(model, x):
    """Reference: biased float64 variance of every Linear's output, eval mode, own hooks."""
    out = {}
    handles = [
        m.register_forward_hook(lambda _m, _a, y, n=n: out.__setitem__(n, y.double().var(correction=0).item()))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


def test_lsuv_rules_norms_embeddings_and_report():
    torch.manual_seed(0)
    m = MixedLSUV()
    with torch.no_grad():
        m.norm.weight.fill_(3.0)
        m.norm.bias.fill_(0.5)
    frozen = {k: v.clone() for k, v in m.frozen.state_dict().items()}
    batch = torch.randint(0, 50, (256, 6), generator=torch.Generator().manual_seed(1))
    rules = [InitRule(name="frozen", scheme="skip"), InitRule(name="head", scheme="normal", std=0.01)]
    report = init_module(m, "lsuv", rules=rules, seed=0, lsuv_batch=batch, lsuv_tol=0.05)

    var = _linear_output_variances(m, batch)
    assert abs(var["fc1"] - 1) <= 0.05
    assert abs(var["fc2"] - 1) <= 0.05
    assert var["head"] < 0.1  # the rule's scheme, not LSUV: N(0, 0.01^2) weights shrink the output
    assert all(torch.equal(m.frozen.state_dict()[k], v) for k, v in frozen.items())  # skip: untouched
    assert torch.all(m.norm.weight == 1)
    assert torch.all(m.norm.bias == 0)
    assert _std(m.emb.weight) == pytest.approx(1.0, rel=0.25)  # auto's embedding default, N(0, 1); N = 800
    assert _std(m.head.weight) == pytest.approx(0.01, rel=0.1)  # N = 4096: SE 1.1 %
    assert torch.all(m.fc1.bias == 0)
    assert report.lsuv is not None
    assert [r.name for r in report.lsuv.layers] == ["fc1", "fc2"]
    assert report.lsuv.skipped == ()  # only LSUV layers that could not be rescaled are listed
    for r in report.lsuv.layers:
        assert r.final_variance == pytest.approx(var[r.name], rel=1e-6)
    rows = {r.layer: r for r in report.rows}
    assert rows["fc1.weight"].scheme == "lsuv"
    assert rows["fc1.weight"].actual_std == pytest.approx(m.fc1.weight.double().std(correction=0).item(), rel=1e-6)
    assert rows["head.weight"].scheme == "normal"
    assert report.skipped == ["frozen"]
    md = report.to_markdown()
    assert "| fc1.weight | 64x16 | lsuv | 16 | 64 | - | - |" in md
    assert "| layer | type | iterations | initial variance | final variance | converged | reason |" in md
    assert "| fc2 | Linear |" in str(report)


def test_lsuv_as_a_rule_and_refusals_before_any_change():
    m = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Linear(32, 32))
    batch = torch.randn(128, 16, generator=torch.Generator().manual_seed(0))
    report = init_module(m, "xavier_normal", rules=[{"name": "2", "scheme": "lsuv"}], lsuv_batch=batch, seed=0)
    assert [r.name for r in report.lsuv.layers] == ["2"]
    assert abs(_linear_output_variances(m, batch)["2"] - 1) <= 0.1
    assert _std(m[0].weight) == pytest.approx(math.sqrt(2 / 48), rel=0.15)  # xavier, N = 512

    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"pass `lsuv_batch`"):
        init_module(m, "lsuv")
    with pytest.raises(ValueError, match=r"`lsuv_tol` must be a number in \(0, 1\), got 1.5"):
        init_module(m, "lsuv", lsuv_batch=batch, lsuv_tol=1.5)
    with pytest.raises(ValueError, match=r"`bias`=0.1 cannot be used with scheme 'lsuv'"):
        init_module(m, "lsuv", lsuv_batch=batch, bias=0.1)
    with pytest.raises(ValueError, match=r"'x' key"):
        init_module(m, "lsuv", lsuv_batch={"input": batch})
    with pytest.raises(ValueError, match=r"scheme 'lsuv' takes no `bias`"):
        InitRule(name="2", scheme="lsuv", bias=0.5)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before.items())


def test_lsuv_unreachable_layer_warns_and_is_reported():
    m = nn.Sequential(nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match=r"LSUV did not bring every layer to unit output variance \(1: output varia"):
        report = init_module(m, "lsuv", lsuv_batch=-torch.rand(32, 8) - 0.1, seed=0)
    assert not report.lsuv.converged
    assert all(torch.isfinite(p).all() for p in m.parameters())
