"""``init_module``: initialize every layer of an ``nn.Module`` and report what was done (pure torch).

Usable on any ``nn.Module`` (no Lightning needed), e.g. inside ``LightningModule.configure_model`` under FSDP::

    report = init_module(model, "kaiming_normal", nonlinearity="relu", seed=0)
    print(report)

What each kind of module gets:

- Weight layers (Linear, Conv*, ConvTranspose*, Bilinear, any module owning a >= 2-d parameter): the scheme on each
  >= 2-d parameter; parameters whose name contains ``bias`` get the constant ``bias`` (0 by default); other 1-d
  parameters (e.g. a layer-scale vector) are left as they are.
- ``auto``: per layer from the activation that follows it (see :func:`~lightning_init.schemes.auto_scheme`), found from
  ``nn.Sequential`` order and, when ``example_input`` is given, from execution order during one side-effect-free
  forward. Layers it cannot resolve get ``xavier_normal`` with gain 1 (the seed's rule for a layer followed by nothing:
  variance-preserving for a linear follower) and one warning that names them.
- Normalization layers (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm): weight 1, bias 0.
- Embedding / EmbeddingBag: N(0, 1) (torch's default: unit-variance features, the scale the next layer's fan-based
  init assumes), the ``padding_idx`` row zero. A rule naming them (``type: Embedding``) applies its scheme instead.
- RNN / LSTM / GRU (and their cells): input and projection weights by the scheme per gate block (each gate's
  ``(hidden, input)`` block has its own fans; ``auto`` uses ``xavier_normal`` gain 1, the gates being sigmoid/tanh),
  recurrent weights orthogonal per gate block (gain 1), biases the ``bias`` constant.
- ``nn.MultiheadAttention``: the packed input projection per q/k/v block by the scheme (``auto``: ``xavier_normal``,
  as its output is not followed by an activation), ``out_proj`` likewise.
- Activation modules with parameters (PReLU) and modules without parameters: untouched.
- ``lsuv`` (data-dependent, needs ``lsuv_batch``): Linear and Conv1d/2d/3d layers get an orthogonal weight (gain 1)
  and a zero bias, then :func:`~lightning_init.lsuv.lsuv_` rescales them in forward order until each output's variance
  on the batch is 1 within ``lsuv_tol``. Every other module gets what ``auto`` gives it (norms 1/0, embeddings
  N(0, 1), RNN gate blocks, transposed convs by their follower), and rules apply as usual: ``skip`` leaves a layer
  untouched, a rule naming another scheme takes the layer away from LSUV, a rule naming ``lsuv`` gives it LSUV. Layers
  the forward never calls keep the orthogonal pre-init. The per-layer iterations and variances are in
  ``InitReport.lsuv``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_init.activations import (
    Follower,
    is_layer,
    is_norm,
    nonlinearity_of,
    sequential_followers,
    traced_followers,
)
from lightning_init.checks import check_bool, check_seed
from lightning_init.lsuv import LSUV_LAYER_TYPES, LSUVReport, check_lsuv_args, lsuv_
from lightning_init.rules import InitRule, as_rules, check_all_match, first_match
from lightning_init.schemes import (
    SchemeName,
    apply_scheme_,
    auto_scheme,
    check_magnitude,
    check_module,
    expected_std,
    fans,
    orthogonal_,
    scheme_gain,
    validate_scheme,
)
from lightning_init.stats import row_spread

SYMMETRY_MESSAGE = (
    "{layers}: every output unit of the weight is identical (e.g. zeros or a constant). Every unit of such a layer "
    "computes the same output, receives the same gradient and is updated the same way, so the symmetry is never broken "
    "and the layer behaves like a single unit: it cannot learn different features. Use a random scheme for weights "
    "(e.g. 'kaiming_normal' for ReLU, 'xavier_normal' for tanh/sigmoid); a constant is fine for biases."
)


@dataclass
class LayerInit:
    """One initialized parameter: a row of the :class:`InitReport` table."""

    layer: str
    shape: tuple[int, ...]
    scheme: str
    fan_in: int | None
    fan_out: int | None
    gain: float | None
    expected_std: float
    actual_std: float


@dataclass
class InitReport:
    """What :func:`init_module` did.

    Attributes:
        rows: One row per initialized weight (biases are set to the report's ``bias`` and not listed).
        symmetric: Layers whose output units are all identical after init (``stats.row_spread == 0``).
        unresolved: Layers ``auto`` could not resolve (they got ``xavier_normal``, gain 1).
        skipped: Layers left untouched (``skip`` rules, ``only_rules``, activation parameters).
        bias: The bias constant.
        seed: The seed, when one was given.
        lsuv: What LSUV did (per-layer iterations, initial and final output variances), when ``lsuv`` was used.
    """

    rows: list[LayerInit] = field(default_factory=list)
    symmetric: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bias: float = 0.0
    seed: int | None = None
    lsuv: LSUVReport | None = None

    _HEADER = ("layer", "shape", "scheme", "fan_in", "fan_out", "gain", "expected std", "actual std")

    def _cells(self) -> list[tuple[str, ...]]:
        def num(x: float | None) -> str:
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"

        return [
            (
                r.layer,
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
    if t.is_meta or t.numel() < 2:
        return float("nan")
    return float(t.detach().float().std(correction=0))


def _identical_rows(weight: Tensor) -> bool:
    """Whether every output unit (row) of ``weight`` is identical: ``stats.row_spread == 0``, or exactly equal rows.

    The exact comparison covers constants such as 0.3, whose float32 column mean may differ from 0.3 in the last bit
    (then ``row_spread`` is ~1e-8 instead of 0).
    """
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
    lsuv_batch: Any = None,
    lsuv_forward: Callable[[nn.Module, Any], Any] | None = None,
    lsuv_tol: float = 0.1,
    lsuv_max_iters: int = 10,
    **scheme_params: Any,
) -> InitReport:
    """Initialize every layer of ``module`` in place and return an :class:`InitReport`.

    Args:
        module: Any ``nn.Module`` (a LightningModule, or a bare model inside ``configure_model``).
        scheme: The scheme for layers no rule matches (see :data:`~lightning_init.schemes.SchemeName`).
        rules: Per-layer overrides, first match wins (:class:`~lightning_init.rules.InitRule` or dicts).
        bias: Constant for biases.
        seed: Makes the result reproducible, independent of torch's global RNG.
        generator: A CPU ``torch.Generator`` to draw from instead of ``seed``.
        example_input: A sample input for ``auto`` (one side-effect-free forward records execution order); tuples are
            unpacked as positional arguments, dicts as keyword arguments.
        nonlinearity: For ``auto``, the follower of every layer (overrides detection); for Kaiming / Xavier /
            orthogonal, the nonlinearity of the gain.
        only_rules: Leave layers that no rule matches untouched (fine-tuning: you loaded the weights yourself).
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
            unknown scheme or parameter, out-of-range value, a rule matching no layer, or ``lsuv`` without a usable
            ``lsuv_batch`` (all checked before any parameter changes; each message names the argument and the value).

    Warns:
        UserWarning: Once for layers ``auto`` could not resolve, once for layers left with identical output units,
            once for layers LSUV could not bring to unit variance (named, with the reason).
    """
    check_module("module", module)  # every argument is checked before anything is written
    bias, seed = check_magnitude("bias", bias), check_seed("seed", seed)
    check_bool("only_rules", only_rules)
    params = validate_scheme(scheme, {**scheme_params, "nonlinearity": nonlinearity})
    rule_list = as_rules(rules)
    if scheme == "lsuv" or any(r.scheme == "lsuv" for r in rule_list):
        if lsuv_batch is None:
            raise ValueError(
                "Scheme 'lsuv' is data-dependent: pass `lsuv_batch` (a batch of real inputs on the module's device), "
                "got none. WeightInit(scheme='lsuv') uses the first training batch."
            )
        check_lsuv_args(lsuv_tol, lsuv_max_iters, lsuv_batch, lsuv_forward, prefix="lsuv_")
        if scheme == "lsuv" and bias != 0.0:
            raise ValueError(f"`bias`={bias!r} cannot be used with scheme 'lsuv': LSUV zeros the biases it rescales.")
    layers = [
        (name, mod) for name, mod in module.named_modules() if next(mod.parameters(recurse=False), None) is not None
    ]
    check_all_match(rule_list, layers)
    gen = _private_generator(seed, generator)
    report = InitReport(bias=bias, seed=seed)
    followers: dict[str, Follower] | None = None
    mha_children = {
        f"{name}.{child}" if name else child
        for name, mod in module.named_modules()
        if isinstance(mod, nn.MultiheadAttention)
        for child, _ in mod.named_children()
    }

    def followers_map() -> dict[str, Follower]:
        nonlocal followers
        if followers is None:
            followers = sequential_followers(module)
            if example_input is not None:
                followers.update(traced_followers(module, example_input))
        return followers

    def resolve(name: str, mod: nn.Module, sch: str, prm: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
        """(concrete scheme, its params, report label) for one layer."""
        if sch != "auto":
            return sch, prm, sch
        if isinstance(mod, (nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention)) or name in mha_children:
            concrete, cprm = auto_scheme(None)  # gates are sigmoid/tanh; attention output is linear
            return concrete, cprm, f"auto: {concrete}"
        if prm.get("nonlinearity") is not None:
            follower: Follower = (prm["nonlinearity"], prm.get("a"))
        elif name in followers_map():
            follower = followers_map()[name]
        else:
            report.unresolved.append(name or type(mod).__name__)
            concrete, cprm = auto_scheme(None)
            return concrete, cprm, f"auto: {concrete} (unresolved)"
        concrete, cprm = auto_scheme(*follower)
        return concrete, cprm, f"auto: {concrete} ({follower[0]})"

    def init_weight(
        label: str, tensor: Tensor, sch: str, prm: dict[str, Any], blocks: int = 1, ortho: bool = False
    ) -> None:
        rows = tensor.shape[0] // blocks
        for k in range(blocks):
            block = tensor[k * rows : (k + 1) * rows] if blocks > 1 else tensor
            if ortho:
                orthogonal_(block, 1.0, gen)
            else:
                apply_scheme_(block, sch, prm, gen)
        shape = (rows, *tensor.shape[1:])
        fan_in, fan_out = fans(shape) if tensor.ndim >= 2 else (None, None)
        used, used_prm = ("orthogonal", {"gain": 1.0}) if ortho else (sch, prm)
        gain = scheme_gain(used, used_prm)
        suffix = f" x{blocks} blocks" if blocks > 1 else ""
        scheme_label = ("orthogonal" if ortho else label) + suffix
        report.rows.append(
            LayerInit(label_name(tensor), tuple(tensor.shape), scheme_label, fan_in, fan_out, gain,
                      expected_std(used, shape, used_prm), _std(tensor))
        )  # fmt: skip

    names: dict[int, str] = {}
    lsuv_layers: dict[str, nn.Module] = {}

    def label_name(tensor: Tensor) -> str:
        return names[id(tensor)]

    with torch.no_grad():
        for name, mod in layers:
            # A parameter tied into several modules is initialized (and reported) once, under its first name.
            direct = [(pname, p) for pname, p in mod.named_parameters(recurse=False) if id(p) not in names]
            if not direct:
                continue
            for pname, p in direct:
                names[id(p)] = f"{name}.{pname}" if name else pname
            rule = first_match(rule_list, name, mod)
            if (rule is not None and rule.scheme == "skip") or (rule is None and only_rules):
                report.skipped.append(name or type(mod).__name__)
                continue
            if nonlinearity_of(mod) is not None:  # PReLU & co: activation parameters stay as they are
                report.skipped.append(name or type(mod).__name__)
                continue
            if rule is not None:
                sch, prm = rule.scheme, validate_scheme(rule.scheme, rule.params())
                b = bias if rule.bias is None else rule.bias
            else:
                sch, prm, b = scheme, params, bias
            if sch == "lsuv":
                if isinstance(mod, LSUV_LAYER_TYPES) and _has_plain_weight(mod) and name not in mha_children:
                    lsuv_layers[name] = mod
                    for pname, p in direct:
                        if "bias" in pname:
                            p.fill_(0.0)
                        elif p.ndim >= 2:
                            init_weight("lsuv", p, "orthogonal", {"gain": 1.0})
                    continue
                sch, prm = "auto", validate_scheme("auto", {})  # LSUV's base for layers it cannot rescale
            if is_norm(mod):
                for pname, p in direct:
                    p.fill_(0.0 if "bias" in pname else 1.0)
                    if "bias" not in pname:
                        report.rows.append(
                            LayerInit(names[id(p)], tuple(p.shape), "ones", None, None, None, 0.0, _std(p))
                        )
                continue
            if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) and (rule is None or sch == "auto"):
                sch, prm = "normal", {"mean": 0.0, "std": 1.0}
            resolved: tuple[str, dict[str, Any], str] | None = None
            recurrent = isinstance(mod, (nn.RNNBase, nn.RNNCellBase))
            for pname, p in direct:
                if "bias" in pname:
                    p.fill_(b)
                    continue
                if p.ndim < 2:
                    continue
                if resolved is None:
                    resolved = resolve(name, mod, sch, prm) if is_layer(mod) else (sch, prm, sch)
                concrete, cprm, label = resolved
                if recurrent:
                    blocks = _gates(mod) if "weight_ih" in pname or "weight_hh" in pname else 1
                    init_weight(label, p, concrete, cprm, blocks, ortho="weight_hh" in pname)
                elif isinstance(mod, nn.MultiheadAttention) and pname == "in_proj_weight":
                    init_weight(label, p, concrete, cprm, 3)
                else:
                    init_weight(label, p, concrete, cprm)
            pad = getattr(mod, "padding_idx", None)
            if isinstance(mod, nn.Embedding) and pad is not None:
                mod.weight[pad].fill_(0.0)

        if lsuv_layers:
            _lsuv_into(report, module, lsuv_layers, lsuv_batch, lsuv_forward, lsuv_tol, lsuv_max_iters)

        initialized = {r.layer for r in report.rows}
        for pname, p in module.named_parameters():
            if pname in initialized and p.ndim >= 2 and not p.is_meta and _identical_rows(p):
                report.symmetric.append(pname)

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
