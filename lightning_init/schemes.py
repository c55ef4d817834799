"""Initialization schemes: names, parameters, fan/gain helpers and in-place initializers (pure torch).

Semantics follow ``torch.nn.init``: fan-in/fan-out count a convolution's receptive field and gains come from
``torch.nn.init.calculate_gain``. Sampling is implemented here on a CPU ``torch.Generator`` (then copied to the
tensor's device and dtype), so the same seed gives the same weights on every device and torch's global RNG is never
used. This module never imports Lightning.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
from torch import Tensor

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


def _did_you_mean(value: str, options: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, options, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_choice(argument: str, value: Any, options: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``argument`` when ``value`` is not one of ``options`` (with a "did you mean")."""
    if value not in options:
        suggestion = _did_you_mean(value, options) if isinstance(value, str) else ""
        raise ValueError(f"`{argument}` must be one of {', '.join(map(repr, options))}, got {value!r}.{suggestion}")


def validate_scheme(scheme: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check a scheme name and its parameters; return the full parameter dict (defaults filled in).

    Args:
        scheme: One of :data:`SchemeName`.
        params: The scheme's parameters; ``None`` values count as "not given".

    Raises:
        ValueError: Unknown scheme (lists the valid names and suggests the closest), a parameter the scheme does not
            take, a missing required parameter or a value out of range (names the argument and the value).
    """
    check_choice("scheme", scheme, SCHEME_NAMES)
    given = {k: v for k, v in (params or {}).items() if v is not None}
    allowed = SCHEME_PARAMS[scheme]
    for key, value in given.items():
        if key not in allowed:
            takes = ", ".join(f"`{p}`" for p in sorted(allowed)) or "no parameters"
            raise ValueError(f"`{key}`={value!r} is not a parameter of scheme {scheme!r} (it takes {takes}).")
    out = {**_DEFAULTS.get(scheme, {}), **given}
    if "nonlinearity" in given:
        check_choice("nonlinearity", given["nonlinearity"], NONLINEARITIES)
    if "mode" in out:
        check_choice("mode", out["mode"], FAN_MODES)
    for key in ("std", "gain"):
        if key in given and not (math.isfinite(given[key]) and given[key] > 0):
            raise ValueError(f"`{key}` must be a finite number > 0, got {given[key]!r}.")
    for key in ("mean", "value", "a", "b"):
        if key in given and not math.isfinite(given[key]):
            raise ValueError(f"`{key}` must be a finite number, got {given[key]!r}.")
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
    def pdf(x: float) -> float:
        return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    alpha, beta = (a - mean) / std, (b - mean) / std
    z = cdf(beta) - cdf(alpha)
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
# In-place initializers: sample on a CPU generator (float64 where it matters), copy into the tensor.
# --------------------------------------------------------------------------------------------------------------------


def _cpu_generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        import os

        generator = torch.Generator()
        generator.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    return generator


def _write(tensor: Tensor, sample: Tensor) -> Tensor:
    with torch.no_grad():
        tensor.copy_(sample.reshape(tensor.shape))
    return tensor


def constant_(tensor: Tensor, value: float) -> Tensor:
    """Fill ``tensor`` with ``value`` in place."""
    with torch.no_grad():
        return tensor.fill_(value)


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` with samples of N(mean, std^2) in place."""
    sample = torch.empty(tensor.shape, dtype=torch.float64)
    sample.normal_(mean, std, generator=_cpu_generator(generator))
    return _write(tensor, sample)


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` with samples of U(a, b) in place."""
    sample = torch.empty(tensor.shape, dtype=torch.float64)
    sample.uniform_(a, b, generator=_cpu_generator(generator))
    return _write(tensor, sample)


def trunc_normal_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill ``tensor`` with N(mean, std^2) truncated to ``[a, b]`` (absolute bounds, as torch) by inverse CDF."""

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    lo, hi = cdf((a - mean) / std), cdf((b - mean) / std)
    u = torch.empty(tensor.shape, dtype=torch.float64).uniform_(
        2 * lo - 1, 2 * hi - 1, generator=_cpu_generator(generator)
    )
    sample = (torch.erfinv(u) * (std * math.sqrt(2.0)) + mean).clamp_(a, b)
    return _write(tensor, sample)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Glorot normal: N(0, gain^2 * 2 / (fan_in + fan_out)) in place."""
    fan_in, fan_out = fans(tensor.shape)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Glorot uniform: U(-gain * sqrt(6 / (fan_in + fan_out)), +...) in place."""
    fan_in, fan_out = fans(tensor.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def _kaiming_std(tensor: Tensor, a: float, mode: str, nonlinearity: str) -> float:
    check_choice("mode", mode, FAN_MODES)
    fan_in, fan_out = fans(tensor.shape)
    return gain_of(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def kaiming_normal_(
    tensor: Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """He normal: N(0, gain^2 / fan) in place (``fan`` chosen by ``mode``, gain by ``nonlinearity`` and ``a``)."""
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity), generator)


def kaiming_uniform_(
    tensor: Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """He uniform: U(-gain * sqrt(3 / fan), +...) in place."""
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, generator)


def lecun_normal_(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """LeCun normal: N(0, 1 / fan_in) in place (plain normal, so the std is exactly ``1/sqrt(fan_in)``)."""
    return normal_(tensor, 0.0, 1.0 / math.sqrt(fans(tensor.shape)[0]), generator)


def lecun_uniform_(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """LeCun uniform: U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)) in place."""
    bound = math.sqrt(3.0 / fans(tensor.shape)[0])
    return uniform_(tensor, -bound, bound, generator)


def orthogonal_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """(Semi-)orthogonal matrix times ``gain`` in place (tensor flattened to ``(rows, -1)``; QR of a Gaussian)."""
    if tensor.ndim < 2:
        raise ValueError(f"Orthogonal init needs a tensor with at least 2 dimensions, got shape {tuple(tensor.shape)}.")
    rows = tensor.shape[0]
    cols = tensor.numel() // rows
    flat = torch.empty(rows, cols, dtype=torch.float64).normal_(0.0, 1.0, generator=_cpu_generator(generator))
    if rows < cols:
        flat = flat.t()
    q, r = torch.linalg.qr(flat)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # uniform (Haar) distribution
    if rows < cols:
        q = q.t()
    return _write(tensor, q * gain)


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
