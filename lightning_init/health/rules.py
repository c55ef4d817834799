"""Health rules: per-layer statistics -> findings (vanishing, exploding, dead, saturated, NaN/Inf, symmetric).

Pure functions over host-side tables ``{name: {stat: value}}`` ordered from input to output, as the monitors hand
them over after each logging step. Never imports Lightning.

A rule whose statistics are missing from the table (the user chose not to log them) does not fire; NaN inputs do
not fire the threshold rules (they are what the ``nonfinite`` rule reports).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

from lightning_init.activations import BOUNDED, RELU_LIKE
from lightning_init.health.thresholds import (
    _INF,
    DEAD_FRACTION,
    EXPLODING_ACTIVATION_RATIO,
    EXPLODING_GRAD_GROWTH,
    EXPLODING_GRAD_NORM,
    SATURATED_FRACTION,
    SYMMETRIC_SPREAD,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    VANISHING_ACTIVATION_RATIO,
    VANISHING_GRAD_FLOOR,
    VANISHING_GRAD_RATIO,
    _validate_activations,
    _validate_grads,
    _validate_weights,
)
from lightning_init.roles import is_bias_name

__all__ = [
    "KINDS",
    "RULES",
    "RULES_BY_KIND",
    "Finding",
    "HealthError",
    "Kind",
    "OnAnomaly",
    "Rule",
    "check_activations",
    "check_grads",
    "check_weights",
    "merge_findings",
]

Rule = Literal[
    "vanishing_grad",
    "exploding_grad",
    "vanishing_activation",
    "exploding_activation",
    "dead",
    "saturated",
    "nonfinite",
    "symmetric",
    "update_ratio",
]
#: Every rule name, in documentation order.
RULES: tuple[Rule, ...] = get_args(Rule)

#: What a table describes; the prefixes of the monitors' tags (``weight_std``, ``grad_norm``, ``activation_std``).
Kind = Literal["weight", "grad", "activation"]
KINDS: tuple[Kind, ...] = get_args(Kind)

#: What a monitor does on a finding: warn once per (rule, layer), stop training gracefully, or raise HealthError.
OnAnomaly = Literal["warn", "stop", "raise"]

#: The rules each check function can fire.
RULES_BY_KIND: dict[Kind, tuple[Rule, ...]] = {
    "weight": ("nonfinite", "symmetric", "update_ratio"),
    "grad": ("nonfinite", "vanishing_grad", "exploding_grad"),
    "activation": ("nonfinite", "vanishing_activation", "exploding_activation", "dead", "saturated"),
}

_KIND_WORD: dict[Kind, str] = {"weight": "weights", "grad": "gradients", "activation": "activations"}


@dataclass(frozen=True)
class Finding:
    """One verdict.

    Attributes:
        rule: which rule fired (the ``{rule}`` of the ``health/{rule}`` tag).
        kind: ``"weight"``, ``"grad"`` or ``"activation"``.
        layers: the flagged parameter or module names (one for a check function's findings; several after
            :func:`merge_findings`).
        measure: what ``value`` is, in words (e.g. ``"zero fraction"``); findings with the same ``rule`` and
            ``measure`` compare ``value`` against ``threshold`` the same way.
        value: the measured value (the worst one after merging).
        threshold: the threshold it crossed.
        step: the optimizer step the statistics describe.
        message: the warning text users see.
    """

    rule: Rule
    kind: Kind
    layers: tuple[str, ...]
    measure: str
    value: float
    threshold: float
    step: int
    message: str


class HealthError(RuntimeError):
    """Raised by the monitors with ``on_anomaly="raise"``; ``finding`` holds the verdict, its message is the text."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.finding,))


class _Case(NamedTuple):
    rule: Rule
    headline: str  # "{kind}" is replaced by the kind's word
    op: str  # how value compares to threshold when the rule fires ("" = no threshold: the value is not finite)
    remedy: str


