"""Health thresholds: every threshold once, with its valid range and the reason for its default.

:class:`HealthThresholds` is the validated, YAML-friendly object the monitors accept. Each field is declared once, in
:data:`THRESHOLDS` (default, valid interval, reason); the dataclass fields, the module-level default constants, the
validation messages and the README's threshold table all come from that declaration. Pure Python; never imports
Lightning or torch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from lightning_init.checks import did_you_mean, received

if TYPE_CHECKING:
    from lightning_init.health.rules import Context, Finding, Kind

__all__ = [
    "DEAD_FRACTION",
    "EXPLODING_ACTIVATION_RATIO",
    "EXPLODING_BACKPROP_GROWTH",
    "EXPLODING_GRAD_GROWTH",
    "EXPLODING_GRAD_NORM",
    "GRAD_ZERO_RATIO",
    "GRAD_ZERO_SCALE_RATIO",
    "OUTPUT_LOSS_RATIO",
    "OVERFLOW_FRACTION",
    "SATURATED_FRACTION",
    "SYMMETRIC_SPREAD",
    "THRESHOLDS",
    "UNDERFLOW_FRACTION",
    "UPDATE_RATIO_HIGH",
    "UPDATE_RATIO_LOW",
    "VANISHING_ACTIVATION_RATIO",
    "VANISHING_BACKPROP_RATIO",
    "VANISHING_GRAD_FLOOR",
    "VANISHING_GRAD_RATIO",
    "HealthThresholds",
    "Threshold",
]

_INF = math.inf


class Threshold(NamedTuple):
    """One threshold: its default, its valid interval and why the default is what it is."""

    name: str
    default: float
    low: float
    high: float
    low_open: bool
    high_open: bool
    reason: str

    @property
    def interval(self) -> str:
        """The valid interval in words, e.g. ``[0, 1)``."""
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, value: Any) -> float:
        """``value`` as a float, or ValueError naming the threshold, the interval and the value."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"`{self.name}` must be a number, got {value!r}")
        v = float(value)
        bad_low = v <= self.low if self.low_open else v < self.low
        bad_high = v >= self.high if self.high_open else v > self.high
        if bad_low or bad_high:
            raise ValueError(f"`{self.name}` must be in {self.interval}, got {value!r}")
        return v


def _t(
    name: str, default: float, low: float, high: float, reason: str, *, lo: bool = False, ho: bool = False
) -> Threshold:
    return Threshold(name, default, low, high, lo, ho, reason)


