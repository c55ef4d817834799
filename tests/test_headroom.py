"""Numeric headroom under 16-bit precision: underflow / overflow fractions and dynamic range, against hand counts."""

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import ActivationMonitor, GradientMonitor
from lightning_init.health import check_activations, check_grads
from lightning_init.stats import headroom_format, headroom_row, headroom_stats
from tests.helpers import events, quiet_trainer, scalars

F16_TINY, F16_MAX = 2.0**-14, 65504.0  # IEEE half: smallest normal, largest finite
BF16_TINY, BF16_MAX = 2.0**-126, 3.3895313892515355e38


def test_formats():
    assert torch.finfo(torch.float16).tiny == F16_TINY
    assert torch.finfo(torch.bfloat16).tiny == BF16_TINY
    assert headroom_format(torch.float32, "32-true") is None  # no headroom under 32-bit
    assert headroom_format(torch.float32, None) is None
    assert headroom_format(torch.float32, "16-mixed") is torch.float16
    assert headroom_format(torch.float32, "bf16-mixed") is torch.bfloat16
    assert headroom_format(torch.float16, "32-true") is torch.float16  # a model cast to half
    assert headroom_format(torch.bfloat16, None) is torch.bfloat16


def test_counts_equal_a_hand_count_in_float16_terms():
    x = torch.tensor([0.0, 1e-7, 5e-5, 7e-5, 1.0, -3.0e4, 4.0e4, math.inf, math.nan])
    under, over, amax, amin = headroom_row(x, torch.float16).tolist()
    assert under == 2  # 1e-7 and 5e-5 are below 2**-14 = 6.1e-5; 0 is not counted, 7e-5 is normal
    assert over == 2  # 4e4 > 65504 / 2 = 32752 and inf; -3e4 is below it, NaN is not counted
    assert amax == pytest.approx(4.0e4)
    assert amin == pytest.approx(1e-7)
    stats = headroom_stats([[under, over, amax, amin]], x.numel())
    assert stats["underflow"] == pytest.approx(2 / 9)
    assert stats["overflow"] == pytest.approx(2 / 9)
    assert stats["dynamic_range"] == pytest.approx(math.log2(4.0e4 / 1e-7), rel=1e-6)
    # a loss scale of 1024 lifts 1e-7 and 5e-5 above the smallest normal and pushes 40 over half the maximum
    scaled = headroom_row(torch.tensor([1e-7, 5e-5, 40.0]), torch.float16, scale=1024.0).tolist()
    assert scaled[:2] == [0.0, 1.0]  # no underflow left (1e-7 * 1024 = 1.02e-4 is normal); 40 * 1024 = 40960 > 32752


def test_counts_in_bfloat16_on_bf16_tensors():
    # built to sit just below / above the thresholds, in bfloat16 itself (subnormals exist in bfloat16)
    below = torch.tensor([BF16_TINY / 4] * 3, dtype=torch.bfloat16)
    above = torch.tensor([BF16_MAX * 0.75] * 2, dtype=torch.bfloat16)
    normal = torch.tensor([1.0, BF16_TINY * 2, BF16_MAX * 0.25, 0.0, 0.0], dtype=torch.bfloat16)
    x = torch.cat([below, above, normal])
    row = headroom_row(x, headroom_format(x.dtype)).tolist()
    assert row[0] == 3
    assert row[1] == 2
    stats = headroom_stats([row], x.numel())
    assert stats["underflow"] == pytest.approx(3 / 10)
    assert stats["overflow"] == pytest.approx(2 / 10)


def test_rules_fire_on_the_fractions():
    table = {"a": {"underflow": 0.2, "overflow": 0.0}, "b": {"underflow": 0.0, "overflow": 1e-3}}
    grads = check_grads(table, step=0)
    assert [(f.rule, f.layers[0]) for f in grads] == [("underflow", "a"), ("overflow", "b")]
    assert "GradScaler" in grads[0].message
    assert "bf16-mixed" in grads[1].message
    acts = check_activations(table, {}, step=0)
    assert {f.rule for f in acts} == {"underflow", "overflow"}
    assert check_grads({"a": {"norm": 1.0}}, step=0) == []  # no headroom columns (32-bit): no verdict


class Tiny(pl.LightningModule):
    """Linear(4, 8) -> Linear(8, 2); the first layer's weights are built so its outputs sit below / above bounds."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Linear(8, 2, bias=False))
        with torch.no_grad():
            # output unit j of the first layer = x . w_j; x = ones, so it is sum(w_j) = 4 * w_j0
            w = torch.zeros(8, 4)
            w[:3] = scale  # 3 of 8 output units at 4 * scale
            w[3:] = 0.25  # the others at 1.0
            self.net[0].weight.copy_(w)
            self.net[1].weight.fill_(0.1)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self(batch[0]).float().square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(tmp_path, scale, precision):
    x = torch.ones(16, 4)
    trainer = quiet_trainer(
        max_steps=1,
        default_root_dir=tmp_path,
        precision=precision,
        callbacks=[ActivationMonitor(every_n_steps=1), GradientMonitor(every_n_steps=1)],
    )
    with warnings.catch_warnings():  # the health verdicts on the built tensors: read back from the tags below
        warnings.simplefilter("ignore")
        trainer.fit(Tiny(scale), DataLoader(TensorDataset(x), batch_size=16))
    return events(trainer)


def test_bf16_autocast_counts_the_built_outputs(tmp_path):
    # 3 of 8 outputs at 4 * 1e-39 = 4e-39 < 2**-126 (1.18e-38): underflow fraction 3/8 in bfloat16
    ea = _fit(tmp_path, 1e-39, "bf16-mixed")
    assert scalars(ea, "activation_underflow/net.0")[0] == pytest.approx(3 / 8)
    assert scalars(ea, "activation_overflow/net.0")[0] == 0
    assert scalars(ea, "health/underflow_activation")[0] >= 1
    assert "grad_underflow/net.0.weight" in ea.Tags()["scalars"]


def test_bf16_autocast_counts_overflowing_outputs(tmp_path):
    ea = _fit(tmp_path, 1e38, "bf16-mixed")  # 4e38 is beyond bfloat16's max: inf, which counts as overflow
    assert scalars(ea, "activation_overflow/net.0")[0] == pytest.approx(3 / 8)
    assert scalars(ea, "health/overflow_activation")[0] >= 1


def test_no_headroom_tag_under_32_bit(tmp_path):
    x = torch.ones(16, 4)
    trainer = quiet_trainer(
        max_steps=1,
        default_root_dir=tmp_path,
        callbacks=[ActivationMonitor(every_n_steps=1), GradientMonitor(every_n_steps=1)],
    )
    trainer.fit(Tiny(1e-39), DataLoader(TensorDataset(x), batch_size=16))
    tags = events(trainer).Tags()["scalars"]
    assert not [t for t in tags if "underflow" in t or "overflow" in t or "dynamic_range" in t]
    assert "activation_std/net.0" in tags
