"""What a parameter is: one definition of weight, bias, norm parameter, embedding, recurrent weight, free parameter.

Initializers (which scheme applies), statistics (which rows a profile shows) and health rules (which parameters are
compared with which, which ones an update-ratio verdict applies to) all ask this module, so "bias" means the same
thing everywhere. Decided by the owning module's type (or behaviour) and the parameter's own name:

============== ===================================================================================================
role           parameters
============== ===================================================================================================
``weight``     the weight of a layer (``Linear``, ``Conv*``, HF ``Conv1D``, ``Bilinear``...), the input weights of
               a recurrent layer (``weight_ih_l0``, projection ``weight_hr_l0``), attention projections
               (``in_proj_weight``, ``q_proj_weight``...); by convention any parameter named ``weight`` of a module
               that is neither a norm, an embedding nor an activation
``recurrent``  hidden-to-hidden weights of ``RNN`` / ``LSTM`` / ``GRU`` and their cells (``weight_hh_l0``,
               ``weight_hh``)
``bias``       additive offsets of layers: ``bias``, ``*_bias`` (``in_proj_bias``), the recurrent and attention
               biases (``bias_ih_l0``, ``bias_hh_l0_reverse``, ``bias_k``, ``bias_v``)
``norm_weight`` the scale (gamma) of a normalization layer
``norm_bias``  the shift (beta) of a normalization layer
``embedding``  the table of an ``Embedding`` / ``EmbeddingBag`` (also when tied to an output head: one tensor, one
               role)
``free``       any other parameter a module owns directly: class tokens, position embeddings, layer scales
               (``cls_token``, ``pos_embed``, ``gamma``), activation parameters (``PReLU.weight``)
============== ===================================================================================================

A normalization layer is a torch norm (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm) or a module that
looks like one (a norm-like class name or an ``eps`` / ``variance_epsilon`` / ``normalized_shape`` attribute, only
1-D parameters) and behaves like one: its output does not change when its input is scaled (HF ``T5LayerNorm``,
Llama's ``RMSNorm``, a hand-written ``LayerNorm``; timm's ``LayerScale``, which multiplies, is not one). The probe
runs on a copy, with a private generator: the model and the global RNG are untouched.

Pure torch; never imports Lightning or the rest of the package.

Example::

    >>> from torch import nn
    >>> roles = parameter_roles(nn.LSTM(4, 8))
    >>> roles["weight_ih_l0"], roles["weight_hh_l0"], roles["bias_hh_l0"]
    ('weight', 'recurrent', 'bias')
"""

from __future__ import annotations

import copy
import math
import re
import weakref
from typing import Literal, get_args

import torch
from torch import nn

__all__ = [
    "ROLES",
    "TORCH_NORMS",
    "Role",
    "fan_in",
    "is_bias_name",
    "is_norm",
    "parameter_role",
    "parameter_roles",
    "unit_norm",
]

Role = Literal["weight", "recurrent", "bias", "norm_weight", "norm_bias", "embedding", "free"]
#: Every role, in documentation order.
ROLES: tuple[Role, ...] = get_args(Role)

#: torch's normalization classes (subclasses included by ``isinstance``); also what ``activations.is_norm`` starts from.
TORCH_NORMS: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)
_NORM_ATTRS = ("eps", "variance_epsilon", "normalized_shape", "epsilon")
_NORM_NAME = re.compile(r"norm", re.IGNORECASE)
_BIAS_NAME = re.compile(r"^bias(_(ih|hh|k|v)(_l\d+)?(_reverse)?)?$|_bias$")
_NORM_SHIFT_NAMES = frozenset({"beta", "shift", "offset"})
_ACTIVATION_OWNERS: tuple[type[nn.Module], ...] = (nn.PReLU,)
_RECURRENT_NAME = re.compile(r"^weight_hh(_l\d+(_reverse)?)?$")


def is_bias_name(name: str) -> bool:
    """Whether a parameter's (last) name is a bias name: ``bias``, ``*_bias`` (``in_proj_bias``), ``bias_ih*`` /
    ``bias_hh*`` (``bias_ih_l0``, ``bias_hh_l0_reverse``), ``bias_k`` / ``bias_v``; the name-only fallback where no
    module is at hand (a ``relative_position_bias_table`` is a free parameter, not a bias).
    """  # noqa: D205
    return _BIAS_NAME.search(name.rsplit(".", 1)[-1]) is not None


def _direct_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module._parameters.values() if p is not None]  # direct parameters only (no recursion)


def _materialized(p: torch.Tensor) -> bool:
    return not isinstance(p, nn.parameter.UninitializedParameter)


