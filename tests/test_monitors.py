import dataclasses
import inspect
import logging
import math
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import ActivationMonitor, GradientMonitor, HealthThresholds, WeightInit, WeightMonitor
from lightning_init.health import HealthError, HealthTracker
from tests.helpers import events, quiet_trainer, scalars

# ----------------------------------------------------------------------------------------------- fixtures


class Net(pl.LightningModule):
    def __init__(self, hidden: int = 8, depth: int = 2, lr: float = 0.1, fail_at: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(4, hidden), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.Tanh()]
        layers.append(nn.Linear(hidden, 1))
        self.net = nn.Sequential(*layers)
        self.lr = lr
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def loader(n: int = 64, batch_size: int = 8, features: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, features, generator=g) * 2, torch.randn(n, 1, generator=g)), batch_size
    )


def fit(tmp_path: Path, model: pl.LightningModule, callbacks: list, *, logger: Any = None, data: Any = None, **kw: Any):
    torch.manual_seed(0)
    kw.setdefault("log_every_n_steps", 1)
    if logger is None:
        logger = TensorBoardLogger(tmp_path, name="tb")
    kw.setdefault("max_steps", 6)
    kw.setdefault("log_every_n_steps", 50)  # Lightning's default: the monitors' own every_n_steps decide
    trainer = quiet_trainer(logger=logger, callbacks=callbacks, **kw)
    trainer.fit(model, data if data is not None else loader())
    return trainer


def layer_tags(ea: EventAccumulator) -> list[str]:
    """Scalar tags of the per-layer statistics (without the health counts)."""
    return [t for t in ea.Tags()["scalars"] if not t.startswith("health/")]


def steps_of(ea: EventAccumulator, tag: str, kind: str = "scalars") -> list[int]:
    items = ea.Scalars(tag) if kind == "scalars" else ea.Histograms(tag)
    return [e.step for e in items]


