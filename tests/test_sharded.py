"""Sharded statistics from local shards (lightning_init.sharded), checked against the whole tensors.

Most tests simulate the processes in one: each "rank" builds its local table from its chunk of the tensor (as
FSDP2's ``Shard(0)`` chunks it: ``torch.chunk``, uneven, possibly empty), the tables are stacked as an all_gather
would, and the merge must give the statistics of the whole tensor computed independently in float64. The layout
checks run on real DTensors over a one-process gloo group.
"""

import math

import pytest
import torch

from lightning_init.sharded import (
    ShardInfo,
    _spread_kind,
    check_supported,
    is_sharded,
    local_table,
    merge_table,
    shard_info,
    sharded_columns,
)

STATS = ["mean", "std", "norm", "row_spread"]


def _reference(t: torch.Tensor) -> dict[str, float]:
    """Independent float64 statistics of a whole tensor (NaN where undefined)."""
    x = t.double()
    out = {
        "abs_max": x.abs().max().item() if x.numel() else 0.0,
        "mean": x.mean().item() if x.numel() else math.nan,
        "std": x.std().item() if x.numel() > 1 else (0.0 if x.numel() == 1 else math.nan),
        "norm": x.norm().item(),
        "nonfinite": float((~torch.isfinite(x)).sum()),
    }
    if x.ndim >= 2 and x.shape[0] >= 2:
        w = x.flatten(1)
        amax = w.abs().max().item()
        out["row_spread"] = (w - w.mean(0)).abs().max().item() / amax if amax else 0.0
    else:
        out["row_spread"] = math.nan
    return out


def _infos(tensors, rank: int, world: int, dim: int) -> list[ShardInfo]:
    infos = []
    for t in tensors:
        d = dim if t.ndim > dim else 0
        chunks = torch.chunk(t, world, dim=d) if t.numel() else (t,)
        local = chunks[rank] if rank < len(chunks) else t.narrow(d, 0, 0)  # FSDP2: trailing ranks may hold nothing
        infos.append(ShardInfo(local, True, _spread_kind(t.shape, d), math.prod(t.shape[1:]), t.shape[0]))
    return infos


def _merged(tensors, world: int, dim: int, stats=STATS, norms=None, count_nonfinite=False):
    parts = []
    for r in range(world):
        infos = _infos(tensors, r, world, dim)
        local_norms = {k: [torch.linalg.vector_norm(i.local) for i in f(infos)] for k, f in (norms or {}).items()}
        wanted = [*stats, "nonfinite"] if count_nonfinite else stats
        parts.append(local_table(infos, wanted, norms=local_norms, count_nonfinite=count_nonfinite))
    lengths = {p.numel() for p in parts}
    assert len(lengths) == 1  # an all_gather needs the same length on every process
    wanted = [*stats, "nonfinite"] if count_nonfinite else stats
    merged = merge_table(torch.stack(parts), _infos(tensors, 0, world, dim), wanted, norm_names=list(norms or {}))
    return {k: v.tolist() for k, v in merged.items()}


def _tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(33, 16, generator=g) * 0.1 + 0.02,  # uneven rows (17 / 16)
        torch.randn(33, generator=g),  # bias: no row spread
        torch.randn(6, 3, 3, 3, generator=g),  # conv weight
        torch.randn(1, 33, generator=g),  # one row: rank 1 of 2 holds nothing
        torch.randn(3, 5, generator=g),  # 3 rows on 4 ranks: one empty shard
        torch.randn(8, 4, generator=g) * 1e-25,  # squares underflow float32
        torch.randn(8, 4, generator=g) * 1e25,  # squares overflow float32
        torch.zeros(4, 4),  # all-zero weight: spread 0
        torch.ones(5, 3),  # symmetric: every row the same
        torch.randn(1, generator=g),  # one element: std 0
        torch.zeros(5),  # a zero bias: row spread not defined (NaN), not "symmetric"
    ]


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("dim", [0, 1])
def test_merged_shards_give_the_whole_tensors_statistics(world, dim):
    tensors = _tensors()
    got = _merged(tensors, world, dim)
    for i, t in enumerate(tensors):
        ref = _reference(t)
        for stat in ["abs_max", *STATS]:
            value, expected = got[stat][i], ref[stat]
            if math.isnan(expected):
                assert math.isnan(value), (i, stat)
            else:
                assert value == pytest.approx(expected, rel=1e-5, abs=0.0), (i, stat, world, dim)


def test_norm_extras_merge_as_the_whole_tensors_norm():
    g = torch.Generator().manual_seed(1)
    before = [torch.randn(33, 16, generator=g), torch.randn(7, generator=g)]
    after = [b + 1e-3 * torch.randn(b.shape, generator=g) for b in before]
    diffs = [b - a for b, a in zip(before, after, strict=True)]
    got = _merged(diffs, 2, 0, stats=["norm"], norms={"_diff": lambda infos: infos})
    for i, d in enumerate(diffs):
        assert got["_diff"][i] == pytest.approx(d.double().norm().item(), rel=1e-6)
        assert got["norm"][i] == pytest.approx(d.double().norm().item(), rel=1e-6)


def test_nonfinite_values_on_one_shard_reach_every_statistic():
    t = torch.randn(10, 4)
    t[7, 1] = float("nan")  # rank 1's rows
    t[8, 2] = float("inf")
    got = _merged([t], 2, 0, count_nonfinite=True)
    assert got["nonfinite"] == [2.0]
    assert math.isnan(got["abs_max"][0])
    assert math.isnan(got["row_spread"][0])
    assert math.isnan(got["std"][0])
    inf_only = torch.randn(10, 4)
    inf_only[9, 0] = float("inf")
    got = _merged([inf_only], 2, 0, count_nonfinite=True)
    assert got["nonfinite"] == [1.0]
    assert got["abs_max"] == [math.inf]
    assert got["norm"] == [math.inf]  # as torch.linalg.vector_norm


