"""Acceptance of the health verdicts (issue 4): real fits on CPU, warnings and event files read back."""

import io
import logging
import statistics
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import matplotlib
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import ActivationMonitor, GradientMonitor, HealthError, WeightMonitor
from tests.helpers import quiet_trainer


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spin-waiting otherwise multiplies the run time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class MLP(pl.LightningModule):
    """``depth`` x (Linear(width, width) + activation), then Linear(width, 1); biases zero, weights from ``init``."""

    def __init__(
        self,
        init: str,
        *,
        depth: int = 12,
        width: int = 256,
        act: str = "relu",
        lr: float = 1e-3,
        nan_from: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU() if act == "relu" else nn.Tanh()]
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.lr = lr
        self.nan_from = nan_from
        g = torch.Generator().manual_seed(0)
        for m in self.net:
            if not isinstance(m, nn.Linear):
                continue
            if init == "kaiming":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            elif init == "xavier":
                nn.init.xavier_normal_(m.weight, generator=g)
            elif init == "zeros":
                nn.init.zeros_(m.weight)
            else:
                nn.init.normal_(m.weight, std=float(init), generator=g)
            nn.init.zeros_(m.bias)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.nan_from is not None and self.global_step >= self.nan_from:
            x = x * float("nan")
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def data(width: int = 256, n: int = 256, batch_size: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, width, generator=g)
    y = torch.tanh(x[:, :8].sum(dim=1, keepdim=True) / 3)  # a learnable target
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def monitors(every: int = 1, **kw: Any) -> list[Callback]:
    common = {"every_n_steps": every, "histogram_every_n_steps": None, **kw}
    return [WeightMonitor(**common), GradientMonitor(**common), ActivationMonitor(**common)]


def fit(
    tmp_path: Path, model: pl.LightningModule, callbacks: list, *, max_steps: int, width: int = 256
) -> tuple[pl.Trainer, list[str]]:
    """Fit and return the trainer and the texts of the monitors' warnings."""
    torch.manual_seed(0)
    trainer = quiet_trainer(
        logger=TensorBoardLogger(tmp_path, name="tb"),
        max_steps=max_steps,
        callbacks=callbacks,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data(width))
    texts = [str(w.message) for w in caught if str(w.message).split(":")[0].endswith("Monitor")]
    return trainer, texts


def events(trainer: pl.Trainer) -> EventAccumulator:
    ea = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def has(texts: list[str], word: str) -> list[str]:
    return [t for t in texts if word in t]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class GradRef(Callback):
    """Independent reference: p.grad.norm() where the optimizer sees them."""

    def __init__(self) -> None:
        self.norms: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.norms[trainer.global_step] = {n: p.grad.norm().item() for n, p in pl_module.named_parameters()}


# ------------------------------------------------------------------------------ 12-layer width-256 ReLU MLP


def test_figures_only_at_fit_end_unless_a_figure_cadence_is_given(tmp_path: Path) -> None:
    # histograms every 2 steps draw no figure (each costs ~0.1 s); figure_every_n_steps=3 adds logging step k = 2
    # (logged at k by the gradient and activation monitors, at k + 1 by the weight monitor: the weights after the
    # update) but not k = 5, the last step: fit end (6) draws them one step later
    cases = (("hist_only", {}, [6], [6]), ("figures", {"figure_every_n_steps": 3}, [2, 6], [3, 6]))
    for name, extra, at_k, after_k in cases:
        model = MLP("kaiming", depth=3, width=32)
        trainer, _ = fit(tmp_path / name, model, monitors(histogram_every_n_steps=2, **extra), max_steps=6, width=32)
        ea = events(trainer)
        assert ea.Tags()["histograms"], name
        for kind, want in (("grad", at_k), ("activation", at_k), ("weight", after_k)):
            for figure in ("heatmap", "depth_profile"):
                assert [i.step for i in ea.Images(f"health/{kind}_{figure}")] == want, (name, kind, figure)


