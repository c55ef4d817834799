"""Why the activation moments are not a torchmetrics ``Metric`` (issue 14): the collectives of one sync, counted.

    .venv/bin/python benchmarks/torchmetrics_sync.py          # 2 CPU processes (gloo), seconds

The ActivationMonitor merges its per-module moment table across processes with ONE ``all_gather`` per logging step
(``tests/test_distributed.py`` counts it). The torchmetrics way would declare the same table as one ``Metric`` state
with a merge function as its ``dist_reduce_fx``. This script builds exactly that Metric (one stacked
``[modules, columns]`` state, ``dist_reduce_fx`` = the merge of :func:`lightning_init.reduce.merge_moment_rows`),
syncs it once in each of 2 processes, and counts every ``torch.distributed`` call the sync makes, next to the
monitor's single ``all_gather`` of the same table. Read from torchmetrics' own code (``Metric._sync_dist`` ->
``gather_all_tensors``): a barrier, an ``all_gather`` of each state's shape, then the ``all_gather`` of the data (and
a host read of the shapes in between) per state.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COUNTED = ("all_gather", "all_gather_object", "all_reduce", "barrier", "broadcast", "reduce_scatter")


def _count_calls() -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for name in COUNTED:
        inner = getattr(dist, name)

        def counting(*args: object, _inner=inner, _name=name, **kwargs: object) -> object:
            counts[_name] += 1
            return _inner(*args, **kwargs)

        setattr(dist, name, counting)
    return counts


def _worker(rank: int, world: int, init: str, out: str) -> None:
    import torchmetrics

    from lightning_init.reduce import MOMENT_COLUMNS, merge_moment_rows

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(rank)
    modules = 40
    table = torch.rand(modules, len(MOMENT_COLUMNS), dtype=torch.float64)

    def merge(gathered: torch.Tensor) -> torch.Tensor:
        # torchmetrics hands dist_reduce_fx the per-process states stacked: [processes, modules, columns]
        merged = merge_moment_rows(gathered.numpy())
        return torch.from_numpy(merged["std"])

    class Moments(torchmetrics.Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("moments", default=torch.zeros(modules, len(MOMENT_COLUMNS), dtype=torch.float64),
                           dist_reduce_fx=merge)  # fmt: skip

        def update(self, t: torch.Tensor) -> None:
            self.moments = t

        def compute(self) -> torch.Tensor:
            return self.moments

    metric = Moments()
    metric.update(table)
    counts = _count_calls()
    metric.sync()  # what compute() does under DDP
    tm = dict(counts)
    # the merge ran on the gathered [processes, modules, columns] stack: one merged std per module
    assert tuple(metric.moments.shape) == (modules,), metric.moments.shape
    counts.clear()
    parts = [torch.empty_like(table) for _ in range(world)]
    dist.all_gather(parts, table)  # the monitor's way: one collective, merged on the host
    ours = dict(counts)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"torchmetrics": tm, "monitor": ours}, f)
    dist.destroy_process_group()


def main() -> int:
    import torchmetrics

    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{os.path.join(tmp, 'store')}"
        out = os.path.join(tmp, "counts.txt")
        mp.spawn(_worker, args=(world, init, out), nprocs=world, join=True)
        with open(out) as f:
            counted = json.load(f)
    tm, ours = counted["torchmetrics"], counted["monitor"]
    print(f"torchmetrics {torchmetrics.__version__}, torch {torch.__version__}, {world} processes (gloo)")
    print(f"one Metric state, one sync:      {sum(tm.values())} collectives {tm}")
    print(f"the monitor's one table gather:  {sum(ours.values())} collective {ours}")
    return 0 if sum(ours.values()) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
