"""Mixed precision (steps the GradScaler skips), manual optimization with several optimizers, sharded strategies."""

import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import ActivationMonitor, GradientMonitor, WeightMonitor
from tests.helpers import quiet_trainer


def _data(n: int = 64, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g)), batch_size=batch)


def _trainer(tmp_path, callbacks, **kw) -> pl.Trainer:
    return quiet_trainer(
        logger=TensorBoardLogger(str(tmp_path), name="", version="tb"),
        callbacks=callbacks,
        **kw,
    )


def _scalars(tmp_path) -> dict[str, dict[int, float]]:
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Moved(pl.Callback):
    """Reference: whether the optimizer step changed the weights (a skipped step leaves them untouched)."""

    def __init__(self) -> None:
        self.moved: dict[int, bool] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._before = [p.detach().clone() for p in pl_module.parameters()]
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        after = list(pl_module.parameters())
        self.moved[self._step] = any(not torch.equal(a, b) for a, b in zip(after, self._before, strict=True))


def test_steps_the_grad_scaler_skips_are_reported_as_skipped_not_as_exploding(tmp_path):
    # A loss scale of 2**40 overflows float16 gradients: the scaler skips steps and halves the scale until it fits.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    reference = Moved()
    monitors = [GradientMonitor(every_n_steps=1), WeightMonitor(every_n_steps=1), reference]
    trainer = _trainer(tmp_path, monitors, max_steps=40, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Regression(), _data(n=320))
    scalars = _scalars(tmp_path)
    skipped = scalars["amp/skipped_step"]
    expected = {k: float(not moved) for k, moved in reference.moved.items()}
    assert skipped == expected
    assert 0 < sum(skipped.values()) < len(skipped)  # some skipped, then training went on
    # the loss scale halves on every skipped step
    scale = scalars["amp/loss_scale"]
    assert scale[0] == 2.0**40
    first_kept = min(k for k, v in skipped.items() if v == 0)
    assert scale[first_kept] == 2.0 ** (40 - first_kept)
    # inf gradients on skipped steps are logged but not judged: no NaN/Inf or exploding finding
    texts = [str(w.message) for w in caught]
    assert not [t for t in texts if "NaN/Inf gradients" in t or "exploding gradients" in t], texts
    assert scalars["grad_nonfinite/net.0.weight"][0] > 0
    assert not set(scalars["health/nonfinite_grad"]) & {k for k, v in skipped.items() if v}  # not judged
    assert scalars["health/nonfinite_grad"][first_kept] == 0.0
    # the first step that was not skipped shows finite, unscaled gradients
    assert scalars["grad_nonfinite/net.0.weight"][first_kept] == 0
    assert scalars["grad_norm/net.0.weight"][first_kept] < 100


def test_bf16_mixed_logs_without_amp_tags(tmp_path):
    trainer = _trainer(
        tmp_path,
        [GradientMonitor(every_n_steps=1), ActivationMonitor(every_n_steps=1)],
        max_steps=3,
        precision="bf16-mixed",
    )
    trainer.fit(Regression(), _data())
    scalars = _scalars(tmp_path)
    assert not [t for t in scalars if t.startswith("amp/")]
    assert set(scalars["grad_norm/net.0.weight"]) == {0, 1, 2}
    assert set(scalars["activation_std/net.0"]) == {0, 1, 2}


class TwoOptimizers(pl.LightningModule):
    """A GAN-shaped manual loop: two optimizers, each stepping its own network once per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.gen = nn.Linear(8, 8)
        self.disc = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, _ = batch
        opt_g, opt_d = self.optimizers()
        loss_g = self.disc(self.gen(x)).mean()
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        loss_d = self.disc(self.gen(x).detach()).square().mean()
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.gen.parameters(), lr=0.01), torch.optim.SGD(self.disc.parameters(), lr=0.01)


class GradNorms(pl.Callback):
    def __init__(self) -> None:
        self.norms: dict[tuple[str, int], float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for name, p in pl_module.named_parameters():
            if p.grad is not None and any(p is q for g in optimizer.param_groups for q in g["params"]):
                self.norms[name, trainer.global_step] = p.grad.norm().item()


def test_manual_optimization_with_two_optimizers_logs_each_optimizer_step(tmp_path):
    reference = GradNorms()
    monitors = [
        GradientMonitor(every_n_steps=2),
        ActivationMonitor(every_n_steps=2),
        WeightMonitor(every_n_steps=2),
        reference,
    ]
    trainer = _trainer(tmp_path, monitors, max_steps=8)  # 8 optimizer steps = 4 batches
    trainer.fit(TwoOptimizers(), _data())
    assert trainer.global_step == 8
    scalars = _scalars(tmp_path)
    # the cadence applies to batches (0, 1, 3 log: b == 0 or (b + 1) % 2 == 0); each optimizer's step of a logging
    # batch is logged at its own global_step: the generator's at 2b, the discriminator's at 2b + 1
    assert set(scalars["grad_norm/gen.weight"]) == {0, 2, 6}
    assert set(scalars["grad_norm/disc.weight"]) == {1, 3, 7}
    for (name, step), norm in reference.norms.items():
        if step in scalars[f"grad_norm/{name}"]:
            assert scalars[f"grad_norm/{name}"][step] == pytest.approx(norm, rel=1e-5)
    # one total per optimizer, named after its position in `configure_optimizers`
    assert set(scalars["grad_norm/total_optimizer_0"]) == {0, 2, 6}
    assert set(scalars["grad_norm/total_optimizer_1"]) == {1, 3, 7}
    assert "grad_norm/total" not in scalars
    # activations of logging batches, at the global_step the batch started at
    assert set(scalars["activation_std/gen"]) == {0, 2, 6}
    # weights at fit start and after every optimizer of a logging batch has stepped
    assert set(scalars["weight_std/gen.weight"]) == {0, 2, 4, 8}
    assert set(scalars["weight_update_ratio/disc.weight"]) == {2, 4, 8}


@pytest.mark.parametrize("monitor", [WeightMonitor, GradientMonitor])
def test_sharded_strategies_are_refused_with_a_clear_message(monitor, monkeypatch):
    from lightning.pytorch.strategies import FSDPStrategy

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    strategy = object.__new__(FSDPStrategy)  # only its type is looked at
    monkeypatch.setattr(type(trainer), "strategy", property(lambda self: strategy))
    with pytest.raises(RuntimeError, match=rf"{monitor.__name__} does not support `FSDPStrategy`.*ActivationMonitor"):
        monitor().setup(trainer, Regression(), "fit")
    ActivationMonitor().setup(trainer, Regression(), "fit")  # module outputs are not sharded: allowed