def test_vanishing_under_normal_001_with_heatmap_and_table_in_the_event_file(tmp_path: Path) -> None:
    ref = GradRef()
    trainer, texts = fit(
        tmp_path, MLP("0.01"), [*monitors(histogram_every_n_steps=2, figure_every_n_steps=2), ref], max_steps=3
    )
    vanishing = has(texts, "vanishing")
    assert vanishing, texts
    assert any("vanishing gradients" in t and "net.0.weight" in t for t in vanishing)
    # the deepest judged layer: the output (net.24) is judged by output_scale, a small head being by design
    assert any("vanishing activations" in t and "(worst: net.22)" in t for t in vanishing)
    assert not has(texts, "exploding")
    assert all("Kaiming" in t for t in vanishing if "vanishing gradients in" in t or "vanishing activations in" in t)
    ea = events(trainer)

    # health/vanishing_grad counts what the documented rule gives on the reference grad norms: a weight (bias)
    # gradient below 1e-4 x the median of the deeper weight (bias) gradients, or below 1e-9.
    counts = {e.step: e.value for e in ea.Scalars("health/vanishing_grad")}
    assert sorted(counts) == [0, 1, 2]
    for step, norms in ref.norms.items():
        expected = 0
        for suffix in ("weight", "bias"):
            values = [v for n, v in norms.items() if n.endswith(suffix)]
            for i, v in enumerate(values):
                deeper = values[i + 1 :]
                expected += v < 1e-9 or (bool(deeper) and v < 1e-4 * statistics.median(deeper))
        assert counts[step] == expected > 0
    assert all(e.value == 0 for e in ea.Scalars("health/exploding_grad"))

    # The per-layer health tables in the Text tab, one per monitor, written once at fit end.
    report = ea.Tensors("health/grad_report/text_summary")
    assert [e.step for e in report] == [3]
    text = report[0].tensor_proto.string_val[0].decode()
    assert "| net.0.weight | grad | vanishing_grad |" in text
    assert "| net.24.bias | grad | ok |" in text  # the output bias gets the full error signal
    assert (
        "vanishing_activation"
        in ea.Tensors("health/activation_report/text_summary")[0].tensor_proto.string_val[0].decode()
    )
    assert ea.Tensors("health/weight_report/text_summary")

    # The depth-profile heatmaps in the Images tab: on the figure step (k = 1) and at fit end (3).
    tags = ea.Tags()["images"]
    assert {"health/grad_heatmap", "health/activation_heatmap"} <= set(tags), tags
    assert [i.step for i in ea.Images("health/grad_heatmap")] == [1, 3]
    images = ea.Images("health/activation_heatmap")
    assert [i.step for i in images] == [1, 3]
    Image = pytest.importorskip("PIL.Image")  # an independent PNG decoder
    pixels = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB"), dtype=float)
    assert pixels.shape == (images[-1].height, images[-1].width, 3)
    luminance = pixels[:, : int(0.6 * pixels.shape[1])] @ np.array([0.299, 0.587, 0.114])
    # Vanishing activations: the first layer (top row of cells) is drawn bright, the deepest (bottom row) dark
    # (viridis: luminance grows with the value). The cells are the coloured pixels of the figure's left part (the
    # colour bar is at the right; text and frame are grey).
    viridis = np.asarray(matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]) * 255
    left = pixels[:, : int(0.6 * pixels.shape[1])]
    distance = np.min(np.linalg.norm(left[:, :, None, :] - viridis[None, None], axis=-1), axis=-1)
    coloured = (distance < 8) & (left.max(axis=-1) - left.min(axis=-1) > 30)
    rows = np.flatnonzero(coloured.any(axis=1))
    assert rows.size > 10, "no heatmap cells found"
    top = luminance[rows[:3]][coloured[rows[:3]]]
    bottom = luminance[rows[-3:]][coloured[rows[-3:]]]
    assert top.mean() > bottom.mean() + 100, (top.mean(), bottom.mean())