#: Every threshold, in documentation order.
THRESHOLDS: tuple[Threshold, ...] = (
    _t(
        "vanishing_grad_ratio",
        1e-4,
        0.0,
        1.0,
        "a gradient norm this many times smaller than the median of the deeper gradients of its group (weights, "
        "biases, norm parameters, embeddings, free parameters: each compared with its own kind) is vanishing: "
        "under SGD such a parameter learns 10,000x slower than its peers; a 12-layer ReLU MLP under Xavier (a mild, "
        "harmless decay) stays above 2e-2, under normal(std=0.01) the input side falls to 1e-10.",
        ho=True,
    ),
    _t(
        "vanishing_grad_floor",
        1e-9,
        0.0,
        _INF,
        "an absolute gradient norm this small is vanishing: below float32 resolution for weights of order 1e-1 under "
        "any learning rate < 1 (catches profiles that are flat but tiny, as the weight gradients of a deep "
        "normal(std=0.01) net are: ~3e-11 for every layer). Structurally zero gradients are not judged.",
        ho=True,
    ),
    _t(
        "exploding_grad_norm",
        1e4,
        0.0,
        _INF,
        "an absolute gradient norm above this explodes: Kaiming-initialized MLPs show norms of order 1-10; a "
        "normal(std=1.0) 12-layer ReLU MLP shows ~1e11.",
        lo=True,
    ),
    _t(
        "exploding_grad_growth",
        1e4,
        1.0,
        _INF,
        "a gradient norm this many times larger than the median of the deeper gradients of its group explodes "
        "(mirror of vanishing_grad_ratio).",
        lo=True,
    ),
    _t(
        "grad_zero_ratio",
        1e-5,
        0.0,
        1.0,
        "a bias-like gradient (bias, norm shift) this many times smaller than the gradient of its own module's weight "
        "is zero up to float noise: a sum of terms that cancel by construction (the bias of a layer feeding a "
        "train-mode BatchNorm, an attention key bias under softmax's shift invariance) leaves ~1e-7 of its weight's "
        "gradient in float32 (measured 1e-8..4e-7 on BERT, MobileNetV3, EfficientNet); genuine bias gradients are "
        "above 5e-2 of their weight's on every zoo model, vanishing ones included. Reported once as `grad_zero` "
        "(information), not judged as vanishing.",
        ho=True,
    ),
    _t(
        "grad_zero_scale_ratio",
        1e-2,
        0.0,
        1.0,
        "a norm's scale (gamma) gradient this many times smaller than its shift (beta) gradient is structurally "
        "zero: for a unit-variance normalized input the two are of the same order (0.37-2.2 on every zoo model), so "
        "a gamma gradient 100x smaller means the loss does not depend on gamma's scale (a norm before a ReLU, which "
        "is positively homogeneous, into a per-channel linear map into a train-mode norm: MobileNetV3's ReLU blocks, "
        "1.3e-3 under their own init, 2.5e-5 under auto), up to the norm's eps. Reported as `grad_zero`.",
        ho=True,
    ),
    _t(
        "vanishing_activation_ratio",
        1e-2,
        0.0,
        1.0,
        "the signal std of a layer output relative to the first judged layer's below this vanishes: Kaiming keeps "
        "the ratio near 1, Xavier on a 12-layer ReLU net ~2e-2.",
        ho=True,
    ),
    _t(
        "exploding_activation_ratio",
        1e2,
        1.0,
        _INF,
        "the same ratio above this explodes.",
        lo=True,
    ),
    _t(
        "dead_fraction",
        0.9,
        0.0,
        1.0,
        "zero_fraction above this after a ReLU is dead (a healthy ReLU zeroes ~0.5).",
    ),
    _t(
        "saturated_fraction",
        0.5,
        0.0,
        1.0,
        "saturation above this after tanh/sigmoid is saturated: Xavier tanh nets have ~0 outputs at the bounds, a "
        "normal(std=1.0) width-256 tanh net ~0.9.",
    ),
    _t(
        "output_loss_ratio",
        2.0,
        1.0,
        _INF,
        "the training loss above this many times ln(classes) (chance level of a classifier's cross-entropy), while "
        "the logits' signal std exceeds sqrt(2 (ratio - 1) ln(classes)) (the excess loss of Gaussian logits of std s "
        "is ~s^2/2): the outputs are far too large, the softmax is confidently wrong. A healthy init starts at ~1x "
        "chance (GPT-2 tiny: 4.6 vs ln 100 = 4.6); GPT-2 with an N(0, 1) tied embedding starts at 13x.",
        lo=True,
    ),
    _t(
        "vanishing_backprop_ratio",
        1e-3,
        0.0,
        1.0,
        "||dL/dh|| of a layer's output this many times smaller than a deeper layer's is vanishing: theory keeps it "
        "constant across depth (exactly under orthogonal weights, in expectation under fan-in scaled init: "
        "E||W^T g||^2 = fan_in * Var(W) * ||g||^2); the healthy architectures lose at most ~1 decade (a global average "
        "pool over P positions divides it by sqrt(P): 1/7 over 7x7), a 20-layer normal(std=0.01) net ~1e-20.",
        ho=True,
    ),
    _t(
        "exploding_backprop_growth",
        1e3,
        1.0,
        _INF,
        "the same ratio above this (against the smallest deeper layer's) explodes.",
        lo=True,
    ),
    _t(
        "underflow_fraction",
        1e-2,
        0.0,
        1.0,
        "under 16-bit precision, a tensor with more than this fraction of its elements below the format's smallest "
        "normal underflows: a unit Gaussian has a fraction 1.6 * tiny there (1e-4 for float16), a loss-scaled fp16 "
        "gradient ~0; unscaled fp16 gradients of ~1e-5 sit there entirely.",
    ),
    _t(
        "overflow_fraction",
        0.0,
        0.0,
        1.0,
        "a tensor with more than this fraction of its elements above half the format's largest value overflows: a "
        "single such element is one doubling from inf.",
    ),
    _t(
        "symmetric_spread",
        1e-6,
        0.0,
        1.0,
        "row_spread at or below this is symmetric: zero/constant init gives 0 (or a float32 rounding residue ~1e-7), "
        "random init gives order 1.",
        ho=True,
    ),
    _t(
        "update_ratio_low",
        1e-6,
        0.0,
        _INF,
        "a non-zero update ratio ||dw||/||w|| below this is frozen: three decades under the healthy ~1e-3.",
        ho=True,
    ),
    _t(
        "update_ratio_high",
        1e-1,
        0.0,
        _INF,
        "an update above this fraction of the parameter's scale per step is unstable (10% per step). The scale is "
        "the larger of the parameter's norm and its unit-scale norm (a weight passing a unit signal: RMS "
        "1/sqrt(fan_in); a gamma, shift, embedding or free parameter: RMS 1), so a parameter initialized at ~0 by "
        "design (class token, zero gamma) is not unstable on its first updates.",
        lo=True,
    ),
)
_BY_NAME: dict[str, Threshold] = {t.name: t for t in THRESHOLDS}

