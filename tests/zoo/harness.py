"""Run a zoo entry with the monitors attached and read back what a user would see.

The truth is what the user sees: the ``health/*`` scalars in the TensorBoard event files (read back with
``EventAccumulator``) and the health ``UserWarning``s. :func:`findings` names the flagged layers per rule; it reads
the public :class:`lightning_init.Finding` objects the monitors hand to their ``on_anomaly`` handling (a warning
merges layers and truncates long lists, so it cannot name them all) and is cross-checked against the event counts
by :func:`check_consistent`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_init import ActivationMonitor, GradientMonitor, WeightInit, WeightMonitor
from tests.helpers import quiet_trainer, scalars
from tests.zoo.models import ZooModule
from tests.zoo.registry import ZOO

_MONITOR_NAMES = ("WeightMonitor", "GradientMonitor", "ActivationMonitor")
_KINDS = ("weight", "grad", "activation")


class LossRecorder(Callback):
    """The training loss of every optimizer step, as a float (read from ``training_step``'s returned loss)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


@dataclass
class ZooRun:
    """What one :func:`run_zoo` produced.

    Attributes:
        name: the zoo entry.
        losses: training loss per optimizer step (``losses[0]`` is the loss at init).
        log_dir: the TensorBoard event-file directory.
        health: ``{tag: {step: value}}`` for every ``health/*`` scalar in the event files.
        rows: ``{kind: names}`` of the rows the monitors logged (see :func:`read_rows`).
        health_warnings: texts of the monitors' health ``UserWarning``s, in order.
        warnings: every warning text raised during the run (health ones included).
        monitors: the monitor callbacks (empty with ``monitors=False``).
        module: the trained LightningModule.
        seconds: wall time of ``trainer.fit``.
        captured: every :class:`lightning_init.Finding` the monitors reported (one per check, unmerged).
    """

    name: str
    losses: list[float]
    log_dir: Path
    health: dict[str, dict[int, float]]
    rows: dict[str, list[str]]
    health_warnings: list[str]
    warnings: list[str]
    monitors: list[Callback]
    module: ZooModule
    seconds: float
    captured: list[Any] = field(default_factory=list)

    @property
    def initial_loss(self) -> float:
        """Loss of the first step (the model at init)."""
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        """Mean loss of the last three steps (one noisy batch is not the end state)."""
        tail = self.losses[-3:]
        return sum(tail) / len(tail)

    @property
    def loss_ratio(self) -> float:
        """``final_loss / initial_loss`` (NaN if either is not finite)."""
        a, b = self.initial_loss, self.final_loss
        return b / a if math.isfinite(a) and math.isfinite(b) and a > 0 else math.nan


def _capture_findings(monitor: Callback, sink: list[Any]) -> None:
    """Record every ``Finding`` the monitor hands to its ``on_anomaly`` handling (instance-level wrap, no patching).

    Raises if a health-enabled monitor has no such seam any more: a harness that silently captured nothing would
    make every "healthy means silent" test pass vacuously.
    """
    if not getattr(monitor, "health", False):
        return
    inner = getattr(monitor, "_on_findings", None)
    if inner is None:
        raise RuntimeError(
            f"{type(monitor).__name__} has no `_on_findings(trainer, findings)` any more: update "
            "tests/zoo/harness.py::_capture_findings to where the monitors now hand over their Finding objects."
        )

    def recording(trainer: pl.Trainer, found: Sequence[Any]) -> None:
        sink.extend(f for f in found if not getattr(f, "info", False))  # information (e.g. grad_zero) is no finding
        inner(trainer, found)

    monitor._on_findings = recording  # type: ignore[attr-defined]


def make_monitors(**kwargs: Any) -> list[Callback]:
    """The three monitors, every step, health on (``kwargs`` go to every constructor)."""
    return [cls(every_n_steps=1, **kwargs) for cls in (WeightMonitor, GradientMonitor, ActivationMonitor)]


def _scalar_events(log_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return ea


def read_health(log_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every ``health/*`` scalar under ``log_dir``."""
    ea = _scalar_events(log_dir)
    return {tag: scalars(ea, tag) for tag in ea.Tags()["scalars"] if tag.startswith("health/")}


def read_rows(log_dir: Path) -> dict[str, list[str]]:
    """``{kind: row names}`` the monitors logged (``weight``, ``grad``, ``activation``; ``{kind}_{stat}/{name}`` tags).

    Names in first-logged order, ``total`` (the GradientMonitor's global norm) left out: the layers a verdict could
    name, the denominator of "k of n layers flagged".
    """
    out: dict[str, dict[str, None]] = {kind: {} for kind in _KINDS}
    for tag in _scalar_events(log_dir).Tags()["scalars"]:
        head, _, name = tag.partition("/")
        kind = next((k for k in _KINDS if head.startswith(f"{k}_")), None)
        if kind is not None and name and name != "total":
            out[kind][name] = None
    return {kind: list(names) for kind, names in out.items()}


def _is_health_warning(text: str) -> bool:
    return text.startswith(tuple(f"{m}: " for m in _MONITOR_NAMES)) and " at step " in text


@contextlib.contextmanager
def _quiet_one_thread() -> Iterator[None]:
    """One torch thread; the end-of-fit health reports (INFO logs) not printed (they are in the event files)."""
    previous = torch.get_num_threads()
    loggers = [logging.getLogger(n) for n in ("lightning_utilities.core.rank_zero", "lightning.pytorch")]
    levels = [lg.level for lg in loggers]
    torch.set_num_threads(1)
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def run_zoo(
    name: str,
    tmp_path: Path | str,
    *,
    init: str | WeightInit | None = None,
    monitors: bool | Sequence[Callback] = True,
    steps: int | None = None,
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    trainer_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> ZooRun:
    """Train zoo entry ``name`` for ``steps`` steps on one CPU thread and read back its health output.

    Args:
        name: a key of :data:`tests.zoo.ZOO`.
        tmp_path: where the event files go (``{tmp_path}/{name}/version_N``).
        init: ``None``: the model's own init; ``"auto"`` (or any scheme name): ``WeightInit(init, seed=seed)``; or
            a ``WeightInit`` callback (used as given).
        monitors: ``True``: WeightMonitor, GradientMonitor and ActivationMonitor every step; ``False``: none; or the
            monitor callbacks to use.
        steps: optimizer steps (default: the entry's ``steps``).
        seed: seeds the model's own init (global RNG before building), the data, dropout and ``WeightInit``.
        callbacks: more callbacks.
        trainer_kwargs: more ``Trainer`` arguments.
        **overrides: keyword arguments of the entry's builder (e.g. ``lr=``).
    """
    spec = ZOO[name]
    n_steps = spec.steps if steps is None else steps
    tmp = Path(tmp_path)
    with _quiet_one_thread():
        pl.seed_everything(seed, verbose=False)
        module = spec.build(**overrides)
        loader = spec.data(seed, n_steps)
        mons: list[Callback] = list(make_monitors() if monitors is True else (monitors or []))
        captured: list[Any] = []
        for m in mons:
            _capture_findings(m, captured)
        cbs: list[Callback] = []
        if init is not None:
            # WeightInit draws from a private generator seeded from the OS unless given a seed: pass the run's seed.
            cbs.append(init if isinstance(init, WeightInit) else WeightInit(init, seed=seed))  # type: ignore[arg-type]
        recorder = LossRecorder()
        cbs += [*mons, recorder, *callbacks]
        logger = TensorBoardLogger(str(tmp), name=name)
        trainer = quiet_trainer(
            max_steps=n_steps, logger=logger, callbacks=cbs, limit_val_batches=0, **(trainer_kwargs or {})
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            start = time.perf_counter()
            trainer.fit(module, train_dataloaders=loader)
            seconds = time.perf_counter() - start
    texts = [str(w.message) for w in caught]
    log_dir = Path(logger.log_dir)
    return ZooRun(
        name=name,
        losses=recorder.losses,
        log_dir=log_dir,
        health=read_health(log_dir),
        rows=read_rows(log_dir),
        health_warnings=[t for t in texts if _is_health_warning(t)],
        warnings=texts,
        monitors=mons,
        module=module,
        seconds=seconds,
        captured=captured,
    )


_CACHE: dict[tuple[str, str | None, int | None, int], ZooRun] = {}
_CACHE_DIR: list[Path] = []


def cached_run(name: str, init: str | None = None, *, steps: int | None = None, seed: int = 0) -> ZooRun:
    """:func:`run_zoo` with the default monitors, run once per process for each argument set.

    For tests that only read a run (findings, event files, losses): the health and the init tests of the same zoo
    entry then share one fit. The event files live in a temporary directory removed at interpreter exit. Do not
    modify the returned run or its module.
    """
    key = (name, init, steps, seed)
    if key not in _CACHE:
        if not _CACHE_DIR:
            _CACHE_DIR.append(Path(tempfile.mkdtemp(prefix="lightning_init_zoo_")))
            atexit.register(shutil.rmtree, _CACHE_DIR[0], ignore_errors=True)
        where = _CACHE_DIR[0] / f"{init or 'own'}_seed{seed}_steps{steps or 'default'}"
        _CACHE[key] = run_zoo(name, where, init=init, steps=steps, seed=seed)
    return _CACHE[key]


def _key(finding: Any) -> str:
    """The ``health/{key}`` tag suffix a finding is counted under (``nonfinite`` carries its kind)."""
    return f"nonfinite_{finding.kind}" if finding.rule == "nonfinite" else str(finding.rule)


def findings(run: ZooRun) -> dict[str, list[str]]:
    """``{rule: flagged layers}`` over the whole run (layers in first-flagged order; ``nonfinite_{kind}`` per kind).

    Only rules that flagged something appear: a silent run gives ``{}``.
    """
    out: dict[str, dict[str, None]] = {}
    for f in run.captured:
        out.setdefault(_key(f), {}).update(dict.fromkeys(f.layers))
    return {rule: list(layers) for rule, layers in out.items()}


def flagged_by_kind(run: ZooRun) -> dict[str, list[str]]:
    """``{kind: layers any rule of that kind flagged}`` (``weight``, ``grad``, ``activation``), first-flagged order."""
    out: dict[str, dict[str, None]] = {}
    for f in run.captured:
        out.setdefault(str(f.kind), {}).update(dict.fromkeys(f.layers))
    return {kind: list(layers) for kind, layers in out.items()}


def health_counts(run: ZooRun) -> dict[str, float]:
    """``{tag: largest value over the steps}`` of every ``health/*`` count scalar in the event files."""
    return {tag: max(values.values()) for tag, values in run.health.items() if values}


def first_flagged(run: ZooRun) -> dict[str, int]:
    """``{tag suffix: first step its health/* count was > 0}`` from the event files (rules that never fired absent)."""
    out: dict[str, int] = {}
    for tag, values in run.health.items():
        steps = [step for step, value in values.items() if value > 0]
        if steps:
            out[tag.removeprefix("health/")] = min(steps)
    return out


def check_consistent(run: ZooRun) -> None:
    """Assert that the event files and the captured findings tell the same story, step by step.

    Every ``health/{rule}`` count at every logged step is the number of distinct layers that step's findings flag
    (so a count the findings do not explain, or findings without a count, fail), and every rule some finding
    reported has its scalar.
    """
    per_step: dict[tuple[str, int], set[str]] = {}
    for f in run.captured:
        per_step.setdefault((_key(f), int(f.step)), set()).update(f.layers)
    for rule in sorted({key for key, _ in per_step}):
        assert f"health/{rule}" in run.health, f"findings of rule {rule!r} but no health/{rule} scalar in {run.log_dir}"
    for tag, values in run.health.items():
        rule = tag.removeprefix("health/")
        for step, value in values.items():
            expected = len(per_step.get((rule, step), set()))
            assert value == expected, f"{tag} = {value} at step {step}, but the findings flag {expected} layers"
