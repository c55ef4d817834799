"""Initialization schemes: names, parameters, fan/gain helpers and in-place initializers (pure torch).

Semantics follow ``torch.nn.init``, and so does sampling: every initializer calls ``torch.nn.init``'s own function
with ``generator=`` (torch >= 2.2) on a float64 CPU buffer, then copies it to the tensor's device and dtype, so the same
seed gives the same weights on every device and torch's global RNG is never used. ``trunc_normal`` alone has its own
sampler: an inverse CDF on the lower tail, exact at any bounds a double can represent (torch's own changed algorithm
between versions). Every initializer validates its arguments and the values it is about to write (finite in the
tensor's dtype) before writing anything. This module never imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from lightning_init.checks import check_choice, check_real, received

#: Every scheme name ``WeightInit(scheme=...)`` and ``init_module(scheme=...)`` accept.
SchemeName = Literal[
    "zeros",
    "ones",
    "constant",
    "normal",
    "uniform",
    "trunc_normal",
    "xavier_normal",
    "xavier_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "orthogonal",
    "lecun_normal",
    "lecun_uniform",
    "auto",
    "lsuv",
]

#: Nonlinearity names: those of ``torch.nn.init.calculate_gain`` plus ``gelu``, ``silu``, ``elu`` and ``softplus``
#: (gain ``sqrt(2)``, as ReLU: see :func:`gain_of`).
Nonlinearity = Literal[
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
    "gelu",
    "silu",
    "elu",
    "softplus",
]

#: Which fan a Kaiming initializer preserves: ``fan_in`` (forward pass) or ``fan_out`` (backward pass).
FanMode = Literal["fan_in", "fan_out"]

SCHEME_NAMES: tuple[str, ...] = get_args(SchemeName)

#: Data-dependent schemes: they need a batch of real inputs, so ``WeightInit`` applies them at the first training
#: batch instead of at fit start. ``lsuv``: Mishkin & Matas 2016 (see :mod:`lightning_init.lsuv`).
DATA_SCHEMES: frozenset[str] = frozenset({"lsuv"})
NONLINEARITIES: tuple[str, ...] = get_args(Nonlinearity)
FAN_MODES: tuple[str, ...] = get_args(FanMode)

#: ReLU-shaped smooth activations that get ReLU's gain ``sqrt(2)``. Justification: each is ~identity for large positive
#: inputs and bounded below for negative ones, so (like ReLU) it passes about half of the pre-activation's second
#: moment: for x ~ N(0, 1), E[f(x)^2] is 0.50 (ReLU), 0.43 (GELU), 0.36 (SiLU), 0.65 (ELU). Kaiming's derivation with
#: ReLU's factor is therefore within ~25 % in std of the exact per-activation factor, keeps the signal from vanishing
#: through depth the way Xavier (factor 1) would, and is what GELU/SiLU networks commonly use in practice.
RELU_SHAPED: frozenset[str] = frozenset({"gelu", "silu", "elu", "softplus"})

#: Scheme parameter names and which schemes take them.
SCHEME_PARAMS: dict[str, frozenset[str]] = {
    "zeros": frozenset(),
    "ones": frozenset(),
    "constant": frozenset({"value"}),
    "normal": frozenset({"mean", "std"}),
    "uniform": frozenset({"a", "b"}),
    "trunc_normal": frozenset({"mean", "std", "a", "b"}),
    "xavier_normal": frozenset({"gain", "nonlinearity"}),
    "xavier_uniform": frozenset({"gain", "nonlinearity"}),
    "kaiming_normal": frozenset({"a", "mode", "nonlinearity"}),
    "kaiming_uniform": frozenset({"a", "mode", "nonlinearity"}),
    "orthogonal": frozenset({"gain", "nonlinearity"}),
    "lecun_normal": frozenset(),
    "lecun_uniform": frozenset(),
    "auto": frozenset({"nonlinearity", "a"}),
    "lsuv": frozenset(),
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "normal": {"mean": 0.0, "std": 1.0},
    "uniform": {"a": 0.0, "b": 1.0},
    "trunc_normal": {"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0},
    "kaiming_normal": {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
    "kaiming_uniform": {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
}


#: The largest weight, bias or constant magnitude any scheme may write: ``sqrt(float32 max)`` ~ 1.8e19. A larger value
#: is finite, but its square is not (in float32, bfloat16 and float16), so the first forward or backward pass, every
#: norm and every variance of that weight is inf/NaN: such parameters are refused when the scheme is validated, before
#: anything is written.
MAX_MAGNITUDE: float = math.sqrt(torch.finfo(torch.float32).max)

#: How far (in standard deviations) the nearest bound of ``trunc_normal`` may lie from ``mean``: beyond ~37.5 the
#: probability of ``[a, b]`` underflows double precision and no sampler can be exact (the normal CDF at -37.5 is
#: 4.6e-308, the smallest normal double is 2.2e-308).
TRUNC_NORMAL_MAX_SIGMAS: float = 37.0

#: Standard deviations counted on each side of ``mean`` when a Gaussian scheme's largest value is estimated
#: (P(|z| > 10) = 1.5e-23: never reached by any tensor that fits in memory).
_GAUSSIAN_REACH = 10.0

_REAL_PARAMS = ("mean", "value", "a", "b")
_POSITIVE_PARAMS = ("std", "gain")


def check_magnitude(argument: str, value: Any) -> float:
    """Check that ``value`` is a finite number a weight may hold (``|value| <= MAX_MAGNITUDE``); return it as float.

    Used for ``bias`` and every scheme parameter that becomes a weight value (``value``, ``mean``, bounds).

    Raises:
        ValueError: Not a finite real number (NaN, inf, a string, a bool), or too large (names the argument, value).
    """
    x = check_real(argument, value)
    if abs(x) > MAX_MAGNITUDE:
        raise ValueError(
            f"`{argument}`={value!r} is too large for a weight: its square overflows float32, so the first "
            f"forward/backward pass and every statistic of the parameter would be inf/NaN. Valid: |{argument}| <= "
            f"{MAX_MAGNITUDE:.3g}."
        )
    return x


def check_module(argument: str, value: Any) -> torch.nn.Module:
    """Check that ``value`` is an ``nn.Module`` (a LightningModule or a bare model); return it.

    Raises:
        ValueError: Naming ``argument`` and ``value`` (``None``, a tensor, a class instead of an instance).
    """
    if not isinstance(value, torch.nn.Module):
        hint = " (a class: instantiate it)" if isinstance(value, type) and issubclass(value, torch.nn.Module) else ""
        raise ValueError(f"`{argument}` must be an nn.Module (a LightningModule or model), got {received(value)}{hint}")
    return value


def _largest_value(scheme: str, params: Mapping[str, Any]) -> tuple[float, str]:
    """The largest |value| a shape-free scheme can write with ``params`` and the argument(s) it comes from."""
    if scheme == "constant":
        return abs(params["value"]), "value"
    if scheme == "uniform":
        return max(abs(params["a"]), abs(params["b"])), "a, b"
    if scheme == "normal":
        return abs(params["mean"]) + _GAUSSIAN_REACH * params["std"], "mean, std"
    if scheme == "trunc_normal":
        reach = abs(params["mean"]) + _GAUSSIAN_REACH * params["std"]
        return min(max(abs(params["a"]), abs(params["b"])), reach), "mean, std, a, b"
    if "gain" in params:  # fan-based: std = gain / sqrt(fan) <= gain
        return _GAUSSIAN_REACH * params["gain"], "gain"
    return 0.0, ""


def _standard_bounds(mean: float, std: float, a: float, b: float) -> tuple[float, float, bool]:
    """``trunc_normal``'s bounds in standard units, mirrored into the lower tail when both lie above the mean.

    Returns ``(alpha, beta, mirrored)``. In the lower tail the normal CDF keeps its full relative precision
    (``0.5 * erfc(-x / sqrt(2))``), while ``1 - cdf`` in the upper tail cancels to 0 beyond ~8 standard deviations.
    """
    alpha, beta = (a - mean) / std, (b - mean) / std
    if alpha > 0:
        return -beta, -alpha, True
    return alpha, beta, False


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _check_trunc_normal(mean: float, std: float, a: float, b: float) -> None:
    _, beta, _ = _standard_bounds(mean, std, a, b)
    if beta < -TRUNC_NORMAL_MAX_SIGMAS:
        log10_mass = float(torch.special.log_ndtr(torch.tensor(beta, dtype=torch.float64))) / math.log(10.0)
        raise ValueError(
            f"Scheme 'trunc_normal' with mean={mean!r}, std={std!r}: the nearest bound of [a={a!r}, b={b!r}] lies "
            f"{-beta:.4g} standard deviations from the mean, so the probability of [a, b] (~1e{log10_mass:.0f}) "
            f"underflows double precision and cannot be sampled exactly. Valid: the nearest bound within "
            f"{TRUNC_NORMAL_MAX_SIGMAS:g} std of `mean` (move `mean` toward [a, b] or raise `std`), or use 'uniform'."
        )


def validate_scheme(scheme: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check a scheme name and its parameters; return the full parameter dict (defaults filled in).

    Args:
        scheme: One of :data:`SchemeName`.
        params: The scheme's parameters; ``None`` values count as "not given".

    Raises:
        ValueError: Unknown scheme (lists the valid names and suggests the closest), a parameter the scheme does not
            take, a missing required parameter, a value of the wrong type (``std="0.1"``), not finite, out of range,
            too large for a weight (see :data:`MAX_MAGNITUDE`) or ``trunc_normal`` bounds too far in the tail (see
            :data:`TRUNC_NORMAL_MAX_SIGMAS`). Every message names the argument, the value and what is valid.
    """
    check_choice("scheme", scheme, SCHEME_NAMES)
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"The parameters of scheme {scheme!r} must be a mapping, got {received(params)}.")
    given = {k: v for k, v in (params or {}).items() if v is not None}
    allowed = SCHEME_PARAMS[scheme]
    for key, value in given.items():
        if key not in allowed:
            takes = ", ".join(f"`{p}`" for p in sorted(allowed)) or "no parameters"
            raise ValueError(f"`{key}`={value!r} is not a parameter of scheme {scheme!r} (it takes {takes}).")
    for key in _POSITIVE_PARAMS:
        if key in given:
            given[key] = check_real(key, given[key], low=0.0, low_open=True)
    for key in _REAL_PARAMS:
        if key in given:
            given[key] = check_real(key, given[key])
    out = {**_DEFAULTS.get(scheme, {}), **given}
    if "nonlinearity" in given:
        check_choice("nonlinearity", given["nonlinearity"], NONLINEARITIES)
    if "mode" in out:
        check_choice("mode", out["mode"], FAN_MODES)
    if scheme == "constant" and "value" not in out:
        raise ValueError("Scheme 'constant' needs `value` (the constant), got none.")
    if scheme in ("uniform", "trunc_normal") and not out["a"] < out["b"]:
        raise ValueError(f"Scheme {scheme!r} needs `a` < `b`, got a={out['a']!r}, b={out['b']!r}.")
    if scheme in ("xavier_normal", "xavier_uniform", "orthogonal") and "gain" in given and "nonlinearity" in given:
        raise ValueError(
            f"Give `gain` or `nonlinearity` for scheme {scheme!r}, not both "
            f"(got gain={given['gain']!r}, nonlinearity={given['nonlinearity']!r})."
        )
    if "a" in given and scheme in ("kaiming_normal", "kaiming_uniform", "auto"):
        if out.get("nonlinearity") != "leaky_relu":
            raise ValueError(
                f"`a`={given['a']!r} is the negative slope of leaky_relu; with scheme {scheme!r} it needs "
                f"nonlinearity='leaky_relu', got nonlinearity={out.get('nonlinearity')!r}."
            )
        if given["a"] < 0:
            raise ValueError(f"`a` (the negative slope of leaky_relu) must be >= 0, got {given['a']!r}.")
    largest, source = _largest_value(scheme, out)
    if largest > MAX_MAGNITUDE:
        shown = ", ".join(f"`{k}`={out[k]!r}" for k in source.split(", "))
        raise ValueError(
            f"Scheme {scheme!r} with {shown} writes weights up to ~{largest:.3g}: their squares overflow float32, so "
            f"the first forward/backward pass and every statistic would be inf/NaN. Valid: weights within "
            f"+-{MAX_MAGNITUDE:.3g} (for a Gaussian, |mean| + {_GAUSSIAN_REACH:g} std)."
        )
    if scheme == "trunc_normal":
        _check_trunc_normal(out["mean"], out["std"], out["a"], out["b"])
    return out