# Defaults as module constants (the monitors' signatures use them).
VANISHING_GRAD_RATIO = _BY_NAME["vanishing_grad_ratio"].default
VANISHING_GRAD_FLOOR = _BY_NAME["vanishing_grad_floor"].default
EXPLODING_GRAD_NORM = _BY_NAME["exploding_grad_norm"].default
EXPLODING_GRAD_GROWTH = _BY_NAME["exploding_grad_growth"].default
GRAD_ZERO_RATIO = _BY_NAME["grad_zero_ratio"].default
GRAD_ZERO_SCALE_RATIO = _BY_NAME["grad_zero_scale_ratio"].default
VANISHING_ACTIVATION_RATIO = _BY_NAME["vanishing_activation_ratio"].default
EXPLODING_ACTIVATION_RATIO = _BY_NAME["exploding_activation_ratio"].default
DEAD_FRACTION = _BY_NAME["dead_fraction"].default
SATURATED_FRACTION = _BY_NAME["saturated_fraction"].default
OUTPUT_LOSS_RATIO = _BY_NAME["output_loss_ratio"].default
SYMMETRIC_SPREAD = _BY_NAME["symmetric_spread"].default
UPDATE_RATIO_LOW = _BY_NAME["update_ratio_low"].default
UPDATE_RATIO_HIGH = _BY_NAME["update_ratio_high"].default
VANISHING_BACKPROP_RATIO = _BY_NAME["vanishing_backprop_ratio"].default
EXPLODING_BACKPROP_GROWTH = _BY_NAME["exploding_backprop_growth"].default
UNDERFLOW_FRACTION = _BY_NAME["underflow_fraction"].default
OVERFLOW_FRACTION = _BY_NAME["overflow_fraction"].default


def _validate(values: Mapping[str, Any]) -> dict[str, float]:
    """Check each given threshold against its interval (and the cross-field constraints); returns floats."""
    out = {}
    for name, value in values.items():
        spec = _BY_NAME.get(name)
        if spec is None:
            raise ValueError(f"unknown threshold `{name}`; valid: {sorted(_BY_NAME)}")
        out[name] = spec.check(value)
    low = out.get("update_ratio_low", UPDATE_RATIO_LOW)
    high = out.get("update_ratio_high", UPDATE_RATIO_HIGH)
    if high <= low:
        raise ValueError(
            "`update_ratio_high` must be greater than `update_ratio_low`, got "
            f"{values.get('update_ratio_high', high)!r} <= {values.get('update_ratio_low', low)!r}"
        )
    return out