_REMEDY_VANISHING = (
    "The signal shrinks layer after layer: use Kaiming (He) init for ReLU layers and Xavier (Glorot) init for "
    "tanh/sigmoid layers instead of a too-small std, or add normalization / residual connections."
)
_REMEDY_EXPLODING = (
    "The signal grows layer after layer: use Kaiming (He) init for ReLU layers and Xavier (Glorot) init for "
    "tanh/sigmoid layers instead of a too-large std, lower the learning rate, or clip gradients "
    "(Trainer(gradient_clip_val=1.0))."
)
_REMEDY_NONFINITE = (
    "Training has diverged or the data/loss produce NaN/Inf: lower the learning rate, clip gradients "
    "(Trainer(gradient_clip_val=1.0)), check inputs and the loss (log/division by zero), or use a more stable "
    "precision."
)

_CASES: dict[tuple[Rule, str], _Case] = {}


def _case(rule: Rule, measure: str, headline: str, op: str, remedy: str) -> str:
    _CASES[(rule, measure)] = _Case(rule, headline, op, remedy)
    return measure


_M_GRAD_RELATIVE = _case(
    "vanishing_grad", "grad norm relative to the largest deeper layer's", "vanishing gradients", "<", _REMEDY_VANISHING
)
_M_GRAD_FLOOR = _case("vanishing_grad", "grad norm", "vanishing gradients", "<", _REMEDY_VANISHING)
_M_GRAD_CEILING = _case("exploding_grad", "grad norm (ceiling)", "exploding gradients", ">", _REMEDY_EXPLODING)
_M_GRAD_GROWTH = _case(
    "exploding_grad", "grad norm relative to the smallest deeper layer's", "exploding gradients", ">", _REMEDY_EXPLODING
)
_M_ACT_VANISHING = _case(
    "vanishing_activation",
    "activation std relative to the first layer's",
    "vanishing activations",
    "<",
    _REMEDY_VANISHING,
)
_M_ACT_EXPLODING = _case(
    "exploding_activation",
    "activation std relative to the first layer's",
    "exploding activations",
    ">",
    _REMEDY_EXPLODING,
)
_M_DEAD = _case(
    "dead",
    "zero fraction",
    "dead ReLU units",
    ">",
    "Most outputs are exactly zero, so no gradient flows through them: use Kaiming (He) init for ReLU layers, avoid "
    "large negative biases, lower the learning rate, or try LeakyReLU.",
)
_M_SATURATED = {
    nl: _case(
        "saturated",
        f"fraction of {nl} outputs at the bounds",
        f"saturated {nl} units",
        ">",
        f"{nl} outputs pinned at their bounds have almost zero gradient: use Xavier (Glorot) init for tanh/sigmoid "
        "layers instead of a too-large std, or normalize the inputs.",
    )
    for nl in BOUNDED
}
_M_NONFINITE = _case("nonfinite", "NaN/Inf count", "NaN/Inf {kind}", ">", _REMEDY_NONFINITE)
_M_NONFINITE_ABSMAX = _case("nonfinite", "abs max", "NaN/Inf {kind}", "", _REMEDY_NONFINITE)
_M_SYMMETRIC = _case(
    "symmetric",
    "row spread (0 = all output units identical)",
    "symmetric units",
    "<=",
    "Every output unit has the same weights, so all of them compute and learn the same thing: initialize weights "
    "with non-zero random values (Kaiming for ReLU, Xavier for tanh/sigmoid), never zeros or a constant.",
)
_M_UPDATE_LOW = _case(
    "update_ratio",
    "update ratio ||dw||/||w|| (healthy ~1e-3; too small)",
    "update ratio too small (frozen learning)",
    "<",
    "The weights barely move: raise the learning rate, or check for vanishing gradients upstream.",
)
_M_UPDATE_HIGH = _case(
    "update_ratio",
    "update ratio ||dw||/||w|| (healthy ~1e-3; too large)",
    "update ratio too large (unstable learning)",
    ">",
    "The weights change too much per step: lower the learning rate, use warmup, or clip gradients.",
)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _layers_text(layers: Sequence[str], limit: int = 8) -> str:
    if len(layers) == 1:
        return layers[0]
    shown = ", ".join(layers[:limit])
    more = f", ... and {len(layers) - limit} more" if len(layers) > limit else ""
    return f"{len(layers)} layers ({shown}{more})"


