"""Health verdicts: per-layer statistics -> findings (vanishing, exploding, dead, saturated, NaN/Inf, symmetric).

- :mod:`~lightning_init.health.rules`: the rules (pure functions over host-side tables ``{name: {stat: value}}``);
- :mod:`~lightning_init.health.thresholds`: :class:`HealthThresholds`, every threshold once with its range and reason;
- :mod:`~lightning_init.health.tracker`: :class:`HealthTracker`, findings over a fit (warn once, ``health/*``
  counts, per-layer report, heatmap history).

Never imports Lightning.
"""

from lightning_init.health.rules import (
    KINDS,
    RULES,
    RULES_BY_KIND,
    Finding,
    HealthError,
    Kind,
    OnAnomaly,
    Rule,
    check_activations,
    check_backprop,
    check_grads,
    check_weights,
    merge_findings,
)
from lightning_init.health.thresholds import (
    DEAD_FRACTION,
    EXPLODING_ACTIVATION_RATIO,
    EXPLODING_BACKPROP_GROWTH,
    EXPLODING_GRAD_GROWTH,
    EXPLODING_GRAD_NORM,
    OVERFLOW_FRACTION,
    SATURATED_FRACTION,
    SYMMETRIC_SPREAD,
    UNDERFLOW_FRACTION,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    VANISHING_ACTIVATION_RATIO,
    VANISHING_BACKPROP_RATIO,
    VANISHING_GRAD_FLOOR,
    VANISHING_GRAD_RATIO,
    HealthThresholds,
)
from lightning_init.health.tracker import PROFILE_STAT, HealthTracker, health_tag, profile_of

__all__ = [
    "DEAD_FRACTION",
    "EXPLODING_ACTIVATION_RATIO",
    "EXPLODING_BACKPROP_GROWTH",
    "EXPLODING_GRAD_GROWTH",
    "EXPLODING_GRAD_NORM",
    "KINDS",
    "OVERFLOW_FRACTION",
    "PROFILE_STAT",
    "RULES",
    "RULES_BY_KIND",
    "SATURATED_FRACTION",
    "SYMMETRIC_SPREAD",
    "UNDERFLOW_FRACTION",
    "UPDATE_RATIO_HIGH",
    "UPDATE_RATIO_LOW",
    "VANISHING_ACTIVATION_RATIO",
    "VANISHING_BACKPROP_RATIO",
    "VANISHING_GRAD_FLOOR",
    "VANISHING_GRAD_RATIO",
    "Finding",
    "HealthError",
    "HealthThresholds",
    "HealthTracker",
    "Kind",
    "OnAnomaly",
    "Rule",
    "check_activations",
    "check_backprop",
    "check_grads",
    "check_weights",
    "health_tag",
    "merge_findings",
    "profile_of",
]
