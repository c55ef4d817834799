"""Findings over a fit: warn once per (rule, layer), ``health/{rule}`` counts, end-of-fit Markdown table, bounded
heatmap history. Pure and host-side; never imports Lightning.
"""  # noqa: D205

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lightning_init.figures import ProfileHistory, depth_profile_figure, heatmap_figure
from lightning_init.health.rules import (
    _KIND_WORD,
    KINDS,
    RULES_BY_KIND,
    Finding,
    Kind,
    Rule,
    _fmt,
    merge_findings,
    persistence,
)
from lightning_init.roles import is_bias_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PROFILE_LABEL", "PROFILE_STAT", "HealthTracker", "health_tag", "profile_of"]


#: Rules several kinds fire: their tag carries the kind (``health/nonfinite_grad``, ``health/underflow_activation``).
PER_KIND_RULES: frozenset[str] = frozenset({"nonfinite", "underflow", "overflow"})


def health_tag(rule: Rule, kind: Kind) -> str:
    """Scalar tag for the count of flagged layers: ``health/{rule}``, or ``health/nonfinite_{kind}``.

    ``nonfinite`` is the one rule every kind fires; the kind suffix keeps the three monitors from writing the same tag.
    """
    return f"health/{rule}_{kind}" if rule in PER_KIND_RULES else f"health/{rule}"


#: Which statistic each kind's depth-profile heatmap shows.
PROFILE_STAT: dict[Kind, str] = {
    "weight": "update_ratio",
    "grad": "norm",
    "activation": "signal_std",
    "output_grad": "norm",
}
#: The statistic shown where a table has no ``PROFILE_STAT`` column (activation tables of the first version).
_PROFILE_FALLBACK: dict[str, str] = {"signal_std": "std"}
#: What each profile statistic is called on the figures' axes.
PROFILE_LABEL: dict[str, str] = {
    "update_ratio": "update ratio",
    "norm": "grad norm",
    "std": "activation std",
    "signal_std": "activation signal std",
}