def test_exploding_under_normal_1(tmp_path: Path) -> None:
    _, texts = fit(tmp_path, MLP("1.0"), monitors(), max_steps=3)
    exploding = has(texts, "exploding")
    assert exploding, texts
    assert any("exploding gradients" in t for t in exploding)
    assert any("exploding activations" in t and "(worst: net.24)" in t for t in exploding)
    assert all("clip" in t for t in exploding if "exploding gradients in" in t)  # the remedy
    assert not has(texts, "vanishing")


def test_kaiming_no_finding_for_the_same_steps(tmp_path: Path) -> None:
    trainer, texts = fit(tmp_path, MLP("kaiming"), monitors(), max_steps=3)
    assert texts == []
    ea = events(trainer)
    health = [t for t in ea.Tags()["scalars"] if t.startswith("health/")]
    assert len(health) == 13  # 32-bit: 11 rule counts of the first version, output_scale, and health/total
    assert "health/total" in health
    assert all(e.value == 0 for t in health for e in ea.Scalars(t))


# ------------------------------------------------------------------------------ NaN from step k


K = 3


def small(**kw: Any) -> MLP:
    return MLP("kaiming", depth=3, width=16, lr=0.01, **kw)


def test_nan_warns_at_step_k_and_training_continues(tmp_path: Path) -> None:
    trainer, texts = fit(tmp_path, small(nan_from=K), monitors(), max_steps=6, width=16)
    nonfinite = has(texts, "NaN/Inf")
    assert nonfinite, texts
    assert all(f"at step {K}:" in t for t in nonfinite if not t.startswith("WeightMonitor"))
    assert any(t.startswith("GradientMonitor: NaN/Inf gradients") for t in nonfinite)
    assert any(t.startswith("ActivationMonitor: NaN/Inf activations") for t in nonfinite)
    assert any(t.startswith("WeightMonitor: NaN/Inf weights") and f"at step {K + 1}" in t for t in nonfinite)
    assert trainer.global_step == 6  # not crashed
    counts = {e.step: e.value for e in events(trainer).Scalars("health/nonfinite_grad")}
    assert [s for s, v in counts.items() if v > 0] == [3, 4, 5]
    assert counts[K] == 8  # every parameter of the 3 x (16, 16) + head net


def test_nan_stops_cleanly_with_stop(tmp_path: Path) -> None:
    trainer, texts = fit(tmp_path, small(nan_from=K), monitors(on_anomaly="stop"), max_steps=10, width=16)
    assert has(texts, "NaN/Inf")
    assert trainer.global_step == K + 1  # the step that saw NaN finished, no other
    assert trainer.state.finished
    assert _hooks(trainer.lightning_module) == 0


def test_nan_raises_with_raise_and_removes_hooks(tmp_path: Path) -> None:
    model = small(nan_from=K)
    act = ActivationMonitor(every_n_steps=1, histogram_every_n_steps=None, on_anomaly="raise")
    grad = GradientMonitor(every_n_steps=1, histogram_every_n_steps=None, on_anomaly="raise")
    with pytest.raises(HealthError, match=r"NaN/Inf gradients .* at step 3") as info:
        fit(tmp_path, model, [act, grad], max_steps=10, width=16)
    assert info.value.finding.rule == "nonfinite"
    assert info.value.finding.step == K
    assert model.global_step == K
    assert _hooks(model) == 0
    assert not act._recorder.rows


# ------------------------------------------------------------------------------ symmetric, dead, saturated


def test_zero_init_is_symmetric(tmp_path: Path) -> None:
    _, texts = fit(tmp_path, MLP("zeros", depth=3, width=16), monitors(), max_steps=2, width=16)
    symmetric = has(texts, "symmetric")
    assert symmetric, texts
    # Identical units at fit start and still identical after the first update: confirmed at step 1.
    assert any("net.0.weight" in t and "at step 1" in t and "row spread" in t for t in symmetric)
    assert all("non-zero random" in t for t in symmetric)


