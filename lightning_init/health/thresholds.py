"""Health thresholds: every threshold once, with its valid range and the reason for its default.

:class:`HealthThresholds` is the validated, YAML-friendly object the monitors accept; the module-level constants are
its defaults. Pure Python; never imports Lightning or torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_init.health.rules import Finding, Kind

__all__ = [
    "DEAD_FRACTION",
    "EXPLODING_ACTIVATION_RATIO",
    "EXPLODING_BACKPROP_GROWTH",
    "EXPLODING_GRAD_GROWTH",
    "EXPLODING_GRAD_NORM",
    "OVERFLOW_FRACTION",
    "SATURATED_FRACTION",
    "SYMMETRIC_SPREAD",
    "UNDERFLOW_FRACTION",
    "UPDATE_RATIO_HIGH",
    "UPDATE_RATIO_LOW",
    "VANISHING_ACTIVATION_RATIO",
    "VANISHING_BACKPROP_RATIO",
    "VANISHING_GRAD_FLOOR",
    "VANISHING_GRAD_RATIO",
    "HealthThresholds",
]

# Defaults (justified in HealthThresholds' docstring).
VANISHING_GRAD_RATIO = 1e-4
VANISHING_GRAD_FLOOR = 1e-9
EXPLODING_GRAD_NORM = 1e4
EXPLODING_GRAD_GROWTH = 1e4
VANISHING_ACTIVATION_RATIO = 1e-2
EXPLODING_ACTIVATION_RATIO = 1e2
DEAD_FRACTION = 0.9
SATURATED_FRACTION = 0.5
SYMMETRIC_SPREAD = 1e-6
UPDATE_RATIO_LOW = 1e-6
UPDATE_RATIO_HIGH = 1e-1
VANISHING_BACKPROP_RATIO = 1e-3
EXPLODING_BACKPROP_GROWTH = 1e3
UNDERFLOW_FRACTION = 1e-2
OVERFLOW_FRACTION = 0.0

# ----------------------------------------------------------------------------------------------- validation


def _check(name: str, value: Any, *, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"`{name}` must be a number, got {value!r}")
    v = float(value)
    bad_low = v <= low if low_open else v < low
    bad_high = v >= high if high_open else v > high
    if bad_low or bad_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}")
    return v


_INF = math.inf


def _validate_grads(
    vanishing_grad_ratio: float, vanishing_grad_floor: float, exploding_grad_norm: float, exploding_grad_growth: float
) -> None:
    _check("vanishing_grad_ratio", vanishing_grad_ratio, low=0.0, high=1.0, high_open=True)
    _check("vanishing_grad_floor", vanishing_grad_floor, low=0.0, high=_INF, high_open=True)
    _check("exploding_grad_norm", exploding_grad_norm, low=0.0, high=_INF, low_open=True)
    _check("exploding_grad_growth", exploding_grad_growth, low=1.0, high=_INF, low_open=True)


def _validate_activations(
    vanishing_activation_ratio: float,
    exploding_activation_ratio: float,
    dead_fraction: float,
    saturated_fraction: float,
) -> None:
    _check("vanishing_activation_ratio", vanishing_activation_ratio, low=0.0, high=1.0, high_open=True)
    _check("exploding_activation_ratio", exploding_activation_ratio, low=1.0, high=_INF, low_open=True)
    _check("dead_fraction", dead_fraction, low=0.0, high=1.0)
    _check("saturated_fraction", saturated_fraction, low=0.0, high=1.0)


def _validate_backprop(vanishing_backprop_ratio: float, exploding_backprop_growth: float) -> None:
    _check("vanishing_backprop_ratio", vanishing_backprop_ratio, low=0.0, high=1.0, high_open=True)
    _check("exploding_backprop_growth", exploding_backprop_growth, low=1.0, high=_INF, low_open=True)


def _validate_headroom(underflow_fraction: float, overflow_fraction: float) -> None:
    _check("underflow_fraction", underflow_fraction, low=0.0, high=1.0)
    _check("overflow_fraction", overflow_fraction, low=0.0, high=1.0)


def _validate_weights(symmetric_spread: float, update_ratio_low: float, update_ratio_high: float) -> None:
    _check("symmetric_spread", symmetric_spread, low=0.0, high=1.0, high_open=True)
    _check("update_ratio_low", update_ratio_low, low=0.0, high=_INF, high_open=True)
    _check("update_ratio_high", update_ratio_high, low=0.0, high=_INF, low_open=True)
    if update_ratio_high <= update_ratio_low:
        raise ValueError(
            f"`update_ratio_high` must be greater than `update_ratio_low`, got {update_ratio_high!r} <= "
            f"{update_ratio_low!r}"
        )


# ----------------------------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class HealthThresholds:
    """Every health threshold in one validated, YAML-friendly object (plain floats; ``0``/``.inf`` disable a bound).

    Args:
        vanishing_grad_ratio: a gradient norm this many times smaller than a deeper layer's is vanishing. ``1e-4``:
            under SGD such a layer learns 10,000x slower than the deeper one; a 12-layer ReLU MLP under Xavier
            (a mild, harmless decay) stays above ``2e-2``, under ``normal(std=0.01)`` it falls to ``1e-10``.
        vanishing_grad_floor: an absolute gradient norm this small is vanishing. ``1e-9``: below float32 resolution
            for weights of order ``1e-1`` under any learning rate < 1 (catches profiles that are flat but tiny, as
            weight gradients of a deep ``normal(std=0.01)`` net are: ~3e-11 for every layer).
        exploding_grad_norm: an absolute gradient norm above this explodes. ``1e4``: Kaiming-initialized MLPs show
            norms of order 1-10; a ``normal(std=1.0)`` 12-layer ReLU MLP shows ~1e11.
        exploding_grad_growth: a gradient norm this many times larger than a deeper layer's explodes (mirror of
            ``vanishing_grad_ratio``).
        vanishing_activation_ratio: activation std of a layer relative to the first layer's below this vanishes.
            ``1e-2`` (from the seed): Kaiming keeps the ratio near 1, Xavier on a 12-layer ReLU net ~``2e-2``.
        exploding_activation_ratio: the same ratio above this explodes; ``1e2``.
        dead_fraction: ``zero_fraction`` above this after a ReLU is dead; ``0.9`` (a healthy ReLU zeroes ~0.5).
        saturated_fraction: ``saturation`` above this after tanh/sigmoid is saturated; ``0.5``: Xavier tanh nets
            have ~0 outputs at the bounds, a ``normal(std=1.0)`` width-256 tanh net ~0.9.
        symmetric_spread: ``row_spread`` at or below this is symmetric; ``1e-6``: zero/constant init gives 0 (or a
            float32 rounding residue ~1e-7), random init gives order 1.
        update_ratio_low: a non-zero update ratio below this is frozen; ``1e-6`` is three decades under the
            healthy ~1e-3.
        update_ratio_high: an update ratio above this is unstable; ``1e-1``: 10% of the weight norm per step.
        vanishing_backprop_ratio: ``||dL/dh||`` of a layer's output this many times smaller than a deeper layer's
            is vanishing. ``1e-3``: theory keeps it constant across depth (exactly under orthogonal weights, in
            expectation under fan-in scaled init: ``E||W^T g||^2 = fan_in * Var(W) * ||g||^2``); the healthy
            architectures lose at most ~1 decade (a global average pool over ``P`` positions divides it by
            ``sqrt(P)``: 1/7 over 7x7), a 20-layer ``normal(std=0.01)`` net ~1e-20.
        exploding_backprop_growth: the same ratio above this (against the smallest deeper layer's) explodes; ``1e3``.
        underflow_fraction: under 16-bit precision, a tensor with more than this fraction of its elements below the
            format's smallest normal underflows. ``1e-2``: a unit Gaussian has a fraction ``1.6 * tiny`` there
            (1e-4 for float16), a loss-scaled fp16 gradient ~0; unscaled fp16 gradients of ~1e-5 sit there entirely.
        overflow_fraction: a tensor with more than this fraction of its elements above half the format's largest
            value overflows; ``0``: a single such element is one doubling from inf.

    Raises:
        ValueError: naming the argument and the value when a threshold is out of its range.
    """

    vanishing_grad_ratio: float = VANISHING_GRAD_RATIO
    vanishing_grad_floor: float = VANISHING_GRAD_FLOOR
    exploding_grad_norm: float = EXPLODING_GRAD_NORM
    exploding_grad_growth: float = EXPLODING_GRAD_GROWTH
    vanishing_activation_ratio: float = VANISHING_ACTIVATION_RATIO
    exploding_activation_ratio: float = EXPLODING_ACTIVATION_RATIO
    dead_fraction: float = DEAD_FRACTION
    saturated_fraction: float = SATURATED_FRACTION
    symmetric_spread: float = SYMMETRIC_SPREAD
    update_ratio_low: float = UPDATE_RATIO_LOW
    update_ratio_high: float = UPDATE_RATIO_HIGH
    vanishing_backprop_ratio: float = VANISHING_BACKPROP_RATIO
    exploding_backprop_growth: float = EXPLODING_BACKPROP_GROWTH
    underflow_fraction: float = UNDERFLOW_FRACTION
    overflow_fraction: float = OVERFLOW_FRACTION

    def __post_init__(self) -> None:
        _validate_grads(
            self.vanishing_grad_ratio, self.vanishing_grad_floor, self.exploding_grad_norm, self.exploding_grad_growth
        )
        _validate_activations(
            self.vanishing_activation_ratio,
            self.exploding_activation_ratio,
            self.dead_fraction,
            self.saturated_fraction,
        )
        _validate_weights(self.symmetric_spread, self.update_ratio_low, self.update_ratio_high)
        _validate_backprop(self.vanishing_backprop_ratio, self.exploding_backprop_growth)
        _validate_headroom(self.underflow_fraction, self.overflow_fraction)

    def check(
        self,
        kind: Kind,
        table: Mapping[str, Mapping[str, float]],
        *,
        step: int,
        nonlinearities: Mapping[str, str | None] | None = None,
    ) -> list[Finding]:
        """Run the check function of ``kind`` with these thresholds."""
        from lightning_init.health.rules import (  # rules use us
            KINDS,
            check_activations,
            check_backprop,
            check_grads,
            check_weights,
        )

        t = self
        if kind == "weight":
            return check_weights(
                table,
                step=step,
                symmetric_spread=t.symmetric_spread,
                update_ratio_low=t.update_ratio_low,
                update_ratio_high=t.update_ratio_high,
            )
        if kind == "grad":
            return check_grads(
                table,
                step=step,
                vanishing_grad_ratio=t.vanishing_grad_ratio,
                vanishing_grad_floor=t.vanishing_grad_floor,
                exploding_grad_norm=t.exploding_grad_norm,
                exploding_grad_growth=t.exploding_grad_growth,
                underflow_fraction=t.underflow_fraction,
                overflow_fraction=t.overflow_fraction,
            )
        if kind == "activation":
            return check_activations(
                table,
                nonlinearities or {},
                step=step,
                vanishing_activation_ratio=t.vanishing_activation_ratio,
                exploding_activation_ratio=t.exploding_activation_ratio,
                dead_fraction=t.dead_fraction,
                saturated_fraction=t.saturated_fraction,
                underflow_fraction=t.underflow_fraction,
                overflow_fraction=t.overflow_fraction,
            )
        if kind == "output_grad":
            return check_backprop(
                table,
                step=step,
                vanishing_backprop_ratio=t.vanishing_backprop_ratio,
                exploding_backprop_growth=t.exploding_backprop_growth,
            )
        raise ValueError(f"`kind` must be one of {list(KINDS)}, got {kind!r}")
