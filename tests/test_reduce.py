"""Activation moments merged across calls and processes equal the statistics of the concatenated outputs."""

import math

import pytest
import torch

from lightning_init.reduce import (
    MOMENT_COLUMNS,
    SIGNAL_LAYOUT,
    UnitMeans,
    exact_signal_std,
    local_moments,
    local_signal,
    merge_moment_rows,
    merge_moments,
    merge_signal,
    moment_order,
    signal_capacity,
)
from lightning_init.stats import activation_row, activation_row_and_unit_means


def _record(chunks, bounds=None):
    return [activation_row(c, bounds) for c in chunks], [c.numel() for c in chunks]


def _reference(x: torch.Tensor, bounds=None) -> dict:
    x = x.double().flatten()
    out = {
        "mean": x.mean().item(),
        "std": x.std().item(),
        "abs_max": x.abs().max().item(),
        "zero_fraction": (x == 0).double().mean().item(),
        "nonfinite": float((~torch.isfinite(x)).sum()),
    }
    if bounds is not None:
        lo, hi = bounds
        out["saturation"] = ((x < lo + 0.01) | (x > hi - 0.01)).double().mean().item()
    return out


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_merged_moments_equal_statistics_of_the_global_batch(processes):
    g = torch.Generator().manual_seed(0)
    # per process, calls of different sizes (micro-batches), shifted means so the between-call term matters
    data = [
        [torch.randn(n, 16, generator=g) * (1 + p) + 3.0 * p + k for k, n in enumerate((5, 11))]
        for p in range(processes)
    ]
    data[0][0][0, :4] = 0.0  # some exact zeros
    tables = []
    for chunks in data:
        rows, numels = _record([torch.relu(c) for c in chunks])
        tables.append(local_moments(["a"], {"a": rows}, {"a": numels}))
    parts = [t.tolist() for t in tables]
    got = merge_moments([p[0] for p in parts], bounded=False)
    expected = _reference(torch.cat([torch.relu(c).flatten() for chunks in data for c in chunks]))
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_saturation_counts_and_bounded_flag():
    g = torch.Generator().manual_seed(1)
    x = torch.tanh(torch.randn(64, 8, generator=g) * 4)
    rows, numels = _record([x[:20], x[20:]], bounds=(-1.0, 1.0))
    table = local_moments(["t"], {"t": rows}, {"t": numels}).tolist()
    got = merge_moments([table[0]], bounded=True)
    assert got["saturation"] == pytest.approx(_reference(x, (-1.0, 1.0))["saturation"])
    assert "saturation" not in merge_moments([table[0]], bounded=False)


def test_non_finite_outputs_propagate_and_are_counted():
    x = torch.randn(10, 4)
    x[0, 0] = math.nan
    x[1, 1] = math.inf
    rows, numels = _record([x[:5], x[5:]])
    table = local_moments(["m"], {"m": rows}, {"m": numels}).tolist()
    got = merge_moments([table[0]], bounded=False)
    assert got["nonfinite"] == 2
    assert math.isnan(got["abs_max"])
    assert math.isnan(got["mean"])


def test_modules_that_did_not_run_and_the_order_is_the_same_for_every_process():
    rows = {"b": [activation_row(torch.ones(3))], "a": [activation_row(torch.zeros(3))]}
    numels = {"b": [3], "a": [3]}
    names = ["a", "b", "c"]  # watched order; "c" never ran, "b" ran first
    t0 = local_moments(names, rows, numels).tolist()
    assert len(t0[0]) == len(MOMENT_COLUMNS)
    assert t0[2][0] == 0
    assert math.isinf(t0[2][7])
    # process 1 ran "c" only
    t1 = local_moments(names, {"c": [activation_row(torch.ones(2))]}, {"c": [2]}).tolist()
    assert moment_order(names, [t0, t1]) == ["b", "a", "c"]
    assert moment_order(names, [t1, t0]) == ["c", "b", "a"]
    nothing = merge_moments([t0[2]], bounded=False)
    assert all(math.isnan(v) for v in nothing.values())