def test_replicated_copies_count_once():
    t = torch.randn(6, 5)
    parts = [local_table([ShardInfo(t, r == 0, "local", 5, 6)], STATS) for r in range(3)]
    got = merge_table(torch.stack(parts), [ShardInfo(t, True, "local", 5, 6)], STATS)
    ref = _reference(t)
    for stat in ["abs_max", *STATS]:
        assert got[stat].item() == pytest.approx(ref[stat], rel=1e-5), stat


def test_no_tensors_still_gives_a_table():
    calls = []

    def gather(x):
        calls.append(x.numel())
        return x[None]

    cols = sharded_columns([], STATS, gather=gather, rank=0)
    assert set(cols) == {"abs_max", *STATS}
    assert all(v.numel() == 0 for v in cols.values())
    assert calls == [0]  # every process still enters the one collective


@pytest.fixture
def one_process_group():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_dtensor_layouts_are_read_and_unsupported_ones_refused(one_process_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    w = torch.randn(6, 4)
    sharded = distribute_tensor(w, mesh, [Shard(0)])
    assert is_sharded(sharded)
    assert not is_sharded(w)
    info = shard_info(sharded, rank=0)
    assert (info.spread, info.contributes, info.columns, info.rows) == ("columns", True, 4, 6)
    assert shard_info(distribute_tensor(w, mesh, [Shard(1)]), rank=0).spread == "local"
    assert shard_info(distribute_tensor(w, mesh, [Replicate()]), rank=0).contributes
    assert not shard_info(w, rank=1).contributes  # a plain tensor counts once: rank 0's copy
    check_supported([("w", sharded), ("plain", w)], world_size=1)

    cols = sharded_columns([sharded], STATS, gather=lambda x: x[None], rank=0)
    ref = _reference(w)
    for stat in ["abs_max", *STATS]:
        assert cols[stat].item() == pytest.approx(ref[stat], rel=1e-5)

    mesh2 = init_device_mesh("cpu", (1, 1), mesh_dim_names=("replicate", "shard"))
    hsdp = distribute_tensor(w, mesh2, [Replicate(), Shard(0)])
    with pytest.raises(NotImplementedError, match=r"`net.weight`.*2-dimensional device mesh \(HSDP"):
        check_supported([("net.weight", hsdp)], world_size=1)
    partial = torch.distributed.tensor.DTensor.from_local(w, mesh, [Partial()])
    with pytest.raises(NotImplementedError, match=r"gradient `g`.*Partial.*pending reduction"):
        check_supported([("g", partial)], world_size=1, what="gradient")
    with pytest.raises(NotImplementedError, match="spans 1 of the 2 processes"):
        check_supported([("w", sharded)], world_size=2)


def test_init_sharded_writes_whole_tensors_keeps_untouched_ones_and_refuses_partial_writes(one_process_group):
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from lightning_init import init_module
    from lightning_init.sharded import init_sharded_

    mesh = init_device_mesh("cpu", (1,))
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    reference = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    kept = net[1].weight.detach().clone()
    for layer in net:
        for name, p in list(layer.named_parameters()):
            setattr(layer, name, nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])))
    rules = [{"name": "1", "scheme": "skip"}]
    report = init_sharded_(net, lambda m: init_module(m, "orthogonal", rules=rules, seed=3))
    init_module(reference, "orthogonal", rules=rules, seed=3)
    assert report.rows  # what init returned comes back
    assert all(type(p).__name__ == "DTensor" for p in net.parameters())  # the DTensors are back
    assert torch.equal(net[0].weight.to_local(), reference[0].weight.detach())
    assert torch.equal(net[1].weight.to_local(), kept)  # skipped: never overwritten

    def half(m):
        with torch.no_grad():
            m[0].weight[:3] = 1.0

    with pytest.raises(RuntimeError, match=r"wrote only part of sharded parameter `weight` \(6, 4\)"):
        init_sharded_(net, half)
    assert type(net[0].weight).__name__ == "DTensor"  # restored on the way out


@pytest.mark.parametrize(
    ("strategy", "scheme", "match"),
    [
        ("ModelParallelStrategy", "lsuv", "cannot run LSUV under ModelParallelStrategy.*configure_model"),
        ("FSDPStrategy", "auto", "under FSDPStrategy: it flattens.*ModelParallelStrategy"),
    ],
)
def test_weight_init_refuses_what_sharding_cannot_do(strategy, scheme, match):
    from types import SimpleNamespace

    from lightning.pytorch import strategies

    from lightning_init import WeightInit

    trainer = SimpleNamespace(strategy=getattr(strategies, strategy)())
    with pytest.raises(RuntimeError, match=match):
        WeightInit(scheme).setup(trainer, None, "fit")
    WeightInit("auto").setup(SimpleNamespace(strategy=strategies.ModelParallelStrategy()), None, "fit")  # fine


def test_init_sharded_handles_any_placement_including_a_2d_mesh(one_process_group):
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from lightning_init import init_module
    from lightning_init.sharded import init_sharded_

    mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("replicate", "shard"))  # HSDP's layout
    net, reference = nn.Linear(5, 7), nn.Linear(5, 7)
    for name, p in list(net.named_parameters()):
        setattr(net, name, nn.Parameter(distribute_tensor(p.detach(), mesh, [Replicate(), Shard(0)])))
    init_sharded_(net, lambda m: init_module(m, "xavier_normal", seed=5))
    init_module(reference, "xavier_normal", seed=5)
    assert torch.equal(net.weight.to_local(), reference.weight.detach())
