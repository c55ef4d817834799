"""Which activation follows each layer.

The name of a nonlinearity is the one idea shared by initializers (``nonlinearity=`` / ``auto``) and monitors
(dead units after ReLU-like layers, saturation of bounded ones). This module never imports Lightning.
"""

from __future__ import annotations

from torch import nn

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

#: Nonlinearities whose outputs are zero on a whole half-line: a unit is "dead" when its outputs are all zero.
RELU_LIKE: frozenset[str] = frozenset({"relu"})

#: Bounded nonlinearities and the interval of their outputs: a unit is "saturated" near these bounds.
BOUNDED: dict[str, tuple[float, float]] = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}


def nonlinearity_of(module: nn.Module) -> str | None:
    """Return the nonlinearity name of an activation module, or ``None`` when ``module`` is not one.

    Subclasses count (a custom ``class MyReLU(nn.ReLU)`` is ``"relu"``); ``nn.Hardtanh`` and ``nn.ReLU6`` are both
    ``Hardtanh`` subclasses in torch, so exact type is looked up before the MRO.
    """
    for cls in type(module).__mro__:
        name = ACTIVATION_NONLINEARITY.get(cls)
        if name is not None:
            return name
    return None