def profile_of(
    kind: Kind,
    table: Mapping[str, Mapping[str, float]],
    nonlinearities: Mapping[str, str | None] | None = None,
    *,
    roles: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """One heatmap column: ``PROFILE_STAT[kind]`` of every non-bias parameter (weight, grad; ``total`` excluded;
    ``roles`` decides what a bias is, else :func:`~lightning_init.roles.is_bias_name`) or of every layer module
    (activation; ``nonlinearities[name] is None``: the signal std, the plain std for tables without it), in table
    order.
    """  # noqa: D205
    stat = PROFILE_STAT[kind]
    nls = nonlinearities or {}
    rls = roles or {}
    out: dict[str, float] = {}
    for name, row in table.items():
        key = stat if stat in row else _PROFILE_FALLBACK.get(stat, stat)
        if key not in row:
            continue
        if kind == "activation" and nls.get(name) is not None:
            continue
        if kind in ("weight", "grad") and (
            rls.get(name) in ("bias", "norm_bias") or (name not in rls and is_bias_name(name))
        ):
            continue
        out[name] = float(row[key])
    return out


@dataclass
class _Status:
    kind: str
    first_step: int
    last_step: int
    last: dict[str, tuple[float, str, float]]  # rule -> (value, op, threshold)


class HealthTracker:
    """Remembers findings over a fit: warn-once bookkeeping, ``health/*`` counts, a health table, heatmap history.

    Pure and host-side; one tracker per monitor (kind). Memory is bounded by layers x rules plus
    ``layers x max_columns`` heatmap cells, however many steps are fed.

    Args:
        kind: the kind of statistics this tracker follows.
        max_columns: heatmap columns kept (see :class:`lightning_init.figures.ProfileHistory`).

    Example::

        tracker = HealthTracker("grad")
        findings = check_grads(table, step=step)
        for finding in tracker.update(step, findings, profile=profile_of("grad", table)):
            warnings.warn(finding.message)  # each (rule, layer) once
        scalars = tracker.scalars()  # {"health/vanishing_grad": 3.0, ...}
    """

    def __init__(self, kind: Kind, *, max_columns: int = 256) -> None:
        if kind not in KINDS:
            raise ValueError(f"`kind` must be one of {list(KINDS)}, got {kind!r}")
        self.kind: Kind = kind
        self.history = ProfileHistory(max_columns)
        self._warned: set[tuple[str, str]] = set()
        self._status: dict[str, _Status] = {}
        self._layers: dict[str, None] = {}
        self._counts: dict[Rule, int] = dict.fromkeys(RULES_BY_KIND[kind], 0)
        self._info: dict[str, dict[str, int]] = {}  # layer -> {info rule: first step}
        self._streak: dict[tuple[str, str, str], int] = {}  # (rule, measure, layer) -> logged steps in a row

    def confirm(self, findings: Iterable[Finding]) -> list[Finding]:
        """The findings of one judged step whose rule has fired on their layer for as many logged steps in a row as
        the rule requires (:attr:`~lightning_init.health.rules.RuleSpec.persist`); call once per judged step, before
        :meth:`update`. A streak ends at the first judged step the rule does not fire on the layer.
        """  # noqa: D205
        streak: dict[tuple[str, str, str], int] = {}
        out: list[Finding] = []
        for f in findings:
            need = persistence(f)
            if need <= 1:
                out.append(f)
                continue
            keys = [(f.rule, f.measure, layer) for layer in f.layers]
            for key in keys:
                streak[key] = self._streak.get(key, 0) + 1
            if all(streak[key] >= need for key in keys):
                out.append(f)
        self._streak = streak
        return out

    def update(
        self,
        step: int,
        findings: Iterable[Finding],
        profile: Mapping[str, float] | None = None,
        *,
        layers: Iterable[str] | None = None,
    ) -> list[Finding]:
        """Record one logging step and return what to warn about now.

        Args:
            step: the optimizer step.
            findings: this step's findings (from a check function).
            profile: this step's heatmap column, layer -> value (e.g. :func:`profile_of`); also registers the
                layers of the health table. An empty profile adds no column (e.g. the weights at fit start, which
                have no ``update_ratio`` yet).
            layers: more layers of the health table (e.g. every row of the table, biases included).

        Returns:
            The findings whose (rule, layer) was never returned before, merged per rule (:func:`merge_findings`).
        """
        findings = list(findings)
        if layers is not None:
            self._layers.update(dict.fromkeys(layers))
        if profile:
            self.history.append(step, profile)
            self._layers.update(dict.fromkeys(profile))
        counts: dict[Rule, set[str]] = {rule: set() for rule in RULES_BY_KIND[self.kind]}
        new: list[Finding] = []
        for f in findings:
            if f.info:  # information: in the report, returned once, never counted
                fresh = False
                for layer in f.layers:
                    self._layers.setdefault(layer, None)
                    rules = self._info.setdefault(layer, {})
                    rules.setdefault(f.rule, f.step)
                    if (f.rule, layer) not in self._warned:
                        self._warned.add((f.rule, layer))
                        fresh = True
                if fresh:
                    new.append(f)
                continue
            counts.setdefault(f.rule, set()).update(f.layers)
            fresh = False
            for layer in f.layers:
                self._layers.setdefault(layer, None)
                op = f.op
                status = self._status.get(layer)
                if status is None:
                    status = self._status[layer] = _Status(f.kind, f.step, f.step, {})
                status.last_step = max(status.last_step, f.step)
                status.last[f.rule] = (f.value, op, f.threshold)
                if (f.rule, layer) not in self._warned:
                    self._warned.add((f.rule, layer))
                    fresh = True
            if fresh:
                new.append(f)
        self._counts = {rule: len(names) for rule, names in counts.items()}
        return merge_findings(new)

    @property
    def counts(self) -> dict[Rule, int]:
        """Number of flagged layers per rule at the last :meth:`update` (0 for this kind's rules that did not fire)."""
        return dict(self._counts)

    def scalars(self) -> dict[str, float]:
        """``{health_tag(rule, kind): count}`` for the last :meth:`update`."""
        return {health_tag(rule, self.kind): float(n) for rule, n in self._counts.items()}

    def layers(self) -> list[str]:
        """Every layer seen so far (the rows of the health table), in first-seen order."""
        return list(self._layers)

    def flagged(self) -> list[str]:
        """Layers that were ever flagged, in first-seen order."""
        return [name for name in self._layers if name in self._status]

    def to_markdown(self, *, only_flagged: bool = False) -> str:
        """Per-layer health table (Markdown pipe table): flagged layers first, then the healthy ones (unless
        ``only_flagged``), each group in depth order.
        """  # noqa: D205
        if not self._layers:
            return "No layers monitored."
        lines = [
            f"{len(self.flagged())} of {len(self._layers)} layers flagged ({_KIND_WORD[self.kind]}).",
            "",
            "| layer | kind | health | first step | last step | last value |",
            "|---|---|---|---|---|---|",
        ]
        flagged = [name for name in self._layers if name in self._status]
        healthy = [] if only_flagged else [name for name in self._layers if name not in self._status]
        for name in flagged + healthy:
            s = self._status.get(name)
            cell = name.replace("|", "\\|")
            info = self._info.get(name, {})
            note = "".join(f" ({rule} at step {first}: information)" for rule, first in info.items())
            if s is None:
                lines.append(f"| {cell} | {self.kind} | ok{note} | | | |")
                continue
            rules = ", ".join(s.last) + note
            values = "; ".join(
                f"{r}: {_fmt(v)} {op} {_fmt(t)}" if op else f"{r}: {_fmt(v)} (not finite)"
                for r, (v, op, t) in s.last.items()
            )
            lines.append(f"| {cell} | {s.kind} | {rules} | {s.first_step} | {s.last_step} | {values} |")
        return "\n".join(lines)

    def heatmap(self) -> Figure | None:
        """The depth-profile heatmap of the history (:func:`lightning_init.figures.heatmap_figure`: layers x logged
        steps, log10 colour), or ``None`` before any profile was fed.
        """  # noqa: D205
        values, layers, steps = self.history.matrix()
        if values.size == 0:
            return None
        label = PROFILE_LABEL.get(PROFILE_STAT[self.kind], PROFILE_STAT[self.kind])
        return heatmap_figure(values, layers, steps, title=f"{label} by layer (input at the top) and step", label=label)

    def depth_profile(self) -> Figure | None:
        """The coord-check chart of the history (:func:`lightning_init.figures.depth_profile_figure`: one line per
        logged step across the layers), or ``None`` before any profile was fed.
        """  # noqa: D205
        values, layers, steps = self.history.matrix()
        if values.size == 0:
            return None
        label = PROFILE_LABEL.get(PROFILE_STAT[self.kind], PROFILE_STAT[self.kind])
        return depth_profile_figure(
            values, layers, steps, title=f"{label} across depth, one line per logged step", label=label
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (for a callback's ``state_dict``)."""
        return {
            "kind": self.kind,
            "warned": sorted([list(k) for k in self._warned]),
            "layers": list(self._layers),
            "status": {name: dataclasses.asdict(s) for name, s in self._status.items()},
            "info": {name: dict(rules) for name, rules in self._info.items()},
            "streak": [[*key, n] for key, n in self._streak.items()],
            "history": self.history.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._warned = {(r, layer) for r, layer in state["warned"]}
        self._layers = dict.fromkeys(state["layers"])
        self._status = {
            name: _Status(s["kind"], s["first_step"], s["last_step"], {r: tuple(v) for r, v in s["last"].items()})
            for name, s in state["status"].items()
        }
        self._info = {name: dict(rules) for name, rules in state.get("info", {}).items()}
        self._streak = {(r, m, layer): int(n) for r, m, layer, n in state.get("streak", [])}
        self.history.load_state_dict(state["history"])
