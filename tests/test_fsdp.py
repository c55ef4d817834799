"""Monitors and WeightInit under FSDP2 (``fully_shard``) through Lightning's ModelParallelStrategy, 2 CPU processes.

One sharded run (2 processes, gloo, ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)``) against
the same model unsharded in one process on the same global batches: every logged ``weight_*`` / ``grad_*`` /
``activation_*`` value agrees (rel 1e-5), the initial weights agree bit for bit, each monitor enters exactly one
collective per logging step (counted at ``torch.distributed``), ``DTensor.full_tensor`` / ``redistribute`` raise
if called while fitting, and both ranks take the same health decisions as the unsharded run.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(400)]

ROOT = str(Path(__file__).resolve().parents[1])

SCRIPT = """
import collections, inspect, json, os, sys
from datetime import timedelta
import torch
import torch.distributed as dist
import torch.nn.functional as F
import lightning.pytorch as pl
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
sys.path.insert(0, {root!r})
from lightning_init import ActivationMonitor, GradientMonitor, WeightInit, WeightMonitor, init_module

OUT = {out!r}
SHARDED = os.environ.get("SHARD_TEST_MODE") == "sharded"
COLLECTIVES = ("all_gather", "all_gather_into_tensor", "all_reduce", "broadcast", "reduce_scatter_tensor",
               "all_gather_object", "broadcast_object_list", "barrier", "gather", "scatter", "reduce", "all_to_all")


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 33), nn.ReLU(), nn.Linear(33, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)

    def configure_model(self):
        # initialized before sharding, with a seed: the same on every rank (the documented configure_model path)
        init_module(self.head, "xavier_uniform", seed=1)
        if SHARDED:
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for layer in (self.body[0], self.body[2], self.head):
                fully_shard(layer, mesh=mesh)
            fully_shard(self.body, mesh=mesh)  # a non-leaf FSDP unit: auto's fx trace enters it
            fully_shard(self, mesh=mesh)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g))
        if not SHARDED:
            return DataLoader(data, batch_size=8)  # the global batch of the sharded run
        # rank r: samples r, r + 2, ... in order (Lightning's own DistributedSampler would shuffle them)
        sampler = DistributedSampler(data, num_replicas=2, rank=self.global_rank, shuffle=False)
        return DataLoader(data, batch_size=4, sampler=sampler)


class Probe(pl.Callback):
    \"\"\"Counts collectives per (step, caller), forbids whole-tensor gathers while fitting, records tables.\"\"\"

    def __init__(self):
        self.calls = collections.Counter()
        self.tables = []
        self.initial = {{}}

    def setup(self, trainer, pl_module, stage):
        from torch.distributed.tensor import DTensor

        def forbidden(*args, **kwargs):
            raise AssertionError("DTensor.full_tensor/redistribute called while fitting")

        DTensor.full_tensor = forbidden
        DTensor.redistribute = forbidden
        for name in COLLECTIVES:
            inner = getattr(dist, name)

            def counting(*args, _inner=inner, **kwargs):
                caller = "other"
                for frame in inspect.stack()[1:12]:
                    owner = frame.frame.f_locals.get("self")
                    if isinstance(owner, (WeightMonitor, GradientMonitor, ActivationMonitor)):
                        caller = type(owner).__name__
                        break
                self.calls[f"{{trainer.global_step}}/{{caller}}"] += 1
                return _inner(*args, **kwargs)

            setattr(dist, name, counting)
        for monitor in trainer.callbacks:
            if isinstance(monitor, (WeightMonitor, GradientMonitor, ActivationMonitor)):
                inner_table = monitor._on_table

                def recording(trainer, pl_module, table, step, *args, _m=monitor, _inner=inner_table, **kwargs):
                    _inner(trainer, pl_module, table, step, *args, **kwargs)
                    scalars = _m._tracker.scalars() if _m._tracker is not None else {{}}
                    self.tables.append([_m.kind, step, table, scalars])

                monitor._on_table = recording

    def on_train_start(self, trainer, pl_module):
        for name, p in pl_module.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            self.initial[name] = local.detach().clone()


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if SHARDED:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo",
                                         timeout=timedelta(seconds=120))
        extra = dict(devices=2, strategy=strategy)
    else:
        extra = dict(devices=1)
    probe = Probe()
    monitors = [WeightMonitor(every_n_steps=2), GradientMonitor(every_n_steps=2), ActivationMonitor(every_n_steps=2)]
    init = WeightInit("auto", seed=0, rules=[{{"name": "head", "scheme": "skip"}}])
    logger = pl.loggers.TensorBoardLogger(OUT, name="", version="tb_sharded" if SHARDED else "tb_plain")
    trainer = pl.Trainer(accelerator="cpu", logger=logger, log_every_n_steps=1, max_steps=4,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[init, probe, *monitors], **extra)
    trainer.fit(Net())
    tag = f"sharded{{trainer.global_rank}}" if SHARDED else "plain"
    torch.save(probe.initial, f"{{OUT}}/initial_{{tag}}.pt")
    health = {{m.kind: m._tracker.state_dict()["warned"] for m in monitors}}
    json.dump({{"calls": probe.calls, "tables": probe.tables, "health": health}}, open(f"{{OUT}}/{{tag}}.json", "w"))
    # Lightning destroys the process group at exit only for NCCL; a gloo group left to the interpreter's
    # teardown can abort the process ("terminate called without an active exception", exit -6)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
