"""lightning_init: start training right, and see what happens.

Weight initialization (``WeightInit``, ``init_module``) and per-layer monitors (``WeightMonitor``,
``ActivationMonitor``, ``GradientMonitor``) with health verdicts, as PyTorch Lightning callbacks.
"""

from lightning_init.callbacks.activation_monitor import ActivationMonitor
from lightning_init.callbacks.gradient_monitor import GradientMonitor
from lightning_init.callbacks.weight_init import WeightInit
from lightning_init.callbacks.weight_monitor import WeightMonitor
from lightning_init.health import Finding, HealthError, HealthThresholds
from lightning_init.init import InitReport, LayerInit, init_module
from lightning_init.lsuv import LSUVLayer, LSUVReport, LSUVSkipped, lsuv_
from lightning_init.rules import InitRule

__version__ = "0.1.0"

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
