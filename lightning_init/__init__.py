"""lightning_init: start training right, and see what happens.

Weight initialization (``WeightInit``, ``init_module``) and per-layer monitors (``WeightMonitor``,
``ActivationMonitor``, ``GradientMonitor``) with health verdicts, as PyTorch Lightning callbacks.

The public names are imported on first use (PEP 562 ``__getattr__``), so ``import lightning_init.cli`` (the
``lightning-init`` command, whose ``--help`` must answer at once) does not import torch or Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_init.callbacks.activation_monitor import ActivationMonitor
    from lightning_init.callbacks.gradient_monitor import GradientMonitor
    from lightning_init.callbacks.weight_init import WeightInit
    from lightning_init.callbacks.weight_monitor import WeightMonitor
    from lightning_init.health import Finding, HealthError, HealthThresholds
    from lightning_init.init import InitReport, LayerInit, init_module
    from lightning_init.lsuv import LSUVLayer, LSUVReport, LSUVSkipped, lsuv_
    from lightning_init.rules import InitRule

__version__ = "0.1.0"

#: Public name -> the module that defines it (keep in step with the ``TYPE_CHECKING`` imports above).
_EXPORTS: dict[str, str] = {
    "ActivationMonitor": "lightning_init.callbacks.activation_monitor",
    "GradientMonitor": "lightning_init.callbacks.gradient_monitor",
    "WeightMonitor": "lightning_init.callbacks.weight_monitor",
    "WeightInit": "lightning_init.callbacks.weight_init",
    "Finding": "lightning_init.health",
    "HealthError": "lightning_init.health",
    "HealthThresholds": "lightning_init.health",
    "InitReport": "lightning_init.init",
    "LayerInit": "lightning_init.init",
    "init_module": "lightning_init.init",
    "LSUVLayer": "lightning_init.lsuv",
    "LSUVReport": "lightning_init.lsuv",
    "LSUVSkipped": "lightning_init.lsuv",
    "lsuv_": "lightning_init.lsuv",
    "InitRule": "lightning_init.rules",
}

__all__: list[str] = [
    "ActivationMonitor",
    "Finding",
    "GradientMonitor",
    "HealthError",
    "HealthThresholds",
    "InitReport",
    "InitRule",
    "LSUVLayer",
    "LSUVReport",
    "LSUVSkipped",
    "LayerInit",
    "WeightInit",
    "WeightMonitor",
    "init_module",
    "lsuv_",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_init' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
