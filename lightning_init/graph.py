"""The data flow of a model's forward: which module or function consumes which tensor (pure torch).

One graph, two ways to get it:

- :func:`trace` runs one side-effect-free forward of an example input and records every module call and every torch
  function called between modules (``TorchFunctionMode``), linking them by the identity of the tensors they pass
  (in-place ops and in-place activations included). It also records the shapes each module saw, from which
  :mod:`lightning_init.init` reads a layer's true fans.
- :func:`symbolic` builds the same graph with ``torch.fx`` without any input, where the model traces symbolically
  (no data-dependent control flow); shapes are then unknown.

Nodes are *atomic* modules (leaf modules, activations, norms, ``nn.MultiheadAttention`` and RNNs, whose children are
internal), functions called outside them, parameters used directly (free parameters such as ``cls_token``), inputs
and constants. From the graph:

- :meth:`DataFlow.followers`: the activation each layer feeds, looking through norms, dropout, pooling, reshapes and
  residual additions: every ResNet ``conv2`` reaches BN -> (+ shortcut) -> ReLU, also where the downsample conv
  runs between them in execution order.
- :meth:`DataFlow.residuals`: residual additions (a fork whose two paths meet at an ``add``), the branch's layers,
  its last weight layer and its last norm.
- :meth:`DataFlow.order` / :meth:`DataFlow.depth`: modules in data-flow order (weight layers on the longest path from
  the input), the depth axis of the monitors' depth profiles: a downsample conv sits at the depth of its block's
  input, not after ``conv2``.

This module never imports Lightning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_init.activations import (
    Follower,
    classify,
    function_nonlinearity,
    is_norm,
    is_transparent,
)

#: What a node is. ``layer``: a module owning parameters that is neither an activation nor a norm (Linear, Conv,
#: HF Conv1D, Embedding, RNN, attention); ``norm``; ``activation`` (module or function); ``transparent`` (dropout,
#: pooling, reshapes, identities, additions: looked through for followers); ``other`` (matmul, softmax, a
#: parameter-free module that is none of these: ends a follower search as "linear"); ``param`` / ``input`` /
#: ``constant``: sources.
Role = Literal["layer", "norm", "activation", "transparent", "other", "param", "input", "constant"]

#: Functions (by name) that pass the signal through: reshapes, views, slicing, concatenation, dropout, pooling,
#: casts, element-wise arithmetic with a constant or another branch (additions are also where residuals meet).
TRANSPARENT_FUNCTIONS: frozenset[str] = frozenset(
    {
        *("add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__"),
        *("mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__"),
        *("neg", "__neg__", "view", "reshape", "permute", "transpose", "transpose_", "t", "contiguous"),
        *("flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as", "view_as", "reshape_as"),
        *("__getitem__", "getitem", "split", "chunk", "unbind", "narrow", "select", "cat", "concat", "stack"),
        *("movedim", "swapaxes", "swapdims", "roll", "pad", "repeat", "tile", "masked_fill", "masked_fill_"),
        *("dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"),
        *("to", "type", "type_as", "float", "half", "bfloat16", "double", "clone", "detach", "__get__"),
        *("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "mean"),
        *("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d"),
        *("adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool2d_with_indices", "interpolate"),
        *("layer_norm", "batch_norm", "group_norm", "rms_norm", "instance_norm", "normalize"),
    }
)

#: Calls that read a tensor's shape, not its values (ignored as consumers in a symbolic graph).
_SHAPE_QUERIES: frozenset[str] = frozenset({"size", "dim", "numel", "getattr", "shape"})

#: Functions (by name) whose result depends on a tensor's shape only (``zeros_like(input_ids)``: default segment ids).
_SHAPE_ONLY: frozenset[str] = frozenset(
    {"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty", "new_full"}
)

#: Functions and modules (by name) that turn a layer's output into probabilities or a classification loss: the layer
#: computes logits (its follower is ``("softmax", None)``: a readout).
LOGIT_CONSUMERS: frozenset[str] = frozenset(
    {"softmax", "log_softmax", "cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "Softmax", "LogSoftmax"}
    | {"CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss"}
)

#: Functions (by name) that add two tensors: where a residual branch meets its shortcut.
ADD_FUNCTIONS: frozenset[str] = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})

#: Fused attention kernels (by name): ``f(query, key, value, ...)``.
ATTENTION_FUNCTIONS: frozenset[str] = frozenset(
    {"scaled_dot_product_attention", "_scaled_dot_product_attention", "flash_attn_func", "memory_efficient_attention"}
)

#: Products (by name) whose result, fed to a softmax, is an attention score ``query @ key^T``.
SCORE_FUNCTIONS: frozenset[str] = frozenset({"matmul", "__matmul__", "bmm", "baddbmm", "einsum"})


@dataclass
class Node:
    """One recorded call (or source) of the data flow.

    Attributes:
        index: Position in the graph; inputs always have smaller indices (the graph is in topological order).
        role: What the node is (see :data:`Role`).
        target: The module's qualified name, the function's name, the parameter's qualified name, or ``"input"``.
        inputs: Indices of the nodes that produced the tensors this call consumed (in argument order).
        in_shapes: Shapes of the tensors consumed (traced graphs only; ``()`` for a symbolic graph).
        out_shapes: Shapes of the floating-point tensors produced.
        follower: ``(nonlinearity, slope)`` for an activation node.
        args: Non-tensor positional arguments of a function call (split sizes, dims), for pattern checks.
        module: Whether the node is a module call (``target`` is then the module's qualified name).
    """

    index: int
    role: Role
    target: str
    inputs: tuple[int, ...] = ()
    in_shapes: tuple[tuple[int, ...], ...] = ()
    out_shapes: tuple[tuple[int, ...], ...] = ()
    follower: Follower | None = None
    args: tuple[Any, ...] = ()
    module: bool = False


@dataclass(frozen=True)
class Residual:
    """A residual addition found in the data flow: ``out = shortcut(x) + branch(x)``.

    Attributes:
        add: Index of the add node.
        branch_layers: Qualified names of the weight layers on the branch, in data-flow order.
        shortcut_layers: Weight layers on the shortcut (a downsample conv), usually none.
        last_layer: The branch's last weight layer (ResNet ``conv2``, GPT-2 ``attn.c_proj``), or ``None``.
        last_norm: The norm between the last layer and the add (ResNet ``bn2``), or ``None`` (pre-norm transformers).
        attention: The branch computes attention (a fused attention kernel, a score product fed to a softmax, or an
            ``nn.MultiheadAttention``).
        width: The feature size of the added tensors (the residual stream's width), ``None`` when unknown.
    """

    add: int
    branch_layers: tuple[str, ...]
    shortcut_layers: tuple[str, ...]
    last_layer: str | None
    last_norm: str | None
    attention: bool = False
    width: int | None = None


@dataclass
class DataFlow:
    """The data-flow graph of one forward (see the module docstring).

    Attributes:
        nodes: Every node, in topological (= recording) order.
        kind: ``"traced"`` (a forward ran: shapes known) or ``"symbolic"`` (``torch.fx``: no shapes).
        embeddings: Qualified names of the embedding modules (not counted as weight layers of a residual branch).
        logits: Nodes whose output a module returned under a ``logits`` key (a Hugging Face ``ModelOutput``'s
            ``logits``, ``start_logits``...): the API says they are logits, so the layer producing them is a readout.
        mha: Qualified names of the ``nn.MultiheadAttention`` modules (attention computed inside one node).
    """

    nodes: list[Node] = field(default_factory=list)
    kind: Literal["traced", "symbolic"] = "traced"
    embeddings: frozenset[str] = frozenset()
    logits: frozenset[int] = frozenset()
    mha: frozenset[str] = frozenset()
    _consumers: list[list[int]] | None = field(default=None, repr=False)

    def consumers(self, index: int) -> list[int]:
        """Indices of the nodes that consumed a tensor produced by node ``index``."""
        if self._consumers is None:
            self._consumers = [[] for _ in self.nodes]
            for node in self.nodes:
                for i in dict.fromkeys(node.inputs):
                    self._consumers[i].append(node.index)
        return self._consumers[index]

    def calls(self, name: str) -> list[Node]:
        """The call nodes of the module named ``name`` (several when it runs several times)."""
        return [n for n in self.nodes if n.module and n.target == name]

    def modules(self) -> list[str]:
        """Qualified names of every module that ran, in recording order (first call)."""
        return list(dict.fromkeys(n.target for n in self.nodes if n.module))

    def _carries_signal(self, index: int) -> bool:
        node = self.nodes[index]
        if self.kind == "symbolic":
            return node.target not in _SHAPE_QUERIES
        return bool(node.out_shapes)

    def reads_input(self, name: str) -> bool | None:
        """Whether a call of module ``name`` reads a tensor computed from the model's input.

        ``False`` for an embedding indexed by positions (``arange``) or by a constant buffer (BERT's default
        segment ids): the same rows are added to every sample, whatever the input. Shape queries do not count
        (``arange(x.shape[1])`` in a symbolic graph), nor do tensors made from the input's shape alone
        (``zeros_like(input_ids)``). ``None`` when ``name`` did not run.
        """
        calls = self.calls(name)
        if not calls:
            return None
        stack = [i for node in calls for i in node.inputs]
        seen = set(stack)
        while stack:
            node = self.nodes[stack.pop()]
            if node.role == "input":
                return True
            if node.target in _SHAPE_ONLY or (self.kind == "symbolic" and node.target in _SHAPE_QUERIES):
                continue
            for i in node.inputs:
                if i not in seen:
                    seen.add(i)
                    stack.append(i)
        return False

    # ---------------------------------------------------------------------------------------------- followers

    def _walk(self, start: int) -> set[Follower]:
        """Followers reached from node ``start``'s outputs, looking through transparent nodes and norms."""
        found: set[Follower] = set()
        seen = {start}
        stack = [start]
        while stack:
            i = stack.pop()
            if i in self.logits:
                found.add(("softmax", None))
            nxt = [c for c in self.consumers(i) if self._carries_signal(c)]
            if not nxt:
                found.add(("linear", None))  # the model's output (or consumed by nothing that carries a signal)
            for c in nxt:
                node = self.nodes[c]
                if node.role == "activation":
                    assert node.follower is not None
                    found.add(node.follower)
                elif node.role in ("transparent", "norm"):
                    if c not in seen:
                        seen.add(c)
                        stack.append(c)
                else:
                    found.add(("linear", None))
        return found

    def followers(self) -> dict[str, Follower]:
        """The activation each weight layer feeds (``("linear", None)`` for another layer or the output).

        Every call of a layer is followed along every path; paths through norms, dropout, pooling, reshapes and
        additions continue. When the paths reach one nonlinearity (and possibly linear consumers too, such as a
        residual stream read by the next layer), that nonlinearity is the follower; layers whose paths reach two
        different nonlinearities are left out (ambiguous).
        """
        out: dict[str, Follower] = {}
        reached: dict[str, set[Follower]] = {}
        for node in self.nodes:
            if node.role == "layer" and node.module:
                reached.setdefault(node.target, set()).update(self._walk(node.index))
        for name, found in reached.items():
            nonlinear = {f for f in found if f[0] != "linear"}
            if len(nonlinear) == 1:
                out[name] = next(iter(nonlinear))
            elif not nonlinear:
                out[name] = ("linear", None)
        return out

    def split_into(self, name: str) -> int | None:
        """How many equal parts the output of layer ``name`` is split into along its features (fused qkv: 3).

        Recognized on every call: ``out.split(d, dim=-1)`` / ``chunk(k, -1)`` into equal parts (GPT-2 ``c_attn``),
        or a ``reshape`` / ``view`` to ``(..., k, heads, head_dim)`` (timm ``qkv``). ``None`` when not seen.
        """
        parts: set[int] = set()
        calls = self.calls(name)
        if not calls or not all(n.out_shapes for n in calls):
            return None
        for node in calls:
            features = node.out_shapes[0][-1]
            lead = node.out_shapes[0][:-1]
            k = None
            for c in self.consumers(node.index):
                use = self.nodes[c]
                if use.inputs[:1] != (node.index,):
                    continue
                if use.target in ("split", "chunk") and len(use.out_shapes) > 1:
                    sizes = {s[-1] for s in use.out_shapes}
                    if len(sizes) == 1 and all(s[:-1] == lead for s in use.out_shapes):
                        k = len(use.out_shapes)
                elif use.target in ("reshape", "view") and use.out_shapes:
                    shape = use.out_shapes[0]
                    fused = shape[: len(lead)] == lead and len(shape) > len(lead) + 1 and shape[len(lead)] in (2, 3)
                    if fused and math.prod(shape[len(lead) :]) == features:
                        k = shape[len(lead)]
            if k is None:
                return None
            parts.add(k)
        return parts.pop() if len(parts) == 1 else None

    # ---------------------------------------------------------------------------------------------- attention

    def _score_nodes(self) -> list[int]:
        """Attention nodes: fused kernels, score products that reach a softmax, ``nn.MultiheadAttention`` calls."""
        return [node.index for node in self.nodes if self._is_attention(node)]

    def _is_attention(self, node: Node) -> bool:
        if node.module:
            return node.role == "layer" and node.target in self.mha
        if node.target in ATTENTION_FUNCTIONS:
            return True
        return node.target in SCORE_FUNCTIONS and self._reaches_softmax(node.index)

    def _reaches_softmax(self, start: int) -> bool:
        stack, seen = [start], {start}
        while stack:
            for c in self.consumers(stack.pop()):
                node = self.nodes[c]
                if node.role == "activation" and node.follower == ("softmax", None):
                    return True
                if node.role == "transparent" and c not in seen:
                    seen.add(c)
                    stack.append(c)
        return False

    # ---------------------------------------------------------------------------------------------- depth / order

    def _layer_depths(self) -> list[int]:
        depth = [0] * len(self.nodes)
        for node in self.nodes:
            base = max((depth[i] for i in node.inputs), default=0)
            depth[node.index] = base + (1 if node.role == "layer" else 0)
        return depth

    def depth(self) -> dict[str, int]:
        """Module name -> data-flow depth of its first call.

        The depth is the number of weight layers on the longest path from the input, the module itself included: a
        ResNet ``downsample.0`` has its block's ``conv1`` depth, not ``conv2`` + 1.
        """
        depth = self._layer_depths()
        out: dict[str, int] = {}
        for node in self.nodes:
            if node.module and node.target not in out:
                out[node.target] = depth[node.index]
        return out

    def order(self) -> list[str]:
        """Qualified names of the modules that ran, in data-flow order: by :meth:`depth`, then by first call."""
        depth = self.depth()
        first = {name: i for i, name in enumerate(depth)}
        return sorted(depth, key=lambda n: (depth[n], first[n]))

    # ---------------------------------------------------------------------------------------------- residuals

    def _ancestors(self) -> list[int]:
        """Bit set of every node's ancestors (itself included), one Python int per node."""
        anc = [0] * len(self.nodes)
        for node in self.nodes:
            bits = 1 << node.index
            for i in node.inputs:
                bits |= anc[i]
            anc[node.index] = bits
        return anc

    def _layers_in(self, bits: int) -> list[str]:
        return list(
            dict.fromkeys(
                self.nodes[i].target
                for i in _bits(bits)
                if self.nodes[i].role == "layer"
                and self.nodes[i].module
                and self.nodes[i].target not in self.embeddings
            )
        )

    def _last_on_branch(self, start: int) -> tuple[str | None, str | None]:
        """Walk back from the branch's output through single-input nodes: (last weight layer, last norm after it)."""
        norm = None
        i = start
        for _ in range(len(self.nodes)):
            node = self.nodes[i]
            if node.role == "layer" and node.module:
                return node.target, norm
            if node.role == "norm" and node.module and norm is None:
                norm = node.target
            elif node.role not in ("transparent", "activation", "norm"):
                return None, norm
            signal = [j for j in node.inputs if self.nodes[j].role not in ("param", "constant")]
            if len(signal) != 1:
                return None, norm
            i = signal[0]
        return None, norm

    def residuals(self) -> list[Residual]:
        """Residual additions found in the data flow.

        An ``add(a, b)`` whose operands share a fork (their latest common ancestor) and whose paths from the fork
        carry weight layers on one side (the branch) and fewer on the other (the shortcut: identity or a
        downsample). Operands of different shapes (masks, biases) are not residual.
        """
        anc = self._ancestors()
        scores = set(self._score_nodes())
        out: list[Residual] = []
        for node in self.nodes:
            if node.role != "transparent" or node.target not in ADD_FUNCTIONS or len(node.inputs) != 2:
                continue
            a, b = node.inputs
            if a == b:
                continue
            if node.in_shapes and (len(node.in_shapes) != 2 or node.in_shapes[0] != node.in_shapes[1]):
                continue
            common = anc[a] & anc[b]
            if not common:
                continue
            fork = common.bit_length() - 1
            side_a = self._layers_in(anc[a] & ~anc[fork])
            side_b = self._layers_in(anc[b] & ~anc[fork])
            if len(side_a) == len(side_b):
                continue
            branch_in, branch, shortcut = (a, side_a, side_b) if len(side_a) > len(side_b) else (b, side_b, side_a)
            last_layer, last_norm = self._last_on_branch(branch_in)
            side = anc[branch_in] & ~anc[fork]
            attention = any((side >> i) & 1 for i in scores)
            width = node.in_shapes[0][-1] if node.in_shapes and node.in_shapes[0] else None
            out.append(Residual(node.index, tuple(branch), tuple(shortcut), last_layer, last_norm, attention, width))
        return out


def _bits(bits: int) -> Iterator[int]:
    i = 0
    while bits:
        if bits & 1:
            yield i
        bits >>= 1
        i += 1


# ---------------------------------------------------------------------------------------------- building the graph


def is_atomic(module: nn.Module) -> bool:
    """Whether the data flow treats ``module`` as one node.

    Leaf modules, activations (by :func:`classify`), norms, ``nn.MultiheadAttention`` and RNNs (their children are
    internal to them).
    """
    if next(module.children(), None) is None:
        return True
    return isinstance(module, (nn.MultiheadAttention, nn.RNNBase)) or is_norm(module) or classify(module) is not None


def _module_role(module: nn.Module) -> tuple[Role, Follower | None]:
    if type(module).__name__ in LOGIT_CONSUMERS:
        return "activation", ("softmax", None)
    kind = classify(module)
    if kind is not None and kind[0] != "identity":
        return "activation", kind
    if is_norm(module):
        return "norm", None
    if next(module.parameters(recurse=True), None) is not None:
        return "layer", None
    if is_transparent(module):
        return "transparent", None
    return "other", None


def _function_role(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Role, Follower | None]:
    nl = function_nonlinearity(name)
    if nl is not None:
        slope = None
        if nl == "leaky_relu":
            raw = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
            slope = float(raw) if isinstance(raw, (int, float)) else None
        return "activation", (nl, slope)
    if name in LOGIT_CONSUMERS:
        return "activation", ("softmax", None)
    return ("transparent", None) if name in TRANSPARENT_FUNCTIONS else ("other", None)


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)
    elif hasattr(obj, "to_tuple") and callable(obj.to_tuple):  # HF ModelOutput
        yield from _tensors(obj.to_tuple())


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` (a tensor, or lists / tuples / dicts of them) moved to ``device``; anything else as it is."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def call_with(module: nn.Module, example_input: Any) -> Any:
    """Run ``module`` on ``example_input``: a tuple is unpacked as positional arguments, a dict as keyword arguments."""
    if isinstance(example_input, tuple):
        return module(*example_input)
    if isinstance(example_input, dict):
        return module(**example_input)
    return module(example_input)


class _Builder:
    """Collects nodes; maps tensor identities to their latest producer (kept alive, so ``id`` is never reused)."""

    def __init__(self, root: nn.Module) -> None:
        self.flow = DataFlow()
        self.producer: dict[int, int] = {}
        self.alive: list[Tensor] = []
        self.params = {id(p): name for name, p in root.named_parameters(remove_duplicate=False)}

    def add(self, node: Node) -> Node:
        node.index = len(self.flow.nodes)
        self.flow.nodes.append(node)
        return node

    def source(self, t: Tensor) -> int:
        key = id(t)
        if key not in self.producer:
            name = self.params.get(key)
            role: Role = "param" if name is not None else "constant"
            node = self.add(Node(0, role, name or "constant", out_shapes=(tuple(t.shape),)))
            self.producer[key] = node.index
            self.alive.append(t)
        return self.producer[key]

    def inputs(self, args: Any) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        ts = list(_tensors(args))
        return tuple(self.source(t) for t in ts), tuple(tuple(t.shape) for t in ts)

    def outputs(self, node: Node, result: Any) -> None:
        shapes = []
        for t in _tensors(result):
            if t.is_floating_point() or t.is_complex():
                shapes.append(tuple(t.shape))
            self.producer[id(t)] = node.index
            self.alive.append(t)
        node.out_shapes = tuple(shapes)


def trace(root: nn.Module, example_input: Any) -> DataFlow:
    """The data flow of one forward of ``example_input`` (see the module docstring).

    Side-effect free: runs under ``torch.no_grad()`` with every module in eval mode (no dropout draws, no BatchNorm
    statistic updates), restores every module's train/eval flag and torch's RNG state afterwards; hooks are removed
    also when the forward raises. Lazy modules (``nn.LazyLinear``) are materialized by this forward, as by any other.
    A tuple input is unpacked into positional arguments, a dict into keyword arguments. Raises what the forward
    raises.
    """
    from torch.overrides import TorchFunctionMode

    b = _Builder(root)
    depth = [0]

    class _Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            result = func(*args, **kwargs)
            if depth[0] == 0:
                outs = [t for t in _tensors(result)]
                if outs:
                    name = getattr(func, "__name__", str(func))
                    role, follower = _function_role(name, tuple(args), kwargs)
                    ins, shapes = b.inputs((args, kwargs))
                    extra = tuple(a for a in args if isinstance(a, (int, float, tuple, list)) and not _has_tensor(a))
                    node = b.add(Node(0, role, name, ins, shapes, follower=follower, args=extra))
                    b.outputs(node, result)
            return result

    names = {id(m): n for n, m in root.named_modules(remove_duplicate=False)}
    atomic = [(n, m) for n, m in root.named_modules() if is_atomic(m)]
    roles = {id(m): _module_role(m) for _, m in atomic}  # probes run here, before any hook or recording
    pending: dict[int, list[tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]]] = {}
    handles = []

    def pre(m: nn.Module, args: Any, kwargs: Any) -> None:
        if depth[0] == 0:
            pending.setdefault(id(m), []).append(b.inputs((args, kwargs)))
        depth[0] += 1

    def post(m: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        depth[0] -= 1
        if depth[0] == 0:
            ins, shapes = pending[id(m)].pop()
            role, follower = roles[id(m)]
            node = b.add(Node(0, role, names[id(m)], ins, shapes, follower=follower, module=True))
            b.outputs(node, output)

    logits: set[int] = set()

    def returned(m: nn.Module, args: Any, output: Any) -> None:
        keys = output.keys() if isinstance(output, dict) or hasattr(output, "to_tuple") else ()
        for key in keys:
            value = output[key]
            if "logits" in str(key) and isinstance(value, Tensor) and id(value) in b.producer:
                logits.add(b.producer[id(value)])

    for _, m in atomic:
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    for _, m in root.named_modules():
        if not is_atomic(m):
            handles.append(m.register_forward_hook(returned))

    modes = {m: m.training for m in root.modules()}
    param = next((p for p in root.parameters() if not isinstance(p, nn.parameter.UninitializedParameter)), None)
    device = param.device if param is not None else torch.device("cpu")
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            for m in modes:
                m.training = False
            x = to_device(example_input, device)
            if any(isinstance(p, nn.parameter.UninitializedParameter) for p in root.parameters()):
                call_with(root, x)  # materialize lazy modules first: their shapes are unknown until a forward
            for t in _tensors(x):
                node = b.add(Node(0, "input", "input", out_shapes=(tuple(t.shape),)))
                b.producer[id(t)] = node.index
                b.alive.append(t)
            with _Recorder():
                call_with(root, x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    b.flow.embeddings = _embedding_names(root)
    b.flow.mha = _mha_names(root)
    b.flow.logits = frozenset(logits)
    return b.flow


def _embedding_names(root: nn.Module) -> frozenset[str]:
    return frozenset(n for n, m in root.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)))


def _mha_names(root: nn.Module) -> frozenset[str]:
    return frozenset(n for n, m in root.named_modules() if isinstance(m, nn.MultiheadAttention))


def _has_tensor(obj: Any) -> bool:
    return next(_tensors(obj), None) is not None


def symbolic(root: nn.Module) -> DataFlow | None:
    """The data flow from ``torch.fx`` symbolic tracing (no input needed), or ``None`` where the model does not trace.

    Models with data-dependent control flow (and HF models) do not trace. Atomic modules (:func:`is_atomic`) stay
    leaves; shapes are unknown.
    """
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return is_atomic(m)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a model that does not trace may warn on the way out
            graph = _Tracer().trace(root)
    except Exception:  # any failure to trace symbolically means: use a traced forward instead
        return None
    modules = dict(root.named_modules())
    flow = DataFlow(kind="symbolic")
    index: dict[fx.Node, int] = {}

    def add(node: Node, key: fx.Node) -> None:
        node.index = len(flow.nodes)
        flow.nodes.append(node)
        index[key] = node.index

    for n in graph.nodes:
        ins = tuple(index[a] for a in n.all_input_nodes if a in index)
        if n.op == "placeholder":
            add(Node(0, "input", "input"), n)
        elif n.op == "get_attr":
            add(Node(0, "param", str(n.target)), n)
        elif n.op == "call_module":
            role, follower = _module_role(modules[str(n.target)])
            add(Node(0, role, str(n.target), ins, follower=follower, module=True), n)
        elif n.op in ("call_function", "call_method"):
            name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
            kwargs = {k: v for k, v in n.kwargs.items() if not isinstance(v, fx.Node)}
            args = tuple(a for a in n.args if not isinstance(a, fx.Node))
            role, follower = _function_role(name, (None, *args) if name.startswith("leaky") else args, kwargs)
            add(Node(0, role, name, ins, follower=follower), n)
    flow.embeddings = _embedding_names(root)
    flow.mha = _mha_names(root)
    return flow


def dataflow(root: nn.Module, example_input: Any = None) -> DataFlow | None:
    """The data flow of ``root``: :func:`trace` when ``example_input`` is given, else :func:`symbolic`.

    ``None`` when there is no input and the model does not trace symbolically.
    """
    if example_input is not None:
        return trace(root, example_input)
    return symbolic(root)


def dataflow_order(root: nn.Module, example_input: Any = None) -> list[str] | None:
    """Qualified names of the modules of ``root`` in data-flow order (see :meth:`DataFlow.order`).

    ``None`` when no data flow could be built (no ``example_input`` and the model does not trace symbolically).

    Example::

        order = dataflow_order(resnet, torch.randn(2, 3, 32, 32))
        # [..., 'layer2.0.conv1', 'layer2.0.downsample.0', 'layer2.0.bn1', ...]
    """
    flow = dataflow(root, example_input)
    return None if flow is None else flow.order()


# ---------------------------------------------------------------------------------------------- static fallback


def sequential_followers(root: nn.Module) -> dict[str, Follower]:
    """Followers found from ``nn.Sequential`` order alone (no forward, no tracing).

    The next activation among later siblings, norms, dropout, pooling and reshapes looked through. A layer followed
    by another layer gets ``"linear"``; the last layer of the root (when the root is a Sequential) too. Layers at the
    end of a nested Sequential or outside any Sequential are not resolved here.
    """
    from lightning_init.activations import is_layer

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
                if is_transparent(nxt):
                    continue
                kind = classify(nxt)
                follower = kind if kind is not None else ("linear", None)
                break
            if follower is not None:
                found[qualified] = follower
    return found


def traced_followers(root: nn.Module, example_input: Any) -> dict[str, Follower]:
    """Followers from the data flow of one forward of ``example_input`` (:func:`trace`, :meth:`DataFlow.followers`)."""
    return trace(root, example_input).followers()
