"""What the health rules need to know about a model: a :class:`~lightning_init.health.rules.Context` from an
``nn.Module`` (pure torch, never imports Lightning; the only module of the package that reads a model).

- :func:`parameter_context`: the role of every watched parameter (:mod:`lightning_init.roles`) and its unit-scale
  norm (the floor of the scale ``update_ratio`` is judged against);
- :func:`activation_context`: which watched modules are norms, which outputs the next module renormalizes (a conv
  whose output runs straight into its BatchNorm), which module is the model's output (logits) and how many classes
  it has, and the step's loss;
- :func:`flow_order` / :func:`in_flow_order`: the depth axis of the tables (the rows a depth profile compares, the
  rows of the figures) in data-flow order (:meth:`lightning_init.graph.DataFlow.order`), not registration order: a
  ResNet ``downsample`` conv sits at its block's input, where the shortcut takes it, not after ``conv2``.
"""  # noqa: D205

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_init.graph import dataflow_order
from lightning_init.health.rules import Context
from lightning_init.roles import Role, is_norm, parameter_roles, unit_norm

__all__ = [
    "activation_context",
    "adaptive_warmup",
    "classes_of",
    "flow_order",
    "in_flow_order",
    "parameter_context",
]


def flow_order(model: nn.Module, example_input: Any = None) -> list[str]:
    """Qualified module names of ``model`` in data-flow order, ``[]`` where no data flow can be built.

    :func:`lightning_init.graph.dataflow_order`: one side-effect-free forward of ``example_input`` (eval mode, no
    grad, RNG state restored), else ``torch.fx`` symbolic tracing; a forward that raises or a model that does not
    trace gives ``[]`` (the tables keep their order), never an error.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in (example_input, None) if example_input is not None else (None,):
            try:
                order = dataflow_order(model, x)
            except Exception:  # the order is a presentation aid: a forward that fails here must not stop training
                order = None
            if order:
                return order
    return []


def in_flow_order(names: Sequence[str], order: Sequence[str]) -> list[str]:
    """``names`` (modules, or parameters ``{module}.{name}``) sorted by their module's position in ``order``.

    A name belongs to the longest dotted prefix of it that ``order`` holds (``attn.out_proj.weight`` to an atomic
    ``attn``); a name with none (a free parameter such as ``cls_token``) stays right after the
    name before it. Names of one module keep their order (stable).
    """
    rank = {name: i for i, name in enumerate(order)}
    keys: list[tuple[float, int]] = []
    last = -1.0
    for i, name in enumerate(names):
        parts = name.split(".")
        found = next((rank[p] for k in range(len(parts), 0, -1) if (p := ".".join(parts[:k])) in rank), None)
        if found is not None:
            last = float(found)
        keys.append((last, i))
    return [names[i] for _, i in sorted(keys)]


def parameter_context(model: nn.Module, named: Sequence[tuple[str, nn.Parameter]]) -> Context:
    """Roles and unit-scale norms of the watched ``(name, parameter)`` pairs (names as the monitor logs them).

    A parameter is looked up by identity, so a tied tensor has one role (:func:`~lightning_init.roles.parameter_roles`)
    and the unit norm of its first owner.
    """
    by_name = parameter_roles(model)
    role_of: dict[int, Role] = {}
    owner_of: dict[int, tuple[nn.Module, str]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module._parameters.items():
            if p is None or id(p) in owner_of:
                continue
            owner_of[id(p)] = (module, pname)
            role_of[id(p)] = by_name[f"{mname}.{pname}" if mname else pname]
    roles: dict[str, Role] = {}
    scales: dict[str, float] = {}
    for name, p in named:
        if id(p) not in owner_of:
            continue
        module, pname = owner_of[id(p)]
        roles[name] = role_of[id(p)]
        scales[name] = unit_norm(module, pname, roles[name])
    return Context(roles=roles, scales=scales)


def classes_of(module: nn.Module) -> int | None:
    """Output features of a layer: ``out_features`` (Linear), ``nf`` (HF Conv1D), ``out_channels``, else the first
    dimension of its weight; ``None`` when it has none.
    """  # noqa: D205
    for attr in ("out_features", "nf", "out_channels", "num_embeddings"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    weight = module._parameters.get("weight")
    if weight is not None and not isinstance(weight, nn.parameter.UninitializedParameter) and weight.dim() >= 1:
        return int(weight.shape[0])
    return None


def activation_context(
    modules: Mapping[str, nn.Module],
    order: Sequence[str],
    nonlinearities: Mapping[str, str | None],
    *,
    loss: float | None = None,
) -> Context:
    """The activation rules' context for the modules of a table, in the table's (execution) order.

    Args:
        modules: qualified name -> module.
        order: the table's rows, input -> output.
        nonlinearities: row -> nonlinearity (``None`` for layers and norms).
        loss: the step's training loss, if known.
    """
    norms = frozenset(n for n in order if n in modules and nonlinearities.get(n) is None and is_norm(modules[n]))
    embeddings = frozenset(n for n in order if isinstance(modules.get(n), (nn.Embedding, nn.EmbeddingBag)))
    layers = [n for n in order if nonlinearities.get(n) is None and n not in norms and n not in embeddings]
    layer_set = frozenset(layers)
    renormalized = frozenset(a for a, b in itertools.pairwise(order) if a in layer_set and b in norms)
    output = layers[-1] if layers else None
    classes = classes_of(modules[output]) if output is not None and output in modules else None
    return Context(
        norms=norms,
        renormalized=renormalized,
        output=output,
        classes=classes,
        loss=loss,
        embeddings=embeddings,
        nonlinearities=dict(nonlinearities),
    )


def adaptive_warmup(optimizer: torch.optim.Optimizer, step: int) -> set[int]:
    """Ids of the parameters whose adaptive optimizer is still in its warm-up at optimizer step ``step`` (0-based).

    Adam-family groups (``betas``) warm up for ``1 / (1 - beta1)`` steps (10 for 0.9): with bias correction the
    first update is ``lr`` per element whatever the gradient, and the moments average over that many steps.
    RMSprop groups (``alpha``) for ``1 / (1 - alpha)`` steps: the second moment starts at 0, so the first updates are
    up to ``1 / sqrt(1 - alpha)`` times ``lr`` per element. Other optimizers: none. Read from the param groups only
    (no optimizer state, no device access).
    """
    out: set[int] = set()
    for group in optimizer.param_groups:
        betas = group.get("betas")
        beta = betas[0] if isinstance(betas, (tuple, list)) and betas else group.get("alpha")
        if not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            continue
        if step + 1 <= 1.0 / (1.0 - beta):
            out.update(id(p) for p in group["params"])
    return out
