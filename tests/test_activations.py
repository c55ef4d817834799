import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_init.activations import is_layer, is_norm, nonlinearity_of
from lightning_init.graph import sequential_followers, traced_followers


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.act(self.a(x))
        x = F.leaky_relu(self.b(x), 0.3)
        x = self.drop(torch.tanh(self.c(x)))
        return self.d(x)


def test_existing_names_kept():
    assert nonlinearity_of(nn.ReLU6()) == "relu"
    assert nonlinearity_of(nn.Linear(1, 1)) is None


def test_layer_and_norm_predicates():
    assert is_layer(nn.Linear(2, 2))
    assert not is_layer(nn.ReLU())
    assert not is_layer(nn.PReLU())
    assert is_norm(nn.BatchNorm2d(3))
    assert is_norm(nn.LayerNorm(3))
    assert not is_layer(nn.LayerNorm(3))


def test_sequential_followers_look_through_norms():
    m = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 4), nn.LeakyReLU(0.2), nn.Linear(4, 2)
    )
    assert sequential_followers(m) == {"0": ("tanh", None), "3": ("leaky_relu", 0.2), "5": ("linear", None)}


def test_traced_followers_functional_and_side_effect_free():
    m, x = Functional().train(), torch.randn(5, 3)
    state = torch.get_rng_state()
    found = traced_followers(m, x)
    assert found == {"a": ("relu", None), "b": ("leaky_relu", 0.3), "c": ("tanh", None), "d": ("linear", None)}
    assert torch.equal(torch.get_rng_state(), state)  # dropout did not draw
    assert all(mod.training for mod in m.modules())  # train/eval flags restored


def test_traced_followers_leave_bn_statistics_alone():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
    before = m[1].running_mean.clone()
    assert traced_followers(m, torch.randn(8, 3) + 5) == {"0": ("relu", None)}
    assert torch.equal(m[1].running_mean, before)


# ---------------------------------------------------------------- classification by behaviour (the probe)


class GeluNew(nn.Module):
    """gelu_new as HF writes it: calls torch.tanh inside, and is still a GELU."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0))))


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Square(nn.Module):
    def forward(self, x):
        return x * x


class Scale(nn.Module):
    def forward(self, x):
        return x * 1.0


def test_probe_recognizes_unknown_modules_by_behaviour():
    from lightning_init.activations import classify

    assert classify(GeluNew()) == ("gelu", None)
    assert classify(QuickGELU()) == ("gelu", None)
    assert classify(Square()) == ("other", None)  # elementwise, nonlinear, close to no reference
    assert classify(Scale()) == ("identity", None)
    assert nonlinearity_of(Scale()) is None  # passes values through: not an activation
    assert classify(nn.Softmax(dim=-1)) is None  # not elementwise
    assert classify(nn.Sequential(nn.ReLU())) is None  # blocks are never probed
    assert classify(nn.Softsign()) == ("tanh", None)
    assert nonlinearity_of(nn.Hardswish()) == "silu"


def test_probe_finds_leaky_slope_and_is_side_effect_free():
    from lightning_init.activations import classify

    class Leaky(nn.Module):
        def forward(self, x):
            return torch.where(x > 0, x, 0.2 * x)

    m = Leaky().train()
    state = torch.get_rng_state()
    kind, slope = classify(m)
    assert kind == "leaky_relu"
    assert slope == pytest.approx(0.2, abs=1e-6)
    assert m.training
    assert torch.equal(torch.get_rng_state(), state)


def test_hf_activation_classes():
    pytest.importorskip("transformers")
    from transformers.activations import GELUActivation, NewGELUActivation, QuickGELUActivation

    for cls in (GELUActivation, NewGELUActivation, QuickGELUActivation):
        assert nonlinearity_of(cls()) == "gelu", cls.__name__
