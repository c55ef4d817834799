"""Scheme statistics against the closed-form formulas (never against torch's own initializers).

Tolerances: for N i.i.d. samples the sample std has relative standard error sqrt((kurtosis - 1) / (4 N)) (kurtosis 3
for a normal, 1.8 for a uniform) and the sample mean has standard error std / sqrt(N); we allow 6 standard errors,
so a correct implementation fails with probability < 1e-8 while a wrong gain (>= 5 % off) is caught at N >= 1e5.
"""

import math

import pytest
import torch

from lightning_init import schemes as S
from lightning_init.argtypes import FINITE_MAX

SHAPE = (256, 128, 3, 3)  # conv weight: fan_in = 128*9 = 1152, fan_out = 256*9 = 2304, N = 294912
FAN_IN, FAN_OUT, N = 1152, 2304, 256 * 128 * 9


def _check(w, mean, std, kurtosis):
    w = w.double()
    tol_std = 6 * math.sqrt((kurtosis - 1) / (4 * N))
    assert abs(w.mean().item() - mean) < 6 * std / math.sqrt(N)
    assert w.std().item() == pytest.approx(std, rel=tol_std)


@pytest.mark.parametrize(
    ("scheme", "params", "mean", "std", "kurtosis"),
    [
        ("normal", {"mean": 0.5, "std": 0.02}, 0.5, 0.02, 3.0),
        ("uniform", {"a": -1.0, "b": 3.0}, 1.0, 4 / math.sqrt(12), 1.8),
        ("xavier_normal", {"gain": 2.0}, 0.0, 2.0 * math.sqrt(2 / (FAN_IN + FAN_OUT)), 3.0),
        ("xavier_uniform", {}, 0.0, math.sqrt(6 / (FAN_IN + FAN_OUT)) / math.sqrt(3), 1.8),
        ("xavier_normal", {"nonlinearity": "tanh"}, 0.0, 5 / 3 * math.sqrt(2 / (FAN_IN + FAN_OUT)), 3.0),
        ("kaiming_normal", {"nonlinearity": "relu"}, 0.0, math.sqrt(2 / FAN_IN), 3.0),
        ("kaiming_normal", {"nonlinearity": "relu", "mode": "fan_out"}, 0.0, math.sqrt(2 / FAN_OUT), 3.0),
        ("kaiming_normal", {"a": 0.1}, 0.0, math.sqrt(2 / (1 + 0.01)) / math.sqrt(FAN_IN), 3.0),
        ("kaiming_uniform", {"nonlinearity": "relu"}, 0.0, math.sqrt(2 / FAN_IN), 1.8),
        ("lecun_normal", {}, 0.0, 1 / math.sqrt(FAN_IN), 3.0),
        ("lecun_uniform", {}, 0.0, 1 / math.sqrt(FAN_IN), 1.8),
    ],
)
def test_scheme_statistics_match_formulas(scheme, params, mean, std, kurtosis):
    full = S.validate_scheme(scheme, params)
    w = S.apply_scheme_(torch.empty(SHAPE), scheme, full, torch.Generator().manual_seed(0))
    _check(w, mean, std, kurtosis)
    if kurtosis == 1.8:  # uniform: the bounds are sqrt(3) std around the mean, and samples reach them
        bound = math.sqrt(3) * std
        assert w.min().item() >= mean - bound
        assert w.max().item() <= mean + bound
        assert w.max().item() > mean + 0.999 * bound
        assert w.min().item() < mean - 0.999 * bound
    assert S.expected_std(scheme, SHAPE, full) == pytest.approx(std, rel=1e-12)


def test_kaiming_relu_on_linear_1000_within_5_percent():
    w = S.kaiming_normal_(torch.empty(1000, 1000), nonlinearity="relu", generator=torch.Generator().manual_seed(1))
    assert abs(w.std().item() / math.sqrt(2 / 1000) - 1) < 0.05


def test_fans_count_receptive_field():
    conv = torch.nn.Conv2d(64, 128, 3)
    assert S.fans(conv.weight.shape) == (576, 1152)
    assert S.fans((7, 5)) == (5, 7)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        S.fans((3,))


def test_constant_schemes():
    assert torch.all(S.apply_scheme_(torch.empty(4, 4), "zeros", {}) == 0)
    assert torch.all(S.apply_scheme_(torch.empty(4, 4), "ones", {}) == 1)
    assert torch.all(
        S.apply_scheme_(torch.empty(4, 4), "constant", S.validate_scheme("constant", {"value": 0.3})) == 0.3
    )


