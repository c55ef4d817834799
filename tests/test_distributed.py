"""Monitors under DDP (2 CPU processes, gloo): statistics of the global batch, one collective, same decisions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(400)]

ROOT = str(Path(__file__).resolve().parents[1])

SCRIPT = """
import json, math, sys
import torch
import torch.distributed as dist
import torch.nn.functional as F
import lightning.pytorch as pl
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
sys.path.insert(0, {root!r})
from lightning_init import ActivationMonitor, GradientMonitor, WeightMonitor

OUT = {out!r}
MODE = {mode!r}


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        if MODE == "stop" and self.global_rank == 1 and self.global_step >= 2:
            x = x * float("nan")  # only rank 1's data goes bad
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Reference(pl.Callback):
    \"\"\"Independent path: the global batch's layer outputs, gathered with torch.distributed by hand.\"\"\"

    def __init__(self):
        self.acts = {{}}
        self.grads = {{}}
        self._batch = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self._batch:  # first micro-batch of an optimizer step: the weights of the step's forward
            self._step = trainer.global_step
        self._batch.append(batch[0])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        x = torch.cat(self._batch)
        self._batch = []
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        xs = torch.cat(parts).double()
        net = pl_module.net
        with torch.no_grad():
            h0 = F.linear(xs, net[0].weight.double(), net[0].bias.double())
            h1 = torch.relu(h0)
            h3 = torch.tanh(F.linear(h1, net[2].weight.double(), net[2].bias.double()))
        self.acts[self._step] = {{
            "mean/net.0": h0.mean().item(), "std/net.0": h0.std().item(), "abs_max/net.0": h0.abs().max().item(),
            "zero_fraction/net.1": (h1 == 0).double().mean().item(),
            "saturation/net.3": (h3.abs() > 0.99).double().mean().item(),
            "std/net.3": h3.std().item(),
            # each unit's std across the 24 samples of the global batch (3 micro-batches x 2 ranks), pooled
            "signal_std/net.0": h0.var(dim=0).mean().sqrt().item(),
            "signal_std/net.3": h3.var(dim=0).mean().sqrt().item(),
        }}
        g = net[0].weight.grad.norm().reshape(1)
        both = [torch.empty_like(g) for _ in range(dist.get_world_size())]
        dist.all_gather(both, g)
        self.grads[self._step] = [t.item() for t in both]


class CountCollectives(pl.Callback):
    def setup(self, trainer, pl_module, stage):
        self.calls = {{}}
        inner = trainer.strategy.all_gather

        def counting(*args, **kwargs):
            self.calls[trainer.global_step] = self.calls.get(trainer.global_step, 0) + 1
            return inner(*args, **kwargs)

        trainer.strategy.all_gather = counting


if __name__ == "__main__":
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 8, generator=g)
    y = torch.randn(96, 1, generator=g)
    data = DataLoader(TensorDataset(x, y), batch_size=4)  # 12 batches per rank
    ref, count = Reference(), CountCollectives()
    if MODE == "stats":
        monitors = [WeightMonitor(every_n_steps=2), ActivationMonitor(every_n_steps=2),
                    GradientMonitor(every_n_steps=2)]
        extra = dict(max_steps=4, accumulate_grad_batches=3)
    else:
        monitors = [ActivationMonitor(every_n_steps=1, on_anomaly="stop")]
        extra = dict(max_steps=8)
    logger = pl.loggers.TensorBoardLogger({out!r}, name="", version="tb")
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=logger, log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[*monitors, ref, count], **extra)
    trainer.fit(Net(), data)
    result = {{"rank": trainer.global_rank, "global_step": trainer.global_step, "acts": ref.acts,
               "grads": ref.grads, "collectives": count.calls}}
    json.dump(result, open(f"{{OUT}}/rank{{trainer.global_rank}}.json", "w"))
    # Lightning destroys the process group at exit only for NCCL; a gloo group left to the interpreter's
    # teardown can abort the process ("terminate called without an active exception", exit -6)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
"""


def _run(tmp_path: Path, mode: str) -> list[dict]:
    script = tmp_path / "ddp_monitors.py"
    script.write_text(SCRIPT.format(root=ROOT, out=str(tmp_path), mode=mode))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def _scalars(tmp_path: Path) -> dict[str, dict[int, float]]:
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}


def test_ddp_activation_statistics_describe_the_global_batch_with_one_collective_per_logging_step(tmp_path):
    ranks = _run(tmp_path, "stats")
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1  # only rank zero writes
    scalars = _scalars(tmp_path)
    reference = {int(k): v for k, v in ranks[0]["acts"].items()}
    logged_steps = [0, 1, 3]  # k == 0 or (k + 1) % 2 == 0, of 4 optimizer steps (3 micro-batches each)
    for step in logged_steps:
        for key, expected in reference[step].items():
            stat, module = key.split("/")
            got = scalars[f"activation_{stat}/{module}"][step]
            assert got == pytest.approx(expected, rel=1e-4, abs=1e-6), (step, key)
    # the ranks saw different data: rank 0's own outputs alone would give other numbers
    assert scalars["activation_std/net.0"].keys() == set(logged_steps)
    # gradients: those of the all-reduced gradient, identical on both ranks
    for step in logged_steps:
        rank0, rank1 = ranks[0]["grads"][str(step)]
        assert rank0 == pytest.approx(rank1, rel=1e-6)
        assert scalars["grad_norm/net.0.weight"][step] == pytest.approx(rank0, rel=1e-5)
    # exactly one collective per logging step (the activation monitor's all_gather), none on other steps; it runs at
    # the end of the step's last micro-batch, once `global_step` has advanced to k + 1
    for rank in ranks:
        assert {int(k): v for k, v in rank["collectives"].items()} == {s + 1: 1 for s in logged_steps}


def test_ddp_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    ranks = _run(tmp_path, "stop")  # a hang would time out; a rank stopping alone would desynchronize the steps
    assert [r["global_step"] for r in ranks] == [3, 3]  # NaN at step 2 on rank 1 only, stop after that step
    scalars = _scalars(tmp_path)
    assert scalars["activation_nonfinite/net.0"][2] > 0  # rank 0 logs rank 1's NaN
    assert scalars["activation_nonfinite/net.0"][1] == 0
