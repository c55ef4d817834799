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


# --------------------------------------------------------------------------------------------------------------------
# Which activation follows each layer: Sequential order (static) and execution order (one forward, hooks).
# --------------------------------------------------------------------------------------------------------------------

#: A resolved follower: the nonlinearity name (``"linear"`` when the layer is followed by another layer or by nothing)
#: and, for ``leaky_relu``, its negative slope.
Follower = tuple[str, "float | None"]

_NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
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

#: Modules that pass the signal through without changing which activation a layer feeds (skipped when looking ahead).
_TRANSPARENT: tuple[type[nn.Module], ...] = (
    *_NORM_TYPES,
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
)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm, ...)."""
    return isinstance(module, _NORM_TYPES)


def is_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a weight layer: it owns parameters directly and is neither an activation nor a norm."""
    has_params = next(module.parameters(recurse=False), None) is not None
    return has_params and nonlinearity_of(module) is None and not is_norm(module)


def _slope(module: nn.Module) -> float | None:
    slope = getattr(module, "negative_slope", None)
    if slope is None and isinstance(module, nn.RReLU):
        slope = (module.lower + module.upper) / 2
    return float(slope) if isinstance(slope, (int, float)) else None


def _follower_of(module: nn.Module) -> Follower:
    name = nonlinearity_of(module)
    assert name is not None
    return name, _slope(module) if name == "leaky_relu" else None


def sequential_followers(root: nn.Module) -> dict[str, Follower]:
    """Followers found from ``nn.Sequential`` order alone (no forward): the next activation among later siblings.

    Norms, dropout, pooling and reshapes are looked through. A layer followed by another layer gets ``"linear"``; the
    last layer of the root (when the root is a Sequential) too. Layers at the end of a nested Sequential or outside any
    Sequential are not resolved here.
    """
    found: dict[str, Follower] = {}
    for seq_name, seq in root.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for i, (child_name, child) in enumerate(children):
            if not is_layer(child):
                continue
            qualified = f"{seq_name}.{child_name}" if seq_name else child_name
            follower: Follower | None = ("linear", None) if seq is root else None
            for _, nxt in children[i + 1 :]:
                if isinstance(nxt, _TRANSPARENT):
                    continue
                follower = _follower_of(nxt) if nonlinearity_of(nxt) is not None else ("linear", None)
                break
            if follower is not None:
                found[qualified] = follower
    return found


def _functional_activations() -> dict[object, str]:
    import torch
    import torch.nn.functional as F

    table: dict[object, str] = {}
    for names, nl in (
        (("relu", "relu_", "relu6", "hardtanh_relu"), "relu"),
        (("leaky_relu", "leaky_relu_", "rrelu", "prelu"), "leaky_relu"),
        (("tanh", "hardtanh"), "tanh"),
        (("sigmoid", "hardsigmoid"), "sigmoid"),
        (("selu", "selu_"), "selu"),
        (("gelu",), "gelu"),
        (("silu", "mish", "hardswish"), "silu"),
        (("elu", "elu_", "celu"), "elu"),
        (("softplus",), "softplus"),
    ):
        for name in names:
            for owner in (F, torch, torch.Tensor):
                fn = getattr(owner, name, None)
                if fn is not None:
                    table[fn] = nl
    return table


def _to_device(obj: object, device: object) -> object:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)  # type: ignore[call-overload]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def traced_followers(root: nn.Module, example_input: object) -> dict[str, Follower]:
    """Followers found from execution order during one forward of ``example_input``.

    Records, in order, every weight layer that finishes its forward and every activation that runs (activation
    modules, and functional calls such as ``F.relu``/``torch.tanh``/``x.sigmoid()`` made outside activation modules and
    leaf layers). A layer's follower is the next recorded activation, ``"linear"`` when another layer or nothing comes
    first. Layers that never run, or run several times with different followers, are left out.

    Side-effect free: runs under ``torch.no_grad()`` in eval mode (no dropout draws, no BatchNorm statistic updates),
    restores every module's train/eval flag and torch's RNG state afterwards. A tuple input is unpacked into positional
    arguments, a dict into keyword arguments. Raises whatever the forward raises.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    functional = _functional_activations()
    events: list[tuple[str, str, float | None]] = []
    depth = [0]  # > 0 inside an activation module or a leaf layer: functional calls there are internal

    class _Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            name = functional.get(func)
            if name is not None and depth[0] == 0:
                slope = None
                if name == "leaky_relu":
                    raw = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
                    slope = float(raw) if isinstance(raw, (int, float)) else None
                events.append(("act", name, slope))
            return func(*args, **kwargs)

    handles = []
    for qualified, mod in root.named_modules():
        act = nonlinearity_of(mod) is not None
        layer = is_layer(mod)
        if not (act or layer):
            continue
        leaf = next(mod.children(), None) is None
        if act or leaf:

            def pre(_m: nn.Module, _i: object) -> None:
                depth[0] += 1

            handles.append(mod.register_forward_pre_hook(pre))

        def post(m: nn.Module, _i: object, _o: object, q: str = qualified, a: bool = act, lf: bool = leaf) -> None:
            if a or lf:
                depth[0] -= 1
            if a:
                nl, slope = _follower_of(m)
                events.append(("act", nl, slope))
            else:
                events.append(("layer", q, None))

        handles.append(mod.register_forward_hook(post))

    modes = {m: m.training for m in root.modules()}
    param = next(root.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            root.eval()
            x = _to_device(example_input, device)
            with _Recorder():
                if isinstance(x, tuple):
                    root(*x)
                elif isinstance(x, dict):
                    root(**x)
                else:
                    root(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training

    seen: dict[str, set[Follower]] = {}
    for i, (kind, name, _) in enumerate(events):
        if kind != "layer":
            continue
        follower: Follower = ("linear", None)
        for kind2, name2, slope2 in events[i + 1 :]:
            if kind2 == "act":
                follower = (name2, slope2)
            break
        seen.setdefault(name, set()).add(follower)
    return {name: next(iter(fs)) for name, fs in seen.items() if len(fs) == 1}
