"""Per-layer initialization rules: match on qualified module name (glob) and/or module type, first match wins.

Pure Python over ``nn.Module`` trees; never imports Lightning. A rule is a plain dataclass, so LightningCLI can read a
list of them from YAML::

    rules:
      - name: "backbone"          # the module and everything under it
        scheme: skip              # leave untouched (pretrained weights)
      - type: Embedding
        scheme: normal
        std: 0.02
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from torch import nn

from lightning_init.checks import check_choice, did_you_mean, received
from lightning_init.schemes import SCHEME_NAMES, FanMode, Nonlinearity, SchemeName, check_magnitude, validate_scheme

#: A rule's scheme: any :data:`~lightning_init.schemes.SchemeName`, or ``"skip"`` to leave the layers untouched.
RuleScheme = SchemeName | Literal["skip"]

#: The names of scheme parameters a rule (and ``WeightInit``) may carry.
PARAM_NAMES: tuple[str, ...] = ("mean", "std", "a", "b", "mode", "nonlinearity", "gain", "value")


@dataclass
class InitRule:
    """One per-layer override.

    A layer matches when ``name`` (an ``fnmatch`` glob) matches its qualified name or the name of one of its parents
    (so ``"backbone"`` covers ``backbone.layer1.conv``), and ``type`` names its class or one of its base classes
    (``"Conv2d"``, ``"_ConvNd"`` or ``"torch.nn.modules.conv.Conv2d"``). From Python ``type`` may also be the class
    itself (``type=nn.Linear``): it is stored as its qualified name, so the rule still round-trips through YAML. A rule
    needs at least one of the two. Every field is checked here, when the rule is built (a wrong type or value raises
    ``ValueError`` naming the field, the value and what is valid); only "matches no layer" waits for the model.

    Args:
        name: Glob on the qualified module name (``"head.*"``, ``"encoder.layers.[01].*"``).
        type: Class name, bare or fully qualified, matched against the module's class hierarchy.
        scheme: The scheme for matched layers, or ``"skip"`` to leave them untouched. ``"lsuv"`` rescales matched
            Linear / Conv layers on the first training batch (see ``init_module``); other matched layers get ``auto``.
        mean: ``normal`` / ``trunc_normal`` mean.
        std: ``normal`` / ``trunc_normal`` standard deviation (> 0).
        a: ``uniform`` / ``trunc_normal`` lower bound, or the leaky_relu slope of Kaiming / ``auto``.
        b: ``uniform`` / ``trunc_normal`` upper bound.
        mode: Kaiming fan mode.
        nonlinearity: Gain's nonlinearity (Kaiming, Xavier, orthogonal) or, for ``auto``, the follower override.
        gain: Xavier / orthogonal gain (> 0).
        value: ``constant`` fill value.
        bias: Constant for the matched layers' biases (default: the global ``bias``).
    """

    name: str | None = None
    type: str | None = None
    scheme: RuleScheme = "auto"
    mean: float | None = None
    std: float | None = None
    a: float | None = None
    b: float | None = None
    mode: FanMode | None = None
    nonlinearity: Nonlinearity | None = None
    gain: float | None = None
    value: float | None = None
    bias: float | None = None

    def __post_init__(self) -> None:
        """Validate the rule (see :func:`~lightning_init.schemes.validate_scheme`)."""
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(
                f"InitRule `name` must be a glob on qualified module names (a str such as 'head.*'), "
                f"got {received(self.name)}."
            )
        if isinstance(self.type, type):
            if not issubclass(self.type, nn.Module):
                raise ValueError(f"InitRule `type` must be an nn.Module class or its name, got the class {self.type!r}")
            self.type = f"{self.type.__module__}.{self.type.__qualname__}"
        elif self.type is not None and not (isinstance(self.type, str) and self.type):
            raise ValueError(
                f"InitRule `type` must be a module class name (e.g. 'Linear', 'torch.nn.Conv2d') or an nn.Module "
                f"class, got {received(self.type)}."
            )
        if self.name is None and self.type is None:
            raise ValueError(f"A rule needs `name` and/or `type` to match layers, got neither: {self.describe()}.")
        check_choice("scheme", self.scheme, (*SCHEME_NAMES, "skip"))
        if self.bias is not None:
            self.bias = check_magnitude("bias", self.bias)
        if self.scheme == "skip":
            given = {k: v for k, v in self.params().items() if v is not None}
            if given or self.bias is not None:
                raise ValueError(f"A rule with scheme 'skip' takes no parameters, got {given or {'bias': self.bias}}.")
        else:
            try:
                validate_scheme(self.scheme, self.params())
            except ValueError as err:
                raise ValueError(f"{self.describe()}: {err}") from None
            if self.scheme == "lsuv" and self.bias not in (None, 0.0):
                raise ValueError(
                    f"A rule with scheme 'lsuv' takes no `bias` (LSUV zeros the biases it rescales), got {self.bias!r}."
                )

    def params(self) -> dict[str, Any]:
        """The scheme parameters given in this rule (``None`` = not given)."""
        return {k: getattr(self, k) for k in PARAM_NAMES}

    def describe(self) -> str:
        """A short text naming the rule by its non-default fields."""
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) is not None]
        return f"InitRule({', '.join(parts)})"

    def matches(self, qualified_name: str, module: nn.Module) -> bool:
        """Whether this rule applies to ``module`` registered under ``qualified_name``."""
        if self.name is not None:
            parts = qualified_name.split(".") if qualified_name else [""]
            prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
            if not any(fnmatch.fnmatchcase(p, self.name) for p in prefixes):
                return False
        if self.type is not None:
            names = {c.__name__ for c in type(module).__mro__} | {
                f"{c.__module__}.{c.__qualname__}" for c in type(module).__mro__
            }
            if self.type not in names:
                return False
        return True


def as_rules(rules: Iterable[InitRule | dict[str, Any]] | None) -> list[InitRule]:
    """Normalize a list of :class:`InitRule` or plain dicts (as written in YAML/Python) into rules.

    Raises:
        ValueError: ``rules`` not a list/tuple (a string, a single rule), an item that is neither a rule nor a dict, a
            dict with an unknown key (with a "did you mean") or any invalid rule (named by its index).
    """
    if rules is None:
        return []
    if isinstance(rules, (InitRule, Mapping)):
        raise ValueError(f"`rules` must be a list of InitRule or dicts, got one rule {rules!r} (wrap it in a list)")
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Iterable):
        raise ValueError(f"`rules` must be a list of InitRule or dicts, got {received(rules)}.")
    out: list[InitRule] = []
    valid = tuple(f.name for f in fields(InitRule))
    for i, rule in enumerate(rules):
        if isinstance(rule, InitRule):
            out.append(rule)
            continue
        if not isinstance(rule, Mapping):
            raise ValueError(f"`rules[{i}]` must be an InitRule or a dict, got {received(rule)}.")
        for key in rule:
            if key not in valid:
                raise ValueError(
                    f"`rules[{i}]` has no key {key!r}: valid keys are {', '.join(map(repr, valid))}."
                    f"{did_you_mean(key, valid) if isinstance(key, str) else ''}"
                )
        try:
            out.append(InitRule(**rule))
        except ValueError as err:
            raise ValueError(f"`rules[{i}]`: {err}") from None
    return out


def first_match(rules: Sequence[InitRule], qualified_name: str, module: nn.Module) -> InitRule | None:
    """The first rule matching ``module`` (first match wins), or ``None``."""
    for rule in rules:
        if rule.matches(qualified_name, module):
            return rule
    return None


def check_all_match(rules: Sequence[InitRule], layers: Sequence[tuple[str, nn.Module]]) -> None:
    """Raise ``ValueError`` for a rule that matches none of ``layers``, naming it and listing some layer names.

    A ``type`` close to one of the layers' class names gets a "did you mean" (``'Linaer'`` -> ``'Linear'``).
    """
    for rule in rules:
        if not any(rule.matches(name, mod) for name, mod in layers):
            some = ", ".join(f"{name!r} ({type(mod).__name__})" for name, mod in layers[:8])
            more = f" and {len(layers) - 8} more" if len(layers) > 8 else ""
            hint = ""
            if rule.type is not None:
                kinds = sorted({c.__name__ for _, mod in layers for c in type(mod).__mro__})
                hint = did_you_mean(rule.type.rsplit(".", 1)[-1], kinds)
            raise ValueError(f"Rule {rule.describe()} matches no layer.{hint} Layers with parameters: {some}{more}.")
