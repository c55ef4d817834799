"""Lazy modules (nn.LazyLinear): WeightInit materializes them (example_input_array, else the first batch), never a raw
torch error; the monitors run alongside."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import ActivationMonitor, GradientMonitor, WeightInit, WeightMonitor, init_module
from tests.helpers import quiet_trainer


class LazyNet(pl.LightningModule):
    def __init__(self, example: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LazyLinear(256), nn.ReLU(), nn.LazyLinear(64), nn.Tanh(), nn.LazyLinear(1))
        if example:
            self.example_input_array = torch.randn(2, 300)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(
            TensorDataset(torch.randn(64, 300, generator=g), torch.randn(64, 1, generator=g)), batch_size=32
        )


class FirstWeights(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self.first = pl_module.net[0].weight.detach().clone()


@pytest.mark.parametrize("scheme", ["auto", "kaiming_normal", "lsuv"])
def test_lazy_model_with_example_input_every_scheme_and_all_monitors(scheme, tmp_path):
    model, cb = LazyNet(), WeightInit(scheme, seed=0)
    monitors = [WeightMonitor(every_n_steps=1), ActivationMonitor(every_n_steps=1), GradientMonitor(every_n_steps=1)]
    logger = TensorBoardLogger(tmp_path, name="tb")
    quiet_trainer(max_steps=2, callbacks=[cb, *monitors], logger=logger, default_root_dir=tmp_path).fit(model)
    tags = EventAccumulator(logger.log_dir).Reload().Tags()["scalars"]
    for tag in ("weight_std/net.0.weight", "grad_norm/net.4.weight", "activation_std/net.1"):
        assert tag in tags, tag
    assert cb.report is not None
    rows = {r.layer: r for r in cb.report.rows}
    assert rows["net.0.weight"].fan_in == 300
    if scheme != "lsuv":  # Kaiming for ReLU (auto resolves the follower; kaiming_normal's default gain is ReLU-like)
        assert rows["net.0.weight"].expected_std == pytest.approx(math.sqrt(2 / 300), rel=0.01)
        assert rows["net.0.weight"].actual_std == pytest.approx(math.sqrt(2 / 300), rel=0.05)  # 76800 samples


def test_lazy_model_without_example_input_is_initialized_at_the_first_batch(tmp_path):
    model, cb, first = LazyNet(example=False), WeightInit("auto", seed=0), FirstWeights()
    monitors = [WeightMonitor(every_n_steps=1), ActivationMonitor(every_n_steps=1), GradientMonitor(every_n_steps=1)]
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = quiet_trainer(max_steps=2, callbacks=[cb, first, *monitors], logger=logger, default_root_dir=tmp_path)
    trainer.fit(model)  # the monitors skip the parameters until the first batch materializes them
    tags = EventAccumulator(logger.log_dir).Reload().Tags()["scalars"]
    assert "grad_norm/net.0.weight" in tags
    assert "weight_std/net.0.weight" in tags
    assert cb.report is not None
    row = {r.layer: r for r in cb.report.rows}["net.0.weight"]
    assert row.fan_in == 300
    assert row.scheme == "auto: kaiming_normal (relu)"  # torch.fx found the follower
    assert float(first.first.std()) == pytest.approx(math.sqrt(2 / 300), rel=0.05)


def test_init_module_on_a_lazy_model_needs_an_input():
    net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1))
    with pytest.raises(ValueError, match=r"not materialized yet \(lazy modules\).*`example_input`"):
        init_module(net)
    report = init_module(net, "kaiming_normal", seed=0, example_input=torch.randn(2, 5))
    assert [r.fan_in for r in report.rows] == [5, 8]
