"""Health rules: per-layer statistics -> findings (vanishing, exploding, dead, saturated, NaN/Inf, symmetric, ...).

The rules are one declarative table, :data:`RULE_TABLE`: each :class:`RuleSpec` names the rule, the kind of table it
judges, the statistic, the comparison, the :class:`~lightning_init.health.thresholds.HealthThresholds` field, the
rows it applies to and the remedy. Validation (the threshold's interval), the comparison, the operator printed in
messages and the README row all come from that entry. A table is evaluated vectorized: every statistic becomes a
numpy array over the rows (:func:`frame`), each entry one array comparison. The depth-profile statistics (a
gradient relative to the median of its group, an activation relative to the first judged layer, a bias gradient
relative to its weight's) are functions over those arrays.

Truth on real architectures (issue 11):

- a gradient that is structurally zero (exactly zero, or a bias-like gradient below ``grad_zero_ratio`` of its own
  module's weight gradient: float noise of a sum that cancels by construction) is information (``grad_zero``), not a
  vanishing gradient;
- depth profiles compare each parameter with a robust reference of its own group (the median; weights with
  weights, biases with biases, norm parameters, embeddings and free parameters with their own kind, from
  :mod:`lightning_init.roles`), so one tiny parameter cannot flag all the others;
- activation rules judge outputs whose scale matters: weight layers whose output is not renormalized by the norm
  that follows, the model output excepted (judged by ``output_scale`` against ``ln(classes)``), by their signal std
  (across the batch, per unit: per-unit offsets are not signal);
- ``update_ratio`` judges the update against the parameter's scale (its norm, or its unit-scale norm when larger).

Pure functions over host-side tables ``{name: {stat: value}}`` ordered from input to output, as the monitors hand
them over after each logging step; the model-dependent facts travel in a :class:`Context`. Never imports Lightning.
A rule whose statistics are missing from the table does not fire; NaN inputs do not fire the threshold rules (they
are what ``nonfinite`` reports).
"""

from __future__ import annotations

import heapq
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from lightning_init.activations import BOUNDED, RELU_LIKE
from lightning_init.health.thresholds import _BY_NAME, HealthThresholds, _validate
from lightning_init.roles import Role, is_bias_name

__all__ = [
    "INFO_RULES",
    "KINDS",
    "RULES",
    "RULES_BY_KIND",
    "RULE_TABLE",
    "Context",
    "Finding",
    "HealthError",
    "Kind",
    "OnAnomaly",
    "Rule",
    "RuleSpec",
    "check_activations",
    "check_backprop",
    "check_grads",
    "check_weights",
    "evaluate",
    "frame",
    "merge_findings",
    "rule_table_markdown",
]

Rule = Literal[
    "vanishing_grad",
    "exploding_grad",
    "vanishing_activation",
    "exploding_activation",
    "dead",
    "saturated",
    "output_scale",
    "nonfinite",
    "symmetric",
    "update_ratio",
    "vanishing_backprop",
    "exploding_backprop",
    "underflow",
    "overflow",
    "grad_zero",
]
#: Rules that report information (once, in the report), never a finding: no ``health/*`` count, no warning.
INFO_RULES: frozenset[Rule] = frozenset({"grad_zero"})
#: Every finding rule (a ``health/*`` count), in documentation order.
RULES: tuple[Rule, ...] = tuple(r for r in get_args(Rule) if r not in INFO_RULES)

#: What a table describes; the prefixes of the monitors' tags (``weight_std``, ``grad_norm``, ``activation_std``).
Kind = Literal["weight", "grad", "activation", "output_grad"]
KINDS: tuple[Kind, ...] = get_args(Kind)

#: What a monitor does on a finding: warn once per (rule, layer), stop training gracefully, or raise HealthError.
OnAnomaly = Literal["warn", "stop", "raise"]

#: The finding rules (``health/*`` counts) of each kind.
RULES_BY_KIND: dict[Kind, tuple[Rule, ...]] = {
    "weight": ("nonfinite", "symmetric", "update_ratio"),
    "grad": ("nonfinite", "vanishing_grad", "exploding_grad", "underflow", "overflow"),
    "activation": (
        "nonfinite",
        "vanishing_activation",
        "exploding_activation",
        "dead",
        "saturated",
        "output_scale",
        "underflow",
        "overflow",
    ),
    "output_grad": ("nonfinite", "vanishing_backprop", "exploding_backprop"),
}

_KIND_WORD: dict[Kind, str] = {
    "weight": "weights",
    "grad": "gradients",
    "activation": "activations",
    "output_grad": "backprop signals (dL/d output)",
}

