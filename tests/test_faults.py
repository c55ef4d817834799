"""Faults: what the monitors and WeightInit do when training goes wrong or the model is unusual (issue 7).

Every expectation is measured independently: hooks by reading ``module._forward_hooks``, values and non-finite counts
by a reference callback that recomputes them from the parameters and the batch, event files by parsing the TFRecord
framing (with CRCs) and by ``EventAccumulator``.
"""

import re
import signal
import struct
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerStatus
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import ActivationMonitor, GradientMonitor, HealthError, WeightInit, WeightMonitor
from tests.helpers import events, quiet_trainer, scalars

# ----------------------------------------------------------------------------------------------- fixtures

PARAMS = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"]
LAYERS = ["net.0", "net.1", "net.2", "net.3", "net.4"]


class Net(pl.LightningModule):
    """Linear-ReLU-Linear-Tanh-Linear, plain SGD (no momentum: a parameter without grad does not move)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.01)


def loader(n: int = 64, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size)


def monitors(**kw: Any) -> tuple[WeightMonitor, GradientMonitor, ActivationMonitor]:
    kw.setdefault("every_n_steps", 1)
    return WeightMonitor(**kw), GradientMonitor(**kw), ActivationMonitor(**kw)


def make_trainer(tmp_path: Path, callbacks: list, **kw: Any) -> pl.Trainer:
    torch.manual_seed(0)
    kw.setdefault("max_steps", 6)
    kw.setdefault("logger", TensorBoardLogger(tmp_path, name="tb"))
    return quiet_trainer(
        callbacks=callbacks,
        **kw,
    )


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def held_state(weight: WeightMonitor, act: ActivationMonitor) -> dict[str, Any]:
    """Everything a monitor may hold between two hooks of one step (must be empty outside a step)."""
    rec = act._recorder
    return {
        "hooks": len(rec.hooks),
        "rows": rec.rows,
        "numels": rec.numels,
        "histograms": rec.histograms,
        "recording": act._recording,
        "snapshot": weight._snapshot,  # reusable buffers, kept between logging steps of one fit
        "snapshot_taken": weight._snapshot_taken,
        "snapshot_norms": weight._snapshot_norms,
        "pending": weight._pending,
    }


EMPTY = {
    "hooks": 0,
    "rows": {},
    "numels": {},
    "histograms": {},
    "recording": None,
    "snapshot": [],
    "snapshot_taken": False,
    "snapshot_norms": [],
    "pending": None,
}


def tfrecords(path: Path) -> int:
    """Parse an event file's TFRecord framing (length, masked CRC32C of length and data); return the record count.

    Raises AssertionError on a truncated or corrupt record: a half-written file does not parse to its exact end.
    """
    data = path.read_bytes()
    pos, count = 0, 0
    while pos < len(data):
        assert pos + 12 <= len(data), f"{path.name}: truncated header at byte {pos}"
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert masked_crc32c(header) == length_crc, f"{path.name}: corrupt length at byte {pos}"
        end = pos + 12 + length + 4
        assert end <= len(data), f"{path.name}: truncated record at byte {pos}"
        body = data[pos + 12 : pos + 12 + length]
        assert masked_crc32c(body) == struct.unpack("<I", data[end - 4 : end])[0], f"{path.name}: corrupt record"
        pos, count = end, count + 1
    return count


# ----------------------------------------------------------------------------------------------- exceptions


class Failing(Net):
    """Raises ``exc`` at optimizer step ``k``, after the forward (``where="training_step"``) or after the backward
    (``where="on_before_optimizer_step"``: the monitors' own ``on_before_optimizer_step`` already ran), and records
    what the monitors held at that moment.
    """

    def __init__(self, exc: type[BaseException], where: str, k: int) -> None:
        super().__init__()
        self.exc, self.where, self.k = exc, where, k
        self.at_fault: dict[str, Any] = {}

    def _fail(self) -> None:
        weight, _, act = (
            c for c in self.trainer.callbacks if isinstance(c, (WeightMonitor, GradientMonitor, ActivationMonitor))
        )
        self.at_fault = {"hooks": all_hooks(self), **held_state(weight, act)}
        raise self.exc("boom")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.where == "training_step" and self.global_step == self.k:
            self._fail()
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.where == "on_before_optimizer_step" and self.global_step == self.k:
            self._fail()


@pytest.mark.parametrize("where", ["training_step", "on_before_optimizer_step"])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_mid_step_removes_hooks_drops_state_and_leaves_readable_events(
    tmp_path: Path, exc: type[BaseException], where: str
) -> None:
    k = 3
    weight, grad, act = monitors(histogram_every_n_steps=2)
    model = Failing(exc, where, k)
    trainer = make_trainer(tmp_path, [WeightInit(seed=0), weight, grad, act])
    sigint = signal.getsignal(signal.SIGINT)
    try:
        # Lightning 2.6 turns a KeyboardInterrupt into a graceful shutdown (on_exception, loggers finalized) that ends
        # with sys.exit(1); any other exception is re-raised after the same shutdown.
        with pytest.raises(SystemExit if exc is KeyboardInterrupt else RuntimeError):
            trainer.fit(model, loader())
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT during its shutdown
    assert trainer.interrupted
    assert trainer.state.status == TrainerStatus.INTERRUPTED
    # The fault hit while hooks were registered and records (and, after the backward, the weight snapshot) were held...
    assert model.at_fault["hooks"] == len(LAYERS)
    assert set(model.at_fault["rows"]) == set(LAYERS)
    assert model.at_fault["snapshot_taken"] == (where == "on_before_optimizer_step")
    assert len(model.at_fault["snapshot"]) == len(PARAMS)
    # ...and nothing is left of them.
    assert all_hooks(model) == 0
    assert held_state(weight, act) == EMPTY
    # Event files: every record complete (framing and CRCs), and everything logged before the fault is there.
    files = list(Path(trainer.logger.log_dir).glob("events.out.tfevents.*"))
    assert files
    assert all(tfrecords(f) > 0 for f in files)
    ea = events(trainer)
    grads_done = k + 1 if where == "on_before_optimizer_step" else k  # grads of step k are logged before the update
    assert sorted(scalars(ea, "grad_norm/net.0.weight")) == list(range(grads_done))
    assert sorted(scalars(ea, "activation_std/net.0")) == list(range(k))
    assert sorted(scalars(ea, "weight_std/net.0.weight")) == list(range(k + 1))  # weights after step k - 1's update
    assert [e.step for e in ea.Histograms("weight/net.0.weight")] == [0, 2]  # fit start, after step 1
    # what fit end leaves is not lost: each monitor's health report and figures, at the step the fit stopped
    for kind in ("weight", "grad", "activation"):
        assert [e.step for e in ea.Tensors(f"health/{kind}_report/text_summary")] == [k], kind
        assert [e.step for e in ea.Images(f"health/{kind}_heatmap")] == [k], kind


# ----------------------------------------------------------------------------------------------- NaN from step k


class Poison(Callback):
    """Puts one NaN into ``net.2.weight`` when optimizer step ``k`` starts."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.k:
            with torch.no_grad():
                pl_module.net[2].weight[0, 0] = float("nan")


class FiniteReference(Callback):
    """Finite-element counts per parameter / layer output, measured from the tensors themselves."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, tuple[int, int]]] = {}  # step -> name -> (finite, numel)
        self.grads: dict[int, dict[str, tuple[int, int]]] = {}
        self.acts: dict[int, dict[str, tuple[int, int]]] = {}

    @staticmethod
    def _count(t: torch.Tensor) -> tuple[int, int]:
        return int(torch.isfinite(t).sum()), t.numel()

    def on_train_start(self, trainer, pl_module):
        self.weights[0] = {n: self._count(p) for n, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, out = batch[0], {}
        with torch.no_grad():
            for i, layer in enumerate(pl_module.net):
                x = layer.forward(x)  # .forward: bypasses the monitor's hooks
                out[f"net.{i}"] = self._count(x)
        self.acts[trainer.global_step] = out

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads[trainer.global_step] = {n: self._count(p.grad) for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = {n: self._count(p) for n, p in pl_module.named_parameters()}


_NAN_WARNING = re.compile(r"NaN/Inf (weights|gradients|activations) in (.+?) at step (\d+):")


def nan_warnings(messages: list[str]) -> dict[str, list[tuple[str, int]]]:
    """kind word -> [(layer, step)] of every NaN/Inf warning, one entry per layer the warning names."""
    out: dict[str, list[tuple[str, int]]] = {"weights": [], "gradients": [], "activations": []}
    for message in messages:
        m = _NAN_WARNING.search(message)
        if m is None:
            continue
        several = re.fullmatch(r"\d+ layers \((.*)\)", m.group(2))
        layers = several.group(1).split(", ") if several else [m.group(2)]
        out[m.group(1)] += [(layer, int(m.group(3))) for layer in layers]
    return out


def first_nonfinite(counts: dict[int, dict[str, tuple[int, int]]]) -> dict[str, int]:
    first: dict[str, int] = {}
    for step in sorted(counts):
        for name, (finite, numel) in counts[step].items():
            if finite < numel:
                first.setdefault(name, step)
    return first


def test_nan_from_step_k_is_found_once_per_rule_and_layer_counted_and_filtered_from_histograms(tmp_path: Path) -> None:
    k = 3
    ref = FiniteReference()
    weight, grad, act = monitors(histogram_every_n_steps=1)
    trainer = make_trainer(tmp_path, [Poison(k), ref, weight, grad, act], max_steps=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Net(), loader())
    assert trainer.global_step == 6  # "warn" does not stop training
    ea = events(trainer)
    for kind, counts, tag_kind in (
        ("weights", ref.weights, "weight"),
        ("gradients", ref.grads, "grad"),
        ("activations", ref.acts, "activation"),
    ):
        # health/nonfinite_{kind} counts the layers holding NaN/Inf at each logged step, zero before the fault.
        expected = {s: float(sum(f < n for f, n in row.values())) for s, row in counts.items()}
        logged = scalars(ea, f"health/nonfinite_{tag_kind}")
        assert logged == expected, kind
        assert all(v == 0 for s, v in logged.items() if s < k)
        assert logged[k + 1 if kind == "weights" else k] > 0
        # One warning per (rule, layer), at the first step the layer held NaN/Inf.
        warned = nan_warnings([str(w.message) for w in caught])[kind]
        assert sorted(warned) == sorted(first_nonfinite(counts).items()), kind
        # Histograms: finite values only; none at all for a tensor without finite values (and no error).
        for step, row in counts.items():
            for name, (finite, _) in row.items():
                hist = [h.histogram_value.num for h in ea.Histograms(f"{tag_kind}/{name}") if h.step == step]
                assert hist == ([finite] if finite else []), (kind, name, step)
    assert ref.acts[k]["net.2"] == (56, 64)  # one NaN weight: one output unit NaN for the 8 samples
    assert scalars(ea, "grad_nonfinite/net.4.bias")[k] == 1.0


def test_nan_with_on_anomaly_stop_stops_after_step_k(tmp_path: Path) -> None:
    k = 3
    trainer = make_trainer(tmp_path, [Poison(k), *monitors(on_anomaly="stop")], max_steps=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Net(), loader(n=256))
    assert trainer.should_stop
    assert trainer.global_step == k + 1  # the step that found the NaN completes, no step after it
    ea = events(trainer)
    assert sorted(scalars(ea, "health/nonfinite_grad")) == list(range(k + 1))
    assert scalars(ea, "health/nonfinite_grad")[k] == len(PARAMS)


def test_nan_with_on_anomaly_raise_raises_health_error_at_step_k(tmp_path: Path) -> None:
    k = 3
    model = Net()
    weight, grad, act = monitors(on_anomaly="raise")
    trainer = make_trainer(tmp_path, [Poison(k), weight, grad, act], max_steps=20)
    with pytest.raises(HealthError, match=r"NaN/Inf gradients .* at step 3") as info:
        trainer.fit(model, loader())
    # Gradients are judged first (on_before_optimizer_step), before the update of step k.
    assert (info.value.finding.rule, info.value.finding.kind, info.value.finding.step) == ("nonfinite", "grad", k)
    assert trainer.global_step == k
    assert all_hooks(model) == 0
    assert held_state(weight, act) == EMPTY
    # the report of the monitor that raised names the finding: the flagged rows first, in the Text tab
    report = events(trainer).Tensors("health/grad_report/text_summary")
    assert [e.step for e in report] == [k]
    assert "6 of 6 layers flagged" in report[0].tensor_proto.string_val[0].decode()  # every parameter: NaN grads
    assert "| net.0.weight | grad | nonfinite | 3 | 3 |" in report[0].tensor_proto.string_val[0].decode()


# ----------------------------------------------------------------------------------------------- unusual models


class NoParameters(pl.LightningModule):
    """No nn.Parameter at all: the loss comes from a plain tensor (optimized) and a buffer, through a ReLU module."""

    def __init__(self, optimize: bool) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.register_buffer("scale", torch.full((1,), 2.0))
        self.w = torch.full((4,), 0.5, requires_grad=optimize)
        self.optimize = optimize

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if not self.optimize:
            return None  # Lightning runs the step without backward/optimizer
        x, y = batch
        return nn.functional.mse_loss(self.act(x @ self.w[:, None]) * self.scale, y)

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        return torch.optim.SGD([self.w], lr=0.01) if self.optimize else None


@pytest.mark.parametrize("optimize", [True, False], ids=["manual_tensor", "no_optimizer"])
def test_model_without_parameters_runs_without_warnings_from_us(tmp_path: Path, optimize: bool) -> None:
    model = NoParameters(optimize)
    weight, grad, act = monitors(histogram_every_n_steps=2)
    init = WeightInit(seed=0)
    trainer = make_trainer(tmp_path, [init, weight, grad, act], max_steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader())
    assert trainer.global_step == 4
    ours = [str(w.message) for w in caught if "lightning_init" in w.filename]
    assert ours == []
    assert init.report is not None
    assert init.report.rows == []
    tags = events(trainer).Tags()
    per_layer = [t for t in tags["scalars"] if not t.startswith("health/")]
    # The ReLU module is watched when its output is computed (only when the step runs the model).
    assert sorted(per_layer) == (
        sorted(f"activation_{s}/act" for s in ("mean", "std", "signal_std", "abs_max", "zero_fraction", "nonfinite"))
        if optimize
        else []
    )
    assert not [t for t in tags["histograms"] if t.startswith(("weight/", "grad/"))]
    assert all_hooks(model) == 0


def test_frozen_backbone(tmp_path: Path) -> None:
    model = Net()
    for p in model.net[0].parameters():
        p.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.net[0].named_parameters(prefix="net.0")}
    weight, grad, act = monitors(histogram_every_n_steps=None)
    trainer = make_trainer(tmp_path, [weight, grad, act], max_steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader())
    assert all(torch.equal(p, frozen[n]) for n, p in model.net[0].named_parameters(prefix="net.0"))
    ea = events(trainer)
    tags = set(ea.Tags()["scalars"])
    # Frozen parameters have no gradient: not reported; their weights and the layer's outputs still are.
    assert not [t for t in tags if t.startswith("grad_") and "/net.0." in t]
    assert {
        "grad_norm/net.2.weight",
        "weight_std/net.0.weight",
        "weight_norm/net.0.bias",
        "activation_std/net.0",
    } <= tags
    # A frozen weight's update ratio is exactly 0, and a zero ratio is not "frozen learning" (HealthThresholds:
    # "a NON-ZERO update ratio below update_ratio_low is frozen"), while trainable layers do move.
    assert set(scalars(ea, "weight_update_ratio/net.0.weight").values()) == {0.0}
    assert min(scalars(ea, "weight_update_ratio/net.2.weight").values()) > 0
    assert set(scalars(ea, "health/update_ratio").values()) == {0.0}
    assert not [w for w in caught if "update ratio too small" in str(w.message)]
    assert "net.0.weight" not in weight._tracker.flagged()


class Tied(Net):
    """``extra.weight`` is ``net.2.weight`` (same Parameter), used twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = nn.Linear(8, 8)
        self.extra.weight = self.net[2].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net[3](self.net[2](self.net[1](self.net[0](x))))
        return self.net[4](self.extra(h))


class GradReference(Callback):
    def __init__(self) -> None:
        self.grads: dict[int, dict[str, float]] = {}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads[trainer.global_step] = {
            n: p.grad.norm().item() for n, p in pl_module.named_parameters() if p.grad is not None
        }
        self.weights[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def test_tied_weights_are_reported_once_by_the_monitors(tmp_path: Path) -> None:
    model = Tied()
    ref = GradReference()
    weight, grad, act = monitors(histogram_every_n_steps=1)
    trainer = make_trainer(tmp_path, [weight, grad, act, ref], max_steps=2)
    trainer.fit(model, loader())
    ea = events(trainer)
    tags = ea.Tags()
    assert not [t for t in tags["scalars"] + tags["histograms"] if "extra.weight" in t]
    assert "weight_std/extra.bias" in tags["scalars"]  # the untied bias of the same module is reported
    for step in (0, 1):  # the one gradient is the sum over both uses; reported once, under the first name
        assert scalars(ea, "grad_norm/net.2.weight")[step] == pytest.approx(ref.grads[step]["net.2.weight"], rel=1e-5)
    assert len(ea.Histograms("weight/net.2.weight")) == 3  # fit start, after steps 0 and 1
    for monitor in (weight, grad):
        assert monitor._tracker.layers().count("net.2.weight") == 1
        assert "extra.weight" not in monitor._tracker.layers()
    # Both modules that use the weight produce their own outputs: two activation rows.
    assert {"activation_std/net.2", "activation_std/extra"} <= set(tags["scalars"])


class InitialWeights(Callback):
    def on_train_start(self, trainer, pl_module):
        self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def test_tied_weight_is_initialized_and_reported_once_by_weight_init(tmp_path: Path) -> None:
    init, initial = WeightInit(scheme="kaiming_normal", seed=0), InitialWeights()
    trainer = make_trainer(tmp_path, [init, initial], max_steps=1, logger=False)
    trainer.fit(Tied(), loader())
    assert init.report is not None
    rows = [r for r in init.report.rows if r.layer in ("net.2.weight", "extra.weight")]
    assert [r.layer for r in rows] == ["net.2.weight"]
    # The reported std (population std) is that of the weights training starts from (a second draw would replace them).
    assert rows[0].actual_std == pytest.approx(initial.weights["net.2.weight"].std(correction=0).item(), rel=1e-5)


class OddBranch(Net):
    """``branch`` runs on odd optimizer steps only: its parameters have ``grad=None`` on even steps."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net[1](self.net[0](x))
        if self.global_step % 2 == 1:
            h = self.branch(h)
        return self.net[4](self.net[3](self.net[2](h)))


def test_parameter_without_grad_on_some_steps(tmp_path: Path) -> None:
    ref = GradReference()
    weight, grad, act = monitors(histogram_every_n_steps=1)
    trainer = make_trainer(tmp_path, [weight, grad, act, ref], max_steps=6)
    trainer.fit(OddBranch(), loader())
    ea = events(trainer)
    odd = [1, 3, 5]
    for name in ("branch.weight", "branch.bias"):
        logged = scalars(ea, f"grad_norm/{name}")
        assert sorted(logged) == odd
        assert all(logged[s] == pytest.approx(ref.grads[s][name], rel=1e-5) for s in odd)
        assert [h.step for h in ea.Histograms(f"grad/{name}")] == odd
        # plain SGD skips a parameter without grad: it does not move on even steps
        assert all(v == 0.0 for s, v in scalars(ea, f"weight_update_ratio/{name}").items() if (s - 1) % 2 == 0)
    assert sorted(scalars(ea, "activation_std/branch")) == odd
    total = scalars(ea, "grad_norm/total")
    for step in range(6):  # the total covers exactly the gradients that exist at that step
        assert total[step] == pytest.approx(sum(v * v for v in ref.grads[step].values()) ** 0.5, rel=1e-5)
        assert ("branch.weight" in ref.grads[step]) == (step % 2 == 1)


# ----------------------------------------------------------------------------------------------- validation


class Validated(Net):
    """Validation feeds inputs 1000x larger than training's: any of it in the activation statistics would show."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x * 1000 + 500), y))


class TrainOutputs(Callback):
    """Each layer's outputs on the training micro-batches of every optimizer step, recomputed by hand."""

    def __init__(self, act: ActivationMonitor) -> None:
        self.out: dict[int, list[list[torch.Tensor]]] = {}
        self.act = act
        self.validations_while_recording = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, outs = batch[0], []
        with torch.no_grad():
            for layer in pl_module.net:
                x = layer.forward(x)
                outs.append(x)
        self.out.setdefault(trainer.global_step, []).append(outs)

    def on_validation_start(self, trainer, pl_module):
        self.validations_while_recording += self.act._recorder.active


@pytest.mark.parametrize(
    ("kw", "mid_step"),
    [
        pytest.param({"val_dataloaders": "empty"}, False, id="empty_val_loader"),
        pytest.param({"val_check_interval": 2}, False, id="val_every_2_steps"),
        pytest.param({"val_check_interval": 1, "accumulate_grad_batches": 2}, True, id="val_between_micro_batches"),
    ],
)
def test_activation_statistics_never_include_validation_outputs(tmp_path: Path, kw: dict, mid_step: bool) -> None:
    kw = dict(kw)
    val = kw.pop("val_dataloaders", None)
    val_loader = DataLoader(TensorDataset(torch.empty(0, 4), torch.empty(0, 1))) if val == "empty" else loader(n=16)
    act = ActivationMonitor(every_n_steps=1, histogram_every_n_steps=None)
    ref = TrainOutputs(act)
    trainer = make_trainer(tmp_path, [act, ref], max_steps=4, limit_val_batches=2, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning warns about the empty loader
        trainer.fit(Validated(), loader(), val_loader)
    assert trainer.global_step == 4
    # validation did run in the middle of a recorded step where it could leak (the test can fail)
    assert (ref.validations_while_recording > 0) == mid_step
    ea = events(trainer)
    if val != "empty":
        assert "val_loss" in ea.Tags()["scalars"]
    for i in range(len(LAYERS)):
        std, amax = scalars(ea, f"activation_std/net.{i}"), scalars(ea, f"activation_abs_max/net.{i}")
        assert sorted(std) == [0, 1, 2, 3]
        for step, micro in ref.out.items():
            out = torch.cat([m[i] for m in micro])
            assert std[step] == pytest.approx(out.std().item(), rel=1e-5)
            assert amax[step] == pytest.approx(out.abs().max().item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------- fast_dev_run


def test_fast_dev_run_runs_one_step_and_writes_nothing(tmp_path: Path) -> None:
    model = Net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    init = WeightInit(seed=0)
    weight, grad, act = monitors(every_n_steps=None, histogram_every_n_steps=1)
    trainer = make_trainer(tmp_path, [init, weight, grad, act], fast_dev_run=True, max_steps=-1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader(), loader(n=16))
    assert trainer.global_step == 1
    # Lightning replaces the loggers with a DummyLogger: nothing reaches the disk, and no "no logger" warning.
    assert type(trainer.logger).__name__ == "DummyLogger"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [w for w in caught if "no logger" in str(w.message)]
    # ...but everything ran: the init, and the monitors measured and judged step 0 (log_every_n_steps is kept).
    assert init.report is not None
    assert not torch.equal(before["net.0.weight"], model.net[0].weight)
    assert set(grad._tracker.layers()) == set(PARAMS)
    assert set(act._tracker.layers()) == set(LAYERS)
    assert all_hooks(model) == 0
    assert held_state(weight, act) == EMPTY


# ----------------------------------------------------------------------------------------------- evaluation only


class Evaluated(Net):
    def __init__(self) -> None:
        super().__init__()
        self.hooks_seen: list[int] = []

    def _loss(self, batch: Any) -> torch.Tensor:
        self.hooks_seen.append(all_hooks(self))
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self._loss(batch))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._loss(batch)
        return self(batch[0])


def test_validate_test_predict_without_fit_have_no_effect(tmp_path: Path) -> None:
    model = Evaluated()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init = WeightInit(seed=0)
    weight, grad, act = monitors(histogram_every_n_steps=1)
    trainer = make_trainer(tmp_path, [init, weight, grad, act])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.validate(model, loader(n=16))
        trainer.test(model, loader(n=16))
        trainer.predict(model, loader(n=16))
    assert len(model.hooks_seen) == 6
    assert set(model.hooks_seen) == {0}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # WeightInit did not run
    assert init.report is None
    assert not [w for w in caught if "lightning_init" in w.filename]
    tags = events(trainer).Tags()
    assert sorted(tags["scalars"]) == ["epoch", "test_loss", "val_loss"]  # Lightning's own metrics only
    assert tags["histograms"] == []
    assert tags["images"] == []
    assert tags["tensors"] == []
    for m in (weight, grad, act):
        assert m._tracker.layers() == []
    assert held_state(weight, act) == EMPTY