def test_a_zero_initialized_last_layer_is_not_symmetric(tmp_path: Path) -> None:
    # A zero readout (or a zero last layer of a residual branch: Fixup, SkipInit) has identical units at init, but the
    # first update makes them differ (each unit's gradient row depends on its own target/downstream weights), so they
    # do not learn the same thing: not a finding.
    model = MLP("xavier", depth=3, width=16, act="tanh")  # tanh'(0) = 1: the zero layer's gradient flows (ReLU'(0) = 0)
    with torch.no_grad():
        model.net[2].weight.zero_()
    _, texts = fit(tmp_path, model, monitors(), max_steps=3, width=16)
    assert not has(texts, "symmetric"), texts
    # Its units did start identical, and the first update made them differ: the premise of the case.
    assert model.net[2].weight.std(dim=1).min() > 0


def test_relu_with_large_negative_bias_is_dead(tmp_path: Path) -> None:
    model = MLP("kaiming", depth=3, width=16)
    with torch.no_grad():
        model.net[2].bias.fill_(-10.0)
    _, texts = fit(tmp_path, model, monitors(), max_steps=2, width=16)
    dead = has(texts, "dead")
    assert dead, texts
    assert any("dead ReLU units" in t and "(net.3, net.5)" in t for t in dead)  # the ReLU after the biased Linear,
    # and the next one, whose Linear now only sees zeros; not the first ReLU (net.1)
    assert not any("net.1" in t for t in dead)


def test_tanh_under_normal_1_is_saturated(tmp_path: Path) -> None:
    _, texts = fit(tmp_path, MLP("1.0", depth=4, width=256, act="tanh"), monitors(), max_steps=2)
    saturated = has(texts, "saturated")
    assert saturated, texts
    assert any("saturated tanh units" in t and "Xavier" in t for t in saturated)


# ------------------------------------------------------------------------------ no false alarms


def _loss(model: MLP) -> float:
    x, y = data().dataset.tensors
    with torch.no_grad():
        return nn.functional.mse_loss(model.net(x), y).item()


@pytest.mark.slow
@pytest.mark.parametrize(("init", "act", "lr"), [("kaiming", "relu", 3e-3), ("xavier", "tanh", 1e-2)])
def test_healthy_training_has_no_findings(tmp_path: Path, init: str, act: str, lr: float) -> None:
    model = MLP(init, act=act, lr=lr)
    before = _loss(model)
    trainer, texts = fit(tmp_path, model, monitors(every=5), max_steps=100)
    assert texts == []
    assert trainer.global_step == 100
    assert _loss(model) < 0.9 * before  # it did train
    ea = events(trainer)
    assert len(ea.Scalars("weight_update_ratio/net.0.weight")) == 21  # after step 0, then every 5th step
    health = [t for t in ea.Tags()["scalars"] if t.startswith("health/")]
    assert len(health) == 13  # 32-bit: 11 rule counts of the first version, output_scale, and health/total
    assert "health/total" in health
    assert all(e.value == 0 for t in health for e in ea.Scalars(t))


def test_report_is_printed_once_per_monitor(tmp_path: Path) -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler = Keep()
    log.addHandler(handler)
    try:
        fit(tmp_path, MLP("zeros", depth=2, width=8), monitors(), max_steps=2, width=8)
    finally:
        log.removeHandler(handler)
    # Once per monitor: the flagged rows' report, or one "healthy" line (the zero init's gradients are exactly zero:
    # grad_zero information, not a finding, so the GradientMonitor is healthy here).
    reports = [r for r in records if "health report" in r or "healthy over" in r]
    assert [r.split(" ")[0].rstrip(":") for r in reports] == ["WeightMonitor", "GradientMonitor", "ActivationMonitor"]
    assert "| net.0.weight | weight | symmetric |" in reports[0]
