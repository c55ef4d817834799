"""Health verdicts: per-layer statistics -> findings (vanishing, exploding, dead, saturated, NaN/Inf, symmetric).

- :mod:`~lightning_init.health.rules`: the rules (pure functions over host-side tables ``{name: {stat: value}}``);
- :mod:`~lightning_init.health.thresholds`: :class:`HealthThresholds`, every threshold once with its range and reason;
- :mod:`~lightning_init.health.tracker`: :class:`HealthTracker`, findings over a fit (warn once, ``health/*``
  counts, per-layer report, heatmap history).

Never imports Lightning.
"""

from lightning_init.health.context import activation_context, parameter_context
from lightning_init.health.rules import (
    INFO_RULES,
    KINDS,
    RULE_TABLE,
    RULES,
    RULES_BY_KIND,
    Context,
    Finding,
    HealthError,
    Kind,
    OnAnomaly,
    Rule,
    RuleSpec,
    check_activations,
    check_grads,
    check_weights,
    evaluate,
    frame,
    merge_findings,
    rule_table_markdown,
)
from lightning_init.health.thresholds import (
    DEAD_FRACTION,
    EXPLODING_ACTIVATION_RATIO,
    EXPLODING_GRAD_GROWTH,
    EXPLODING_GRAD_NORM,
    GRAD_ZERO_RATIO,
    GRAD_ZERO_SCALE_RATIO,
    OUTPUT_LOSS_RATIO,
    SATURATED_FRACTION,
    SYMMETRIC_SPREAD,
    THRESHOLDS,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    VANISHING_ACTIVATION_RATIO,
    VANISHING_GRAD_FLOOR,
    VANISHING_GRAD_RATIO,
    HealthThresholds,
    Threshold,
)
from lightning_init.health.tracker import PROFILE_STAT, HealthTracker, health_tag, profile_of

__all__ = [
    "DEAD_FRACTION",
    "EXPLODING_ACTIVATION_RATIO",
    "EXPLODING_GRAD_GROWTH",
    "EXPLODING_GRAD_NORM",
    "GRAD_ZERO_RATIO",
    "GRAD_ZERO_SCALE_RATIO",
    "INFO_RULES",
    "KINDS",
    "OUTPUT_LOSS_RATIO",
    "PROFILE_STAT",
    "RULES",
    "RULES_BY_KIND",
    "RULE_TABLE",
    "SATURATED_FRACTION",
    "SYMMETRIC_SPREAD",
    "THRESHOLDS",
    "UPDATE_RATIO_HIGH",
    "UPDATE_RATIO_LOW",
    "VANISHING_ACTIVATION_RATIO",
    "VANISHING_GRAD_FLOOR",
    "VANISHING_GRAD_RATIO",
    "Context",
    "Finding",
    "HealthError",
    "HealthThresholds",
    "HealthTracker",
    "Kind",
    "OnAnomaly",
    "Rule",
    "RuleSpec",
    "Threshold",
    "activation_context",
    "check_activations",
    "check_grads",
    "check_weights",
    "evaluate",
    "frame",
    "health_tag",
    "merge_findings",
    "parameter_context",
    "profile_of",
    "rule_table_markdown",
]
