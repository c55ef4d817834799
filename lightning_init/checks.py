"""Argument validation shared by every public class and function (pure Python, no torch, no Lightning).

Every message has the same three parts, as Lightning's own callbacks do: the argument in backticks, what is valid, and
the value received (with its type when the type is the problem), plus a "did you mean" for names::

    `std` must be a finite number > 0, got '0.1'.
    `scheme` must be one of 'zeros', ..., got 'kaiming_normall'. Did you mean 'kaiming_normal'?

Every check raises ``ValueError`` (also for a value of the wrong type: LightningCLI and ``lightning-init compare``
turn a ``ValueError`` raised while a config is instantiated into a parser error), and returns the value normalized
(``float`` for numbers, ``int`` for integers).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = ["check_bool", "check_choice", "check_int", "check_real", "check_seed", "did_you_mean", "received"]


def did_you_mean(value: str, options: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``options``, or ``""``."""
    close = difflib.get_close_matches(value, list(options), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def received(value: Any) -> str:
    """``value`` as a message shows it: its repr, and its type unless it is None, a bool, a number or a string."""
    if value is None or isinstance(value, (bool, float, int, str)):
        return repr(value)
    article = "an" if type(value).__name__[:1].lower() in "aeiou" else "a"
    return f"{value!r} ({article} {type(value).__name__})"


def check_choice(argument: str, value: Any, options: Iterable[str]) -> None:
    """Raise ``ValueError`` naming ``argument`` when ``value`` is not one of ``options`` (with a "did you mean")."""
    options = tuple(options)
    try:
        valid = value in options
    except TypeError:  # unhashable values in a frozenset, for instance
        valid = False
    if not valid:
        suggestion = did_you_mean(value, options) if isinstance(value, str) else ""
        raise ValueError(
            f"`{argument}` must be one of {', '.join(map(repr, options))}, got {received(value)}.{suggestion}"
        )


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def check_real(
    argument: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Check that ``value`` is a finite real number (not a bool, not a string) within the bounds; return it as float.

    Raises:
        ValueError: Naming ``argument``, the valid range and ``value`` (with its type when it is not a number).
    """
    bounds = _range_text(low, high, low_open, high_open)
    valid = "a finite number" + (f" {bounds}" if bounds else "")
    if not _is_real(value) or not math.isfinite(float(value)):
        raise ValueError(f"`{argument}` must be {valid}, got {received(value)}.")
    x = float(value)
    if (
        (low is not None and (x < low or (low_open and x == low)))
        or (high is not None and (x > high or (high_open and x == high)))
    ):  # fmt: skip
        raise ValueError(f"`{argument}` must be {valid}, got {value!r}.")
    return x


def check_int(argument: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Check that ``value`` is an integer (not a bool, not a float such as 1.5) within ``[low, high]``; return it.

    Raises:
        ValueError: Naming ``argument``, the valid range and ``value``.
    """
    bounds = _range_text(low, high, False, False)
    valid = "an integer" + (f" {bounds}" if bounds else "")
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ValueError(f"`{argument}` must be {valid}, got {received(value)}.")
    x = int(value)
    if (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"`{argument}` must be {valid}, got {value!r}.")
    return x


def check_bool(argument: str, value: Any) -> bool:
    """Check that ``value`` is ``True`` or ``False`` (not ``"no"``, not ``1``); return it.

    Raises:
        ValueError: Naming ``argument`` and ``value``.
    """
    if not isinstance(value, bool):
        raise ValueError(f"`{argument}` must be True or False, got {received(value)}.")
    return value


def check_seed(argument: str, value: Any) -> int | None:
    """Check an optional seed: ``None`` or an integer that ``torch.Generator.manual_seed`` takes; return it.

    Raises:
        ValueError: Naming ``argument`` and ``value`` (``"abc"``, ``1.5``, ``True`` or out of range).
    """
    if value is None:
        return None
    return check_int(argument, value, low=-(2**63), high=2**64 - 1)
