"""Resume logs each step once (issue 13): fit, crash at step k, resume from the last checkpoint into the same run dir.

Read back from the event files themselves (every record of every file, not an ``EventAccumulator``, which would hide
duplicates by purging): every (tag, step) of every scalar, histogram, image and text is written at most once, the
custom-scalars layout once, and every ``health/*`` value equals the one an uninterrupted run logged at that step.

Every batch is the same batch (one batch per epoch, no shuffling), so a resumed run sees exactly the data the
uninterrupted run saw at each step, wherever the epoch boundary falls.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import ActivationMonitor, GradientMonitor, WeightInit, WeightMonitor
from tests.helpers import quiet_trainer

STEPS, CRASH_AT = 6, 3
LAYOUT_TAG = "custom_scalars__config__"


FIGURES = ("heatmap", "depth_profile")


class Crash(RuntimeError):
    pass


class Net(pl.LightningModule):
    def __init__(self, crash_at: int | None = None) -> None:
        super().__init__()
        self.crash_at = crash_at
        # a zero-initialized bias and a dead-ish ReLU layer give the health rules something to count
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.crash_at is not None and self.global_step == self.crash_at:
            raise Crash(f"crash at step {self.global_step}")
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(32, 6, generator=g), torch.randint(0, 2, (32,), generator=g))
        return DataLoader(data, batch_size=32, shuffle=False)


def _callbacks(ckpt_dir: Path | None) -> list[pl.Callback]:
    callbacks: list[pl.Callback] = [
        WeightInit("kaiming_normal", nonlinearity="relu", seed=0),
        WeightMonitor(every_n_steps=1, histogram_every_n_steps=2),
        GradientMonitor(every_n_steps=1, histogram_every_n_steps=2),
        ActivationMonitor(every_n_steps=1, histogram_every_n_steps=2),
    ]
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_last=True, save_top_k=-1))
    return callbacks


def _fit(root: Path, version: str, *, crash_at: int | None = None, ckpt_path: Path | None = None) -> None:
    pl.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(root, name="runs", version=version, default_hp_metric=False)
    trainer = quiet_trainer(
        max_steps=STEPS,
        logger=logger,
        enable_checkpointing=True,
        callbacks=_callbacks(root / f"ckpt_{version}"),
    )
    trainer.fit(Net(crash_at), ckpt_path=ckpt_path)


def _records(run_dir: Path) -> tuple[Counter[tuple[str, int]], dict[tuple[str, int], float]]:
    """(tag, step) -> how many times it was written, over every event file; and the scalar values."""
    counts: Counter[tuple[str, int]] = Counter()
    values: dict[tuple[str, int], float] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                counts[(v.tag, event.step)] += 1
                if v.HasField("simple_value"):
                    values[(v.tag, event.step)] = v.simple_value
                elif v.HasField("tensor") and v.tensor.float_val:
                    values[(v.tag, event.step)] = v.tensor.float_val[0]
    return counts, values


@pytest.mark.slow
def test_resume_logs_each_step_once_and_health_counts_match_an_uninterrupted_run(tmp_path: Path) -> None:
    _fit(tmp_path, "reference")
    with pytest.raises(Crash):
        _fit(tmp_path, "resumed", crash_at=CRASH_AT)
    last = tmp_path / "ckpt_resumed" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == CRASH_AT
    _fit(tmp_path, "resumed", ckpt_path=last)

    ref_counts, ref_values = _records(tmp_path / "runs" / "reference")
    counts, values = _records(tmp_path / "runs" / "resumed")
    assert len(list((tmp_path / "runs" / "resumed").glob("events.out.tfevents.*"))) == 2  # one per process, one dir
    twice = sorted(key for key, n in counts.items() if n > 1)
    assert not twice, f"written more than once: {twice[:10]}"
    assert counts[(LAYOUT_TAG, 0)] == 1
    # the resumed run wrote what the uninterrupted one wrote: the same (tag, step) pairs; besides them only what the
    # crashed run left at its crash (its health reports and figures: on_exception), and no health/total there
    assert set(ref_counts) <= set(counts)
    at_crash = {
        *((f"health/{kind}_report/text_summary", CRASH_AT) for kind in ("weight", "grad", "activation")),
        *((f"health/{kind}_{fig}", CRASH_AT) for kind in ("weight", "grad", "activation") for fig in FIGURES),
    }
    assert set(counts) - set(ref_counts) == at_crash
    health = sorted(k for k in ref_values if k[0].startswith("health/"))
    assert any(step == CRASH_AT for _, step in health)
    for key in health:
        assert values[key] == pytest.approx(ref_values[key], rel=1e-5, abs=1e-6), key
    # the weights are the uninterrupted run's at every step (resume changed nothing)
    for key in (k for k in ref_values if k[0].startswith("weight_norm/")):
        assert values[key] == pytest.approx(ref_values[key], rel=1e-5), key


def test_update_ratio_of_a_zero_initialized_parameter_is_not_logged_at_its_first_update(tmp_path: Path) -> None:
    """``‖Δw‖ / ‖w‖`` is undefined when ``‖w‖ = 0`` (a zero bias before its first update): not logged, not +inf."""
    logger = TensorBoardLogger(tmp_path, name="runs", version="zero", default_hp_metric=False)
    trainer = quiet_trainer(max_steps=3, logger=logger, callbacks=[WeightInit(seed=0), WeightMonitor(every_n_steps=1)])
    trainer.fit(Net())
    _, values = _records(tmp_path / "runs" / "zero")
    bias = {step: v for (tag, step), v in values.items() if tag == "weight_update_ratio/body.0.bias"}
    weight = {step: v for (tag, step), v in values.items() if tag == "weight_update_ratio/body.0.weight"}
    assert sorted(weight) == [1, 2, 3]
    assert sorted(bias) == [2, 3]  # step 1: the update of a zero bias, ratio undefined
    assert all(v == v and abs(v) != float("inf") for v in [*bias.values(), *weight.values()])