Op = Literal["<", "<=", ">", ">="]
_OPS: dict[str, Callable[[Any, Any], Any]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


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
        op: how ``value`` compared with ``threshold`` (``""``: not finite).
        info: information, not a problem (``grad_zero``): reported once, never counted or warned.
    """

    rule: Rule
    kind: Kind
    layers: tuple[str, ...]
    measure: str
    value: float
    threshold: float
    step: int
    message: str
    op: str = ""
    info: bool = False


class HealthError(RuntimeError):
    """Raised by the monitors with ``on_anomaly="raise"``; ``finding`` holds the verdict, its message is the text."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.finding,))


@dataclass(frozen=True)
class Context:
    """What the rules need to know about the model besides the table (all optional; the monitors fill it).

    Attributes:
        roles: parameter name -> :data:`lightning_init.roles.Role`; absent names fall back to
            :func:`~lightning_init.roles.is_bias_name` (``bias`` or ``weight``).
        scales: parameter name -> its unit-scale norm (:func:`lightning_init.roles.unit_norm`), the floor of the
            scale ``update_ratio`` is judged against.
        norms: module names that are normalization layers (their outputs are not judged by the depth profile).
        renormalized: module names whose output the next module renormalizes (a conv before its BatchNorm).
        output: the module whose output is the model's output (logits), judged by ``output_scale`` only.
        classes: the number of output classes (the output layer's features).
        loss: the training loss of the step.
        embeddings: module names that are lookups (``Embedding``): their outputs are rows of a table, not a
            propagated signal (a token-type embedding fed one id has no variation across samples at all).
        warmup: parameter names whose adaptive optimizer is in its first ``1 / (1 - beta)`` steps (Adam's bias
            correction makes the first update ``lr`` per element whatever the gradient; RMSprop's second moment
            starts at 0): their update is not judged "too large" yet.
        nonlinearities: module name -> its nonlinearity (:func:`lightning_init.activations.nonlinearity_of`;
            ``None`` for layers and norms) of the rows of an activation table.
    """

    roles: Mapping[str, Role] = field(default_factory=dict)
    scales: Mapping[str, float] = field(default_factory=dict)
    norms: frozenset[str] = frozenset()
    renormalized: frozenset[str] = frozenset()
    output: str | None = None
    classes: int | None = None
    loss: float | None = None
    embeddings: frozenset[str] = frozenset()
    warmup: frozenset[str] = frozenset()
    nonlinearities: Mapping[str, str | None] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- the table

_REMEDY_VANISHING = (
    "The signal shrinks layer after layer: use Kaiming (He) init for ReLU layers and Xavier (Glorot) init for "
    "tanh/sigmoid layers instead of a too-small std, or add normalization / residual connections."
)
_REMEDY_EXPLODING = (
    "The signal grows layer after layer: use Kaiming (He) init for ReLU layers and Xavier (Glorot) init for "
    "tanh/sigmoid layers instead of a too-large std, lower the learning rate, or clip gradients "
    "(Trainer(gradient_clip_val=1.0))."
)
_REMEDY_ZERO = (
    "Nothing to fix: these gradients are zero by construction (a bias feeding a train-mode BatchNorm, an attention "
    "key bias, a branch behind a zero-initialized gamma, a norm scale the loss is invariant to), not because the "
    "signal vanished."
)
_REMEDY_NONFINITE = (
    "Training has diverged or the data/loss produce NaN/Inf: lower the learning rate, clip gradients "
    "(Trainer(gradient_clip_val=1.0)), check inputs and the loss (log/division by zero), or use a more stable "
    "precision."
)


@dataclass(frozen=True)
class RuleSpec:
    """One row of the rule table.

    Attributes:
        rule: the rule (``health/{rule}``).
        kind: the table it judges.
        statistic: the column of :func:`frame` compared with the threshold.
        op: the comparison that fires (``value op threshold``).
        threshold: the :class:`HealthThresholds` field (``""``: a fixed bound, ``bound``).
        applies: the boolean column of :func:`frame` selecting the rows judged (``""``: every finite row).
        measure: what the statistic is, in words (``{nl}``: the row's nonlinearity).
        headline: the finding's first words (``{kind}``, ``{nl}`` filled in).
        remedy: what to do.
        where: the rows judged, in words (README).
        bound: the fixed threshold when ``threshold`` is ``""``.
        info: information only (no count, no warning).
        persist: logged steps in a row the rule must fire on a layer before it is a finding (the tracker keeps
            the streaks; a check function reports every step's candidates).
    """

    rule: Rule
    kind: Kind
    statistic: str
    op: Op
    threshold: str
    applies: str
    measure: str
    headline: str
    remedy: str
    where: str
    bound: float = 0.0
    info: bool = False
    persist: int = 1

    def threshold_of(self, t: HealthThresholds) -> float:
        """The threshold value under ``t``."""
        return float(getattr(t, self.threshold)) if self.threshold else self.bound


def _nonfinite_specs(kind: Kind) -> tuple[RuleSpec, ...]:
    what = {
        "weight": "a weight",
        "grad": "a gradient",
        "activation": "a module output",
        "output_grad": "a backprop signal",
    }[kind]
    return (
        RuleSpec(
            "nonfinite",
            kind,
            "nonfinite",
            ">",
            "",
            "has_count",
            "NaN/Inf count",
            "NaN/Inf {kind}",
            _REMEDY_NONFINITE,
            f"{what} holds NaN/Inf",
        ),
        RuleSpec(
            "nonfinite",
            kind,
            "abs_max_nonfinite",
            ">",
            "",
            "no_count",
            "abs max",
            "NaN/Inf {kind}",
            _REMEDY_NONFINITE,
            f"{what} holds NaN/Inf (abs max not finite; without a NaN/Inf count)",
        ),
    )


_REMEDY_UNDERFLOW = (
    "Values below the format's smallest normal lose precision and flush to zero on flush-to-zero hardware: for "
    "gradients under precision='16-mixed' keep loss scaling on (GradScaler) and give it a larger init_scale, or "
    "switch to precision='bf16-mixed' (bfloat16 has float32's range); for a layer's outputs rescale the layer (a "
    "larger init scale, a normalization layer)."
)
_REMEDY_OVERFLOW = (
    "Values within a factor 2 of the format's largest finite value become inf at the next doubling: switch to "
    "precision='bf16-mixed' (bfloat16 has float32's range), give the GradScaler a smaller init_scale if these are "
    "gradients (occasional overflows are how it finds its scale: act when they persist), or rescale the layer "
    "(smaller init, normalization, lower learning rate)."
)


def _headroom_specs(kind: Kind) -> tuple[RuleSpec, ...]:
    return (
        RuleSpec(
            "underflow",
            kind,
            "underflow",
            ">",
            "underflow_fraction",
            "row_ok",
            "fraction of elements below the 16-bit format's smallest normal",
            "16-bit underflow in {kind}",
            _REMEDY_UNDERFLOW,
            "tensors in a 16-bit format (the statistic exists only under 16-bit precision)",
        ),
        RuleSpec(
            "overflow",
            kind,
            "overflow",
            ">",
            "overflow_fraction",
            "row_ok",
            "fraction of elements above half the 16-bit format's largest value",
            "16-bit overflow in {kind}",
            _REMEDY_OVERFLOW,
            "tensors in a 16-bit format",
        ),
    )


#: The rules, in evaluation (and documentation) order.
RULE_TABLE: tuple[RuleSpec, ...] = (
    *_nonfinite_specs("weight"),
    RuleSpec(
        "symmetric",
        "weight",
        "row_spread",
        "<=",
        "symmetric_spread",
        "judged",
        "row spread (0 = all output units identical)",
        "symmetric units",
        "Every output unit has the same weights, so all of them compute and learn the same thing: initialize weights "
        "with non-zero random values (Kaiming for ReLU, Xavier for tanh/sigmoid), never zeros or a constant.",
        "parameters with >= 2 output units, two logged steps in a row (units a training step made differ, like a "
        "zero-initialized last layer of a residual branch, are not symmetric)",
        persist=2,
    ),
    RuleSpec(
        "update_ratio",
        "weight",
        "update_ratio",
        "<",
        "update_ratio_low",
        "update_low",
        "update ratio ||dw||/||w|| (healthy ~1e-3; too small)",
        "update ratio too small (frozen learning)",
        "The weights barely move: raise the learning rate, or check for vanishing gradients upstream.",
        "non-bias parameters with a non-zero norm and a non-zero, finite ratio, 10 logged steps in a row",
        persist=10,
    ),
    RuleSpec(
        "update_ratio",
        "weight",
        "update_scaled",
        ">",
        "update_ratio_high",
        "update_high",
        "update ||dw|| / max(||w||, unit-scale norm) (healthy ~1e-3; too large)",
        "update ratio too large (unstable learning)",
        "The weights change too much per step: lower the learning rate, use warmup, or clip gradients.",
        "non-bias parameters past their adaptive optimizer's warm-up, two logged steps in a row (scale: the larger "
        "of the norm and the unit-scale norm)",
        persist=2,
    ),
    *_nonfinite_specs("grad"),
    RuleSpec(
        "grad_zero",
        "grad",
        "norm",
        "<=",
        "",
        "judged",
        "structurally zero gradient (exactly 0)",
        "structurally zero gradients (information)",
        _REMEDY_ZERO,
        "a gradient exactly 0 (a branch behind a zero-initialized gamma)",
        bound=0.0,
        info=True,
    ),
    RuleSpec(
        "grad_zero",
        "grad",
        "vs_weight",
        "<",
        "grad_zero_ratio",
        "positive",
        "bias gradient relative to its module's weight gradient (float noise)",
        "structurally zero gradients (information)",
        _REMEDY_ZERO,
        "bias-like gradients (bias, norm shift) against their module's weight gradient",
        info=True,
    ),
    RuleSpec(
        "grad_zero",
        "grad",
        "vs_shift",
        "<",
        "grad_zero_scale_ratio",
        "positive",
        "norm scale gradient relative to its shift's (scale invariance)",
        "structurally zero gradients (information)",
        _REMEDY_ZERO,
        "norm scales (gamma) against their shift's (beta) gradient",
        info=True,
    ),
    RuleSpec(
        "exploding_grad",
        "grad",
        "norm",
        ">",
        "exploding_grad_norm",
        "judged",
        "grad norm (ceiling)",
        "exploding gradients",
        _REMEDY_EXPLODING,
        "every gradient",
    ),
    RuleSpec(
        "vanishing_grad",
        "grad",
        "norm",
        "<",
        "vanishing_grad_floor",
        "judged_nonzero",
        "grad norm",
        "vanishing gradients",
        _REMEDY_VANISHING,
        "gradients that are not structurally zero",
    ),
    RuleSpec(
        "vanishing_grad",
        "grad",
        "norm_vs_group",
        "<",
        "vanishing_grad_ratio",
        "judged_nonzero",
        "grad norm relative to the median of the deeper ones of its group",
        "vanishing gradients",
        _REMEDY_VANISHING,
        "gradients that are not structurally zero, against the median of the deeper gradients of their role group",
    ),
    RuleSpec(
        "exploding_grad",
        "grad",
        "norm_vs_group",
        ">",
        "exploding_grad_growth",
        "judged_nonzero",
        "grad norm relative to the median of the deeper ones of its group",
        "exploding gradients",
        _REMEDY_EXPLODING,
        "gradients that are not structurally zero, against the median of the deeper gradients of their role group",
    ),
    *_headroom_specs("grad"),
    *_nonfinite_specs("activation"),
    RuleSpec(
        "vanishing_activation",
        "activation",
        "signal_vs_first",
        "<",
        "vanishing_activation_ratio",
        "profile_inner",
        "activation signal std relative to the first judged layer's",
        "vanishing activations",
        _REMEDY_VANISHING,
        "weight-layer outputs not renormalized next, embeddings and the model output (a small head is by design) "
        "excepted",
    ),
    RuleSpec(
        "exploding_activation",
        "activation",
        "signal_vs_first",
        ">",
        "exploding_activation_ratio",
        "profile",
        "activation signal std relative to the first judged layer's",
        "exploding activations",
        _REMEDY_EXPLODING,
        "weight-layer outputs not renormalized next (the model output included), embeddings excepted",
    ),
    RuleSpec(
        "dead",
        "activation",
        "zero_fraction",
        ">",
        "dead_fraction",
        "relu_like",
        "zero fraction",
        "dead ReLU units",
        "Most outputs are exactly zero, so no gradient flows through them: use Kaiming (He) init for ReLU layers, "
        "avoid large negative biases, lower the learning rate, or try LeakyReLU.",
        "ReLU-like activation outputs",
    ),
    RuleSpec(
        "saturated",
        "activation",
        "saturation",
        ">",
        "saturated_fraction",
        "bounded",
        "fraction of {nl} outputs at the bounds",
        "saturated {nl} units",
        "{nl} outputs pinned at their bounds have almost zero gradient: use Xavier (Glorot) init for tanh/sigmoid "
        "layers instead of a too-large std, or normalize the inputs.",
        "tanh/sigmoid-like activation outputs",
    ),
    RuleSpec(
        "output_scale",
        "activation",
        "loss_vs_chance",
        ">",
        "output_loss_ratio",
        "logits_large",
        "training loss / ln(classes)",
        "output scale far too large (loss far above chance)",
        "The logits are far too large, so the model starts confidently wrong: initialize the output layer (and an "
        "embedding tied to it) small, e.g. std 0.02 or 1/sqrt(width) (WeightInit('auto') does for tied embeddings), "
        "or zero-initialize the head.",
        "the model output, when the logits' signal std exceeds sqrt(2 (ratio - 1) ln(classes))",
    ),
    *_headroom_specs("activation"),
    *_nonfinite_specs("output_grad"),
    RuleSpec(
        "vanishing_backprop",
        "output_grad",
        "norm_vs_deeper_max",
        "<",
        "vanishing_backprop_ratio",
        "judged",
        "||dL/d output|| relative to the largest deeper layer's",
        "vanishing backprop signal",
        "The gradient with respect to the layer outputs shrinks on its way back to the input, so the early layers "
        "barely learn: use Kaiming (He) init for ReLU layers and Xavier (Glorot) or orthogonal init for tanh/sigmoid "
        "layers instead of a too-small std, or add normalization / residual connections.",
        "module outputs (GradientMonitor's output_grad), against the largest deeper one",
    ),
    RuleSpec(
        "exploding_backprop",
        "output_grad",
        "norm_vs_deeper_min",
        ">",
        "exploding_backprop_growth",
        "backprop_not_vanishing",
        "||dL/d output|| relative to the smallest deeper layer's",
        "exploding backprop signal",
        "The gradient with respect to the layer outputs grows on its way back to the input: use Kaiming (He) / Xavier "
        "(Glorot) init instead of a too-large std, lower the learning rate, or clip gradients "
        "(Trainer(gradient_clip_val=1.0)).",
        "module outputs, against the smallest positive deeper one",
    ),
)

for _spec in RULE_TABLE:  # the table is consistent with the thresholds it names
    assert not _spec.threshold or _spec.threshold in _BY_NAME, _spec
    assert _spec.rule in RULES_BY_KIND[_spec.kind] or _spec.rule in INFO_RULES, _spec

_SPEC_BY_MEASURE: dict[tuple[str, str, str], RuleSpec] = {(s.rule, s.kind, s.measure): s for s in RULE_TABLE}


# --------------------------------------------------------------------------------------------------- findings


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _layers_text(layers: Sequence[str], limit: int = 8) -> str:
    if len(layers) == 1:
        return layers[0]
    shown = ", ".join(layers[:limit])
    more = f", ... and {len(layers) - limit} more" if len(layers) > limit else ""
    return f"{len(layers)} layers ({shown}{more})"


def _build(
    spec: RuleSpec,
    layers: Sequence[str],
    value: float,
    threshold: float,
    step: int,
    note: str = "",
    nl: str = "",
) -> Finding:
    headline = spec.headline.format(kind=_KIND_WORD[spec.kind], nl=nl)
    measure = spec.measure.format(nl=nl)
    remedy = spec.remedy.format(nl=nl)
    value_text = _fmt(value) + (f" ({note})" if note else "")
    finite = spec.statistic != "abs_max_nonfinite"
    if spec.info:
        verdict = ""
    elif finite:
        verdict = f" {spec.op} threshold {_fmt(threshold)}"
    else:
        verdict = " (not finite)"
    text = f"{headline} in {_layers_text(layers)} at step {step}: {measure} = {value_text}{verdict}. {remedy}"
    op = spec.op if finite else ""
    return Finding(
        spec.rule, spec.kind, tuple(layers), measure, float(value), float(threshold), int(step), text, op, spec.info
    )


def _spec_of(f: Finding) -> RuleSpec:
    spec = _SPEC_BY_MEASURE.get((f.rule, f.kind, f.measure))
    if spec is None:  # a measure with the nonlinearity filled in
        spec = next(s for s in RULE_TABLE if s.rule == f.rule and s.kind == f.kind)
    return spec


def persistence(f: Finding) -> int:
    """How many logged steps in a row ``f``'s rule must fire on a layer before it is a finding."""
    return _spec_of(f).persist


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Merge findings of the same ``(rule, kind, measure, threshold, step)`` into one naming all their layers.

    ``value`` becomes the worst value (furthest past the threshold) and the message names the layer it came from.
    Order of first appearance is kept; a group of one is returned unchanged.
    """
    groups: dict[tuple[Any, ...], list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.rule, f.kind, f.measure, f.threshold, f.step), []).append(f)
    out: list[Finding] = []
    for (_, _, measure, threshold, step), members in groups.items():
        if len(members) == 1:
            out.append(members[0])
            continue
        first = members[0]
        pick = min if first.op in ("<", "<=") else max
        worst = pick(members, key=lambda f: f.value if not math.isnan(f.value) else -math.inf)
        layers = tuple(name for f in members for name in f.layers)
        spec = _spec_of(first)
        nl = ""
        if "{nl}" in spec.measure:
            prefix, _, _ = spec.measure.partition("{nl}")
            nl = measure[len(prefix) :].split(" ", 1)[0]
        out.append(_build(spec, layers, worst.value, threshold, step, f"worst: {worst.layers[0]}", nl))
    return out


# ------------------------------------------------------------------------------------------------ the frame


def _column(rows: Sequence[Mapping[str, float]], stat: str) -> np.ndarray:
    """``stat`` of every row as float64, NaN where a row lacks it (numpy reads ``None`` as NaN)."""
    return np.array([r.get(stat) for r in rows], dtype=np.float64)


def _suffix_medians(pool: np.ndarray) -> np.ndarray:
    """``out[k]`` = ``np.median(pool[k:])`` for every ``k``, in O(n log n): two heaps filled from the end.

    ``lower`` (a max-heap, negated) holds the smaller half, ``upper`` the larger; an even count's median is the mean
    of their tops, as ``np.median`` computes it.
    """
    out = np.empty(len(pool))
    lower: list[float] = []
    upper: list[float] = []
    for k in range(len(pool) - 1, -1, -1):
        v = float(pool[k])
        if lower and v > -lower[0]:
            heapq.heappush(upper, v)
        else:
            heapq.heappush(lower, -v)
        if len(lower) > len(upper) + 1:
            heapq.heappush(upper, -heapq.heappop(lower))
        elif len(upper) > len(lower):
            heapq.heappush(lower, -heapq.heappop(upper))
        out[k] = -lower[0] if len(lower) > len(upper) else (-lower[0] + upper[0]) / 2.0
    return out


def _deeper_median(values: np.ndarray, groups: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per row, the median of ``values`` over the usable rows of its group that come after it (deeper, in table
    order), NaN for the deepest. A median: one tiny (or huge) parameter deep in the net moves the reference of the
    layers before it by at most one rank, so it cannot flag all of them. O(n log n) per group (suffix medians).
    """  # noqa: D205
    out = np.full(values.shape, math.nan)
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero((groups == g) & usable)
        if not len(idx):
            continue
        # suffix[k] = median of pool[k:], with suffix[len] = NaN: a usable row k gets suffix[k + 1]; a row that is not
        # usable itself gets the reference of its depth, the median of the usable rows after it
        suffix = np.append(_suffix_medians(values[idx]), math.nan)
        out[idx] = suffix[1:]
        rest = np.flatnonzero((groups == g) & ~usable)
        out[rest] = suffix[np.searchsorted(idx, rest, side="right")]
    return out


_ROLE_GROUP: dict[str, str] = {"recurrent": "weight"}
_BIAS_LIKE: frozenset[str] = frozenset({"bias", "norm_bias"})


def _roles(names: Sequence[str], context: Context) -> list[str]:
    return [context.roles.get(n) or ("bias" if is_bias_name(n) else "weight") for n in names]


def _sibling(name: str) -> str:
    """The weight of the module owning bias-like ``name`` (``fc.bias`` -> ``fc.weight``, ``bias_ih_l0`` ->
    ``weight_ih_l0``, ``in_proj_bias`` -> ``in_proj_weight``, a norm's ``bias`` -> its ``weight``).
    """  # noqa: D205
    owner, _, last = name.rpartition(".")
    sibling = last.replace("bias", "weight", 1)
    return f"{owner}.{sibling}" if owner else sibling


def _shift_of(name: str) -> str:
    """The shift of the norm owning scale ``name`` (``bn.weight`` -> ``bn.bias``, ``ln.gamma`` -> ``ln.beta``)."""
    owner, _, last = name.rpartition(".")
    shift = {"weight": "bias", "gamma": "beta", "scale": "shift"}.get(last, last)
    return f"{owner}.{shift}" if owner else shift


def _nonfinite_columns(rows: Sequence[Mapping[str, float]], fr: dict[str, np.ndarray]) -> np.ndarray:
    count = _column(rows, "nonfinite")
    abs_max = _column(rows, "abs_max")
    has_count = np.array([r.get("nonfinite") is not None for r in rows], dtype=bool)
    fr["nonfinite"] = np.where(np.isnan(count), math.inf, count)  # a NaN count is not finite either
    fr["has_count"] = has_count
    fr["abs_max"] = abs_max
    fr["abs_max_nonfinite"] = np.where(np.isinf(abs_max) | np.isnan(abs_max), 1.0, 0.0)
    fr["no_count"] = ~has_count & np.array([r.get("abs_max") is not None for r in rows], dtype=bool)
    bad = (has_count & (fr["nonfinite"] > 0)) | (fr["no_count"] & (fr["abs_max_nonfinite"] > 0))
    return bad


def _weight_frame(names: list[str], rows: list[Mapping[str, float]], context: Context) -> dict[str, np.ndarray]:
    fr: dict[str, np.ndarray] = {}
    bad = _nonfinite_columns(rows, fr)
    roles = np.array(_roles(names, context), dtype=object)
    bias_like = np.isin(roles, list(_BIAS_LIKE))
    fr["row_spread"] = _column(rows, "row_spread")
    ratio = _column(rows, "update_ratio")
    norm = _column(rows, "norm")
    fr["update_ratio"] = ratio
    fr["judged"] = ~bad
    usable = ~bad & ~bias_like & np.isfinite(ratio) & (ratio != 0.0) & (norm != 0.0)
    fr["update_low"] = usable
    # the update relative to max(||w_before||, unit-scale norm): ||dw|| = ratio * ||w_before||
    update = _column(rows, "update_norm")
    scale = np.array([float(context.scales.get(n, 0.0)) for n in names])
    before = np.where(np.isnan(update), math.nan, update / np.where(ratio > 0, ratio, math.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(np.isnan(update), ratio, update / np.fmax(before, scale))
    fr["update_scaled"] = scaled
    warm = np.array([n in context.warmup for n in names], dtype=bool)
    fr["update_high"] = ~bad & ~bias_like & ~warm & np.isfinite(scaled) & (norm != 0.0) & (ratio != 0.0)
    return fr


def _grad_frame(
    names: list[str], rows: list[Mapping[str, float]], context: Context, t: HealthThresholds
) -> dict[str, np.ndarray]:
    fr: dict[str, np.ndarray] = {}
    bad = _nonfinite_columns(rows, fr)
    norm = _column(rows, "norm")
    fr["norm"] = norm
    present = ~bad & ~np.isnan(norm)
    roles = _roles(names, context)
    index = {n: i for i, n in enumerate(names)}
    sibling = np.array([norm[index[s]] if (s := _sibling(n)) in index and s != n else math.nan for n in names])
    sibling = np.where(np.isfinite(sibling), sibling, math.nan)  # a NaN/Inf weight gradient is no reference
    bias_like = np.array([r in _BIAS_LIKE for r in roles], dtype=bool)
    scale = np.array([r == "norm_weight" for r in roles], dtype=bool)
    shift = np.array(
        [norm[index[s]] if (s := _shift_of(n)) in index and s != n else math.nan for n in names]
    )  # a norm's beta
    shift = np.where(np.isfinite(shift), shift, math.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        vs_sibling = np.where(bias_like & (sibling > 0), norm / sibling, math.nan)
        vs_shift = np.where(scale & (shift > 0), norm / shift, math.nan)
    zero = present & ((norm == 0.0) | (vs_sibling < t.grad_zero_ratio) | (vs_shift < t.grad_zero_scale_ratio))
    fr["vs_weight"] = vs_sibling
    fr["vs_shift"] = vs_shift
    fr["judged"] = present
    fr["positive"] = present & (norm > 0)
    fr["judged_nonzero"] = present & ~zero
    groups = np.array([_ROLE_GROUP.get(r, r) for r in roles], dtype=object)
    usable = fr["judged_nonzero"] & (norm > 0) & np.isfinite(norm)
    with np.errstate(invalid="ignore", divide="ignore"):
        fr["norm_vs_group"] = norm / _deeper_median(norm, groups, usable)
    fr["_group"] = groups
    fr["row_ok"] = np.ones(len(names), dtype=bool)  # headroom is judged on every row, NaN/Inf ones included
    fr["underflow"] = _column(rows, "underflow")
    fr["overflow"] = _column(rows, "overflow")
    return fr


def _output_grad_frame(names: list[str], rows: list[Mapping[str, float]], t: HealthThresholds) -> dict[str, np.ndarray]:
    """``||dL/dh||`` of each module output against the largest / smallest (positive) deeper one (a backward scan)."""
    fr: dict[str, np.ndarray] = {}
    bad = _nonfinite_columns(rows, fr)
    norm = _column(rows, "norm")
    usable = ~bad & ~np.isnan(norm)
    deeper_max = np.full(len(names), math.nan)
    deeper_min = np.full(len(names), math.nan)
    top, low = -math.inf, math.inf
    for i in range(len(names) - 1, -1, -1):
        if not usable[i]:
            continue
        if top > 0 and math.isfinite(top):
            deeper_max[i] = top
        if math.isfinite(low):
            deeper_min[i] = low
        top = max(top, float(norm[i]))
        if norm[i] > 0:
            low = min(low, float(norm[i]))
    with np.errstate(invalid="ignore", divide="ignore"):
        fr["norm_vs_deeper_max"] = norm / deeper_max
        fr["norm_vs_deeper_min"] = norm / deeper_min
    fr["norm"] = norm
    fr["judged"] = usable
    vanishing = fr["norm_vs_deeper_max"] < t.vanishing_backprop_ratio
    fr["backprop_not_vanishing"] = usable & ~np.where(np.isnan(fr["norm_vs_deeper_max"]), False, vanishing)
    return fr


def _activation_frame(
    names: list[str],
    rows: list[Mapping[str, float]],
    nonlinearities: Mapping[str, str | None],
    context: Context,
    t: HealthThresholds,
) -> dict[str, np.ndarray]:
    fr: dict[str, np.ndarray] = {}
    bad = _nonfinite_columns(rows, fr)
    nls = [nonlinearities.get(n) for n in names]
    signal = np.array(
        [float(r["signal_std"]) if r.get("signal_std") is not None else float(r.get("std", math.nan)) for r in rows]
    )
    fr["signal"] = signal
    layer = np.array(
        [nl is None and n not in context.norms and n not in context.renormalized and n not in context.embeddings
         for n, nl in zip(names, nls, strict=True)],
        dtype=bool,
    )  # fmt: skip
    is_output = np.array([n == context.output for n in names], dtype=bool)
    profile = ~bad & layer & ~np.isnan(signal)
    ref_ok = profile & ~is_output & np.isfinite(signal) & (signal > 0)
    first = int(np.argmax(ref_ok)) if ref_ok.any() else -1
    fr["signal_vs_first"] = signal / signal[first] if first >= 0 else np.full(len(names), math.nan)
    if first >= 0:
        profile = profile.copy()
        profile[: first + 1] = False  # the reference and the layers before it are not judged against it
    fr["profile"] = profile
    # a small output is by design (zero- or 0.01-initialized heads: chance-level loss); a large one is judged
    fr["profile_inner"] = profile & ~is_output
    fr["_first"] = np.array([first])
    fr["zero_fraction"] = _column(rows, "zero_fraction")
    fr["relu_like"] = ~bad & np.array([nl in RELU_LIKE for nl in nls], dtype=bool)
    fr["saturation"] = _column(rows, "saturation")
    fr["bounded"] = ~bad & np.array([nl in BOUNDED for nl in nls], dtype=bool)
    out = np.array([n == context.output for n in names], dtype=bool)
    classes, loss = context.classes, context.loss
    chance = math.log(classes) if classes is not None and classes >= 2 else math.nan
    ratio = loss / chance if loss is not None and math.isfinite(chance) else math.nan
    fr["loss_vs_chance"] = np.where(out, ratio, math.nan)
    logit_floor = math.sqrt(2.0 * max(t.output_loss_ratio - 1.0, 0.0) * chance) if math.isfinite(chance) else math.inf
    fr["logits_large"] = ~bad & out & (signal > logit_floor)
    fr["row_ok"] = np.ones(len(names), dtype=bool)  # headroom is judged on every row, NaN/Inf ones included
    fr["underflow"] = _column(rows, "underflow")
    fr["overflow"] = _column(rows, "overflow")
    return fr


def frame(
    kind: Kind,
    table: Mapping[str, Mapping[str, float]],
    thresholds: HealthThresholds | None = None,
    *,
    nonlinearities: Mapping[str, str | None] | None = None,
    context: Context | None = None,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The rows of ``table`` and every column the rule table reads, as numpy arrays."""
    t = thresholds or HealthThresholds()
    ctx = context or Context()
    names = list(table)
    rows = [table[n] for n in names]
    if kind == "weight":
        return names, _weight_frame(names, rows, ctx)
    if kind == "grad":
        return names, _grad_frame(names, rows, ctx, t)
    if kind == "activation":
        return names, _activation_frame(names, rows, nonlinearities or {}, ctx, t)
    if kind == "output_grad":
        return names, _output_grad_frame(names, rows, t)
    raise ValueError(f"`kind` must be one of {list(KINDS)}, got {kind!r}")


# ------------------------------------------------------------------------------------------------ evaluation


def _note(spec: RuleSpec, i: int, names: list[str], fr: dict[str, np.ndarray]) -> str:
    if spec.statistic == "signal_vs_first":
        first = int(fr["_first"][0])
        return f"{_fmt(float(fr['signal'][i]))} vs {_fmt(float(fr['signal'][first]))} at {names[first]}"
    if spec.statistic == "norm_vs_group":
        return f"{_fmt(float(fr['norm'][i]))}; group: {fr['_group'][i]}"
    return ""


def evaluate(
    kind: Kind,
    table: Mapping[str, Mapping[str, float]],
    thresholds: HealthThresholds | None = None,
    *,
    step: int,
    nonlinearities: Mapping[str, str | None] | None = None,
    context: Context | None = None,
) -> list[Finding]:
    """Judge ``table`` with every :data:`RULE_TABLE` entry of ``kind``: one array comparison per entry.

    Returns:
        Findings (and ``info`` reports) in table order, per row in rule-table order; a row that is not finite is
        judged by ``nonfinite`` only.
    """
    t = thresholds or HealthThresholds()
    names, fr = frame(kind, table, t, nonlinearities=nonlinearities, context=context)
    nls = nonlinearities or {}
    hits: list[tuple[int, int, Finding]] = []
    for order, spec in enumerate(s for s in RULE_TABLE if s.kind == kind):
        values = fr[spec.statistic]
        threshold = spec.threshold_of(t)
        with np.errstate(invalid="ignore"):
            fired = _OPS[spec.op](values, threshold) & ~np.isnan(values)
        if spec.applies:
            fired &= fr[spec.applies]
        for i in np.flatnonzero(fired):
            value = float(values[i])
            if spec.statistic == "abs_max_nonfinite":
                value = float(fr["abs_max"][i])

            nl = str(nls.get(names[i]) or "")
            note = _note(spec, int(i), names, fr)
            hits.append((int(i), order, _build(spec, (names[i],), value, threshold, step, note, nl)))
    hits.sort(key=lambda h: (h[0], h[1]))
    return [f for _, _, f in hits]


def _thresholds(**values: float) -> HealthThresholds:
    _validate(values)
    return HealthThresholds(**values)


# ------------------------------------------------------------------------------- the first version's functions


def check_weights(
    table: Mapping[str, Mapping[str, float]],
    *,
    step: int,
    symmetric_spread: float = _BY_NAME["symmetric_spread"].default,
    update_ratio_low: float = _BY_NAME["update_ratio_low"].default,
    update_ratio_high: float = _BY_NAME["update_ratio_high"].default,
    context: Context | None = None,
) -> list[Finding]:
    """Judge a weight table ``{parameter: {stat: value}}`` (the weight monitor's): the ``weight`` rows of
    :data:`RULE_TABLE` (``nonfinite``, ``symmetric``, ``update_ratio``).
    """  # noqa: D205
    t = _thresholds(
        symmetric_spread=symmetric_spread, update_ratio_low=update_ratio_low, update_ratio_high=update_ratio_high
    )
    return evaluate("weight", table, t, step=step, context=context)


def check_grads(
    table: Mapping[str, Mapping[str, float]],
    *,
    step: int,
    vanishing_grad_ratio: float = _BY_NAME["vanishing_grad_ratio"].default,
    vanishing_grad_floor: float = _BY_NAME["vanishing_grad_floor"].default,
    exploding_grad_norm: float = _BY_NAME["exploding_grad_norm"].default,
    exploding_grad_growth: float = _BY_NAME["exploding_grad_growth"].default,
    grad_zero_ratio: float = _BY_NAME["grad_zero_ratio"].default,
    underflow_fraction: float = _BY_NAME["underflow_fraction"].default,
    overflow_fraction: float = _BY_NAME["overflow_fraction"].default,
    context: Context | None = None,
) -> list[Finding]:
    """Judge a gradient table ``{parameter: {stat: value}}``: the ``grad`` rows of
    :data:`RULE_TABLE` (``nonfinite``, ``grad_zero`` information, ``exploding_grad``, ``vanishing_grad``).
    """  # noqa: D205
    t = _thresholds(
        vanishing_grad_ratio=vanishing_grad_ratio,
        vanishing_grad_floor=vanishing_grad_floor,
        exploding_grad_norm=exploding_grad_norm,
        exploding_grad_growth=exploding_grad_growth,
        grad_zero_ratio=grad_zero_ratio,
        underflow_fraction=underflow_fraction,
        overflow_fraction=overflow_fraction,
    )
    return evaluate("grad", table, t, step=step, context=context)


def check_activations(
    table: Mapping[str, Mapping[str, float]],
    nonlinearities: Mapping[str, str | None],
    *,
    step: int,
    vanishing_activation_ratio: float = _BY_NAME["vanishing_activation_ratio"].default,
    exploding_activation_ratio: float = _BY_NAME["exploding_activation_ratio"].default,
    dead_fraction: float = _BY_NAME["dead_fraction"].default,
    saturated_fraction: float = _BY_NAME["saturated_fraction"].default,
    output_loss_ratio: float = _BY_NAME["output_loss_ratio"].default,
    underflow_fraction: float = _BY_NAME["underflow_fraction"].default,
    overflow_fraction: float = _BY_NAME["overflow_fraction"].default,
    context: Context | None = None,
) -> list[Finding]:
    """Judge an activation table ``{module: {stat: value}}`` ordered input -> output: the ``activation`` rows of
    :data:`RULE_TABLE`.

    ``nonlinearities`` maps a module name to its nonlinearity (``lightning_init.activations.nonlinearity_of``);
    ``None`` or absent means a layer (``Linear``, ``Conv``...), over which the depth profile is taken.
    """  # noqa: D205
    t = _thresholds(
        vanishing_activation_ratio=vanishing_activation_ratio,
        exploding_activation_ratio=exploding_activation_ratio,
        dead_fraction=dead_fraction,
        saturated_fraction=saturated_fraction,
        output_loss_ratio=output_loss_ratio,
        underflow_fraction=underflow_fraction,
        overflow_fraction=overflow_fraction,
    )
    return evaluate("activation", table, t, step=step, nonlinearities=nonlinearities, context=context)


def check_backprop(
    table: Mapping[str, Mapping[str, float]],
    *,
    step: int,
    vanishing_backprop_ratio: float = _BY_NAME["vanishing_backprop_ratio"].default,
    exploding_backprop_growth: float = _BY_NAME["exploding_backprop_growth"].default,
) -> list[Finding]:
    """Judge a backprop-signal table ``{module: {stat: value}}`` (``output_grad`` of GradientMonitor), input first:
    the ``output_grad`` rows of :data:`RULE_TABLE` (``nonfinite``; ``vanishing_backprop``: ``n_i <
    vanishing_backprop_ratio * max(n_j, j deeper)``; ``exploding_backprop``: ``n_i > exploding_backprop_growth *
    min(n_j > 0, j deeper)``, where not vanishing).
    """  # noqa: D205
    t = _thresholds(
        vanishing_backprop_ratio=vanishing_backprop_ratio, exploding_backprop_growth=exploding_backprop_growth
    )
    return evaluate("output_grad", table, t, step=step)


# ---------------------------------------------------------------------------------------------------- README


def rule_table_markdown() -> str:
    """The README's rule table, from :data:`RULE_TABLE` and the thresholds' declarations."""
    lines = [
        "| rule | kind | fires when | on | default | why this default |",
        "|---|---|---|---|---|---|",
    ]
    for s in RULE_TABLE:
        if s.threshold:
            spec = _BY_NAME[s.threshold]
            cond = f"`{s.statistic}` {s.op} `{s.threshold}`"
            default, why = f"{spec.default:g} (valid {spec.interval})", spec.reason
        else:
            cond = f"`{s.statistic}` {s.op} {s.bound:g}"
            default, why = "-", "fixed"
        kind = s.kind + (" (info)" if s.info else "")
        lines.append(f"| `{s.rule}` | {kind} | {cond} | {s.where} | {default} | {why} |")
    return "\n".join(lines)