def test_the_whole_table_merges_at_once_like_each_module_from_its_global_batch():
    """``merge_moment_rows`` over [processes, modules, columns] (modules missing on some processes, NaN outputs)
    equals, per module, the statistics of everything every process recorded for it; ``moment_order`` follows it."""
    g = torch.Generator().manual_seed(3)
    names = ["m0", "m1", "m2", "m3", "m4"]
    ran = [{"m0", "m1", "m3"}, {"m1", "m2", "m3"}, {"m3", "m1"}]  # m4 runs nowhere; m2 only on process 1
    data: dict = {n: [] for n in names}
    tables = []
    for p, present in enumerate(ran):
        rows, numels = {}, {}
        for n in sorted(present, reverse=p % 2 == 1):  # a different call order per process
            chunks = [torch.relu(torch.randn(k, 6, generator=g) * (1 + p) + p) for k in (3, 8)]
            if (n, p) == ("m0", 0):
                chunks[1][0, 0] = math.nan
            data[n] += chunks
            rows[n], numels[n] = _record(chunks)
        tables.append(local_moments(names, rows, numels).tolist())
    merged = merge_moment_rows(tables)
    for i, n in enumerate(names):
        if not data[n]:
            assert all(math.isnan(col[i]) for col in merged.values()), n
            continue
        expected = _reference(torch.cat([c.flatten() for c in data[n]]))
        for key, value in expected.items():
            got = float(merged[key][i])
            if math.isnan(value):
                assert math.isnan(got), (n, key)
            else:
                assert got == pytest.approx(value, rel=1e-5, abs=1e-6), (n, key)
    order = moment_order(names, tables)
    assert sorted(order) == ["m0", "m1", "m2", "m3"]  # what ran somewhere, process 0's call order first
    assert order[:3] == sorted(ran[0])
    assert order[3] == "m2"


def test_huge_activations_survive_a_float32_transfer():
    x = torch.randn(1000, dtype=torch.float64) * 1e20
    rows, numels = _record([x.float()])
    table = local_moments(["h"], {"h": rows}, {"h": numels}).float().tolist()  # what `fetch` sends
    got = merge_moments([table[0]], bounded=False)
    assert math.isfinite(got["std"])
    assert got["std"] == pytest.approx(x.std().item(), rel=1e-3)


def test_signal_std_pools_the_within_unit_variance_of_calls_and_processes():
    g = torch.Generator().manual_seed(6)
    offsets = torch.randn(1, 5, generator=g, dtype=torch.float64) * 10
    chunks = [offsets + torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (4, 7, 9)]
    rows, numels = _record(chunks[:2])
    local = [local_moments(["m"], {"m": rows}, {"m": numels}).tolist()[0]]
    rows, numels = _record(chunks[2:])
    local.append(local_moments(["m"], {"m": rows}, {"m": numels}).tolist()[0])  # a second process
    got = merge_moments(local, bounded=False)
    # reference: each chunk's per-unit deviations from its own unit means, pooled
    ss = sum(((c - c.mean(dim=0)) ** 2).sum().item() for c in chunks)
    dof = sum((c.shape[0] - 1) * c.shape[1] for c in chunks)
    assert got["signal_std"] == pytest.approx(math.sqrt(ss / dof), rel=1e-6)
    assert got["signal_std"] == pytest.approx(1.0, rel=0.3)
    assert got["std"] > 5 * got["signal_std"]  # the offsets dominate the plain std
    assert len(local[0]) == len(MOMENT_COLUMNS)