class Reference(Callback):
    """Independent measurements, keyed by trainer.global_step."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.grads: dict[int, dict[str, float]] = {}
        self.raw_grads: dict[int, dict[str, float]] = {}

    def _snap(self, m: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in m.named_parameters()}

    def on_train_start(self, trainer, pl_module):
        self.weights[trainer.global_step] = self._snap(pl_module)

    def on_after_backward(self, trainer, pl_module):
        self.raw_grads[trainer.global_step] = {
            n: p.grad.norm().item() for n, p in pl_module.named_parameters() if p.grad is not None
        }

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before[trainer.global_step] = self._snap(pl_module)
        self.grads[trainer.global_step] = {
            n: p.grad.norm().item() for n, p in pl_module.named_parameters() if p.grad is not None
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = self._snap(pl_module)


# ----------------------------------------------------------------------------------------------- values


def test_weight_std_and_update_ratio_match_the_weights(tmp_path: Path) -> None:
    ref = Reference()
    trainer = fit(tmp_path, Net(), [WeightMonitor(histogram_every_n_steps=None), ref], max_steps=4)
    ea = events(trainer)
    std = scalars(ea, "weight_std/net.2.weight")
    assert sorted(std) == [0, 1, 2, 3, 4]  # step 0 = before any update, then after each update
    for step, value in std.items():
        assert value == pytest.approx(ref.weights[step]["net.2.weight"].std().item(), rel=1e-5)
    norm = scalars(ea, "weight_norm/net.0.bias")
    assert norm[3] == pytest.approx(ref.weights[3]["net.0.bias"].norm().item(), rel=1e-5)
    ratio = scalars(ea, "weight_update_ratio/net.2.weight")
    assert sorted(ratio) == [1, 2, 3, 4]  # the update of step k is logged with the weights after it, at k + 1
    for step, value in ratio.items():
        before, after = ref.before[step - 1]["net.2.weight"], ref.weights[step]["net.2.weight"]
        expected = ((after - before).norm() / before.norm()).item()
        assert expected > 0
        assert value == pytest.approx(expected, rel=1e-4)


class _MicroBatchCount(Callback):
    def __init__(self) -> None:
        self.batches: dict[int, int] = defaultdict(int)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches[trainer.global_step] += 1


@pytest.mark.parametrize(
    ("kw", "scaled"),
    [
        pytest.param({}, False, id="plain"),
        pytest.param({"accumulate_grad_batches": 4}, False, id="accumulate4"),
        pytest.param(
            {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))]},
            True,
            id="16-mixed",
        ),
    ],
)
def test_grad_norm_matches_reference_callback(tmp_path: Path, kw: dict, scaled: bool) -> None:
    ref, count = Reference(), _MicroBatchCount()
    monitor = GradientMonitor(histogram_every_n_steps=None)
    trainer = fit(tmp_path, Net(), [monitor, ref, count], max_steps=3, **kw)
    ea = events(trainer)
    total = scalars(ea, "grad_norm/total")
    assert sorted(total) == [0, 1, 2]  # once per optimizer step
    if "accumulate_grad_batches" in kw:
        assert all(n == 4 for n in count.batches.values())
    for name in ("net.0.weight", "net.2.bias", "net.4.weight"):
        logged = scalars(ea, f"grad_norm/{name}")
        for step in (0, 1, 2):
            assert logged[step] == pytest.approx(ref.grads[step][name], rel=1e-5)
            if scaled:  # on_after_backward would have shown the gradient still multiplied by the loss scale
                assert ref.raw_grads[step][name] == pytest.approx(1024 * logged[step], rel=1e-3)
    for step in (0, 1, 2):
        assert total[step] == pytest.approx(math.sqrt(sum(v * v for v in ref.grads[step].values())), rel=1e-5)
    ratio = scalars(ea, "grad_ratio/net.0.weight")
    assert ratio[1] == pytest.approx(ref.grads[1]["net.0.weight"] / ref.before[1]["net.0.weight"].norm().item(), 1e-5)
    assert scalars(ea, "grad_nonfinite/net.0.weight")[0] == 0


class _ActivationReference(Callback):
    """Recomputes each layer's output by hand on the batch, with the weights the step uses."""

    def __init__(self) -> None:
        self.outputs: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x = batch[0]
        outs = []
        with torch.no_grad():
            for layer in pl_module.net:
                x = layer.forward(x)  # .forward: bypasses the monitor's hooks
                outs.append(x.clone())
        self.outputs[trainer.global_step] = outs


def test_activation_statistics_match_outputs_recomputed_by_hand(tmp_path: Path) -> None:
    ref = _ActivationReference()
    trainer = fit(tmp_path, Net(), [ActivationMonitor(histogram_every_n_steps=None), ref], max_steps=3)
    ea = events(trainer)
    for step in (0, 1, 2):
        outs = ref.outputs[step]
        for i, out in enumerate(outs):
            assert scalars(ea, f"activation_std/net.{i}")[step] == pytest.approx(out.std().item(), rel=1e-5)
            assert scalars(ea, f"activation_mean/net.{i}")[step] == pytest.approx(out.mean().item(), abs=1e-6)
        relu, tanh = outs[1], outs[3]
        assert scalars(ea, "activation_zero_fraction/net.1")[step] == pytest.approx((relu == 0).float().mean().item())
        saturated = (tanh.abs() > 0.99).float().mean().item()
        assert scalars(ea, "activation_saturation/net.3")[step] == pytest.approx(saturated)
        assert scalars(ea, "activation_abs_max/net.4")[step] == pytest.approx(outs[4].abs().max().item(), rel=1e-6)
    assert "activation_saturation/net.1" not in ea.Tags()["scalars"]  # only bounded activations have one


def test_activation_statistics_cover_all_micro_batches(tmp_path: Path) -> None:
    class Outputs(Callback):
        def __init__(self) -> None:
            self.out: dict[int, list[torch.Tensor]] = defaultdict(list)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            with torch.no_grad():
                self.out[trainer.global_step].append(pl_module.net[0].forward(batch[0]))

    ref = Outputs()
    trainer = fit(
        tmp_path, Net(), [ActivationMonitor(histogram_every_n_steps=None), ref], max_steps=2, accumulate_grad_batches=3
    )
    std = scalars(events(trainer), "activation_std/net.0")
    assert sorted(std) == [0, 1]
    for step, value in std.items():
        assert len(ref.out[step]) == 3
        assert value == pytest.approx(torch.cat(ref.out[step]).std().item(), rel=1e-5)


