"""Restricted argument types: what the parser (LightningCLI / jsonargparse) checks before any class is built.

A YAML value outside its type's range is a parser error (exit code 2, one line naming the key, the value and the
restriction) instead of a ``ValueError`` from ``__init__``; ``__init__`` checks the same ranges again for Python
callers (:mod:`lightning_init.checks`), so both paths refuse the same values. NaN fails every comparison, so every
bounded type below also refuses ``.nan``; the finite types refuse ``.inf``.

To type checkers these are ``float`` / ``int`` subclasses (jsonargparse's restricted types).
"""

from __future__ import annotations

import math

from jsonargparse.typing import ClosedUnitInterval, OpenUnitInterval, PositiveInt, restricted_number_type

__all__ = [
    "FINITE_MAX",
    "ClosedUnitInterval",
    "FiniteFloat",
    "NonNegativeFiniteFloat",
    "OpenUnitInterval",
    "PositiveFiniteFloat",
    "PositiveInt",
]

#: The bound of :data:`FiniteFloat`: ``sqrt(float32 max)``, the largest magnitude a weight may hold (its square must
#: not overflow float32; see :data:`lightning_init.schemes.MAX_MAGNITUDE`, the same number).
FINITE_MAX: float = math.sqrt(3.4028234663852886e38)

#: A finite float a weight may hold: ``|x| <= FINITE_MAX`` (refuses NaN and +-inf).
FiniteFloat = restricted_number_type("FiniteFloat", float, [(">=", -FINITE_MAX), ("<=", FINITE_MAX)])
#: A finite float > 0 (a standard deviation, a gain).
PositiveFiniteFloat = restricted_number_type("PositiveFiniteFloat", float, [(">", 0.0), ("<=", FINITE_MAX)])
#: A finite float >= 0.
NonNegativeFiniteFloat = restricted_number_type("NonNegativeFiniteFloat", float, [(">=", 0.0), ("<=", FINITE_MAX)])
