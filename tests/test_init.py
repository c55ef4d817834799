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


def test_auto_on_module_calling_activations_in_forward():
    m = CallsActivations()
    with pytest.warns(UserWarning, match=r"could not tell.*first, second, third"):
        init_module(m, seed=0)  # no example input: nothing resolvable, one warning naming all three
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