def test_trunc_normal_bounds_and_std():
    # Independent reference: the truncated normal's std by numerical integration of the density on [a, b].
    mean, std, a, b = 0.2, 1.0, -1.0, 1.5
    xs = torch.linspace(a, b, 200001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((xs - mean) / std) ** 2)
    pdf /= torch.trapezoid(pdf, xs)
    mu = torch.trapezoid(xs * pdf, xs)
    ref = math.sqrt(torch.trapezoid((xs - mu) ** 2 * pdf, xs).item())
    w = S.trunc_normal_(torch.empty(SHAPE), mean, std, a, b, generator=torch.Generator().manual_seed(0))
    assert w.min().item() >= a
    assert w.max().item() <= b
    assert abs(w.double().mean().item() - mu.item()) < 6 * ref / math.sqrt(N)
    assert w.double().std().item() == pytest.approx(ref, rel=6 * math.sqrt(0.5 / N))
    assert S.expected_std("trunc_normal", SHAPE, {"mean": mean, "std": std, "a": a, "b": b}) == pytest.approx(
        ref, rel=1e-6
    )


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (6, 2, 3, 3)])
def test_orthogonal_is_orthogonal(shape):
    w = S.orthogonal_(torch.empty(shape), gain=1.5, generator=torch.Generator().manual_seed(0)).double()
    flat = w.reshape(shape[0], -1)
    gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
    assert torch.allclose(gram, 1.5**2 * torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5)


def test_generator_reproducible_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = S.normal_(torch.empty(10), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)
    b = S.normal_(torch.empty(10), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    torch.set_rng_state(state)
    S.xavier_normal_(torch.empty(5, 5))  # no generator: a private one, seeded from the OS
    assert torch.equal(torch.get_rng_state(), state)


def test_gains():
    assert S.gain_of("relu") == pytest.approx(math.sqrt(2))
    assert S.gain_of("tanh") == pytest.approx(5 / 3)
    assert S.gain_of("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert S.gain_of("gelu") == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize(
    ("scheme", "params", "match"),
    [
        ("kaiming_normall", {}, r"`scheme` must be one of .*'xavier_normal'.*Did you mean 'kaiming_normal'\?"),
        ("normal", {"std": -1.0}, r"`std` must be a finite number > 0, got -1.0"),
        ("normal", {"std": 0.0}, r"`std` must be a finite number > 0, got 0.0"),
        ("normal", {"gain": 2.0}, r"`gain`=2.0 is not a parameter of scheme 'normal'"),
        ("xavier_normal", {"std": 0.1}, r"`std`=0.1 is not a parameter of scheme 'xavier_normal'"),
        ("uniform", {"a": 1.0, "b": 0.0}, r"needs `a` < `b`, got a=1.0, b=0.0"),
        ("kaiming_normal", {"mode": "fan_avg"}, r"`mode` must be one of 'fan_in', 'fan_out', got 'fan_avg'"),
        ("kaiming_normal", {"nonlinearity": "rellu"}, r"Did you mean 'relu'\?"),
        ("kaiming_normal", {"nonlinearity": "relu", "a": 0.1}, r"`a`=0.1 .* needs nonlinearity='leaky_relu'"),
        ("constant", {}, r"needs `value`"),
        ("xavier_normal", {"gain": 1.0, "nonlinearity": "tanh"}, r"not both"),
    ],
)
def test_validation_errors(scheme, params, match):
    with pytest.raises(ValueError, match=match):
        S.validate_scheme(scheme, params)


def test_lsuv_is_a_data_scheme_without_tensor_form():
    assert "lsuv" in S.SCHEME_NAMES
    assert {"lsuv"} == S.DATA_SCHEMES
    assert S.validate_scheme("lsuv") == {}
    with pytest.raises(ValueError, match=r"`std`=0.1 is not a parameter of scheme 'lsuv'"):
        S.validate_scheme("lsuv", {"std": 0.1})
    with pytest.raises(ValueError, match=r"'lsuv' needs a module and a batch"):
        S.apply_scheme_(torch.empty(3, 3), "lsuv", {})


# --------------------------------------------------------------------------------------------------------------------
# trunc_normal in the tails, against scipy (an independent implementation), and refusals that write nothing.
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(-2.0, 2.0), (2.0, 3.0), (8.0, 9.0), (-9.0, -8.0), (20.0, 21.0), (9.0, 10.0)])
def test_trunc_normal_matches_scipy_truncnorm_in_the_tails(a, b):
    np = pytest.importorskip("numpy")
    stats = pytest.importorskip("scipy.stats")
    n = 20000
    w = S.trunc_normal_(torch.empty(n), 0.0, 1.0, a, b, generator=torch.Generator().manual_seed(5)).double().numpy()
    ref = stats.truncnorm(a, b).rvs(size=n, random_state=np.random.default_rng(7))
    assert stats.ks_2samp(w, ref).pvalue > 1e-3
    assert w.min() >= a
    assert w.max() <= b
    # the mean to 6 standard errors of the truncated distribution's own std (scipy's exact moments)
    assert abs(w.mean() - stats.truncnorm(a, b).mean()) < 6 * stats.truncnorm(a, b).std() / math.sqrt(n)
    assert S.expected_std("trunc_normal", (n,), {"mean": 0.0, "std": 1.0, "a": a, "b": b}) == pytest.approx(
        stats.truncnorm(a, b).std(), rel=1e-6
    )