@dataclass(frozen=True)
class HealthThresholds:
    """Every health threshold in one validated, YAML-friendly object (plain floats; ``0``/``.inf`` disable a bound).

    The reason for each default and its valid interval are declared once in :data:`THRESHOLDS` (and printed in the
    README's rule table):

    Args:
        vanishing_grad_ratio: gradient norm relative to its group's median below which it is vanishing (``1e-4``).
        vanishing_grad_floor: absolute gradient norm below which it is vanishing (``1e-9``).
        exploding_grad_norm: absolute gradient norm above which it explodes (``1e4``).
        exploding_grad_growth: gradient norm relative to its group's median above which it explodes (``1e4``).
        grad_zero_ratio: bias-like gradient relative to its module's weight gradient below which it is structurally
            zero, information only (``1e-5``).
        grad_zero_scale_ratio: a norm's gamma gradient relative to its beta gradient below which it is structurally
            zero, information only (``1e-2``).
        vanishing_activation_ratio: signal std relative to the first judged layer's below which it vanishes
            (``1e-2``).
        exploding_activation_ratio: the same ratio above which it explodes (``1e2``).
        dead_fraction: ``zero_fraction`` after a ReLU above which it is dead (``0.9``).
        saturated_fraction: ``saturation`` after tanh/sigmoid above which it is saturated (``0.5``).
        output_loss_ratio: training loss in units of ``ln(classes)`` above which (with large logits) the output
            scale is wrong (``2``).
        vanishing_backprop_ratio: ``||dL/dh||`` relative to the largest deeper layer's below which the backprop
            signal vanishes (``1e-3``).
        exploding_backprop_growth: the same against the smallest deeper layer's above which it explodes (``1e3``).
        underflow_fraction: fraction of a 16-bit tensor below the format's smallest normal above which it
            underflows (``1e-2``).
        overflow_fraction: fraction above half the format's largest value above which it overflows (``0``).
        symmetric_spread: ``row_spread`` at or below which a weight is symmetric (``1e-6``).
        update_ratio_low: non-zero update ratio below which learning is frozen (``1e-6``).
        update_ratio_high: update relative to the parameter's scale above which learning is unstable (``1e-1``).

    Raises:
        ValueError: naming the argument and the value when a threshold is out of its range.

    Example::

        from lightning_init import GradientMonitor, HealthThresholds

        strict = HealthThresholds(vanishing_grad_ratio=1e-3)
        monitor = GradientMonitor(thresholds=strict)
    """

    vanishing_grad_ratio: float = VANISHING_GRAD_RATIO
    vanishing_grad_floor: float = VANISHING_GRAD_FLOOR
    exploding_grad_norm: float = EXPLODING_GRAD_NORM
    exploding_grad_growth: float = EXPLODING_GRAD_GROWTH
    grad_zero_ratio: float = GRAD_ZERO_RATIO
    grad_zero_scale_ratio: float = GRAD_ZERO_SCALE_RATIO
    vanishing_activation_ratio: float = VANISHING_ACTIVATION_RATIO
    exploding_activation_ratio: float = EXPLODING_ACTIVATION_RATIO
    dead_fraction: float = DEAD_FRACTION
    saturated_fraction: float = SATURATED_FRACTION
    output_loss_ratio: float = OUTPUT_LOSS_RATIO
    vanishing_backprop_ratio: float = VANISHING_BACKPROP_RATIO
    exploding_backprop_growth: float = EXPLODING_BACKPROP_GROWTH
    underflow_fraction: float = UNDERFLOW_FRACTION
    overflow_fraction: float = OVERFLOW_FRACTION
    symmetric_spread: float = SYMMETRIC_SPREAD
    update_ratio_low: float = UPDATE_RATIO_LOW
    update_ratio_high: float = UPDATE_RATIO_HIGH

    def __post_init__(self) -> None:
        _validate({name: getattr(self, name) for name in _BY_NAME})

    def replace(self, **changes: float) -> HealthThresholds:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def check(
        self,
        kind: Kind,
        table: Mapping[str, Mapping[str, float]],
        *,
        step: int,
        nonlinearities: Mapping[str, str | None] | None = None,
        context: Context | None = None,
    ) -> list[Finding]:
        """Judge ``table`` (a table of ``kind``) with these thresholds: :func:`lightning_init.health.rules.evaluate`."""
        from lightning_init.health.rules import evaluate  # rules import this module

        return evaluate(kind, table, self, step=step, nonlinearities=nonlinearities, context=context)


_dataclass_init = HealthThresholds.__init__


@functools.wraps(_dataclass_init)
def _checked_init(self: HealthThresholds, *args: Any, **kwargs: Any) -> None:
    """The dataclass ``__init__``, refusing a misspelled threshold with the valid names and a "did you mean"."""
    for key, value in kwargs.items():
        if key not in _FIELD_NAMES:
            raise TypeError(
                f"HealthThresholds got an unknown threshold `{key}` (value {received(value)}); valid: "
                f"{', '.join(_FIELD_NAMES)}.{did_you_mean(key, _FIELD_NAMES)}"
            )
    _dataclass_init(self, *args, **kwargs)


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HealthThresholds))
HealthThresholds.__init__ = _checked_init  # type: ignore[method-assign]
assert {f.name for f in dataclasses.fields(HealthThresholds)} == set(_BY_NAME)  # one declaration, one field each