def _behaves_like_norm(module: nn.Module) -> bool | None:
    """Scale-invariance probe on a copy: True / False, or None when the module cannot be called on a (8, C) input."""
    sizes = {p.numel() for p in _direct_params(module) if _materialized(p)}
    if len(sizes) != 1:
        return None
    (c,) = sizes
    if c < 2:
        return None
    gen = torch.Generator().manual_seed(0)
    p0 = _direct_params(module)[0]
    x = torch.randn(8, c, generator=gen, dtype=p0.dtype if p0.is_floating_point() else torch.float32)
    x = x.to(p0.device) * 3.0 + 0.5
    try:
        probe = copy.deepcopy(module)
        with torch.no_grad():
            for q in _direct_params(probe):
                q.fill_(1.0)  # a zero gamma would hide the behaviour
            y1 = probe(x)
            y2 = probe(x * 7.0)
    except Exception:
        return None
    if not isinstance(y1, torch.Tensor) or not isinstance(y2, torch.Tensor) or y1.shape != y2.shape:
        return None
    scale = y1.abs().max()
    if not torch.isfinite(scale) or scale == 0:
        return None
    return bool(((y1 - y2).abs().max() <= 1e-3 * scale).item())


_NORM_CACHE: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (torch's norms, or norm-like attributes confirmed by behaviour).

    A module with norm-like attributes that cannot be probed (lazy parameters, an input it rejects) counts as a norm
    when its class name says so (``...Norm...``).
    """
    if isinstance(module, TORCH_NORMS):
        return True
    params = _direct_params(module)
    if not params or any(_materialized(p) and p.dim() != 1 for p in params):
        return False
    named = _NORM_NAME.search(type(module).__name__) is not None
    if not named and not any(hasattr(module, a) for a in _NORM_ATTRS):
        return False
    verdict = _NORM_CACHE.get(module)
    if verdict is None:
        behaves = _behaves_like_norm(module)
        verdict = named if behaves is None else behaves
        _NORM_CACHE[module] = verdict
    return verdict


def parameter_role(module: nn.Module, name: str) -> Role:
    """The role of ``module``'s own parameter ``name`` (a direct parameter, not a dotted path).

    Raises:
        KeyError: ``module`` has no direct parameter ``name``.
    """
    if module._parameters.get(name) is None:
        raise KeyError(f"{type(module).__name__} has no parameter {name!r}; its parameters: {list(module._parameters)}")
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and name == "weight":
        return "embedding"
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)) and _RECURRENT_NAME.match(name):
        return "recurrent"
    if isinstance(module, _ACTIVATION_OWNERS):
        return "free"
    if is_norm(module):
        return "norm_bias" if is_bias_name(name) or name in _NORM_SHIFT_NAMES else "norm_weight"
    if is_bias_name(name):
        return "bias"
    if name == "weight" or name.endswith("_weight") or name.startswith("weight_"):
        return "weight"
    return "free"


def parameter_roles(model: nn.Module) -> dict[str, Role]:
    """``{qualified parameter name: role}`` for every name of every parameter, tied names included.

    A tensor shared by several modules has one role, the strongest of its uses (``embedding`` before ``weight``
    before the others), under every name: a GPT-2 ``lm_head.weight`` tied to ``wte.weight`` is an embedding.
    """
    found: list[tuple[str, nn.Parameter, Role]] = []
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod._parameters.items():
            if p is not None:
                found.append((f"{mod_name}.{pname}" if mod_name else pname, p, parameter_role(mod, pname)))
    rank = {"embedding": 0, "weight": 1}
    best: dict[int, Role] = {}
    for _, p, role in found:
        prev = best.get(id(p))
        if prev is None or rank.get(role, 2) < rank.get(prev, 2):
            best[id(p)] = role
    return {name: best[id(p)] for name, p, _ in found}


def _transposed(module: nn.Module) -> bool:
    """HF ``Conv1D`` (GPT-2): a 2-D weight stored as (in, out), recognized by its class name and ``nf`` attribute."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def fan_in(module: nn.Module, name: str) -> int | None:
    """Inputs per output unit of ``module``'s weight-like parameter ``name``: ``prod(shape[1:])`` (Linear, Conv,
    attention projections, RNN gate blocks), ``shape[0]`` for HF ``Conv1D``; ``None`` for 1-D or lazy parameters.
    """  # noqa: D205
    p = module._parameters.get(name)
    if p is None or not _materialized(p) or p.dim() < 2:
        return None
    if _transposed(module) and name == "weight":
        return int(p.shape[0])
    return int(math.prod(p.shape[1:]))


def unit_norm(module: nn.Module, name: str, role: Role | None = None) -> float:
    """The norm parameter ``name`` of ``module`` has at unit scale: the scale an update is measured against.

    A ``weight`` / ``recurrent`` weight that passes a unit-variance signal has RMS ``1/sqrt(fan_in)`` (LeCun), so
    ``sqrt(numel / fan_in)``; every other parameter (a gamma, a shift, a bias, an embedding row, a class token) acts
    on a unit-scale signal at RMS 1, so ``sqrt(numel)``. ``0.0`` for a lazy parameter.
    """
    p = module._parameters.get(name)
    if p is None or not _materialized(p):
        return 0.0
    role = role or parameter_role(module, name)
    fan = fan_in(module, name) if role in ("weight", "recurrent") else None
    return math.sqrt(p.numel() / fan) if fan else math.sqrt(p.numel())
