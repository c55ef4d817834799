"""``init_module``: plan the initialization of every parameter of an ``nn.Module``, apply it, report it (pure torch).

Usable on any ``nn.Module`` (no Lightning needed), e.g. inside ``LightningModule.configure_model`` under FSDP::

    report = init_module(model, "kaiming_normal", nonlinearity="relu", seed=0)
    print(report)

Two phases, in the style of timm's ``init_weights_*`` + ``named_apply``: :func:`plan_init` resolves, for every
parameter, the scheme, its parameters, the layer's **true fans**, its follower, ties, fused blocks and residual
presets, and runs every check; only then :func:`apply_plan` writes, with one small applier per kind. A bad argument,
a rule matching nothing, a preset without a data flow: all raise before any parameter changes.

What each kind of parameter gets:

- **Weights** of layers (Linear, Conv*, ConvTranspose*, HF ``Conv1D``, Bilinear, any leaf owning a >= 2-d
  parameter): the scheme, with the fans of how the layer is used. With an ``example_input`` (a
  LightningModule's ``example_input_array``), one side-effect-free traced forward (:mod:`lightning_init.graph`)
  records each layer's input and output feature sizes, so a 2-d weight stored ``(in, out)`` (HF ``Conv1D``) is
  recognized; without one, HF ``Conv1D`` is recognized by its layout (``weight`` of shape ``(nx, nf)``). Convolutions:
  ``fan_in = in/groups x kernel``, ``fan_out = out/groups x kernel`` (torch.nn.init counts ``out x kernel`` for
  grouped convs: a depthwise conv feeds ``kernel`` outputs per input, not ``channels x kernel``). Transposed convs:
  ``fan_in = in/groups x`` the kernel taps that reach one output on average (kernel/stride, measured on the layer's
  own geometry), the fan that keeps output/input variance level; the report says so.
- ``auto``: per layer from the activation that follows it in the data flow (:meth:`~lightning_init.graph.DataFlow.
  followers`: torch.fx where the model traces symbolically, the traced forward otherwise; ``nn.Sequential`` order as
  the static fallback), activations recognized by behaviour (:mod:`lightning_init.activations`):
  :func:`~lightning_init.schemes.auto_scheme` (ReLU family and GELU/SiLU: Kaiming; tanh/sigmoid/linear: Xavier; SELU:
  LeCun). A layer whose output feeds a softmax / cross-entropy (logits), or that is tied to an embedding, is a
  *readout*: ``N(0, 1/fan_in^2)``, muP's readout (Yang et al. 2022, "Tensor Programs V"), so the logits start near
  zero and the loss at init is ``ln(classes)``. Layers it cannot resolve get ``xavier_normal`` with gain 1 and one
  warning that names them.
- ``auto`` on **depthwise convs**: Kaiming on the true fan-in (the kernel, 9), ``sqrt(channels)`` times
  torchvision's ``fan_out`` std (torch counts ``out_channels x kernel`` for grouped convs). Under BatchNorm the scale
  only sets the conv's effective step, and EfficientNet learns ~10x slower than with torchvision's init in 30 SGD
  steps. Measured and not made the default (``benchmarks/auto_ratio.py``, 3 seeds): Kaiming ``fan_out`` with torch's
  count on every conv into a norm (EfficientNet 11.6 -> 1.16, MobileNet 2.8 -> 1.4, ResNet-18 1.7 -> 0.97) or on
  grouped convs only (EfficientNet 1.59) each made a healthy zoo run fire the ``update_ratio`` health rule (ResNet-18's
  stem, resp. MobileNet's projections at its former lr 0.02, > 10 % per step with ``auto``'s Glorot classifier
  head): a conv's step size
  under a norm is a learning-rate matter that ``auto`` cannot settle alone. Give a rule
  (``InitRule(type="Conv2d", ...)``) to follow a recipe's convention.
- ``auto``, **transformer blocks** (a model whose data flow has a residual branch computing attention: a fused
  attention kernel, a ``q @ k^T`` fed to a softmax, or ``nn.MultiheadAttention``;
  :meth:`~lightning_init.graph.DataFlow.residuals`). At the learning rates transformers are trained with, Adam moves
  every weight by about ``lr`` per step whatever its size, so the init's scale is the step's yardstick; the
  fan-based stds (Kaiming 0.18 at d = 64) start the blocks far from where a few steps take them. So:

  - every layer with a 2-d weight on a residual branch (q/k/v, output projections, MLP): *small init*
    ``N(0, 2/(5d))``, ``d`` the residual stream's width (Nguyen & Salazar 2019, "Transformers without Tears";
    GPT-NeoX ``small_init``), whatever activation follows;
  - an embedding whose output is normalized before any layer (BERT's word table) and is not tied to a readout:
    small init with its own ``d`` (GPT-NeoX initializes embeddings with the same method; under the norm its scale
    only sets its step size);
  - an embedding tied to the output layer (GPT-2 ``wte`` = ``lm_head``): small init too, not the readout's ``1/d``.
    In a pre-norm transformer the embedding's output *is* the residual stream every block adds to; at ``1/d`` the
    first block's MLP branch added 20x the embedding's rms at init (d = 64; 265x at d = 768; HF's init: 0.5x /
    2.6x), and the blocks had to unlearn their own noise before the token could be read; with small init 6x (16x at
    d = 768, where HF's GPT-2 also divides its output projections by ``sqrt(2 n_layer)``: ``residual="scaled"``).
    As a readout, small init starts the logits
    at std ``sqrt(2/5)``: the loss at init is ``ln(vocab) + 0.2`` at any width (GPT-2 d = 64: 4.79 vs ln 100 = 4.61;
    GPT-2 small, d = 768, vocab 50257: 11.05 vs 10.82, HF's init 10.95). Under ``residual="fixup"`` every branch
    starts at 0, the stream is the embedding alone and the readout's ``1/d`` is kept: at small init the logit of the
    input token itself, ``d x std = sqrt(2d/5)``, would dominate (GPT-2 d = 64, fixup: loss at init 5.51, not 4.63).

  At d = 768 these stds are 0.0228, HF's 0.02 (BERT, GPT-2: HF's constant is small init at d = 1000); they scale as
  ``1/sqrt(d)``, so at d = 64 they are 0.079, four times HF's constant.
- ``auto``, **position tables**: an embedding whose indices do not come from the input (positions from ``arange``,
  BERT's default segment ids from a buffer; :meth:`~lightning_init.graph.DataFlow.reads_input`) adds the same rows to
  every sample: it gets the position-embedding default ``trunc_normal(std=0.02)`` of BERT, GPT-2 and ViT/DeiT, as a
  free ``pos_embed`` does (a width-independent literature constant, HF's own value at every width). Found from the
  data flow only (a traced forward or ``torch.fx``; without one, an embedding is an embedding).

  Measured (``benchmarks/auto_ratio.py``: 30 steps of each zoo model's AdamW, same seeds, data and dropout; ratio of
  the mean final losses to the model's own init): with small init on the block layers and the word table only
  (2026-12-02, morning) BERT was 1.30 (20 seeds) and GPT-2 1.83 (3 seeds); a group-by-group ablation (each group set
  back to HF's values) put GPT-2's gap in the attention branch's value path (v, ``attn.c_proj``: 1.83 -> 1.11 at
  HF's values) against a residual stream started at ``1/d`` by the tied readout, and BERT's in the position and
  token-type tables (1.27 -> 0.57 at HF's values). With the two rules above: **GPT-2 0.71** (20 seeds, 0.62-0.79
  per seed; noise floor, HF's init re-drawn from other seeds: 1.00), **BERT 0.69** (20 seeds, 0.38-1.05; noise floor
  1.06), TransformerEncoder 0.48 (3 seeds); about the same at half and twice the zoo's learning rates (GPT-2 0.77 /
  0.73, 3 seeds; BERT 0.71 / 0.81, 10 seeds).
  The zoo's token tasks do not need positions (a bag of tokens, a next-token permutation), so part of the gain on
  BERT and the TransformerEncoder is that a small position table adds less noise; the rule is not chosen for that:
  0.02 is the literature's value at every width. Not made defaults, though measured: a zero query (muP, Yang et al.
  2022; BERT 1.30 -> 1.25 before these rules) and zero output projections of pre-norm branches (SkipInit; GPT-2 1.27,
  ViT 0.21); ``residual="fixup"`` stays opt-in (it hurt the TransformerEncoder, 1.39, and ViT, 1.19).
- **Fused projections** (timm ``qkv`` ``Linear(d, 3d)``, GPT-2 ``c_attn`` ``Conv1D(d, 3d)``): per ``d x d`` block
  when the split is seen in the data flow (``split``/``chunk`` into equal parts, ``reshape`` to ``(..., 3, heads,
  head_dim)``) or, without a traced forward, when the name is ``qkv`` / ``c_attn`` / ``in_proj`` /
  ``query_key_value`` and ``out = 3 x in``; otherwise as one matrix. ``nn.MultiheadAttention``'s packed input
  projection: per q/k/v block.
- **Norms** (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm): weight 1, bias 0. Under ``auto``, a norm
  weight that is exactly zero is the model's own design (timm ``zero_init_last``, torchvision
  ``zero_init_residual``) and is kept, unless a rule or a residual preset says otherwise.
- **Embeddings**: N(0, 1) (torch's default). A ``padding_idx`` row is zero. An embedding tied to an output layer
  is initialized once, for both roles: the readout (std ``1/d``) when its output is normalized before any layer,
  small init in a transformer (above), Xavier when it feeds a layer unnormalized (below); embeddings added to it
  get the same std unless they are position tables (above). The report lists every name of a tied tensor.
- **RNN / LSTM / GRU**: input weights by the scheme per gate block (``auto``: ``xavier_normal`` gain 1), recurrent
  weights orthogonal per gate block, biases the ``bias`` constant.
- **Free parameters** (owned directly by a module with children, or 1-d non-bias parameters of a leaf): documented
  literature defaults, overridable by a rule naming the parameter (``InitRule(name="cls_token", ...)``):
  ``cls_token`` / ``dist_token`` / ``reg_token`` / ``mask_token``: ``N(0, 1e-6)`` (timm ViT ``init_weights``);
  ``pos_embed`` / ``position_embedding(s)``: ``trunc_normal(std=0.02)`` (ViT, DeiT); layer scales (``gamma``,
  ``ls``, ``layer_scale``, a ``LayerScale`` module's parameter): kept when constant (the model's ``init_values``,
  CaiT), else ``1e-5`` (timm's default); other >= 2-d free parameters ``trunc_normal(std=0.02)``; other 1-d ones
  untouched (listed).
- **Residual presets** (``residual=``, branches found from the data flow): ``"zero_last_norm"`` (Goyal et al. 2017:
  the gamma of the last norm in each residual branch is 0, so each block starts as the identity);
  ``"scaled"`` (GPT-2, Radford et al. 2019: each branch's output projection is scaled by ``1/sqrt(N)``, ``N`` the
  number of residual branches, ``2 x n_layer`` in a transformer); ``"fixup"`` (Zhang et al. 2019: the last layer of
  each branch and the model's output layer are 0, the other ``m - 1`` layers of a branch are scaled by
  ``L^(-1/(2m-2))``, ``L`` branches).
- Activation modules with parameters (PReLU): untouched.
- ``lsuv`` (data-dependent, needs ``lsuv_batch``): Linear and Conv1d/2d/3d layers get an orthogonal weight (gain 1)
  and a zero bias, then :func:`~lightning_init.lsuv.lsuv_` rescales them in forward order until each output's variance
  on the batch is 1 within ``lsuv_tol``. Every other module gets what ``auto`` gives it; rules apply as usual. Layers
  the forward never calls keep the orthogonal pre-init. The per-layer iterations and variances are in
  ``InitReport.lsuv``.
- **Lazy modules** (``nn.LazyLinear``...): materialized first by a dry forward of ``example_input`` (or of
  ``lsuv_batch``); without either, a ``ValueError`` that names them.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from lightning_init.activations import Follower, nonlinearity_of
from lightning_init.checks import check_bool, check_seed
from lightning_init.graph import DataFlow, Residual, dataflow, sequential_followers
from lightning_init.lsuv import LSUV_LAYER_TYPES, LSUVReport, check_lsuv_args, isolated, lsuv_
from lightning_init.roles import parameter_role
from lightning_init.rules import InitRule, as_rules, check_all_match, first_match
from lightning_init.schemes import (
    SchemeName,
    apply_scheme_,
    auto_scheme,
    check_choice,
    check_magnitude,
    check_module,
    expected_std,
    normal_,
    orthogonal_,
    scheme_gain,
    trunc_normal_,
    uniform_,
    validate_scheme,
)
from lightning_init.stats import row_spread

SYMMETRY_MESSAGE = (
    "{layers}: every output unit of the weight is identical (e.g. zeros or a constant). Every unit of such a layer "
    "computes the same output, receives the same gradient and is updated the same way, so the symmetry is never broken "
    "and the layer behaves like a single unit: it cannot learn different features. Use a random scheme for weights "
    "(e.g. 'kaiming_normal' for ReLU, 'xavier_normal' for tanh/sigmoid); a constant is fine for biases."
)

#: Residual presets (see the module docstring). ``"none"``: no preset.
ResidualPreset = Literal["none", "zero_last_norm", "scaled", "fixup"]
RESIDUAL_PRESETS: tuple[str, ...] = get_args(ResidualPreset)

#: Fan-based schemes: sampled here from the layer's true fans (a normal or uniform draw of the formula's std).
_FAN_SCHEMES = frozenset(
    {"xavier_normal", "xavier_uniform", "kaiming_normal", "kaiming_uniform", "lecun_normal", "lecun_uniform"}
)

#: Names of fused q/k/v projections, recognized without a traced forward when ``out = 3 x in``.
_FUSED_NAMES = frozenset({"qkv", "c_attn", "in_proj", "query_key_value", "wqkv", "qkv_proj"})

#: Free parameters by name (the last component of the qualified name): (pattern, scheme, params, why).
#: The position-embedding default (BERT, GPT-2, ViT, DeiT; timm ``trunc_normal_(pos_embed, std=.02)``): a free
#: ``pos_embed`` and an embedding table indexed by positions alike.
POSITION_DEFAULT: dict[str, float] = {"mean": 0.0, "std": 0.02, "a": -0.04, "b": 0.04}

FREE_PARAMETER_DEFAULTS: tuple[tuple[str, str, dict[str, float], str], ...] = (
    (r"(cls|dist|reg|mask)_tokens?|register_tokens", "normal", {"mean": 0.0, "std": 1e-6}, "token: timm ViT"),
    (
        r"pos(ition)?_emb(ed|edding|eddings)?|absolute_pos_embed",
        "trunc_normal",
        POSITION_DEFAULT,
        "position embedding: ViT/DeiT",
    ),
)
_LAYER_SCALE = re.compile(r"gamma(_\d)?|ls\d?|layer_?scale(_\d)?|scale")

#: Readout: N(0, (1/fan_in)^2), muP's output layer (Yang et al. 2022).
READOUT = "readout"


@dataclass
class LayerInit:
    """One initialized parameter: a row of the :class:`InitReport` table.

    Attributes:
        layer: The parameter's qualified name (its first name when tied).
        shape: The tensor's shape.
        scheme: What it got (``auto: kaiming_normal (relu)``, ``ones``, ``x3 blocks``...).
        fan_in: True fan-in (per block for fused / gated weights), ``None`` when not fan-based.
        fan_out: True fan-out (per block).
        gain: The scheme's gain, ``None`` when it has none.
        expected_std: The std the formula predicts (``nan`` when data-dependent).
        actual_std: The measured std after init (population std).
        tied: The tensor's other names (a weight tied into several modules).
        note: Why, when it is not the plain scheme (transposed layout, residual preset, kept zero...).
    """

    layer: str
    shape: tuple[int, ...]
    scheme: str
    fan_in: int | None
    fan_out: int | None
    gain: float | None
    expected_std: float
    actual_std: float
    tied: tuple[str, ...] = ()
    note: str = ""


@dataclass
class InitReport:
    """What :func:`init_module` did.

    Attributes:
        rows: One row per initialized weight (biases are set to the report's ``bias`` and not listed).
        symmetric: Layers whose output units are all identical after init (``stats.row_spread == 0``).
        unresolved: Layers ``auto`` could not resolve (they got ``xavier_normal``, gain 1).
        skipped: Layers and parameters left untouched (``skip`` rules, ``only_rules``, activation parameters, free
            parameters without a default).
        bias: The bias constant.
        seed: The seed, when one was given.
        lsuv: What LSUV did (per-layer iterations, initial and final output variances), when ``lsuv`` was used.
        residual: The residual preset.
        notes: Sentences about the model as a whole (data flow used, residual branches found).
    """

    rows: list[LayerInit] = field(default_factory=list)
    symmetric: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bias: float = 0.0
    seed: int | None = None
    lsuv: LSUVReport | None = None
    residual: str = "none"
    notes: list[str] = field(default_factory=list)

    _HEADER = ("layer", "shape", "scheme", "fan_in", "fan_out", "gain", "expected std", "actual std")

    def _cells(self) -> list[tuple[str, ...]]:
        def num(x: float | None) -> str:
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"

        return [
            (
                r.layer + "".join(f" = {t}" for t in r.tied),
                "x".join(map(str, r.shape)),
                r.scheme,
                "-" if r.fan_in is None else str(r.fan_in),
                "-" if r.fan_out is None else str(r.fan_out),
                num(r.gain),
                num(r.expected_std),
                num(r.actual_std),
            )
            for r in self.rows
        ]

    def _notes(self) -> list[str]:
        notes = [f"biases: {self.bias:g}" + (f"; seed: {self.seed}" if self.seed is not None else "")]
        if self.residual != "none":
            notes.append(f"residual preset: {self.residual}")
        notes += self.notes
        notes += [f"{r.layer}: {r.note}" for r in self.rows if r.note]
        if self.skipped:
            notes.append(f"untouched: {', '.join(self.skipped)}")
        if self.unresolved:
            notes.append(f"auto could not resolve (xavier_normal): {', '.join(self.unresolved)}")
        if self.symmetric:
            notes.append(f"SYMMETRIC (identical output units): {', '.join(self.symmetric)}")
        return notes

    def to_markdown(self) -> str:
        """The report as a Markdown pipe table (TensorBoard's Text tab renders it) followed by notes."""
        lines = ["| " + " | ".join(self._HEADER) + " |", "|" + "---|" * len(self._HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self._cells()]
        text = "\n".join(lines) + "\n\n" + "\n\n".join(self._notes())
        return text + ("\n\n" + self.lsuv.to_markdown() if self.lsuv is not None else "")

    def to_text(self) -> str:
        """The report as an aligned plain-text table followed by notes."""
        cells = [self._HEADER, *self._cells()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self._HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        text = "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], *self._notes()])
        return text + ("\n\n" + self.lsuv.to_markdown() if self.lsuv is not None else "")

    def __str__(self) -> str:
        return self.to_text()


# ====================================================================================================================
# The plan: one entry per parameter tensor, everything decided before anything is written.
# ====================================================================================================================

#: What a planned parameter is, which selects its applier.
Kind = Literal["weight", "bias", "norm", "embedding", "recurrent", "free", "lsuv"]


@dataclass
class ParamPlan:
    """How one parameter tensor will be initialized (one entry of :func:`plan_init`'s result).

    Attributes:
        name: Qualified name (the first, for a tied tensor).
        tensor: The parameter.
        kind: Which applier writes it.
        scheme: A concrete scheme (never ``auto``), or ``"readout"``.
        params: The scheme's validated parameters.
        label: The report's scheme column.
        fan_in: True fan-in per block (``None`` when not fan-based).
        fan_out: True fan-out per block.
        blocks: Equal blocks along ``block_dim``, each initialized on its own (gates, fused q/k/v).
        block_dim: The output dimension of the weight's layout (1 for a transposed ``(in, out)`` layout).
        orthogonal: Recurrent weights: orthogonal per block (gain 1).
        scale: A factor applied after sampling (residual presets).
        tied: Other names of the same tensor.
        note: Why, when it is not the plain scheme.
        report: Whether the parameter gets a report row (biases do not).
        padding_idx: An embedding row to zero.
        deliberate_zero: A preset or a kept zero: excluded from the symmetry warning.
    """

    name: str
    tensor: Tensor
    kind: Kind
    scheme: str
    params: dict[str, Any]
    label: str
    fan_in: int | None = None
    fan_out: int | None = None
    blocks: int = 1
    block_dim: int = 0
    orthogonal: bool = False
    scale: float = 1.0
    tied: tuple[str, ...] = ()
    note: str = ""
    report: bool = True
    padding_idx: int | None = None
    deliberate_zero: bool = False


@dataclass
class Plan:
    """Everything :func:`apply_plan` needs: the per-parameter entries and what the report says about the model."""

    entries: list[ParamPlan]
    report: InitReport
    lsuv_layers: dict[str, nn.Module]


_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _gates(module: nn.Module) -> int:
    if isinstance(module, nn.RNNBase):
        return _RNN_GATES.get(module.mode, 1)
    if isinstance(module, nn.LSTMCell):
        return 4
    if isinstance(module, nn.GRUCell):
        return 3
    return 1


def _std(t: Tensor) -> float:
    if t.is_meta or t.numel() < 2 or _is_lazy(t):
        return float("nan")
    return float(t.detach().float().std(correction=0))


def _is_lazy(t: Tensor) -> bool:
    return isinstance(t, nn.parameter.UninitializedParameter)


def _identical_rows(weight: Tensor) -> bool:
    """Whether every output unit (row) of ``weight`` is identical: ``stats.row_spread == 0``, or exactly equal rows."""
    if weight.shape[0] < 2:
        return False
    flat = weight.detach().flatten(1)
    return bool(row_spread(weight) == 0) or bool((flat == flat[:1]).all())


def _private_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if seed is not None:
            raise ValueError(f"Give `seed` or `generator`, not both (got seed={seed!r}).")
        return generator
    g = torch.Generator()  # CPU generator: never touches torch's global RNG
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    return g


# -------------------------------------------------------------------------------------------------- roles

#: What init does with a parameter: its :data:`lightning_init.roles.Role` (the one definition of parameter roles),
#: refined where the applier depends on the owner: ``recurrent`` (every weight of an RNN / LSTM / GRU, drawn per gate
#: block), ``attention`` (``nn.MultiheadAttention``'s own weights, per q/k/v block), ``activation`` (PReLU & co:
#: untouched).
InitRole = Literal[
    "weight", "bias", "norm_weight", "norm_bias", "embedding", "recurrent", "attention", "free", "activation"
]


def param_role(module: nn.Module, pname: str, p: Tensor) -> InitRole:
    """What init does with parameter ``pname`` owned directly by ``module``.

    The role is :func:`lightning_init.roles.parameter_role`'s; a ``weight`` / ``recurrent`` of an RNN is drawn as
    ``recurrent`` (input weights per gate block, hidden weights orthogonal), of an ``nn.MultiheadAttention`` as
    ``attention`` (per q/k/v block); a ``weight`` that is not a layer's (1-d, or owned directly by a module with
    children) is ``free``; an activation's parameters (PReLU) are ``activation``: untouched.
    """
    if nonlinearity_of(module) is not None:
        return "activation"
    role = parameter_role(module, pname)
    if role not in ("weight", "recurrent"):
        return role
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return "recurrent"
    if isinstance(module, nn.MultiheadAttention):
        return "attention"
    if next(module.children(), None) is not None or p.ndim < 2:
        return "free"
    return "weight"


# -------------------------------------------------------------------------------------------------- true fans


def _transposed_layout(module: nn.Module, weight: Tensor, flow: DataFlow | None, name: str) -> tuple[bool, str]:
    """Whether a 2-d weight is stored ``(in, out)``: from the traced forward's feature sizes, else HF ``Conv1D``."""
    calls = flow.calls(name) if flow is not None and flow.kind == "traced" else []
    if calls and calls[0].in_shapes and calls[0].out_shapes:
        n_in, n_out = calls[0].in_shapes[0][-1], calls[0].out_shapes[0][-1]
        rows, cols = weight.shape
        if (rows, cols) == (n_in, n_out) and n_in != n_out:
            return True, f"weight stored (in, out) = ({n_in}, {n_out}): fans from the forward's feature sizes"
        if (rows, cols) == (n_out, n_in):
            return False, ""
    nf, nx = getattr(module, "nf", None), getattr(module, "nx", None)
    if type(module).__name__ == "Conv1D" and tuple(weight.shape) == (nx, nf) and nx != nf:
        return True, f"HF Conv1D: weight stored (in, out) = ({nx}, {nf})"
    return False, ""


def _transposed_conv_taps(module: nn.modules.conv._ConvTransposeNd, spatial: tuple[int, ...] | None) -> float:
    """Mean number of kernel taps that reach one output position, measured on the layer's own geometry."""
    d = len(module.kernel_size)
    size = spatial if spatial is not None and len(spatial) == d else (8,) * d
    fn = (torch.nn.functional.conv_transpose1d, torch.nn.functional.conv_transpose2d)[d - 1] if d < 3 else None
    fn = fn or torch.nn.functional.conv_transpose3d
    with torch.no_grad():
        out = fn(
            torch.ones(1, 1, *size),
            torch.ones(1, 1, *module.kernel_size),
            stride=module.stride,
            padding=module.padding,  # type: ignore[arg-type]
            output_padding=module.output_padding,
            dilation=module.dilation,
        )
    return float(out.mean())


def true_fans(module: nn.Module, pname: str, p: Tensor, flow: DataFlow | None, name: str) -> tuple[int, int, int, str]:
    """``(fan_in, fan_out, output dim of the layout, note)`` of a layer weight, from how the layer is used.

    Convs: ``in/groups x kernel`` and ``out/groups x kernel``. Transposed convs: the effective fan-in (taps per
    output). 2-d weights: ``(out, in)``, or ``(in, out)`` when the forward (or HF ``Conv1D``'s layout) says so.
    """
    receptive = math.prod(p.shape[2:]) if p.ndim > 2 else 1
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and pname == "weight":
        groups = module.groups
        calls = flow.calls(name) if flow is not None and flow.kind == "traced" else []
        spatial = tuple(calls[0].in_shapes[0][2:]) if calls and calls[0].in_shapes else None
        taps = _transposed_conv_taps(module, spatial)
        fan_in = max(1, round(p.shape[0] // groups * taps))
        note = (
            f"ConvTranspose: fan_in = in/groups {p.shape[0] // groups} x {taps:.3g} kernel taps per output "
            f"(stride {tuple(module.stride)}), the fan that keeps output/input variance level"
        )
        return fan_in, int(p.shape[1]) * receptive, 1, note
    if isinstance(module, nn.modules.conv._ConvNd) and pname == "weight":
        return int(p.shape[1]) * receptive, int(p.shape[0]) // module.groups * receptive, 0, ""
    if p.ndim == 2:
        transposed, note = _transposed_layout(module, p, flow, name)
        if transposed:
            return int(p.shape[0]), int(p.shape[1]), 1, note
    return int(p.shape[1]) * receptive, int(p.shape[0]) * receptive, 0, ""


# -------------------------------------------------------------------------------------------------- planning


def _fused_blocks(module: nn.Module, name: str, flow: DataFlow | None, out_f: int, in_f: int) -> tuple[int, str]:
    if flow is not None and flow.kind == "traced" and flow.calls(name):
        k = flow.split_into(name)
        if k is not None and out_f % k == 0 and out_f // k == in_f:
            return k, f"fused projection: output split into {k} in the forward, each {in_f}x{in_f} block on its own"
        return 1, ""
    last = name.rsplit(".", 1)[-1].lower()
    if last in _FUSED_NAMES and out_f == 3 * in_f:
        return 3, f"fused projection (by name '{last}', out = 3 x in): each {in_f}x{in_f} block on its own"
    return 1, ""


def _resolve_auto(
    name: str, module: nn.Module, prm: dict[str, Any], followers: dict[str, Follower], report: InitReport
) -> tuple[str, dict[str, Any], str]:
    """(concrete scheme, its params, report label) for a weight layer under ``auto``."""
    if prm.get("nonlinearity") is not None:
        follower: Follower = (prm["nonlinearity"], prm.get("a"))
    elif name in followers:
        follower = followers[name]
    else:
        report.unresolved.append(name or type(module).__name__)
        concrete, cprm = auto_scheme(None)
        return concrete, cprm, f"auto: {concrete} (unresolved)"
    if follower[0] == "softmax":
        return READOUT, {}, "auto: readout N(0, 1/fan_in^2) (logits)"
    if follower[0] == "other":
        concrete, cprm = auto_scheme(None)
        return concrete, cprm, f"auto: {concrete} (unrecognized activation)"
    concrete, cprm = auto_scheme(*follower)
    return concrete, cprm, f"auto: {concrete} ({follower[0]})"


def _free_default(pname: str, module: nn.Module, p: Tensor) -> tuple[str, dict[str, Any], str] | None:
    """The literature default of a free parameter: (scheme, params, label), or ``None`` to leave it untouched."""
    last = pname.rsplit(".", 1)[-1]
    for pattern, sch, prm, why in FREE_PARAMETER_DEFAULTS:
        if re.fullmatch(pattern, last):
            std = prm["std"]
            return sch, dict(prm), f"free: {sch}(std={std:g}) ({why})"
    if "layerscale" in type(module).__name__.lower() or (p.ndim == 1 and _LAYER_SCALE.fullmatch(last)):
        flat = p.detach().flatten()
        if flat.numel() and bool((flat == flat[0]).all()) and bool(torch.isfinite(flat[0])):
            return "keep", {}, f"free: layer scale kept at the model's {float(flat[0]):g} (init_values, CaiT)"
        return "constant", {"value": 1e-5}, "free: layer scale 1e-5 (timm LayerScale default, CaiT)"
    if p.ndim >= 2:
        return "trunc_normal", {"mean": 0.0, "std": 0.02, "a": -0.04, "b": 0.04}, "free: trunc_normal(std=0.02)"
    return None


def _owners(module: nn.Module) -> dict[int, list[tuple[str, str, nn.Module, str]]]:
    """id(parameter) -> every (qualified param name, module name, module, local name) that owns it."""
    owners: dict[int, list[tuple[str, str, nn.Module, str]]] = {}
    for mname, mod in module.named_modules(remove_duplicate=False):
        for pname, p in mod._parameters.items():
            if p is None:
                continue
            qualified = f"{mname}.{pname}" if mname else pname
            entry = (qualified, mname, mod, pname)
            lst = owners.setdefault(id(p), [])
            if entry[0] not in [o[0] for o in lst]:
                lst.append(entry)
    return owners


def _normalized_before_a_layer(flow: DataFlow | None, embedding: str) -> bool:
    """Whether every path from ``embedding``'s output meets a norm before any weight layer (transformers)."""
    if flow is None or not flow.calls(embedding):
        return True  # no data flow: the transformer case, the common one for tied embeddings
    return not any(
        flow.nodes[c].role == "layer"
        for call in flow.calls(embedding)
        for c in _downstream(flow, call.index, through=lambda role: role not in ("norm", "layer"))
    )


def _downstream(flow: DataFlow, start: int, *, through: Callable[[str], bool]) -> Iterator[int]:
    """Every node reached from node ``start`` by following consumers, each once.

    Only nodes whose role passes ``through`` are expanded; the nodes where the walk stops are yielded too.
    """
    stack, seen = [start], {start}
    while stack:
        for c in flow.consumers(stack.pop()):
            if c not in seen:
                seen.add(c)
                yield c
                if through(flow.nodes[c].role):
                    stack.append(c)


def _readout_embeddings(flow: DataFlow | None, tied_embeddings: set[str]) -> set[str]:
    """Embeddings whose output is added to a tied embedding's output before any layer (``wpe`` next to ``wte``)."""
    if flow is None or not tied_embeddings:
        return set()
    joins: dict[int, set[str]] = {}
    for emb in flow.embeddings:
        for call in flow.calls(emb):
            for c in _downstream(flow, call.index, through=lambda role: role == "transparent"):
                if flow.nodes[c].role == "transparent":
                    joins.setdefault(c, set()).add(emb)
    out: set[str] = set()
    for members in joins.values():
        if members & tied_embeddings:
            out |= members
    return out - tied_embeddings


def plan_init(
    module: nn.Module,
    scheme: SchemeName = "auto",
    *,
    rules: Iterable[InitRule | dict[str, Any]] | None = None,
    bias: float = 0.0,
    example_input: Any = None,
    nonlinearity: str | None = None,
    only_rules: bool = False,
    residual: ResidualPreset = "none",
    flow: DataFlow | None = None,
    **scheme_params: Any,
) -> Plan:
    """Decide, for every parameter of ``module``, how it will be initialized; change nothing.

    Arguments as :func:`init_module`; ``flow`` is a data flow already built (else one is built from
    ``example_input``, or by ``torch.fx``). Raises every ``ValueError`` :func:`init_module` documents.
    """
    params = validate_scheme(scheme, {**scheme_params, "nonlinearity": nonlinearity})
    check_choice("residual", residual, RESIDUAL_PRESETS)
    rule_list = as_rules(rules)
    lazy = [n for n, p in module.named_parameters() if _is_lazy(p)]
    if lazy:
        raise ValueError(
            f"Parameters {', '.join(lazy[:5])} are not materialized yet (lazy modules): run one forward first, or pass "
            "`example_input` (a LightningModule's `example_input_array`) so init_module materializes them."
        )
    if flow is None:
        flow = dataflow(module, example_input)
    report = InitReport(bias=bias, residual=residual)
    if residual != "none" and flow is None:
        raise ValueError(
            f"`residual`={residual!r} needs the model's data flow to find its residual branches: pass `example_input` "
            "(a LightningModule's `example_input_array`); the model does not trace symbolically with torch.fx."
        )
    owners = _owners(module)
    free_names = [
        (entries[0][0], entries[0][2])
        for entries in owners.values()
        if param_role(entries[0][2], entries[0][3], entries[0][2]._parameters[entries[0][3]]) == "free"  # type: ignore[arg-type]
    ]
    layers = [(n, m) for n, m in module.named_modules() if next(m.parameters(recurse=False), None) is not None]
    check_all_match(rule_list, layers + free_names)

    followers: dict[str, Follower] = sequential_followers(module)
    if flow is not None:
        followers.update(flow.followers())
    residuals = flow.residuals() if flow is not None else []
    if flow is not None:
        how = "a traced forward" if flow.kind == "traced" else "torch.fx"
        report.notes.append(f"data flow from {how}: {len(residuals)} residual branches")
    widths, transformer = _transformer_widths(module, flow, residuals, report)

    # Ties: an embedding tied to a weight layer (GPT-2 wte = lm_head) is the readout for both roles.
    tied_embeddings: set[str] = set()
    readout_layers: set[str] = set()
    for owned in owners.values():
        kinds = {param_role(mod, pn, mod._parameters[pn]) for _, _, mod, pn in owned}  # type: ignore[arg-type]
        if len(owned) > 1 and "embedding" in kinds and "weight" in kinds:
            tied_embeddings |= {mn for _, mn, mod, _ in owned if isinstance(mod, (nn.Embedding, nn.EmbeddingBag))}
            readout_layers |= {mn for _, mn, mod, pn in owned if param_role(mod, pn, mod._parameters[pn]) == "weight"}  # type: ignore[arg-type]
    summed_embeddings = _readout_embeddings(flow, tied_embeddings)
    raw = {name for name in tied_embeddings if not _normalized_before_a_layer(flow, name)}
    raw_ids = {id(m.weight) for n, m in module.named_modules() if n in raw}
    # A tied embedding is the residual stream the blocks add to, unless a preset zeroes every branch's end (fixup):
    # then the stream is the embedding alone and only its readout role is left.
    stream = transformer and residual != "fixup"

    # Residual presets: per layer / norm, what changes.
    preset_scale: dict[str, tuple[float, str]] = {}
    preset_zero_layers: dict[str, str] = {}
    preset_zero_norms: dict[str, str] = {}
    if residual == "scaled" and residuals:
        n = len(residuals)
        for r in residuals:
            if r.last_layer is not None:
                why = f"residual 'scaled': x 1/sqrt({n}) ({n} residual branches, GPT-2)"
                preset_scale[r.last_layer] = (1 / math.sqrt(n), why)
    elif residual == "zero_last_norm":
        for r in residuals:
            if r.last_norm is not None:
                preset_zero_norms[r.last_norm] = "residual 'zero_last_norm': last norm of the branch is 0 (Goyal 2017)"
            else:
                report.notes.append(f"zero_last_norm: no norm ends the branch ending in {r.last_layer}; unchanged")
    elif residual == "fixup" and residuals:
        n = len(residuals)
        for r in residuals:
            m = len(r.branch_layers)
            if r.last_layer is not None:
                preset_zero_layers[r.last_layer] = "residual 'fixup': last layer of the branch is 0 (Zhang 2019)"
            if m >= 2:
                factor = n ** (-1 / (2 * m - 2))
                for layer in r.branch_layers:
                    if layer != r.last_layer:
                        preset_scale[layer] = (factor, f"residual 'fixup': x {n}^(-1/{2 * m - 2}) = {factor:.4g}")
        in_branches = {name for r in residuals for name in r.branch_layers}
        for name, f in followers.items():
            if name in readout_layers or name in tied_embeddings:
                continue  # tied to an embedding: zero would erase the embedding too
            if f[0] in ("linear", "softmax") and name not in in_branches and _is_output_layer(flow, name):
                preset_zero_layers[name] = "residual 'fixup': the model's output layer is 0 (Zhang 2019)"

    entries: list[ParamPlan] = []
    lsuv_layers: dict[str, nn.Module] = {}
    mha_children = {
        f"{name}.{child}" if name else child
        for name, mod in module.named_modules()
        if isinstance(mod, nn.MultiheadAttention)
        for child, _ in mod.named_children()
    }
    planned: set[int] = set()
    for mname, mod in layers:
        direct = [(pn, p) for pn, p in mod.named_parameters(recurse=False) if id(p) not in planned]
        if not direct:
            continue
        planned |= {id(p) for _, p in direct}
        rule = first_match(rule_list, mname, mod)
        if nonlinearity_of(mod) is not None:  # PReLU & co: activation parameters stay as they are
            report.skipped.append(mname or type(mod).__name__)
            continue
        module_skipped = (rule is not None and rule.scheme == "skip") or (rule is None and only_rules)
        if rule is not None and rule.scheme != "skip":
            sch, prm = rule.scheme, validate_scheme(rule.scheme, rule.params())
            b = bias if rule.bias is None else rule.bias
        else:
            sch, prm, b = scheme, params, bias
        if not module_skipped and sch == "lsuv":
            if isinstance(mod, LSUV_LAYER_TYPES) and _has_plain_weight(mod) and mname not in mha_children:
                lsuv_layers[mname] = mod
                for pn, p in direct:
                    qn = f"{mname}.{pn}" if mname else pn
                    if "bias" in pn:
                        entries.append(ParamPlan(qn, p, "bias", "constant", {"value": 0.0}, "zeros", report=False))
                    elif p.ndim >= 2:
                        fi, fo, _, _ = true_fans(mod, pn, p, flow, mname)
                        entries.append(ParamPlan(qn, p, "lsuv", "orthogonal", {"gain": 1.0}, "lsuv", fi, fo))
                continue
            sch, prm = "auto", validate_scheme("auto", {})  # LSUV's base for layers it cannot rescale
        mine: list[ParamPlan] = []
        resolved: tuple[str, dict[str, Any], str] | None = None
        for pn, p in direct:
            qn = f"{mname}.{pn}" if mname else pn
            others = tuple(o[0] for o in owners[id(p)] if o[0] != qn)
            role = param_role(mod, pn, p)
            if role == "free":
                entry = _plan_free(qn, mod, p, first_match(rule_list, qn, mod), only_rules, report, others)
            elif module_skipped:
                continue
            else:
                entry = _plan_param(mname, mod, pn, p, qn, role, sch, prm, b, rule, flow, followers, report, resolved)
                if entry is not None and role == "weight" and resolved is None and sch == "auto":
                    resolved = (entry.scheme, entry.params, entry.label)
            if entry is not None:
                entry.tied = others
                mine.append(entry)
        if module_skipped and not mine:
            report.skipped.append(mname or type(mod).__name__)
        auto = rule is None and sch == "auto"
        for entry in mine:
            if auto:
                raw_tie = id(entry.tensor) in raw_ids
                _tie(entry, mname, tied_embeddings, readout_layers, summed_embeddings, raw_tie, stream)
                _positional(entry, mname, flow)
                if transformer:
                    _transformer_rule(entry, mname, widths, flow, tied_embeddings | summed_embeddings)
            _preset(entry, mname, preset_scale, preset_zero_layers, preset_zero_norms)
        entries += mine

    return Plan(entries, report, lsuv_layers)


def small_init_std(d: int) -> float:
    """Small init's std ``sqrt(2 / (5 d))`` for a residual stream of width ``d`` (Nguyen & Salazar 2019; GPT-NeoX)."""
    return math.sqrt(2.0 / (5.0 * d))


def _branch_width(module: nn.Module, r: Residual) -> int | None:
    """The residual stream's width of branch ``r``: the added tensors' features, else its last layer's outputs."""
    if r.width is not None:
        return int(r.width)
    if r.last_layer is None:
        return None
    last = module.get_submodule(r.last_layer)
    if isinstance(last, nn.MultiheadAttention):
        return int(last.embed_dim)
    weight = last._parameters.get("weight")
    if weight is None or weight.ndim != 2:
        return None
    return int(weight.shape[1] if type(last).__name__ == "Conv1D" else weight.shape[0])


def _transformer_widths(
    module: nn.Module, flow: DataFlow | None, residuals: list[Residual], report: InitReport
) -> tuple[dict[str, int], bool]:
    """``({layer on a residual branch: the stream's width d}, whether the model is a transformer)``.

    A transformer: a model whose data flow has a residual branch computing attention. Its residual branches' layers
    with 2-d weights (and an ``nn.MultiheadAttention``'s ``out_proj``) get small init (module docstring).
    """
    if flow is None or not any(r.attention for r in residuals):
        return {}, False
    widths: dict[str, int] = {}
    modules = dict(module.named_modules())
    for r in residuals:
        d = _branch_width(module, r)
        if d is None:
            continue
        for name in r.branch_layers:
            mod = modules.get(name)
            if isinstance(mod, nn.MultiheadAttention):
                widths[name] = widths[f"{name}.out_proj"] = d
            elif mod is not None and isinstance(mod._parameters.get("weight"), Tensor) and mod.weight.ndim == 2:
                widths[name] = d
    n = sum(r.attention for r in residuals)
    report.notes.append(f"transformer blocks (attention in {n} residual branches): small init sqrt(2/(5d))")
    return widths, True


def _transformer_rule(
    entry: ParamPlan, mname: str, widths: dict[str, int], flow: DataFlow | None, tied: set[str]
) -> None:
    """Under ``auto`` in a transformer: small init for block layers and normalized embeddings (module docstring)."""
    if entry.kind == "embedding" and mname not in tied and entry.scheme == "normal":
        if flow is not None and flow.calls(mname) and _normalized_before_a_layer(flow, mname):
            dim = int(entry.tensor.shape[1])
            entry.params = {"mean": 0.0, "std": small_init_std(dim)}
            entry.label = "auto: small_init (embedding, normalized)"
            entry.note = f"embedding normalized before any layer, in a transformer: small init sqrt(2/(5 x {dim}))"
        return
    d = widths.get(mname)
    if d is None or entry.kind != "weight" or not entry.report or entry.tensor.ndim != 2:
        return
    entry.scheme, entry.params = "normal", {"mean": 0.0, "std": small_init_std(d)}
    follower = re.search(r"\(([a-z_]+)\)", entry.label)  # the follower auto found, kept in the label
    entry.label = f"auto: small_init ({follower.group(1) + ', ' if follower else ''}transformer block, d={d})"
    entry.note = "; ".join(x for x in (entry.note, f"small init sqrt(2/(5 x {d})) (Nguyen & Salazar 2019)") if x)


def _positional(entry: ParamPlan, mname: str, flow: DataFlow | None) -> None:
    """Under ``auto``: an embedding whose indices do not come from the input is a position table (module docstring).

    Its rows are added to every sample alike (positions from ``arange``, BERT's default segment ids from a buffer):
    the documented position-embedding default, as for a free ``pos_embed``.
    """
    if entry.kind != "embedding" or entry.tied or flow is None or flow.reads_input(mname) is not False:
        return
    entry.scheme, entry.params = "trunc_normal", dict(POSITION_DEFAULT)
    entry.fan_in = entry.fan_out = None
    entry.label = "auto: trunc_normal(std=0.02) (position table)"
    entry.note = (
        "indexed by positions or a constant, not by the input: the position-embedding default of BERT, GPT-2, "
        "ViT/DeiT (as for a free pos_embed)"
    )


def _is_output_layer(flow: DataFlow | None, name: str) -> bool:
    """Whether every path from layer ``name`` reaches the model's output through transparent nodes only."""
    if flow is None:
        return False
    for call in flow.calls(name):
        stack, seen = [call.index], {call.index}
        while stack:
            i = stack.pop()
            for c in flow.consumers(i):
                node = flow.nodes[c]
                logits = node.role == "activation" and node.follower == ("softmax", None)
                if node.role != "transparent" and (node.module or not (logits or node.role == "other")):
                    return False
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
    return bool(flow.calls(name))


def _plan_free(
    qn: str,
    mod: nn.Module,
    p: Tensor,
    rule: InitRule | None,
    only_rules: bool,
    report: InitReport,
    others: tuple[str, ...],
) -> ParamPlan | None:
    """A free parameter: the rule naming it (matched on its qualified name), else its documented default."""
    if (rule is not None and rule.scheme == "skip") or (rule is None and only_rules):
        report.skipped.append(qn)
        return None
    if rule is not None and rule.scheme not in ("auto", "lsuv"):
        prm = validate_scheme(rule.scheme, rule.params())
        if rule.scheme in _FAN_SCHEMES | {"orthogonal"} and p.ndim < 2:
            raise ValueError(
                f"Rule {rule.describe()} gives the {p.ndim}-d free parameter {qn} the fan-based scheme "
                f"{rule.scheme!r}, which needs >= 2 dimensions; use 'normal', 'trunc_normal' or 'constant'."
            )
        return ParamPlan(qn, p, "free", rule.scheme, prm, f"{rule.scheme} (rule)")
    default = _free_default(qn, mod, p)
    if default is None:
        report.skipped.append(qn)
        return None
    sch, prm, label = default
    return ParamPlan(qn, p, "free", sch, prm, label)


def _plan_param(
    mname: str,
    mod: nn.Module,
    pn: str,
    p: Tensor,
    qn: str,
    role: InitRole,
    sch: str,
    prm: dict[str, Any],
    b: float,
    rule: InitRule | None,
    flow: DataFlow | None,
    followers: dict[str, Follower],
    report: InitReport,
    resolved: tuple[str, dict[str, Any], str] | None,
) -> ParamPlan | None:
    """The plan of one parameter of a layer from its role (the per-kind planners)."""
    if role in ("bias", "norm_bias"):
        return ParamPlan(qn, p, "bias", "constant", {"value": b if role == "bias" else 0.0}, "bias", report=False)
    if role == "norm_weight":
        if sch == "auto" and rule is None and p.numel() and bool((p.detach() == 0).all()):
            note = "auto keeps the model's own zero init of this norm weight (zero-init-last design)"
            return ParamPlan(qn, p, "norm", "keep", {}, "zeros (kept)", note=note, deliberate_zero=True)
        return ParamPlan(qn, p, "norm", "ones", {}, "ones")
    if role == "embedding":
        pad = getattr(mod, "padding_idx", None)
        if rule is None or sch == "auto":
            return ParamPlan(qn, p, "embedding", "normal", {"mean": 0.0, "std": 1.0}, "normal", padding_idx=pad)
        concrete, cprm, label = _resolve(sch, prm, mname, mod, followers, report)
        fi, fo = int(p.shape[1]), int(p.shape[0])
        return ParamPlan(qn, p, "embedding", concrete, cprm, label, fi, fo, padding_idx=pad)
    if role in ("recurrent", "attention"):
        if p.ndim < 2:
            return None
        concrete, cprm = auto_scheme(None) if sch == "auto" else (sch, prm)
        label = f"auto: {concrete}" if sch == "auto" else sch
        if role == "recurrent":
            blocks = _gates(mod) if "weight_ih" in pn or "weight_hh" in pn else 1
        else:
            blocks = 3 if pn == "in_proj_weight" else 1
        ortho = role == "recurrent" and "weight_hh" in pn
        fo, fi = int(p.shape[0]) // blocks, int(p.shape[1])
        kind: Kind = "recurrent" if role == "recurrent" else "weight"
        return ParamPlan(
            qn, p, kind, concrete, cprm, "orthogonal" if ortho else label, fi, fo, blocks=blocks, orthogonal=ortho
        )
    # a layer weight: fans from use, the follower's scheme, fused blocks
    fi, fo, dim, note = true_fans(mod, pn, p, flow, mname)
    if sch == "auto" and type(mod).__name__ == "NonDynamicallyQuantizableLinear":  # nn.MultiheadAttention.out_proj
        concrete, cprm = auto_scheme(None)
        label = f"auto: {concrete}"
    elif resolved is not None:
        concrete, cprm, label = resolved
    else:
        concrete, cprm, label = _resolve(sch, prm, mname, mod, followers, report)
    blocks = 1
    if p.ndim == 2:
        out_f = int(p.shape[dim])
        blocks, fused_note = _fused_blocks(mod, mname, flow, out_f, int(p.shape[1 - dim]))
        if blocks > 1:
            fo = out_f // blocks
            note = "; ".join(x for x in (note, fused_note) if x)
    return ParamPlan(qn, p, "weight", concrete, cprm, label, fi, fo, blocks=blocks, block_dim=dim, note=note)


def _resolve(
    sch: str, prm: dict[str, Any], mname: str, mod: nn.Module, followers: dict[str, Follower], report: InitReport
) -> tuple[str, dict[str, Any], str]:
    if sch == "auto":
        return _resolve_auto(mname, mod, prm, followers, report)
    return sch, prm, sch


def _tie(
    entry: ParamPlan,
    mname: str,
    tied_embeddings: set[str],
    readout_layers: set[str],
    summed_embeddings: set[str],
    raw: bool,
    stream: bool,
) -> None:
    """Under ``auto``: a tensor tied between an embedding and an output layer gets one scheme right for both roles.

    Its embedding output normalized before any layer: in a transformer whose blocks add to the stream at init
    (``stream``), small init (the embedding is the residual stream the blocks add to, so it gets the blocks' scale;
    the logits start at std ``sqrt(2/5)``); elsewhere the readout, std ``1/d`` (with every branch's end zero, the
    stream is the embedding alone: at small init the logit of the input token itself, ``|e|^2 / rms(e) = d x std``,
    would be ``sqrt(2d/5)``, 5 at d = 64). Its embedding output feeding a layer as it is (an RNN LM): Xavier on
    ``(d, vocab)``, a compromise that keeps both the RNN's input and the logits at a moderate scale. Embeddings
    added to a tied one get its std.
    """
    tied_here = entry.tied and (
        (entry.kind == "embedding" and mname in tied_embeddings)
        or (entry.kind == "weight" and entry.report and mname in readout_layers)
    )
    if raw and ((entry.kind == "embedding" and mname in tied_embeddings) or mname in readout_layers) and entry.tied:
        entry.scheme, entry.params = "xavier_normal", {"gain": 1.0}
        entry.label = "auto: xavier_normal (tied embedding + output)"
        entry.fan_in, entry.fan_out = int(entry.tensor.shape[1]), int(entry.tensor.shape[0])
        entry.note = "tied: its embedding output feeds a layer unnormalized, so Xavier serves both roles"
    elif tied_here and stream:
        d = int(entry.tensor.shape[1])  # (vocab, d) for the embedding and for a Linear readout alike
        entry.scheme, entry.params = "normal", {"mean": 0.0, "std": small_init_std(d)}
        entry.label = f"auto: small_init (tied embedding + output, transformer, d={d})"
        entry.fan_in, entry.fan_out = d, int(entry.tensor.shape[0])
        entry.note = (
            f"tied, in a transformer: the embedding is the residual stream the blocks add to, so small init "
            f"sqrt(2/(5 x {d})) like the blocks (the readout's 1/d is {math.sqrt(0.4 * d):.3g}x smaller and leaves "
            "the input token far below the blocks' outputs); the logits start at std sqrt(2/5): loss at init "
            "ln(vocab) + 0.2"
        )
    elif entry.kind == "embedding" and mname in tied_embeddings and entry.tied:
        entry.scheme, entry.params, entry.label = READOUT, {}, "auto: readout N(0, 1/d^2) (tied embedding + output)"
        entry.fan_in, entry.fan_out = int(entry.tensor.shape[1]), int(entry.tensor.shape[0])
        entry.note = "tied: one tensor for the embedding and the output layer; the readout keeps the logits near 0"
    elif entry.kind == "embedding" and mname in summed_embeddings:
        d = int(entry.tensor.shape[1])
        entry.params = {"mean": 0.0, "std": small_init_std(d) if stream else 1.0 / d}
        entry.label = f"auto: normal(std={'sqrt(2/(5d))' if stream else '1/d'}) (added to a tied embedding)"
        entry.note = "added to the tied embedding's output: the same std, so neither dominates the sum"
    elif entry.kind == "weight" and entry.report and mname in readout_layers and entry.tied:
        entry.scheme, entry.params, entry.label = READOUT, {}, "auto: readout N(0, 1/fan_in^2) (tied output)"
        entry.note = "tied: one tensor for the output layer and an embedding; the readout keeps the logits near 0"


def _preset(
    entry: ParamPlan,
    mname: str,
    preset_scale: dict[str, tuple[float, str]],
    preset_zero_layers: dict[str, str],
    preset_zero_norms: dict[str, str],
) -> None:
    """Residual presets on one planned entry (a preset overrides a kept zero, as documented)."""
    if entry.kind == "weight" and entry.report and mname in preset_zero_layers:
        entry.scheme, entry.params, entry.label = "zeros", {}, "zeros"
        entry.note, entry.deliberate_zero = preset_zero_layers[mname], True
    elif entry.kind == "weight" and entry.report and mname in preset_scale:
        entry.scale, why = preset_scale[mname]
        entry.label += f" x {entry.scale:.4g}"
        entry.note = "; ".join(x for x in (entry.note, why) if x)
    if entry.kind == "norm" and mname in preset_zero_norms:
        entry.scheme, entry.label, entry.note, entry.deliberate_zero = "zeros", "zeros", preset_zero_norms[mname], True


# ====================================================================================================================
# Appliers: one small function per kind; sampling through lightning_init.schemes (torch.nn.init semantics).
# ====================================================================================================================


def _sample_(t: Tensor, entry: ParamPlan, gen: torch.Generator) -> None:
    """Draw ``entry``'s scheme into ``t`` (one block) with the entry's true fans."""
    sch, prm = entry.scheme, entry.params
    if entry.orthogonal:
        orthogonal_(t, 1.0, gen)
    elif sch == READOUT:
        assert entry.fan_in is not None
        normal_(t, 0.0, 1.0 / entry.fan_in, gen)
    elif sch in _FAN_SCHEMES and entry.fan_in is not None and entry.fan_out is not None:
        std = expected_std(sch, (entry.fan_out, entry.fan_in), prm)
        if sch.endswith("uniform"):
            uniform_(t, -math.sqrt(3.0) * std, math.sqrt(3.0) * std, gen)
        else:
            normal_(t, 0.0, std, gen)
    elif sch == "trunc_normal":
        trunc_normal_(t, prm["mean"], prm["std"], prm["a"], prm["b"], gen)
    else:
        apply_scheme_(t, sch, prm, gen)


def _expected(entry: ParamPlan) -> float:
    sch, prm = ("orthogonal", {"gain": 1.0}) if entry.orthogonal else (entry.scheme, entry.params)
    if sch == "keep":
        return math.nan
    if sch == READOUT:
        assert entry.fan_in is not None
        return 1.0 / entry.fan_in
    if sch in _FAN_SCHEMES and entry.fan_in is not None and entry.fan_out is not None:
        return expected_std(sch, (entry.fan_out, entry.fan_in), prm) * entry.scale
    shape = tuple(entry.tensor.shape)
    if entry.blocks > 1:
        shape = (shape[0] // entry.blocks, *shape[1:]) if entry.block_dim == 0 else (shape[0], shape[1] // entry.blocks)
    if sch == "orthogonal" and len(shape) < 2:
        return math.nan
    return expected_std(sch, shape, prm) * entry.scale


def _blocks(entry: ParamPlan) -> list[Tensor]:
    t = entry.tensor
    if entry.blocks == 1:
        return [t]
    return list(t.chunk(entry.blocks, dim=entry.block_dim))


def init_weight_(entry: ParamPlan, gen: torch.Generator) -> None:
    """Weights (layers, fused blocks, recurrent gate blocks): each block drawn with its fans, then scaled."""
    for block in _blocks(entry):
        if entry.blocks > 1 and not block.is_contiguous():
            tmp = torch.empty_like(block)
            _sample_(tmp, entry, gen)
            block.copy_(tmp)
        else:
            _sample_(block, entry, gen)
    if entry.scale != 1.0:
        entry.tensor.mul_(entry.scale)


def init_constant_(entry: ParamPlan, gen: torch.Generator) -> None:
    """Biases, norm weights and biases, kept tensors."""
    if entry.scheme == "keep":
        return
    apply_scheme_(entry.tensor, entry.scheme, entry.params, gen)


def init_embedding_(entry: ParamPlan, gen: torch.Generator) -> None:
    """Embedding tables: the scheme (or the readout), then the padding row zero."""
    init_weight_(entry, gen)
    if entry.padding_idx is not None:
        entry.tensor[entry.padding_idx].fill_(0.0)


def init_free_(entry: ParamPlan, gen: torch.Generator) -> None:
    """Free parameters: the documented default or the rule's scheme (never fan-based unless the rule says so)."""
    if entry.scheme == "keep":
        return
    if entry.scheme in _FAN_SCHEMES | {"orthogonal"}:
        apply_scheme_(entry.tensor, entry.scheme, entry.params, gen)
    else:
        _sample_(entry.tensor, entry, gen)


_APPLIERS: dict[str, Callable[[ParamPlan, torch.Generator], None]] = {
    "weight": init_weight_,
    "recurrent": init_weight_,
    "lsuv": init_weight_,
    "bias": init_constant_,
    "norm": init_constant_,
    "embedding": init_embedding_,
    "free": init_free_,
}


def apply_plan(plan: Plan, generator: torch.Generator) -> InitReport:
    """Write every entry of ``plan`` (under ``torch.no_grad()``) and fill the report's rows."""
    report = plan.report
    with torch.no_grad():
        for entry in plan.entries:
            _APPLIERS[entry.kind](entry, generator)
            if not entry.report:
                continue
            gain = None if entry.orthogonal else scheme_gain(entry.scheme, entry.params)
            if entry.orthogonal:
                gain = 1.0
            label = entry.label + (f" x{entry.blocks} blocks" if entry.blocks > 1 else "")
            report.rows.append(
                LayerInit(entry.name, tuple(entry.tensor.shape), label, entry.fan_in, entry.fan_out, gain,
                          _expected(entry), _std(entry.tensor), entry.tied, entry.note)
            )  # fmt: skip
    return report


# ====================================================================================================================
# init_module
# ====================================================================================================================


def materialize_(module: nn.Module, run: Callable[[], Any]) -> None:
    """Materialize lazy parameters by one dry forward ``run()``: no_grad, eval mode, torch's RNG forked, flags restored.

    Raises:
        ValueError: When parameters are still uninitialized after the forward (they were not used).
    """
    if not any(_is_lazy(p) for p in module.parameters()):
        return
    with isolated(module), torch.no_grad():  # eval mode, CPU and CUDA RNG forked, every flag restored
        run()
    left = [n for n, p in module.named_parameters() if _is_lazy(p)]
    if left:
        raise ValueError(
            f"Parameters {', '.join(left[:5])} are still lazy after a forward: the forward never used them."
        )


def init_module(
    module: nn.Module,
    scheme: SchemeName = "auto",
    *,
    rules: Iterable[InitRule | dict[str, Any]] | None = None,
    bias: float = 0.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    example_input: Any = None,
    nonlinearity: str | None = None,
    only_rules: bool = False,
    residual: ResidualPreset = "none",
    lsuv_batch: Any = None,
    lsuv_forward: Callable[[nn.Module, Any], Any] | None = None,
    lsuv_tol: float = 0.1,
    lsuv_max_iters: int = 10,
    **scheme_params: Any,
) -> InitReport:
    """Initialize every parameter of ``module`` in place and return an :class:`InitReport`.

    Args:
        module: Any ``nn.Module`` (a LightningModule, or a bare model inside ``configure_model``).
        scheme: The scheme for layers no rule matches (see :data:`~lightning_init.schemes.SchemeName`).
        rules: Per-layer overrides, first match wins (:class:`~lightning_init.rules.InitRule` or dicts); a rule's
            ``name`` may also name a free parameter (``"cls_token"``, ``"encoder.pos_embed"``).
        bias: Constant for biases.
        seed: Makes the result reproducible, independent of torch's global RNG.
        generator: A CPU ``torch.Generator`` to draw from instead of ``seed``.
        example_input: A sample input: one side-effect-free traced forward gives the data flow (followers, true fans,
            fused splits, residual branches) and materializes lazy modules; tuples are unpacked as positional
            arguments, dicts as keyword arguments. Without it, ``torch.fx`` is tried, then ``nn.Sequential`` order.
        nonlinearity: For ``auto``, the follower of every layer (overrides detection); for Kaiming / Xavier /
            orthogonal, the nonlinearity of the gain.
        only_rules: Leave layers that no rule matches untouched (fine-tuning: you loaded the weights yourself).
        residual: A residual preset: ``"none"``, ``"zero_last_norm"``, ``"scaled"`` or ``"fixup"`` (see the module
            docstring); needs the data flow.
        lsuv_batch: A batch of real inputs, required when ``scheme`` or a rule is ``lsuv`` (on the module's device).
        lsuv_forward: ``lsuv_forward(module, batch)`` runs the model on ``lsuv_batch``; default ``module(batch)`` for
            a tensor, ``module(batch[0])`` for a tuple/list, ``module(batch["x"])`` for a mapping.
        lsuv_tol: LSUV's tolerance on each output variance, ``|var - 1| <= lsuv_tol``, in ``(0, 1)``.
        lsuv_max_iters: LSUV's maximum number of rescalings per layer, ``>= 1``.
        **scheme_params: The scheme's parameters (``mean``, ``std``, ``a``, ``b``, ``mode``, ``gain``, ``value``).

    Returns:
        The per-layer report. Torch's global RNG state is unchanged.

    Raises:
        ValueError: ``module`` not an ``nn.Module``, a ``seed``/``bias``/``only_rules`` of the wrong type or not finite,
            unknown scheme, preset or parameter, out-of-range value, a rule matching no layer, ``lsuv`` without a
            usable ``lsuv_batch``, lazy parameters without an input to materialize them, a residual preset without a
            data flow (all checked before any parameter changes; each message names the argument and the value).

    Warns:
        UserWarning: Once for layers ``auto`` could not resolve, once for layers left with identical output units,
            once for layers LSUV could not bring to unit variance (named, with the reason).
    """
    check_module("module", module)  # every argument is checked before anything is written
    bias, seed = check_magnitude("bias", bias), check_seed("seed", seed)
    check_bool("only_rules", only_rules)
    validate_scheme(scheme, {**scheme_params, "nonlinearity": nonlinearity})
    check_choice("residual", residual, RESIDUAL_PRESETS)
    rule_list = as_rules(rules)
    uses_lsuv = scheme == "lsuv" or any(r.scheme == "lsuv" for r in rule_list)
    if uses_lsuv:
        if lsuv_batch is None:
            raise ValueError(
                "Scheme 'lsuv' is data-dependent: pass `lsuv_batch` (a batch of real inputs on the module's device), "
                "got none. WeightInit(scheme='lsuv') uses the first training batch."
            )
        check_lsuv_args(lsuv_tol, lsuv_max_iters, lsuv_batch, lsuv_forward, prefix="lsuv_")
        if scheme == "lsuv" and bias != 0.0:
            raise ValueError(f"`bias`={bias!r} cannot be used with scheme 'lsuv': LSUV zeros the biases it rescales.")
    gen = _private_generator(seed, generator)
    flow = None
    if example_input is not None:
        flow = dataflow(module, example_input)  # also materializes lazy modules
    elif uses_lsuv and any(_is_lazy(p) for p in module.parameters()):
        from lightning_init.lsuv import default_forward

        run = lsuv_forward or default_forward
        materialize_(module, lambda: run(module, lsuv_batch))
        flow = dataflow(module, None)
    else:
        flow = dataflow(module, None)
    plan = plan_init(
        module, scheme, rules=rule_list, bias=bias, nonlinearity=nonlinearity, only_rules=only_rules,
        residual=residual, flow=flow, **scheme_params,
    )  # fmt: skip
    report = apply_plan(plan, gen)
    report.seed = seed
    if plan.lsuv_layers:
        with torch.no_grad():
            _lsuv_into(report, module, plan.lsuv_layers, lsuv_batch, lsuv_forward, lsuv_tol, lsuv_max_iters)

    deliberate = {e.name for e in plan.entries if e.deliberate_zero}
    initialized = {r.layer for r in report.rows} - deliberate
    for e in plan.entries:
        p = e.tensor
        checked = e.name in initialized and e.kind in ("weight", "lsuv") and p.ndim >= 2 and not p.is_meta
        if checked and _identical_rows(p if e.block_dim == 0 else p.transpose(0, 1)):
            report.symmetric.append(e.name)

    if report.unresolved:
        warnings.warn(
            f"`auto` could not tell which activation follows {', '.join(report.unresolved)}; they got xavier_normal "
            "(gain 1). Give `example_input` (a LightningModule's `example_input_array`), `nonlinearity=` or a rule.",
            UserWarning,
            stacklevel=2,
        )
    if report.lsuv is not None and not report.lsuv.converged:
        failed = "; ".join(f"{r.name or '(root)'}: {r.reason}" for r in report.lsuv.layers if not r.converged)
        warnings.warn(f"LSUV did not bring every layer to unit output variance ({failed}).", UserWarning, stacklevel=2)
    if report.symmetric:
        warnings.warn(SYMMETRY_MESSAGE.format(layers=", ".join(report.symmetric)), UserWarning, stacklevel=2)
    return report


def _has_plain_weight(module: nn.Module) -> bool:
    return isinstance(module._parameters.get("weight"), nn.Parameter)


def _lsuv_into(
    report: InitReport,
    module: nn.Module,
    layers: dict[str, nn.Module],
    batch: Any,
    forward: Callable[[nn.Module, Any], Any] | None,
    tol: float,
    max_iters: int,
) -> None:
    """Rescale the orthogonally pre-initialized ``layers`` with LSUV; record it in ``report`` (rows and ``lsuv``)."""
    result = lsuv_(
        module, batch, forward=forward, tol=tol, max_iters=max_iters, orthogonal_preinit=False, layers=list(layers)
    )
    # lsuv_ lists every module it did not rescale; here only the LSUV layers it could not reach are news
    report.lsuv = replace(result, skipped=tuple(s for s in result.skipped if s.name in layers))
    rescaled = {r.name for r in result.layers}
    rows = {r.layer: r for r in report.rows}
    for name, mod in layers.items():
        row = rows.get(f"{name}.weight" if name else "weight")
        if row is None:
            continue
        if name in rescaled:  # data-dependent: no closed-form gain or std
            weight = mod._parameters["weight"]
            assert weight is not None  # a plain parameter: checked when the layer was selected
            row.gain, row.expected_std, row.actual_std = None, math.nan, _std(weight)
        else:
            row.scheme = "lsuv: orthogonal (not rescaled)"


__all__ = [
    "FREE_PARAMETER_DEFAULTS",
    "RESIDUAL_PRESETS",
    "InitReport",
    "LayerInit",
    "ParamPlan",
    "Plan",
    "ResidualPreset",
    "apply_plan",
    "init_module",
    "materialize_",
    "param_role",
    "plan_init",
    "true_fans",
]
