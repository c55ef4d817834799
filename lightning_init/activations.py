"""What an activation is: the one place that decides it, for initializers and monitors alike (pure torch).

A module is an activation when it computes an elementwise nonlinearity. Known torch classes are looked up in a table
(:data:`ACTIVATION_NONLINEARITY`); any other parameter-free leaf module is classified by its **behaviour**: it is run
once on a fixed probe grid (:data:`PROBE_GRID`, 161 points in [-4, 4]) and its response compared with reference
functions. So HF's ``GELUActivation`` / ``NewGELUActivation`` (``gelu_new`` calls ``torch.tanh`` inside, and is still
a GELU), ``QuickGELUActivation``, timm's activation layers and your own modules are recognized without being listed.

Classes (:func:`classify`): ``relu`` (zero on the negative half-line, ReLU6 included), ``leaky_relu`` (with its slope),
``tanh`` / ``sigmoid`` (bounded, hard variants included), ``gelu`` / ``silu`` / ``elu`` / ``selu`` / ``softplus``
(ReLU-shaped smooth ones), ``identity`` (passes values through: transparent, not an activation), and ``other`` (an
elementwise nonlinearity close to none of the references: an activation, with no gain of its own). A module that is
not elementwise (softmax, a layer, a reshape), raises, or changes the shape is not an activation.

Functional activations (``F.relu``, ``torch.tanh``, ``x.sigmoid()``) are named by :data:`FUNCTION_NONLINEARITY`;
which activation follows which layer is found from the data flow in :mod:`lightning_init.graph`. This module never
imports Lightning.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_init.roles import TORCH_NORMS

#: Activation module type -> nonlinearity name (the names of ``torch.nn.init.calculate_gain`` where it has one).
ACTIVATION_NONLINEARITY: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "leaky_relu",
    nn.RReLU: "leaky_relu",
    nn.Tanh: "tanh",
    nn.Hardtanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "sigmoid",
    nn.SELU: "selu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Mish: "silu",
    nn.Hardswish: "silu",
    nn.ELU: "elu",
    nn.CELU: "elu",
    nn.Softplus: "softplus",
}

#: Functional activations by name (``torch.relu``, ``F.relu``, ``Tensor.relu`` and in-place variants share it).
FUNCTION_NONLINEARITY: dict[str, str] = {
    **dict.fromkeys(("relu", "relu_", "relu6", "threshold"), "relu"),
    **dict.fromkeys(("leaky_relu", "leaky_relu_", "rrelu", "rrelu_", "prelu"), "leaky_relu"),
    **dict.fromkeys(("tanh", "tanh_", "hardtanh", "hardtanh_"), "tanh"),
    **dict.fromkeys(("sigmoid", "sigmoid_", "hardsigmoid"), "sigmoid"),
    **dict.fromkeys(("selu", "selu_"), "selu"),
    "gelu": "gelu",
    **dict.fromkeys(("silu", "silu_", "mish", "hardswish"), "silu"),
    **dict.fromkeys(("elu", "elu_", "celu", "celu_"), "elu"),
    "softplus": "softplus",
}

#: What :func:`classify` can answer.
ActivationKind = Literal[
    "relu", "leaky_relu", "tanh", "sigmoid", "gelu", "silu", "elu", "selu", "softplus", "identity", "other"
]

#: Nonlinearities whose outputs are zero on a whole half-line: a unit is "dead" when its outputs are all zero.
RELU_LIKE: frozenset[str] = frozenset({"relu"})

#: Bounded nonlinearities and the interval of their outputs: a unit is "saturated" near these bounds.
BOUNDED: dict[str, tuple[float, float]] = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}

#: The probe grid: 161 evenly spaced points in [-4, 4] (ReLU6 and hard variants agree with their family there).
PROBE_GRID: Tensor = torch.linspace(-4.0, 4.0, 161)

#: Reference responses on the grid. Families are matched by the largest absolute difference (see :func:`classify`).
_REFERENCES: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "silu": F.silu,
    "elu": F.elu,
    "selu": torch.selu,
    "softplus": F.softplus,
}

#: Largest absolute difference on the grid for a match: 0.2 accepts the hard / approximate variants of a family
#: (Hardswish vs SiLU 0.14, QuickGELU vs GELU 0.02, gelu_new vs GELU 0.001, Hardsigmoid vs sigmoid 0.09, Hardtanh vs
#: tanh 0.24 -> matched by its bounds instead) and separates the families (GELU vs SiLU 0.11 -> the nearest wins).
_MATCH = 0.2

_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[str, float | None] | None] = weakref.WeakKeyDictionary()


def _table_kind(module: nn.Module) -> str | None:
    for cls in type(module).__mro__:
        name = ACTIVATION_NONLINEARITY.get(cls)
        if name is not None:
            return name
    return None


def _slope(module: nn.Module) -> float | None:
    slope = getattr(module, "negative_slope", None)
    if slope is None and isinstance(module, nn.RReLU):
        slope = (module.lower + module.upper) / 2
    if slope is None and isinstance(module, nn.PReLU):
        slope = float(module.weight.detach().float().mean()) if not _is_lazy(module.weight) else None
    return float(slope) if isinstance(slope, (int, float)) else None


def _is_lazy(t: Tensor) -> bool:
    return isinstance(t, nn.parameter.UninitializedParameter)


def _probe(module: nn.Module) -> tuple[str, float | None] | None:
    """Run ``module`` on the probe grid (as a row and as a column: elementwise means both agree)."""
    buffers = list(module.buffers())
    device = buffers[0].device if buffers else torch.device("cpu")
    grid = PROBE_GRID.to(device)
    flags = [(m, m.training) for m in module.modules()]
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), torch.no_grad():
            for m, _ in flags:
                m.training = False
            row = module(grid.view(1, -1).clone())
            col = module(grid.view(-1, 1).clone())
    except Exception:  # anything that cannot take a plain float tensor is not an activation
        return None
    finally:
        for m, training in flags:
            m.training = training
    if not (isinstance(row, Tensor) and isinstance(col, Tensor)) or row.shape != (1, grid.numel()):
        return None
    if col.shape != (grid.numel(), 1) or not row.is_floating_point():
        return None
    y, y2 = row.detach().float().flatten().cpu(), col.detach().float().flatten().cpu()
    if not (torch.isfinite(y).all() and torch.allclose(y, y2, atol=1e-5, rtol=1e-4)):
        return None  # not elementwise (softmax, normalization) or not finite
    return _kind_of_response(PROBE_GRID, y)


def _kind_of_response(x: Tensor, y: Tensor) -> tuple[str, float | None]:
    """Classify an elementwise response ``y = f(x)`` on the grid ``x`` (see :data:`_MATCH`)."""
    neg, pos = x < -0.25, x > 0.25
    if torch.allclose(y, x, atol=1e-5):
        return "identity", None
    if y[neg].abs().max() <= 1e-6 and torch.allclose(y[pos], x[pos].clamp(max=6.0), atol=1e-4):
        return "relu", None
    ratio = y[neg] / x[neg]
    if torch.allclose(y[pos], x[pos], atol=1e-4) and float(ratio.std()) < 1e-4 and 0 < float(ratio.mean()) < 1:
        return "leaky_relu", float(ratio.mean())
    lo, hi, at0 = float(y.min()), float(y.max()), float(y[x.abs().argmin()])
    bounded = hi - lo <= 2.0 + 1e-4
    if bounded and lo >= -1 - 1e-4 and abs(at0) <= 1e-4 and torch.allclose(y, -y.flip(0), atol=1e-4):
        return "tanh", None  # odd, bounded by 1 (tanh, hardtanh, softsign-like)
    if bounded and lo >= -1e-4 and hi <= 1 + 1e-4 and abs(at0 - 0.5) <= 1e-3:
        return "sigmoid", None
    errors = {name: float((fn(x) - y).abs().max()) for name, fn in _REFERENCES.items()}
    best = min(errors, key=errors.__getitem__)
    return (best, None) if errors[best] <= _MATCH else ("other", None)


def classify(module: nn.Module) -> tuple[str, float | None] | None:
    """What kind of activation ``module`` is: ``(kind, negative slope for leaky_relu)``, or ``None`` if it is none.

    Known classes come from :data:`ACTIVATION_NONLINEARITY` (subclasses count; exact type first, since ``ReLU6`` is a
    ``Hardtanh`` in torch). Any other leaf module without parameters is probed once on :data:`PROBE_GRID` (eval mode,
    ``no_grad``, torch's RNG forked, every flag restored; the answer is cached per module). Modules with parameters or
    children are never probed: they are layers or blocks.
    """
    name = _table_kind(module)
    if name is not None:
        return name, _slope(module) if name == "leaky_relu" else None
    if next(module.children(), None) is not None or next(module.parameters(), None) is not None:
        return None
    if isinstance(module, _TRANSPARENT):
        return None
    if module in _CACHE:
        return _CACHE[module]
    found = _probe(module)
    _CACHE[module] = found
    return found


def nonlinearity_of(module: nn.Module) -> str | None:
    """The nonlinearity name of an activation module, or ``None`` when ``module`` is not one (or passes values through).

    The one predicate initializers and monitors share: ``nn.ReLU`` -> ``"relu"``, HF ``NewGELUActivation`` ->
    ``"gelu"``, an unrecognized elementwise nonlinearity -> ``"other"``; ``nn.Identity`` or a layer -> ``None``.
    """
    kind = classify(module)
    if kind is None or kind[0] == "identity":
        return None
    return kind[0]


def function_nonlinearity(name: str) -> str | None:
    """The nonlinearity of a functional call by its name (``"relu"``, ``"gelu"``, ``"tanh_"``), or ``None``."""
    return FUNCTION_NONLINEARITY.get(name)


# --------------------------------------------------------------------------------------------------------------------
# Module kinds the data flow looks through, and the layer / norm predicates.
# --------------------------------------------------------------------------------------------------------------------

#: A resolved follower: the nonlinearity name (``"linear"`` when the layer is followed by another layer or by nothing)
#: and, for ``leaky_relu``, its negative slope.
Follower = tuple[str, "float | None"]

#: Modules that pass the signal through without changing which activation a layer feeds (looked through).
_TRANSPARENT: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ZeroPad2d,
)


def _norm_name(module: nn.Module) -> bool:
    # HF / timm norms that are not torch classes (T5LayerNorm, LlamaRMSNorm, timm LayerNorm2d subclasses count already)
    name = type(module).__name__
    return name.endswith(("LayerNorm", "RMSNorm", "BatchNorm", "GroupNorm")) and next(module.children(), None) is None


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm, ...).

    Torch's classes and their subclasses, plus leaf modules whose class name ends in ``LayerNorm`` / ``RMSNorm`` /
    ``BatchNorm`` / ``GroupNorm`` (HF's ``T5LayerNorm``, ``LlamaRMSNorm``...).
    """
    return isinstance(module, TORCH_NORMS) or _norm_name(module)


def is_transparent(module: nn.Module) -> bool:
    """Whether the data flow looks through ``module`` when finding a layer's follower.

    Dropout, pooling, reshapes, identities and norms; an unknown module that the probe finds to be the identity.
    """
    if isinstance(module, _TRANSPARENT) or is_norm(module):
        return True
    kind = classify(module)
    return kind is not None and kind[0] == "identity"


def is_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a weight layer: it owns parameters directly and is neither an activation nor a norm."""
    has_params = next(module.parameters(recurse=False), None) is not None
    return has_params and nonlinearity_of(module) is None and not is_norm(module)


def follower_of(module: nn.Module) -> Follower:
    """The follower an activation module stands for: ``(nonlinearity, slope)``; ``("linear", None)`` for others."""
    kind = classify(module)
    if kind is None or kind[0] == "identity":
        return "linear", None
    return kind