def _build(
    rule: Rule,
    kind: Kind,
    layers: Sequence[str],
    measure: str,
    value: float,
    threshold: float,
    step: int,
    note: str = "",
) -> Finding:
    case = _CASES[(rule, measure)]
    headline = case.headline.format(kind=_KIND_WORD[kind])
    value_text = _fmt(value) + (f" ({note})" if note else "")
    verdict = f"{case.op} threshold {_fmt(threshold)}" if case.op else "(not finite)"
    message = f"{headline} in {_layers_text(layers)} at step {step}: {measure} = {value_text} {verdict}. {case.remedy}"
    return Finding(rule, kind, tuple(layers), measure, float(value), float(threshold), int(step), message)


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Merge findings of the same ``(rule, kind, measure, threshold, step)`` into one naming all their layers.

    ``value`` becomes the worst value (furthest past the threshold) and the message names the layer it came from.
    Order of first appearance is kept; a group of one is returned unchanged.
    """
    groups: dict[tuple[Any, ...], list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.rule, f.kind, f.measure, f.threshold, f.step), []).append(f)
    out: list[Finding] = []
    for (rule, kind, measure, threshold, step), members in groups.items():
        if len(members) == 1:
            out.append(members[0])
            continue
        op = _CASES[(rule, measure)].op
        pick = min if op in ("<", "<=") else max
        worst = pick(members, key=lambda f: f.value if not math.isnan(f.value) else -math.inf)
        layers = tuple(name for f in members for name in f.layers)
        out.append(_build(rule, kind, layers, measure, worst.value, threshold, step, f"worst: {worst.layers[0]}"))
    return out


# ---------------------------------------------------------------------------------------------------- rules


def _get(row: Mapping[str, float], stat: str) -> float | None:
    v = row.get(stat)
    return None if v is None else float(v)


def _is_bias(name: str) -> bool:
    return is_bias_name(name)


def _nonfinite(kind: Kind, name: str, row: Mapping[str, float], step: int) -> Finding | None:
    count = _get(row, "nonfinite")
    if count is not None:
        if count > 0 or math.isnan(count):
            return _build("nonfinite", kind, (name,), _M_NONFINITE, count, 0.0, step)
        return None
    abs_max = _get(row, "abs_max")
    if abs_max is not None and not math.isfinite(abs_max):
        return _build("nonfinite", kind, (name,), _M_NONFINITE_ABSMAX, abs_max, _INF, step)
    return None


def check_weights(
    table: Mapping[str, Mapping[str, float]],
    *,
    step: int,
    symmetric_spread: float = SYMMETRIC_SPREAD,
    update_ratio_low: float = UPDATE_RATIO_LOW,
    update_ratio_high: float = UPDATE_RATIO_HIGH,
) -> list[Finding]:
    """Judge a weight table ``{parameter: {stat: value}}`` (stats of the weight monitor).

    Rules (see :class:`HealthThresholds` for the defaults' reasons):

    - ``nonfinite``: ``nonfinite`` > 0 when logged, else ``abs_max`` is NaN/Inf.
    - ``symmetric``: ``row_spread <= symmetric_spread`` (``row_spread`` is NaN, so never fires, for 1-D and
      single-row parameters such as biases).
    - ``update_ratio``: ``0 < update_ratio < update_ratio_low`` (frozen) or ``update_ratio > update_ratio_high``
      (unstable). Not judged: parameters named ``*.bias`` (zero-initialized biases have huge ratios early on),
      parameters whose ``norm`` is 0, a ratio of exactly 0 (learning rate 0, parameter not in the optimizer, skipped
      step: intentional more often than not) and non-finite ratios.

    Returns:
        One finding per (rule, parameter), in table order.
    """
    _validate_weights(symmetric_spread, update_ratio_low, update_ratio_high)
    out: list[Finding] = []
    for name, row in table.items():
        bad = _nonfinite("weight", name, row, step)
        if bad is not None:
            out.append(bad)
            continue
        spread = _get(row, "row_spread")
        if spread is not None and spread <= symmetric_spread:
            out.append(_build("symmetric", "weight", (name,), _M_SYMMETRIC, spread, symmetric_spread, step))
        ratio = _get(row, "update_ratio")
        norm = _get(row, "norm")
        if ratio is None or _is_bias(name) or norm == 0.0 or not math.isfinite(ratio) or ratio == 0.0:
            continue
        if ratio < update_ratio_low:
            out.append(_build("update_ratio", "weight", (name,), _M_UPDATE_LOW, ratio, update_ratio_low, step))
        elif ratio > update_ratio_high:
            out.append(_build("update_ratio", "weight", (name,), _M_UPDATE_HIGH, ratio, update_ratio_high, step))
    return out


def check_grads(
    table: Mapping[str, Mapping[str, float]],
    *,
    step: int,
    vanishing_grad_ratio: float = VANISHING_GRAD_RATIO,
    vanishing_grad_floor: float = VANISHING_GRAD_FLOOR,
    exploding_grad_norm: float = EXPLODING_GRAD_NORM,
    exploding_grad_growth: float = EXPLODING_GRAD_GROWTH,
) -> list[Finding]:
    """Judge a gradient table ``{parameter: {stat: value}}`` ordered input -> output (a ``"total"`` row is ignored).

    Depth profiles compare biases with biases and the other parameters with each other (a bias gradient is
    naturally smaller than its weight's). With ``n_i`` the ``norm`` of parameter ``i``:

    - ``nonfinite``: ``nonfinite`` > 0 when logged, else ``abs_max`` NaN/Inf; such a parameter is judged by no other
      rule and left out of the profiles.
    - ``vanishing_grad``: ``n_i < vanishing_grad_ratio * max(n_j, j deeper than i)`` (the gradient shrank on its
      way back to the input), or ``n_i < vanishing_grad_floor``.
    - ``exploding_grad``: ``n_i > exploding_grad_norm``, or ``n_i > exploding_grad_growth * min(n_j, j deeper)``
      over positive ``n_j`` (it grew on its way back to the input).

    Returns:
        One finding per (rule, measure, parameter), in table order.
    """
    _validate_grads(vanishing_grad_ratio, vanishing_grad_floor, exploding_grad_norm, exploding_grad_growth)
    out: list[Finding] = []
    groups: dict[bool, list[tuple[str, float]]] = {True: [], False: []}
    for name, row in table.items():
        if name == "total":
            continue
        bad = _nonfinite("grad", name, row, step)
        if bad is not None:
            out.append(bad)
            continue
        norm = _get(row, "norm")
        if norm is None or math.isnan(norm):
            continue
        if norm > exploding_grad_norm:
            out.append(_build("exploding_grad", "grad", (name,), _M_GRAD_CEILING, norm, exploding_grad_norm, step))
        elif norm < vanishing_grad_floor:
            out.append(_build("vanishing_grad", "grad", (name,), _M_GRAD_FLOOR, norm, vanishing_grad_floor, step))
        groups[_is_bias(name)].append((name, norm))
    for members in groups.values():
        deeper_max, deeper_min = -_INF, _INF
        flagged: list[Finding] = []
        for name, norm in reversed(members):
            if deeper_max > 0 and math.isfinite(deeper_max) and norm < vanishing_grad_ratio * deeper_max:
                flagged.append(
                    _build(
                        "vanishing_grad",
                        "grad",
                        (name,),
                        _M_GRAD_RELATIVE,
                        norm / deeper_max,
                        vanishing_grad_ratio,
                        step,
                    )
                )
            elif math.isfinite(deeper_min) and norm > exploding_grad_growth * deeper_min:
                flagged.append(
                    _build(
                        "exploding_grad",
                        "grad",
                        (name,),
                        _M_GRAD_GROWTH,
                        norm / deeper_min,
                        exploding_grad_growth,
                        step,
                    )
                )
            deeper_max = max(deeper_max, norm)
            if norm > 0:
                deeper_min = min(deeper_min, norm)
        out.extend(reversed(flagged))
    order = {name: i for i, name in enumerate(table)}
    out.sort(key=lambda f: order[f.layers[0]])  # stable: table order, then absolute before depth-profile rules
    return out


def check_activations(
    table: Mapping[str, Mapping[str, float]],
    nonlinearities: Mapping[str, str | None],
    *,
    step: int,
    vanishing_activation_ratio: float = VANISHING_ACTIVATION_RATIO,
    exploding_activation_ratio: float = EXPLODING_ACTIVATION_RATIO,
    dead_fraction: float = DEAD_FRACTION,
    saturated_fraction: float = SATURATED_FRACTION,
) -> list[Finding]:
    """Judge an activation table ``{module: {stat: value}}`` ordered input -> output.

    ``nonlinearities`` maps a module name to its nonlinearity (``lightning_init.activations.nonlinearity_of``);
    ``None`` or absent means a parameterized layer (``Linear``, ``Conv``...), over which the depth profile is taken.

    - ``nonfinite``: ``nonfinite`` > 0 when logged, else ``abs_max`` NaN/Inf (no other rule for that module).
    - ``vanishing_activation`` / ``exploding_activation``: ``std`` of a parameterized layer divided by the ``std`` of
      the first parameterized layer (with a finite, positive std) below ``vanishing_activation_ratio`` / above
      ``exploding_activation_ratio``; the deepest layer is the one the seed's claim is about, every layer past the
      bound is counted.
    - ``dead``: ``zero_fraction > dead_fraction`` on a ReLU-like module (``activations.RELU_LIKE``).
    - ``saturated``: ``saturation > saturated_fraction`` on a bounded module (``activations.BOUNDED``: tanh, sigmoid).

    Returns:
        One finding per (rule, module), in table order.
    """
    _validate_activations(vanishing_activation_ratio, exploding_activation_ratio, dead_fraction, saturated_fraction)
    out: list[Finding] = []
    first: tuple[str, float] | None = None
    for name, row in table.items():
        bad = _nonfinite("activation", name, row, step)
        if bad is not None:
            out.append(bad)
            continue
        nl = nonlinearities.get(name)
        if nl is None:
            std = _get(row, "std")
            if std is None or math.isnan(std):
                continue
            if first is None:
                if math.isfinite(std) and std > 0:
                    first = (name, std)
                continue
            ratio = std / first[1]
            note = f"{_fmt(std)} vs {_fmt(first[1])} at {first[0]}"
            if ratio < vanishing_activation_ratio:
                out.append(
                    _build(
                        "vanishing_activation",
                        "activation",
                        (name,),
                        _M_ACT_VANISHING,
                        ratio,
                        vanishing_activation_ratio,
                        step,
                        note,
                    )
                )
            elif ratio > exploding_activation_ratio:
                out.append(
                    _build(
                        "exploding_activation",
                        "activation",
                        (name,),
                        _M_ACT_EXPLODING,
                        ratio,
                        exploding_activation_ratio,
                        step,
                        note,
                    )
                )
        elif nl in RELU_LIKE:
            zero = _get(row, "zero_fraction")
            if zero is not None and zero > dead_fraction:
                out.append(_build("dead", "activation", (name,), _M_DEAD, zero, dead_fraction, step))
        elif nl in _M_SATURATED:
            sat = _get(row, "saturation")
            if sat is not None and sat > saturated_fraction:
                out.append(_build("saturated", "activation", (name,), _M_SATURATED[nl], sat, saturated_fraction, step))
    return out