def _process(chunks_by_module, capacity):
    """One process: its recorder's micro-batches (``{module: [chunk per micro-batch]}``) -> moments, layout, vector."""
    names = sorted(chunks_by_module)
    rows: dict = {}
    numels: dict = {}
    states: dict = {}
    for name, chunks in chunks_by_module.items():
        for c in chunks:
            row, means = activation_row_and_unit_means(c)
            rows.setdefault(name, []).append(row)
            numels.setdefault(name, []).append(c.numel())
            call = UnitMeans.of_call(c.shape[0], tuple(c.shape[1:]), means, row)
            if name in states:
                assert states[name][0].add(call)
            else:
                states[name] = [call]
    moments = local_moments(names, rows, numels)
    signal, layout, vector, segments = local_signal(names, states, set(), capacity=capacity, device=moments.device)
    moments[:, 8:10] = torch.where(signal[:, 2:] > 0, signal[:, :2], moments[:, 8:10])
    return moments, layout, vector, segments


def _signal_reference(x: torch.Tensor) -> float:
    """Each unit's variance across all samples of the global batch, pooled over units (an independent path)."""
    return x.double().flatten(1).var(dim=0).mean().sqrt().item()


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_signal_std_is_exact_over_micro_batches_and_processes(processes):
    g = torch.Generator().manual_seed(7)
    # per process different micro-batch sizes and shifted unit means: the between-call and between-process spread of
    # the unit means is signal of the global batch, and it is large here
    sizes = [(3, 5), (1, 6), (4, 2)][:processes]
    offsets = torch.randn(1, 3, 4, generator=g) * 5
    data = [
        [offsets + torch.randn(n, 3, 4, generator=g) + 2.0 * (p + k) for k, n in enumerate(s)]
        for p, s in enumerate(sizes)
    ]
    locals_ = [_process({"m": chunks, "unused": []}, capacity=64) for chunks in data]
    moments = torch.stack([m for m, *_ in locals_])
    layouts = torch.stack([layout for _, layout, _, _ in locals_])
    vectors = torch.stack([v for *_, v, _ in locals_])
    merged = merge_signal(layouts, vectors, locals_[0][3]).tolist()
    parts = [moments[p, 0].tolist() for p in range(processes)]
    assert merged[0][1] == 1.0
    assert merged[1][1] == 0.0
    got = exact_signal_std(parts, merged[0][0], 12)
    want = _signal_reference(torch.cat([c for chunks in data for c in chunks]))
    assert got == pytest.approx(want, rel=1e-6)  # float32 outputs
    pooled = merge_moments(parts, bounded=False)["signal_std"]  # each process exact over its micro-batches alone
    if processes == 1:
        assert pooled == pytest.approx(want, rel=1e-6)  # float32 outputs
    else:
        assert pooled < 0.9 * want  # the between-process spread is missing there


def test_signal_is_merged_exactly_only_where_every_process_has_the_same_layout():
    g = torch.Generator().manual_seed(8)
    a = {"m": [torch.randn(4, 6, generator=g)], "n": [torch.randn(4, 3, generator=g)]}
    b = {"m": [torch.randn(4, 2, 3, generator=g)], "n": [torch.randn(5, 3, generator=g)]}  # m: another shape
    (ma, la, va, sa), (_, lb, vb, _) = _process(a, capacity=16), _process(b, capacity=16)
    merged = merge_signal(torch.stack([la, lb]), torch.stack([va, vb]), sa).tolist()
    assert [row[1] for row in merged] == [0.0, 1.0]  # m: different per-sample shapes; n: exact
    # a module that does not fit the capacity is not exact on any process, and the next capacity covers every need
    (_, lc, vc, sc), (_, ld, vd, _) = _process(a, capacity=8), _process(a, capacity=8)
    merged = merge_signal(torch.stack([lc, ld]), torch.stack([vc, vd]), sc).tolist()
    assert [row[1] for row in merged] == [1.0, 0.0]  # m (6 units) fits, n (3 more) does not
    layout = torch.stack([lc, ld]).flatten().tolist()
    assert signal_capacity(8, layout, 2, 2) == 16
    assert signal_capacity(32, layout, 2, 2) == 32
    assert ma.shape[1] == len(MOMENT_COLUMNS)
    assert la.shape[1] == len(SIGNAL_LAYOUT)