# ----------------------------------------------------------------------------------------------- theory


class DeepMLP(pl.LightningModule):
    def __init__(self, init: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(12):
            layers += [nn.Linear(256, 256), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        g = torch.Generator().manual_seed(0)
        for m in self.net:
            if isinstance(m, nn.Linear):
                if init == "kaiming":
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
                elif init == "xavier":
                    nn.init.xavier_normal_(m.weight, generator=g)
                else:
                    nn.init.normal_(m.weight, std=0.01, generator=g)
                nn.init.zeros_(m.bias)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.parametrize("init", ["kaiming", "xavier", "normal"])
def test_depth_profile_follows_theory(tmp_path: Path, init: str) -> None:
    data = DataLoader(TensorDataset(torch.randn(512, 256, generator=torch.Generator().manual_seed(1))), batch_size=512)
    monitor = ActivationMonitor(histogram_every_n_steps=None, module_types=["Linear"], stats=["std"])
    trainer = fit(tmp_path, DeepMLP(init), [monitor], data=data, max_steps=1)
    ea = events(trainer)
    assert sorted(layer_tags(ea)) == sorted(f"activation_std/net.{2 * i}" for i in range(12))
    first, last = scalars(ea, "activation_std/net.0")[0], scalars(ea, "activation_std/net.22")[0]
    ratio = last / first
    if init == "kaiming":
        assert 0.2 <= ratio <= 5
    elif init == "xavier":
        assert ratio == pytest.approx((1 / math.sqrt(2)) ** 11, rel=0.5)
    else:
        assert ratio < 1e-6


# ----------------------------------------------------------------------------------------------- cadence


def test_cadence_scalars_and_histograms(tmp_path: Path) -> None:
    monitors = [
        WeightMonitor(every_n_steps=3, histogram_every_n_steps=4),
        GradientMonitor(every_n_steps=3, histogram_every_n_steps=4),
        ActivationMonitor(every_n_steps=3, histogram_every_n_steps=4),
    ]
    trainer = fit(tmp_path, Net(), monitors, max_steps=12, accumulate_grad_batches=2, data=loader(n=256))
    ea = events(trainer)
    # optimizer step k logs when k == 0 or (k + 1) % n == 0; weights describe the state after the update (k + 1),
    # and the initial weights at fit start (step 0)
    assert steps_of(ea, "grad_norm/net.0.weight") == [0, 2, 5, 8, 11]
    assert steps_of(ea, "activation_std/net.0") == [0, 2, 5, 8, 11]
    assert steps_of(ea, "weight_std/net.0.weight") == [0, 1, 3, 6, 9, 12]
    assert steps_of(ea, "weight_update_ratio/net.0.weight") == [1, 3, 6, 9, 12]
    assert steps_of(ea, "grad/net.0.weight", "histograms") == [3, 7, 11]
    assert steps_of(ea, "activation/net.0", "histograms") == [3, 7, 11]
    assert steps_of(ea, "weight/net.0.weight", "histograms") == [0, 4, 8, 12]
    hist = ea.Histograms("weight/net.0.weight")[0].histogram_value
    assert hist.num == 32  # 8 x 4, all finite


def test_every_n_steps_defaults_to_trainer_log_every_n_steps(tmp_path: Path) -> None:
    trainer = fit(tmp_path, Net(), [GradientMonitor(histogram_every_n_steps=None)], max_steps=8, log_every_n_steps=4)
    assert steps_of(events(trainer), "grad_norm/total") == [0, 3, 7]


HEALTH_TAGS = {
    "health/nonfinite_weight",
    "health/symmetric",
    "health/update_ratio",
    "health/nonfinite_grad",
    "health/vanishing_grad",
    "health/exploding_grad",
    "health/nonfinite_activation",
    "health/vanishing_activation",
    "health/exploding_activation",
    "health/dead",
    "health/saturated",
    "health/output_scale",
}


def _layout(ea) -> dict[str, list[str]]:
    configs = ea.Tensors("custom_scalars__config__")
    assert len(configs) == 1
    layout = layout_pb2.Layout()
    layout.ParseFromString(configs[0].tensor_proto.string_val[0])
    assert layout.category[0].title == "lightning_init/health"  # health first
    return {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}


def test_one_layout_health_first_and_per_layer_charts_on_request(tmp_path: Path) -> None:
    monitors = [
        WeightMonitor(stats=["std"], per_layer_charts=True),
        GradientMonitor(stats=["norm", "ratio"], per_layer_charts=True),
        ActivationMonitor(per_layer_charts=True),
    ]
    trainer = fit(tmp_path, Net(), monitors, max_steps=1)
    ea = events(trainer)
    charts = _layout(ea)
    assert charts["weight_std"] == ["^weight_std/"]
    health_charts = ["health/total", "health: gradient rules", "health: activation rules", "health: weight rules"]
    assert list(charts)[:4] == health_charts
    assert set(charts) == {*health_charts, "grad_norm/total", "weight_std", "grad_norm", "grad_ratio"} | {
        f"activation_{s}" for s in ("mean", "std", "signal_std", "abs_max", "zero_fraction", "saturation", "nonfinite")
    }
    # The health charts' regexes match exactly the health counts written, each tag on one chart.
    written = {t for t in ea.Tags()["scalars"] if t.startswith("health/")}
    assert written == HEALTH_TAGS | {"health/total"}
    matched = [t for title in health_charts for t in written if re.search(charts[title][0], t)]
    assert sorted(matched) == sorted(written)


def test_default_layout_has_only_the_health_and_summary_charts(tmp_path: Path) -> None:
    trainer = fit(tmp_path, Net(), [WeightMonitor(), GradientMonitor(), ActivationMonitor()], max_steps=1)
    charts = _layout(events(trainer))
    assert list(charts) == [
        "health/total",
        "health: gradient rules",
        "health: activation rules",
        "health: weight rules",
        "grad_norm/total",
    ]


def test_health_total_counts_flagged_layers_of_every_monitor_once_per_step(tmp_path: Path, monkeypatch) -> None:
    # A zero init: every weight is symmetric, the gradients vanish, the ReLUs are dead.
    monitors = [WeightMonitor(every_n_steps=1), GradientMonitor(every_n_steps=1), ActivationMonitor(every_n_steps=1)]
    judged: dict[str, list[set[str]]] = {}
    original = HealthTracker.confirm

    def confirm(self, findings):  # record each judgement's confirmed findings (information rows are not flags)
        confirmed = original(self, findings)
        judged.setdefault(self.kind, []).append({layer for f in confirmed if not f.info for layer in f.layers})
        return confirmed

    monkeypatch.setattr(HealthTracker, "confirm", confirm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = fit(tmp_path, Net(), [WeightInit("zeros"), *monitors], max_steps=3)
    total = scalars(events(trainer), "health/total")  # fails if a step was written twice
    assert sorted(total) == [0, 1, 2, 3]
    # The last value: the layers flagged at each monitor's latest judgement, summed over the monitors.
    expected = sum(len(steps[-1]) for steps in judged.values())
    assert expected > 0
    assert total[3] == expected


# ----------------------------------------------------------------------------------------------- hooks & cost


def _all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hooks_or_references_after_fit_and_after_exception(tmp_path: Path) -> None:
    model = Net()
    act, weight = ActivationMonitor(), WeightMonitor()
    fit(tmp_path, model, [act, weight, GradientMonitor()], max_steps=3)
    assert _all_hooks(model) == 0
    assert not act._recorder.rows
    assert act._recording is None
    assert not weight._snapshot

    class Check(Callback):
        seen = 0

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            Check.seen = max(Check.seen, _all_hooks(pl_module))

    failing = Net(fail_at=2)
    act = ActivationMonitor()
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, failing, [act, Check()], max_steps=5)
    assert Check.seen > 0  # hooks were registered during logging steps...
    assert _all_hooks(failing) == 0  # ...and are gone after the exception raised in the middle of a logging step
    assert not act._recorder.rows
    assert act._recording is None


def test_the_cyclic_gc_is_paused_only_inside_the_monitors_and_always_restored(tmp_path: Path) -> None:
    # The monitors pause gc during their logging-step host work: it must be on again after every hook (also when
    # the health rules raise), stay off when the user turned it off, and never be off while the model runs.
    import gc

    seen: list[bool] = []

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(gc.isenabled())

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(gc.isenabled())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(gc.isenabled())

    monitors = [WeightMonitor(every_n_steps=1), GradientMonitor(every_n_steps=1), ActivationMonitor(every_n_steps=1)]
    fit(tmp_path, Net(), [*monitors, Probe()], max_steps=3)
    assert gc.isenabled()
    assert seen
    assert all(seen)
    with pytest.raises(HealthError):  # raised inside a paused region
        fit(tmp_path, Net(), [GradientMonitor(every_n_steps=1, on_anomaly="raise", exploding_grad_norm=1e-9)])
    assert gc.isenabled()
    gc.disable()
    try:
        fit(tmp_path, Net(), [WeightMonitor(every_n_steps=1)], max_steps=2)
        assert not gc.isenabled()  # left alone when it was off
    finally:
        gc.enable()


class _Counter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _instrument(monitor: Callback, log: list[tuple[str, int, int, int]]) -> None:
    """Count host transfers and torch calls made inside each hook of ``monitor``."""
    for hook in ("on_train_batch_start", "on_train_batch_end", "on_before_optimizer_step"):
        original = getattr(monitor, hook)

        def wrapped(trainer, *args, _original=original, _hook=hook):
            transfers = [0]
            depth = [0]  # the torch-function mode may re-enter the patched method: count the outer call only
            saved = {m: getattr(torch.Tensor, m) for m in ("item", "tolist", "cpu", "numpy")}

            def counting(name):
                def f(self, *a, **k):
                    transfers[0] += depth[0] == 0
                    depth[0] += 1
                    try:
                        return saved[name](self, *a, **k)
                    finally:
                        depth[0] -= 1

                return f

            for m in saved:
                setattr(torch.Tensor, m, counting(m))
            try:
                with _Counter() as counter:
                    _original(trainer, *args)
            finally:
                for m, fn in saved.items():
                    setattr(torch.Tensor, m, fn)
            log.append((_hook, trainer.global_step, transfers[0], counter.calls))

        setattr(monitor, hook, wrapped)


@pytest.mark.parametrize("depth", [1, 6])
def test_one_host_transfer_per_monitor_per_logging_step_and_no_work_otherwise(tmp_path: Path, depth: int) -> None:
    monitors = {
        "weight": WeightMonitor(every_n_steps=2, histogram_every_n_steps=None),
        "grad": GradientMonitor(every_n_steps=2, histogram_every_n_steps=None),
        "activation": ActivationMonitor(every_n_steps=2, histogram_every_n_steps=None),
    }
    logs: dict[str, list] = {k: [] for k in monitors}
    for k, m in monitors.items():
        _instrument(m, logs[k])

    class HookProbe(Callback):
        hooked: ClassVar[dict[int, int]] = {}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            HookProbe.hooked[trainer.global_step] = _all_hooks(pl_module)

    fit(tmp_path, Net(depth=depth), [*monitors.values(), HookProbe()], max_steps=6, logger=CSVLogger(tmp_path))
    # step = trainer.global_step during the hook; it is k + 1 in on_train_batch_end after optimizer step k, so the
    # logging steps 0 (always), 1, 3, 5 finish in on_train_batch_end at 1, 2, 4, 6
    for kind, log in logs.items():
        transfers: dict[tuple[str, int], int] = defaultdict(int)
        for hook, step, n, _ in log:
            transfers[hook, step] += n
        where = "on_before_optimizer_step" if kind == "grad" else "on_train_batch_end"
        steps = (0, 1, 3, 5) if kind == "grad" else (1, 2, 4, 6)
        assert {key: n for key, n in transfers.items() if n} == {(where, s): 1 for s in steps}, kind
    # on steps that do not log: no torch call at all in any hook, no forward hook registered
    for kind, log in logs.items():
        for hook, step, _, calls in log:
            # batch_end logs weights after the update of the step that logged (global_step already advanced)
            after_update = hook == "on_train_batch_end"
            logging = (step == 1 or step % 2 == 0) if after_update else (step == 0 or step % 2 == 1)
            if not logging:
                assert calls == 0, (kind, hook, step)
    assert all(HookProbe.hooked[s] == 0 for s in (2, 4))
    assert all(HookProbe.hooked[s] > 0 for s in (0, 1, 3, 5))


# ----------------------------------------------------------------------------------------------- loggers


def test_csv_logger_receives_every_scalar_key(tmp_path: Path) -> None:
    trainer = fit(
        tmp_path,
        Net(),
        [WeightMonitor(), GradientMonitor(), ActivationMonitor()],
        logger=CSVLogger(tmp_path),
        max_steps=2,
    )
    header = Path(trainer.logger.log_dir, "metrics.csv").read_text().splitlines()[0].split(",")
    for key in (
        "weight_std/net.0.weight",
        "weight_update_ratio/net.2.weight",
        "grad_norm/total",
        "grad_ratio/net.4.bias",
        "grad_nonfinite/net.0.weight",
        "activation_std/net.4",
        "activation_zero_fraction/net.1",
        "activation_saturation/net.3",
    ):
        assert key in header


def test_logger_false_warns_once_and_completes(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(
            tmp_path, Net(), [WeightMonitor(), GradientMonitor(), ActivationMonitor()], logger=False, max_steps=3
        )
    assert trainer.global_step == 3
    mine = [w for w in caught if "no logger" in str(w.message)]
    assert len(mine) == 3  # one per monitor


def test_exploding_values_are_logged_huge_and_histograms_do_not_fail(tmp_path: Path) -> None:
    model = Net(lr=0.0)
    with torch.no_grad():
        model.net[0].weight.mul_(1e22)
    monitors = [
        WeightMonitor(histogram_every_n_steps=1),
        GradientMonitor(histogram_every_n_steps=1),
        ActivationMonitor(histogram_every_n_steps=1),
    ]
    trainer = fit(tmp_path, model, monitors, max_steps=1)
    ea = events(trainer)
    w = model.net[0].weight.detach().double()
    assert scalars(ea, "weight_norm/net.0.weight")[0] == pytest.approx(w.norm().item(), rel=1e-4)
    assert scalars(ea, "weight_std/net.0.weight")[0] == pytest.approx(w.std().item(), rel=1e-4)
    assert math.isfinite(scalars(ea, "activation_abs_max/net.0")[0])
    assert ea.Histograms("weight/net.0.weight")[0].histogram_value.num == 32
    assert ea.Histograms("activation/net.0")[0].histogram_value.num == 64


# ----------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("cls", [WeightMonitor, GradientMonitor, ActivationMonitor])
def test_bad_arguments(cls: type) -> None:
    with pytest.raises(ValueError, match=r"`every_n_steps`.*got 0"):
        cls(every_n_steps=0)
    with pytest.raises(ValueError, match=r"`histogram_every_n_steps`.*got -1"):
        cls(histogram_every_n_steps=-1)
    with pytest.raises(ValueError, match="Did you mean 'abs_max'"):
        cls(stats=["absmax"])
    with pytest.raises(ValueError, match="`module_types`"):
        cls(module_types=[3])


def test_include_exclude_and_module_types(tmp_path: Path) -> None:
    monitors = [
        WeightMonitor(include="net.0.*", stats=["norm"]),
        GradientMonitor(exclude=["*.bias"], stats=["norm"]),
        ActivationMonitor(module_types=["Tanh"], stats=["saturation"]),
    ]
    trainer = fit(tmp_path, Net(), monitors, max_steps=1)
    tags = set(layer_tags(events(trainer)))
    assert tags == {
        "weight_norm/net.0.weight",
        "weight_norm/net.0.bias",
        "grad_norm/net.0.weight",
        "grad_norm/net.2.weight",
        "grad_norm/net.4.weight",
        "grad_norm/total",
        "activation_saturation/net.3",
    }


def test_frozen_and_tied_parameters(tmp_path: Path) -> None:
    class Tied(Net):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(8, 8)
            self.net[2].weight = self.extra.weight  # tied
            self.net[0].bias.requires_grad_(False)

    ref = Reference()
    trainer = fit(tmp_path, Tied(), [GradientMonitor(stats=["norm"]), WeightMonitor(stats=["norm"]), ref], max_steps=1)
    tags = set(events(trainer).Tags()["scalars"])
    assert "grad_norm/net.0.bias" not in tags  # frozen: no grad
    assert "weight_norm/net.0.bias" in tags
    assert "grad_norm/net.2.weight" in tags
    assert "grad_norm/extra.weight" not in tags


# ----------------------------------------------------------------------------------------------- health wiring


@pytest.mark.parametrize(
    ("cls", "names"),
    [
        (WeightMonitor, ["symmetric_spread", "update_ratio_low", "update_ratio_high"]),
        (
            GradientMonitor,
            [
                "vanishing_grad_ratio",
                "vanishing_grad_floor",
                "exploding_grad_norm",
                "exploding_grad_growth",
                "vanishing_backprop_ratio",
                "exploding_backprop_growth",
                "underflow_fraction",
                "overflow_fraction",
            ],
        ),
        (
            ActivationMonitor,
            [
                "vanishing_activation_ratio",
                "exploding_activation_ratio",
                "dead_fraction",
                "saturated_fraction",
                "underflow_fraction",
                "overflow_fraction",
            ],
        ),
    ],
)
def test_each_monitor_takes_the_thresholds_of_its_own_rules(cls: type, names: list[str]) -> None:
    params = inspect.signature(cls.__init__).parameters
    fields = {f.name for f in dataclasses.fields(HealthThresholds)}
    own = [p for p in params if p in fields]
    assert own == names
    assert params["on_anomaly"].default == "warn"
    assert params["health"].default is True
    for name in names:  # the defaults are HealthThresholds' documented ones
        assert params[name].default == getattr(HealthThresholds(), name)
        assert isinstance(params[name].default, float)
        with pytest.raises(ValueError, match=rf"`{name}`.*got -1"):
            cls(**{name: -1})
    with pytest.raises(
        ValueError, match=r"`on_anomaly` must be one of 'warn', 'stop', 'raise', got 'rase'. Did you mean 'raise'"
    ):
        cls(on_anomaly="rase")
    with pytest.raises(ValueError, match="`health`"):
        cls(health="yes")


def test_update_ratio_bounds_are_checked_together() -> None:
    with pytest.raises(ValueError, match="`update_ratio_high` must be greater than `update_ratio_low`"):
        WeightMonitor(update_ratio_low=0.5, update_ratio_high=0.1)


def test_health_off_logs_no_health_and_computes_nothing_extra(tmp_path: Path) -> None:
    monitors = [WeightMonitor(health=False), GradientMonitor(health=False), ActivationMonitor(health=False)]
    model = Net()
    with torch.no_grad():
        model.net[0].weight.zero_()  # symmetric: would be flagged with health on
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(tmp_path, model, monitors, max_steps=2)
    assert not [w for w in caught if "Monitor:" in str(w.message)]
    ea = events(trainer)
    assert not [t for t in ea.Tags()["scalars"] if t.startswith("health/")]
    assert not ea.Tags()["images"]
    assert not [t for t in ea.Tags()["tensors"] if t.startswith("health/")]
    assert all(m._table_stats == m.stats for m in monitors)  # no row_spread etc. computed


def test_health_counts_reach_every_logger(tmp_path: Path) -> None:
    model = Net(lr=0.0)  # the zero layer stays zero: its units stay identical across updates (symmetric)
    with torch.no_grad():
        model.net[2].weight.zero_()
    trainer = fit(tmp_path, model, [WeightMonitor(every_n_steps=1)], logger=CSVLogger(tmp_path), max_steps=2)
    lines = Path(trainer.logger.log_dir, "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    counts = [(r["step"], float(r["health/symmetric"])) for r in rows if r["health/symmetric"]]
    # net.2.weight: identical units at fit start (step 0) and still after the first update: confirmed at step 1.
    assert counts[0] == ("0", 0.0)
    assert ("1", 1.0) in counts
    assert "weight_row_spread/net.2.weight" not in header  # computed for the check, not logged


def test_state_dict_round_trip_and_state_key(tmp_path: Path) -> None:
    model = Net(lr=0.0)  # the zero layer stays zero: symmetric across updates
    with torch.no_grad():
        model.net[2].weight.zero_()
    monitor = WeightMonitor(every_n_steps=1)
    fit(tmp_path, model, [monitor], max_steps=2)
    state = monitor.state_dict()
    assert ["symmetric", "net.2.weight"] in state["health"]["warned"]
    restored = WeightMonitor(every_n_steps=1)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    assert "symmetric" in restored._tracker.to_markdown()
    # Distinct instances of one class get distinct keys; equal arguments the same key.
    assert WeightMonitor(every_n_steps=1).state_key == monitor.state_key
    assert WeightMonitor(every_n_steps=2).state_key != monitor.state_key
    assert WeightMonitor(include="net.0.*").state_key != WeightMonitor().state_key
    assert WeightMonitor(health=False).state_dict() == {}


def test_resumed_fit_does_not_warn_again(tmp_path: Path) -> None:
    model = Net(lr=0.0)  # the zero weight stays zero: still symmetric when the resumed fit starts
    with torch.no_grad():
        model.net[2].weight.zero_()

    def run(max_steps: int, callbacks: list, ckpt_path: str | None = None) -> list[str]:
        trainer = quiet_trainer(
            logger=TensorBoardLogger(tmp_path, name="tb"),
            max_steps=max_steps,
            callbacks=callbacks,
            enable_checkpointing=True,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, loader(), ckpt_path=ckpt_path)
        return [str(w.message) for w in caught if "symmetric units" in str(w.message)]

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    assert len(run(2, [WeightMonitor(), ckpt])) == 1
    assert run(4, [WeightMonitor()], str(tmp_path / "ckpt" / "last.ckpt")) == []
    assert len(run(4, [WeightMonitor()])) == 1  # without the restored state it would warn again


def _fit_end_lines(caplog, monitor_name: str) -> list[str]:
    out = []
    for record in caplog.records:
        if record.getMessage().startswith(monitor_name):
            out += record.getMessage().splitlines()
    return out


def test_fit_end_console_is_one_line_when_healthy(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    monitor = GradientMonitor(every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(tmp_path, Net(), [WeightInit("kaiming_normal", nonlinearity="relu", seed=0), monitor], max_steps=3)
    lines = _fit_end_lines(caplog, "GradientMonitor")
    n_params = len(monitor._tracker.layers())
    assert monitor._tracker.flagged() == []
    assert lines == [f"GradientMonitor: {n_params} parameters, healthy over 3 steps"]


def test_fit_end_console_shows_only_flagged_rows_and_the_text_tab_all_rows_flagged_first(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO)
    monitor = ActivationMonitor(every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = fit(tmp_path, Net(), [WeightInit("zeros"), monitor], max_steps=3)
    flagged, rows = monitor._tracker.flagged(), monitor._tracker.layers()
    assert 0 < len(flagged) < len(rows)
    lines = _fit_end_lines(caplog, "ActivationMonitor")
    console = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert [line.split(" | ")[0].removeprefix("| ") for line in console[1:]] == flagged  # header, then flagged rows
    text = events(trainer).Tensors("health/activation_report/text_summary")[-1].tensor_proto.string_val[0].decode()
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [line.split(" | ")[0].removeprefix("| ") for line in table]
    assert sorted(names) == sorted(rows)
    assert names[: len(flagged)] == flagged  # flagged rows first
    assert all(" | ok | " in line for line in table[len(flagged) :])