def test_trunc_normal_far_bounds_refused_with_a_message_and_nothing_written():
    t = torch.full((4, 4), 7.0)
    with pytest.raises(ValueError, match=r"a=40.0, b=41.0\].*40 standard deviations.*the nearest bound within 37"):
        S.trunc_normal_(t, 0.0, 1.0, 40.0, 41.0)
    assert torch.all(t == 7.0)
    with pytest.raises(ValueError, match=r"trunc_normal"):
        S.validate_scheme("trunc_normal", {"mean": 0.0, "std": 0.01, "a": -1.0, "b": -0.5})  # 50 std below
    # 36 std: still sampled exactly (the lower-tail CDF there is 1e-284, a normal double): scipy's mean and std
    stats = pytest.importorskip("scipy.stats")
    n = 20000
    w = S.trunc_normal_(torch.empty(n), 0.0, 1.0, 36.0, 37.0, generator=torch.Generator().manual_seed(0)).double()
    ref = stats.truncnorm(36.0, 37.0)
    assert w.min().item() >= 36.0
    assert w.max().item() <= 37.0
    assert abs(w.mean().item() - ref.mean()) < 6 * ref.std() / math.sqrt(n)
    assert w.std().item() == pytest.approx(ref.std(), rel=0.05)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t: S.uniform_(t, -1e300, 1e300), r"`a`=-1e\+300, `b`=1e\+300 writes weights up to ~1e\+300"),
        (lambda t: S.normal_(t, 0.0, 1e30), r"`std`=1e\+30 writes weights up to"),
        (lambda t: S.normal_(t, std="0.1"), r"`std` must be a finite number > 0, got '0.1'"),
        (lambda t: S.normal_(t, mean=float("nan")), r"`mean` must be a finite number, got nan"),
        (lambda t: S.constant_(t, float("inf")), r"`value` must be a finite number, got inf"),
        (lambda t: S.constant_(t, 1e30), r"`value`"),
        (lambda t: S.xavier_normal_(t, gain=True), r"`gain` must be a finite number > 0, got True"),
        (lambda t: S.kaiming_normal_(t, mode="fan_avg"), r"`mode` must be one of 'fan_in', 'fan_out'"),
        (lambda t: S.orthogonal_(t, gain=-1.0), r"`gain` must be a finite number > 0, got -1.0"),
        (lambda t: S.normal_(t.half(), 0.0, 1e6), r"not finite in torch.float16.*nothing was written"),
        (lambda t: S.normal_(t, generator=42), r"`generator` must be a CPU torch.Generator .*got 42"),
    ],
)
def test_initializers_validate_then_write(call, match):
    t = torch.full((8, 8), 3.0)
    with pytest.raises(ValueError, match=match):
        call(t)
    assert torch.all(t == 3.0)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"std": "0.1"}, r"`std` must be a finite number > 0, got '0.1'"),
        ({"mean": "x"}, r"`mean` must be a finite number, got 'x'"),
        ({"std": float("inf")}, r"`std` must be a finite number > 0, got inf"),
    ],
)
def test_validate_scheme_names_argument_value_and_valid(params, match):
    with pytest.raises(ValueError, match=match):
        S.validate_scheme("normal", params)


def test_magnitude_limit_is_float32s_square_root():
    assert S.check_magnitude("bias", 1e19) == 1e19
    with pytest.raises(ValueError, match=r"`bias`=1e\+20 is too large.*\|bias\| <= 1.84e\+19"):
        S.check_magnitude("bias", 1e20)
    assert torch.finfo(torch.float32).max > (S.MAX_MAGNITUDE**2) * 0.999
    assert pytest.approx(FINITE_MAX, rel=1e-15) == S.MAX_MAGNITUDE  # the parser's FiniteFloat: the same bound
