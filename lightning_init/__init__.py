"""lightning_init: start training right, and see what happens.

Weight initialization (``WeightInit``, ``init_module``) and per-layer monitors (``WeightMonitor``,
``ActivationMonitor``, ``GradientMonitor``) with health verdicts, as PyTorch Lightning callbacks.
"""

__version__ = "0.1.0"

__all__: list[str] = []