"""


def _run(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "fsdp_monitors.py"
    script.write_text(SCRIPT.format(root=ROOT, out=str(tmp_path)))
    env = {**__import__("os").environ, "SHARD_TEST_MODE": mode, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-6000:]


def _scalars(path: Path) -> dict[str, dict[int, float]]:
    ea = EventAccumulator(str(path), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_fsdp2_monitors_match_the_unsharded_run_with_one_collective_per_monitor_and_logging_step(tmp_path):
    _run(tmp_path, "plain")
    _run(tmp_path, "sharded")
    plain = json.loads((tmp_path / "plain.json").read_text())
    ranks = [json.loads((tmp_path / f"sharded{r}.json").read_text()) for r in (0, 1)]

    # every logged statistic of the sharded run (rank zero writes) equals the unsharded run's
    expected, got = _scalars(tmp_path / "tb_plain"), _scalars(tmp_path / "tb_sharded")
    watched = [t for t in expected if t.split("_")[0] in ("weight", "grad", "activation")]
    assert any(t.startswith("weight_update_ratio/") for t in watched)
    assert "grad_norm/total" in watched
    assert set(watched) <= set(got)
    for tag in watched:
        assert expected[tag].keys() == got[tag].keys(), tag
        for step, value in expected[tag].items():
            assert _close(got[tag][step], value), (tag, step, got[tag][step], value)
    health_tags = [t for t in expected if t.startswith("health/")]
    assert health_tags
    for tag in health_tags:
        assert got[tag] == expected[tag], tag

    # the whole tables (row_spread included, which is not logged) agree on both ranks and with the unsharded run
    assert len(ranks[0]["tables"]) == len(ranks[1]["tables"]) == len(plain["tables"])
    rows = zip(plain["tables"], ranks[0]["tables"], ranks[1]["tables"], strict=True)
    for (kind, step, table, verdicts), *others in rows:
        for other_kind, other_step, other_table, other_verdicts in others:
            assert (other_kind, other_step) == (kind, step)
            assert other_verdicts == verdicts, (kind, step)
            assert other_table.keys() == table.keys()
            for name, row in table.items():
                for stat, value in row.items():
                    assert _close(other_table[name][stat], value), (kind, step, name, stat)
    for (_, _, table0, _), (_, _, table1, _) in zip(ranks[0]["tables"], ranks[1]["tables"], strict=True):
        assert table0 == table1  # every statistic identical on both ranks
    assert ranks[0]["health"] == ranks[1]["health"] == plain["health"]

    # exactly one collective per monitor per logging step; nothing else during training
    logging = {0, 1, 3}  # optimizer steps k == 0 or (k + 1) % 2 == 0 of 4
    for rank in ranks:
        calls = {k: v for k, v in rank["calls"].items() if not k.endswith("/other")}
        want = {f"{k}/GradientMonitor": 1 for k in logging}  # gradients: before the update of step k
        want |= {f"{k + 1}/ActivationMonitor": 1 for k in logging}  # at the end of step k
        want |= {f"{k + 1}/WeightMonitor": 1 for k in logging}  # weights after the update of step k
        want["0/WeightMonitor"] = 1 + want.get("0/WeightMonitor", 0)  # fit start: the initial weights
        assert calls == want

    # WeightInit: the sharded weights are the unsharded initialization, bit for bit (configure_model path for head)
    initial = torch.load(tmp_path / "initial_plain.pt")
    shards = [torch.load(tmp_path / f"initial_sharded{r}.pt") for r in (0, 1)]
    for name, full in initial.items():
        assert torch.equal(torch.cat([s[name] for s in shards]), full), name


def test_the_gpu_check_runs_where_cuda_exists_and_says_it_skipped_elsewhere(tmp_path):
    script = Path(ROOT) / "benchmarks" / "fsdp_gpu.py"
    quick = ["--steps", "5", "--warmup", "2", "--repeats", "1", "--depth", "2", "--width", "64", "--batch", "16"]
    proc = subprocess.run(
        [sys.executable, str(script), *quick], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    if torch.cuda.is_available():
        assert "max relative difference" in proc.stdout
        assert "| all e1 |" in proc.stdout
    else:
        assert "skipped: no CUDA device" in proc.stdout