def fans(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape``, counting a convolution's receptive field.

    ``fan_in = shape[1] * prod(shape[2:])`` and ``fan_out = shape[0] * prod(shape[2:])`` (``torch.nn.init``'s
    convention), e.g. ``Conv2d(64, 128, 3)``: weight ``(128, 64, 3, 3)``, fan_in 576, fan_out 1152.

    Raises:
        ValueError: For fewer than 2 dimensions.
    """
    if len(shape) < 2:
        raise ValueError(f"Fan-in and fan-out need a weight with at least 2 dimensions, got shape {tuple(shape)}.")
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def gain_of(nonlinearity: str, a: float | None = None) -> float:
    """The recommended gain for ``nonlinearity`` (``torch.nn.init.calculate_gain`` plus the ReLU-shaped ones).

    ``gelu``, ``silu``, ``elu`` and ``softplus`` get ReLU's ``sqrt(2)`` (see :data:`RELU_SHAPED`); ``a`` is the
    negative slope of ``leaky_relu`` (default 0.01, as in torch).
    """
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    if nonlinearity in RELU_SHAPED:
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if a is None else a
        return math.sqrt(2.0 / (1 + slope**2))
    return float(torch.nn.init.calculate_gain(nonlinearity))  # type: ignore[arg-type]


def _gain(params: Mapping[str, Any]) -> float:
    if params.get("gain") is not None:
        return float(params["gain"])
    if params.get("nonlinearity") is not None:
        return gain_of(params["nonlinearity"], params.get("a"))
    return 1.0


def scheme_gain(scheme: str, params: Mapping[str, Any]) -> float | None:
    """The gain a fan-based scheme uses with ``params`` (validated), ``None`` for schemes without one."""
    if scheme in ("xavier_normal", "xavier_uniform", "orthogonal"):
        return _gain(params)
    if scheme in ("kaiming_normal", "kaiming_uniform"):
        return gain_of(params["nonlinearity"], params.get("a"))
    if scheme in ("lecun_normal", "lecun_uniform"):
        return 1.0
    return None


def _truncnorm_std(mean: float, std: float, a: float, b: float) -> float:
    """The truncated normal's std in closed form, stable in the tails (lower-tail CDF, mirrored bounds)."""

    def pdf(x: float) -> float:
        return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    alpha, beta, _ = _standard_bounds(mean, std, a, b)  # the std is symmetric under mirroring
    z = _norm_cdf(beta) - _norm_cdf(alpha)
    var = 1 + (alpha * pdf(alpha) - beta * pdf(beta)) / z - ((pdf(alpha) - pdf(beta)) / z) ** 2
    return std * math.sqrt(max(var, 0.0))


def expected_std(scheme: str, shape: torch.Size | tuple[int, ...], params: Mapping[str, Any]) -> float:
    """The standard deviation the formulas predict for a tensor of ``shape`` initialized by ``scheme``.

    ``params`` are validated parameters (:func:`validate_scheme`). Orthogonal: ``gain / sqrt(max(rows, cols))`` (the
    rows or columns have norm ``gain``). Constant schemes: 0.
    """
    if scheme in ("zeros", "ones", "constant"):
        return 0.0
    if scheme == "normal":
        return float(params["std"])
    if scheme == "uniform":
        return (params["b"] - params["a"]) / math.sqrt(12.0)
    if scheme == "trunc_normal":
        return _truncnorm_std(params["mean"], params["std"], params["a"], params["b"])
    fan_in, fan_out = fans(shape)
    gain = scheme_gain(scheme, params)
    assert gain is not None
    if scheme in ("xavier_normal", "xavier_uniform"):
        return gain * math.sqrt(2.0 / (fan_in + fan_out))
    if scheme in ("kaiming_normal", "kaiming_uniform"):
        return gain / math.sqrt(fan_in if params["mode"] == "fan_in" else fan_out)
    if scheme in ("lecun_normal", "lecun_uniform"):
        return 1.0 / math.sqrt(fan_in)
    if scheme == "orthogonal":
        rows = int(shape[0])
        return gain / math.sqrt(max(rows, math.prod(shape) // max(rows, 1)))
    raise ValueError(f"`scheme` {scheme!r} has no closed-form std.")


# --------------------------------------------------------------------------------------------------------------------
# In-place initializers. Each one validates its arguments, samples with torch.nn.init's own function (generator=) into
# a float64 CPU buffer, checks that the values are finite in the tensor's dtype, and only then writes: a refused call
# leaves the tensor as it was. Sampling on a CPU generator makes a seed give the same weights on every device.
# --------------------------------------------------------------------------------------------------------------------


def _cpu_generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        import os

        generator = torch.Generator()
        generator.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        shown = generator.device if isinstance(generator, torch.Generator) else received(generator)
        raise ValueError(
            f"`generator` must be a CPU torch.Generator (samples are drawn on the CPU, then copied, so a seed gives "
            f"the same weights on every device), got {shown}."
        )
    return generator


def _buffer(tensor: Tensor) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise ValueError(f"`tensor` must be a torch.Tensor, got {received(tensor)}.")
    if not tensor.is_floating_point():
        raise ValueError(f"`tensor` must have a floating-point dtype to be initialized, got {tensor.dtype}.")
    return torch.empty(tensor.shape, dtype=torch.float64)


def _write(tensor: Tensor, sample: Tensor, what: str) -> Tensor:
    """Copy ``sample`` into ``tensor`` if every value is finite in ``tensor``'s dtype; else refuse, writing nothing.

    Raises:
        ValueError: Naming the initializer call, the largest value and the dtype's range.
    """
    cast = sample.to(tensor.dtype)
    if not bool(torch.isfinite(cast).all()):
        largest = float(sample.abs().max()) if sample.numel() else math.nan
        raise ValueError(
            f"{what} gives values up to {largest:.3g}, not finite in {tensor.dtype} (largest finite "
            f"{torch.finfo(tensor.dtype).max:.3g}); nothing was written. Use a smaller scale."
        )
    if not tensor.is_meta:
        with torch.no_grad():
            tensor.copy_(cast.reshape(tensor.shape))
    return tensor


def constant_(tensor: Tensor, value: float) -> Tensor:
    """Fill ``tensor`` with ``value`` in place (``value`` a finite number that the dtype can hold).

    Raises:
        ValueError: ``value`` not a finite number, or not finite in ``tensor``'s dtype; the tensor is unchanged.
    """
    x = validate_scheme("constant", {"value": value})["value"]
    _buffer(tensor)
    if not math.isfinite(float(torch.tensor(x, dtype=torch.float64).to(tensor.dtype))):
        raise ValueError(
            f"`value`={value!r} is not finite in {tensor.dtype} (largest finite {torch.finfo(tensor.dtype).max:.3g}); "
            "nothing was written."
        )
    with torch.no_grad():
        return torch.nn.init.constant_(tensor, x)


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` with samples of N(mean, std^2) in place (``torch.nn.init.normal_``)."""
    params = validate_scheme("normal", {"mean": mean, "std": std})
    mean, std = params["mean"], params["std"]
    sample = torch.nn.init.normal_(_buffer(tensor), mean, std, generator=_cpu_generator(generator))
    return _write(tensor, sample, f"normal(mean={mean!r}, std={std!r})")


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` with samples of U(a, b) in place (``torch.nn.init.uniform_``)."""
    params = validate_scheme("uniform", {"a": a, "b": b})
    a, b = params["a"], params["b"]
    sample = torch.nn.init.uniform_(_buffer(tensor), a, b, generator=_cpu_generator(generator))
    return _write(tensor, sample, f"uniform(a={a!r}, b={b!r})")


def trunc_normal_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill ``tensor`` with N(mean, std^2) truncated to ``[a, b]`` (absolute bounds, as torch) in place.

    Exact in the tails: inverse CDF in float64 on the lower tail (bounds that both lie above the mean are mirrored),
    where the normal CDF and its inverse (``torch.special.ndtri``) keep full relative precision, so
    ``a=8, b=9`` or ``a=20, b=21`` are sampled as exactly as ``a=-2, b=2``, in one pass (no rejection loop). Uniform
    draws come from ``torch.nn.init.uniform_`` with ``generator``.

    Raises:
        ValueError: Bad arguments, or the nearest bound more than :data:`TRUNC_NORMAL_MAX_SIGMAS` standard deviations
            from ``mean`` (the probability of ``[a, b]`` underflows double precision); the tensor is unchanged.
    """
    params = validate_scheme("trunc_normal", {"mean": mean, "std": std, "a": a, "b": b})
    mean, std, a, b = params["mean"], params["std"], params["a"], params["b"]
    alpha, beta, mirrored = _standard_bounds(mean, std, a, b)
    lo, hi = _norm_cdf(alpha), _norm_cdf(beta)
    u = torch.nn.init.uniform_(_buffer(tensor), lo, hi, generator=_cpu_generator(generator))
    z = torch.special.ndtri(u).clamp_(alpha, beta)
    sample = (z.neg_() if mirrored else z).mul_(std).add_(mean).clamp_(a, b)
    return _write(tensor, sample, f"trunc_normal(mean={mean!r}, std={std!r}, a={a!r}, b={b!r})")


def _check_gain(gain: float) -> float:
    return check_real("gain", gain, low=0.0, low_open=True)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Glorot normal: N(0, gain^2 * 2 / (fan_in + fan_out)) in place (``torch.nn.init.xavier_normal_``)."""
    gain = _check_gain(gain)
    fans(tensor.shape)
    sample = torch.nn.init.xavier_normal_(_buffer(tensor), gain, generator=_cpu_generator(generator))
    return _write(tensor, sample, f"xavier_normal(gain={gain!r})")


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Glorot uniform: U(-gain * sqrt(6 / (fan_in + fan_out)), +...) in place (``torch.nn.init.xavier_uniform_``)."""
    gain = _check_gain(gain)
    fans(tensor.shape)
    sample = torch.nn.init.xavier_uniform_(_buffer(tensor), gain, generator=_cpu_generator(generator))
    return _write(tensor, sample, f"xavier_uniform(gain={gain!r})")


def _torch_nonlinearity(a: float, mode: str, nonlinearity: str) -> tuple[float, Any, Any]:
    """Check Kaiming's arguments; ``(a, mode, nonlinearity)`` as ``torch.nn.init`` takes them (its Literal types).

    The ReLU-shaped activations (:data:`RELU_SHAPED`) get ReLU's gain, so torch is asked for ``relu``.
    """
    a = check_real("a", a, low=0.0)
    check_choice("mode", mode, FAN_MODES)
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    return a, mode, "relu" if nonlinearity in RELU_SHAPED else nonlinearity


def kaiming_normal_(
    tensor: Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """He normal: N(0, gain^2 / fan) in place (``torch.nn.init.kaiming_normal_``).

    ``fan`` is chosen by ``mode``, the gain by ``nonlinearity`` and ``a``.
    """
    a, t_mode, t_nl = _torch_nonlinearity(a, mode, nonlinearity)
    fans(tensor.shape)
    sample = torch.nn.init.kaiming_normal_(_buffer(tensor), a, t_mode, t_nl, generator=_cpu_generator(generator))
    return _write(tensor, sample, f"kaiming_normal(a={a!r}, mode={mode!r}, nonlinearity={nonlinearity!r})")


def kaiming_uniform_(
    tensor: Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """He uniform: U(-gain * sqrt(3 / fan), +...) in place (``torch.nn.init.kaiming_uniform_``)."""
    a, t_mode, t_nl = _torch_nonlinearity(a, mode, nonlinearity)
    fans(tensor.shape)
    sample = torch.nn.init.kaiming_uniform_(_buffer(tensor), a, t_mode, t_nl, generator=_cpu_generator(generator))
    return _write(tensor, sample, f"kaiming_uniform(a={a!r}, mode={mode!r}, nonlinearity={nonlinearity!r})")


def lecun_normal_(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """LeCun normal: N(0, 1 / fan_in) in place (``torch.nn.init.kaiming_normal_`` with gain 1: ``linear``, fan_in)."""
    fans(tensor.shape)
    sample = torch.nn.init.kaiming_normal_(
        _buffer(tensor), 0.0, "fan_in", "linear", generator=_cpu_generator(generator)
    )
    return _write(tensor, sample, "lecun_normal")


def lecun_uniform_(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """LeCun uniform: U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)) in place (``kaiming_uniform_`` with gain 1)."""
    fans(tensor.shape)
    sample = torch.nn.init.kaiming_uniform_(
        _buffer(tensor), 0.0, "fan_in", "linear", generator=_cpu_generator(generator)
    )
    return _write(tensor, sample, "lecun_uniform")


def orthogonal_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """(Semi-)orthogonal matrix times ``gain`` in place (``torch.nn.init.orthogonal_``).

    The tensor is flattened to ``(rows, -1)``; QR of a Gaussian with the sign correction that makes it Haar-distributed.
    """
    gain = _check_gain(gain)
    if tensor.ndim < 2:
        raise ValueError(f"Orthogonal init needs a tensor with at least 2 dimensions, got shape {tuple(tensor.shape)}.")
    sample = torch.nn.init.orthogonal_(_buffer(tensor), gain, generator=_cpu_generator(generator))
    return _write(tensor, sample, f"orthogonal(gain={gain!r})")


def apply_scheme_(
    tensor: Tensor, scheme: str, params: Mapping[str, Any], generator: torch.Generator | None = None
) -> Tensor:
    """Initialize ``tensor`` in place with ``scheme`` and validated ``params`` (not ``auto``: resolve it first)."""
    p = params
    if scheme == "zeros":
        return constant_(tensor, 0.0)
    if scheme == "ones":
        return constant_(tensor, 1.0)
    if scheme == "constant":
        return constant_(tensor, p["value"])
    if scheme == "normal":
        return normal_(tensor, p["mean"], p["std"], generator)
    if scheme == "uniform":
        return uniform_(tensor, p["a"], p["b"], generator)
    if scheme == "trunc_normal":
        return trunc_normal_(tensor, p["mean"], p["std"], p["a"], p["b"], generator)
    if scheme == "xavier_normal":
        return xavier_normal_(tensor, _gain(p), generator)
    if scheme == "xavier_uniform":
        return xavier_uniform_(tensor, _gain(p), generator)
    if scheme == "kaiming_normal":
        return kaiming_normal_(tensor, p["a"], p["mode"], p["nonlinearity"], generator)
    if scheme == "kaiming_uniform":
        return kaiming_uniform_(tensor, p["a"], p["mode"], p["nonlinearity"], generator)
    if scheme == "orthogonal":
        return orthogonal_(tensor, _gain(p), generator)
    if scheme == "lecun_normal":
        return lecun_normal_(tensor, generator)
    if scheme == "lecun_uniform":
        return lecun_uniform_(tensor, generator)
    raise ValueError(
        f"`scheme` {scheme!r} cannot be applied to a tensor directly (resolve 'auto' per layer first; 'lsuv' needs a "
        "module and a batch: lightning_init.lsuv_)."
    )


def auto_scheme(nonlinearity: str | None, a: float | None = None) -> tuple[str, dict[str, Any]]:
    """The seed's rule: the scheme and parameters ``auto`` picks for a layer followed by ``nonlinearity``.

    ``None`` / ``linear`` (followed by nothing) and ``tanh`` / ``sigmoid``: ``xavier_normal`` with gain 1 (Glorot's
    derivation assumes an activation linear around 0, gain 1 keeps the variance); ReLU family: ``kaiming_normal``
    (fan_in, leaky_relu with its slope); ``selu``: ``lecun_normal`` (what self-normalizing networks need); GELU, SiLU,
    ELU, Softplus: ``kaiming_normal`` with ReLU's gain (see :data:`RELU_SHAPED`).
    """
    if nonlinearity in ("relu", *sorted(RELU_SHAPED)):
        return "kaiming_normal", {"a": 0.0, "mode": "fan_in", "nonlinearity": "relu"}
    if nonlinearity == "leaky_relu":
        return "kaiming_normal", {"a": 0.01 if a is None else a, "mode": "fan_in", "nonlinearity": "leaky_relu"}
    if nonlinearity == "selu":
        return "lecun_normal", {}
    return "xavier_normal", {"gain": 1.0}
