"""Batched per-tensor statistics (pure torch, never imports Lightning)."""

from __future__ import annotations

import torch
from torch import Tensor


def row_spread(weight: Tensor) -> Tensor:
    """How far the output units (rows) of a weight are from being identical, as a 0-dim float32 tensor.

    ``max_ij |w_ij - mean_k w_kj| / max_ij |w_ij|`` over the weight flattened to ``(out_units, -1)``; ``0`` means every
    output unit has the same incoming weights (the symmetry a zero or constant init leaves, so every unit of the layer
    computes and learns the same thing). A zero weight gives ``0``. Weights with fewer than 2 dimensions or a single
    output unit give ``nan`` (symmetry is not defined for them). Computed on the weight's device, no host transfer.
    """
    if weight.ndim < 2 or weight.shape[0] < 2:
        return torch.full((), float("nan"), device=weight.device)
    w = weight.detach().flatten(1).float()
    spread = (w - w.mean(dim=0, keepdim=True)).abs().amax()
    scale = w.abs().amax()
    return torch.where(scale > 0, spread / scale.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(scale))
