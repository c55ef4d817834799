import math

import numpy as np
import pytest
import torch

from lightning_init.stats import (
    ACTIVATION_ROW,
    HISTOGRAM_BINS,
    activation_row,
    activation_row_and_unit_means,
    activation_rows,
    activation_rows_and_unit_means,
    fetch,
    first_float_tensor,
    histogram_columns,
    host_histograms,
    repair,
    row_spread,
    safe_ratio,
    tensor_columns,
    total_norm,
)


def _table(tensors, stats, count_nonfinite=False):
    host = fetch(tensor_columns(tensors, stats))
    repair(tensors, host, count_nonfinite=count_nonfinite)
    return host


def test_tensor_columns_match_torch_references() -> None:
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(5, 7, generator=g) * 3 + 1, torch.rand(11, generator=g), torch.tensor([2.5])]
    host = _table(tensors, ["mean", "std", "norm", "abs_max", "row_spread"])
    for i, t in enumerate(tensors):
        assert host["mean"][i] == pytest.approx(t.mean().item(), abs=1e-6)
        assert host["norm"][i] == pytest.approx(t.norm().item(), rel=1e-6)
        assert host["abs_max"][i] == pytest.approx(t.abs().max().item())
        expected_std = t.std().item() if t.numel() > 1 else 0.0
        assert host["std"][i] == pytest.approx(expected_std, rel=1e-5)
    assert host["row_spread"][0] == pytest.approx(row_spread(tensors[0]).item())
    assert math.isnan(host["row_spread"][1])


def test_huge_finite_values_are_reported_huge_not_inf() -> None:
    t = torch.tensor([3e25, -4e25, 1e25, 0.0])
    assert torch.linalg.vector_norm(t).isinf()  # the float32 pitfall
    host = _table([t], ["mean", "std", "norm"])
    d = t.double()
    assert host["norm"][0] == pytest.approx(d.norm().item(), rel=1e-5)
    assert host["std"][0] == pytest.approx(d.std().item(), rel=1e-5)
    assert host["mean"][0] == pytest.approx(d.mean().item(), rel=1e-5)


def test_nonfinite_counted_only_where_present() -> None:
    tensors = [torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]), torch.ones(3)]
    host = _table(tensors, ["norm"], count_nonfinite=True)
    assert host["nonfinite"] == [3.0, 0.0]
    assert math.isnan(host["abs_max"][0])


def test_fetch_is_one_transfer_and_splits_back() -> None:
    calls = []
    original = torch.Tensor.tolist

    def counting(self):
        calls.append(1)
        return original(self)

    torch.Tensor.tolist = counting
    try:
        out = fetch({"a": [torch.tensor(1.0), torch.tensor(2.0)], "b": torch.arange(3.0), "c": []})
    finally:
        torch.Tensor.tolist = original
    assert out == {"a": [1.0, 2.0], "b": [0.0, 1.0, 2.0], "c": []}
    assert len(calls) == 1


def test_ratios_and_total_norm() -> None:
    assert safe_ratio(1.0, 4.0) == 0.25
    assert math.isnan(safe_ratio(0.0, 0.0))
    assert safe_ratio(1.0, 0.0) == math.inf
    assert total_norm([3.0, 4.0]) == 5.0
    assert total_norm([1e200, 1e200]) == pytest.approx(math.sqrt(2) * 1e200)


def test_histogram_matches_numpy_and_drops_nonfinite() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g)
    y = torch.cat([x, torch.tensor([float("nan"), float("inf")])])
    cols = histogram_columns([y], bins=10)
    host = fetch(cols)
    (h,) = host_histograms(host["counts"], host["meta"], 1, 10)
    assert h is not None
    expected, edges = np.histogram(x.numpy(), bins=10)
    assert h.bucket_counts == pytest.approx(expected.tolist(), abs=1)  # float rounding at the edges
    assert sum(h.bucket_counts) == 1000 == h.num
    assert h.min == pytest.approx(edges[0])
    assert h.max == pytest.approx(edges[-1])
    assert h.bucket_limits == pytest.approx(edges[1:].tolist(), rel=1e-5)


def test_histogram_of_huge_constant_and_all_nan_tensors() -> None:
    tensors = [torch.tensor([1e30, -3e38, 3e38]), torch.full((4,), 7.0), torch.full((2,), float("nan"))]
    host = fetch(histogram_columns(tensors, HISTOGRAM_BINS))
    huge, const, empty = host_histograms(host["counts"], host["meta"], 3, HISTOGRAM_BINS)
    assert huge is not None
    assert sum(huge.bucket_counts) == 3
    assert all(map(math.isfinite, huge.bucket_limits))
    assert huge.bucket_counts[0] == 1
    assert huge.bucket_counts[-1] == 1
    assert const is not None
    assert const.bucket_counts[0] == 4
    assert const.min == const.max == 7.0
    assert empty is None


def test_activation_row_and_saturation_definition() -> None:
    y = torch.tensor([0.0, 0.0, 0.995, -0.999, 0.5, 0.98, float("nan")])
    row = activation_row(y, bounds=(-1.0, 1.0)).tolist()
    assert row[3] == 2  # zeros
    assert row[4] == 2  # |y| > 0.99 for tanh
    assert row[5] == 1  # NaN
    sig = torch.tensor([0.005, 0.5, 0.995, 0.011])
    assert activation_row(sig, bounds=(0.0, 1.0)).tolist()[4] == 2  # y < 0.01 or y > 0.99
    # at the margin exactly: not saturated (strict); +-Inf: saturated, and counted as non-finite too
    edge = torch.tensor([0.99, -0.99, float("inf"), float("-inf"), 0.9900001, 0.01, 0.0099999])
    assert activation_row(edge, bounds=(-1.0, 1.0)).tolist()[4:6] == [3, 2]
    assert activation_row(edge[[0, 4, 5, 6]], bounds=(0.0, 1.0)).tolist()[4] == 2
    reference = ((edge < -1.0 + 0.01) | (edge > 1.0 - 0.01)).sum().item()
    batched = activation_rows(edge.reshape(1, 7, 1).expand(3, 7, 1).contiguous(), bounds=(-1.0, 1.0))
    assert batched[:, 4].tolist() == [reference] * 3
    half = torch.randn(100, dtype=torch.float16)
    assert activation_row(half).dtype == torch.float32
    assert activation_row(half).tolist()[1] == pytest.approx(half.float().std().item(), rel=1e-5)


def test_first_float_tensor_of_structured_outputs() -> None:
    a, b = torch.ones(2), torch.zeros(3)
    assert first_float_tensor((a, (b, b))) is a
    assert first_float_tensor({"idx": torch.arange(3), "out": [b]}) is b
    assert first_float_tensor([torch.arange(2)]) is None


# ----------------------------------------------------------------------------------------------- fast reductions
# The reductions are two-pass (sum, then a centred norm) with aminmax for abs_max; these references are independent
# float64 computations (Tensor.std/mean, torch.linalg.vector_norm in float64, hand counts).


def _reference(t: torch.Tensor) -> dict[str, float]:
    d = t.double()
    return {
        "mean": d.mean().item(),
        "std": d.std().item() if d.numel() > 1 else 0.0,
        "norm": torch.linalg.vector_norm(d).item(),
        "abs_max": d.abs().max().item(),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_tensor_columns_against_float64_references(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    tensors = [
        (torch.randn(64, 33, generator=g) * 0.05).to(dtype),
        (torch.randn(257, generator=g) + 1000.0).to(dtype),  # mean >> std: a one-pass E[x^2]-E[x]^2 would fail
        torch.tensor([-3.5]).to(dtype),
        torch.zeros(7, dtype=dtype),
        (torch.randn(40, 30, generator=g) + 500.0).to(dtype),  # the same with row_spread's shared temporary
        (torch.randn(16, 8, 3, 3, generator=g) * 0.1 - 0.05).to(dtype),
        torch.zeros(3, 4, dtype=dtype),
    ]
    with_spread = _table(tensors, ["mean", "std", "norm", "abs_max", "row_spread"])
    without = _table(tensors, ["mean", "std", "norm", "abs_max"])
    rel = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-3  # the inputs are exact; only float32 sums round
    for host in (with_spread, without):
        for i, t in enumerate(tensors):
            ref = _reference(t)
            for stat in ("mean", "norm", "abs_max"):
                assert host[stat][i] == pytest.approx(ref[stat], rel=1e-5, abs=1e-12), (dtype, i, stat)
            # the centred second pass keeps the std exact even where the mean is 4 orders of magnitude larger
            assert host["std"][i] == pytest.approx(ref["std"], rel=rel, abs=1e-12), (dtype, i)
    for i, t in enumerate(tensors):
        if t.ndim >= 2:
            assert with_spread["row_spread"][i] == pytest.approx(_row_spread_reference(t), rel=1e-4, abs=1e-6)
        else:
            assert math.isnan(with_spread["row_spread"][i])


def test_abs_max_propagates_nan_and_inf_so_repair_counts_them() -> None:
    tensors = [
        torch.tensor([1.0, -float("inf"), 2.0]),
        torch.tensor([float("nan"), 5.0]),
        torch.tensor([-7.0, 3.0]),
        torch.tensor([float("inf"), float("nan"), 0.0, -float("inf")]),
    ]
    tensors.append(torch.tensor([[1.0, float("nan")], [1.0, float("nan")]]))  # identical rows, but NaN
    host = _table(tensors, ["mean", "std", "norm", "row_spread"], count_nonfinite=True)
    assert host["abs_max"][0] == math.inf
    assert math.isnan(host["abs_max"][1])
    assert host["abs_max"][2] == 7.0
    assert host["nonfinite"] == [1.0, 1.0, 0.0, 3.0, 2.0]
    assert math.isnan(host["row_spread"][4])  # NaN, not 0: a NaN weight is not reported "symmetric"


def test_huge_finite_std_with_nonzero_mean_is_repaired() -> None:
    g = torch.Generator().manual_seed(2)
    t = torch.randn(1000, generator=g) * 1e30 + 2e30
    w = t.reshape(50, 20)
    host = _table([t, w], ["mean", "std", "norm", "row_spread"])
    ref = _reference(t)
    for i in (0, 1):
        for stat in ("mean", "std", "norm"):
            assert math.isfinite(host[stat][i])
            assert host[stat][i] == pytest.approx(ref[stat], rel=1e-5)
    assert host["row_spread"][1] == pytest.approx(_row_spread_reference(w), rel=1e-5)


def _row_reference(t: torch.Tensor, bounds: tuple[float, float] | None = None) -> list[float]:
    d = t.double().reshape(-1)
    finite = [v for v in d.tolist() if math.isfinite(v)]
    nonfinite = d.numel() - len(finite)
    zeros = sum(1 for v in d.tolist() if v == 0.0)
    saturated = 0
    if bounds is not None:
        lo, hi = bounds
        saturated = sum(1 for v in d.tolist() if v < lo + 0.01 or v > hi - 0.01)
    std = d.std().item() if d.numel() > 1 else 0.0
    return [d.mean().item(), std, d.abs().max().item(), zeros, saturated, nonfinite]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_activation_row_against_float64_references(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    cases = [
        torch.relu(torch.randn(16, 50, generator=g)),  # half exact zeros
        torch.randn(3, 7, 11, generator=g) * 4 - 100,  # mean >> std
        torch.tensor([0.0, -0.0, 2.0, -3.0]),  # -0.0 is a zero
        torch.tensor([1.25]),  # one element: std 0
    ]
    for x in cases:
        x = x.to(dtype)
        row = activation_row(x).tolist()
        ref = _row_reference(x)
        rel = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-3
        assert row[0] == pytest.approx(ref[0], rel=1e-5, abs=1e-6)
        assert row[1] == pytest.approx(ref[1], rel=rel, abs=1e-6)
        assert row[2] == pytest.approx(ref[2], rel=1e-6)
        assert row[3:6] == ref[3:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activation_row_signal_std_is_the_per_unit_std_across_samples(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    # per-unit offsets 100x the signal: the plain std is the offsets', the signal std the signal's
    offsets = torch.randn(1, 8, 4, 4, generator=g, dtype=torch.float64) * 1.0
    x = (offsets + 0.01 * torch.randn(32, 8, 4, 4, generator=g, dtype=torch.float64)).to(dtype)
    row = dict(zip(ACTIVATION_ROW, activation_row(x).tolist(), strict=True))
    ref = x.double().flatten(1).var(dim=0, unbiased=True).mean().sqrt().item()
    assert row["signal"] == pytest.approx(ref, rel=1e-4)
    assert row["signal"] == pytest.approx(0.01, rel=0.1)
    assert row["std"] == pytest.approx(x.double().std().item(), rel=1e-5)
    assert row["std"] > 50 * row["signal"]
    assert row["signal_dof"] == 31 * 8 * 4 * 4
    same = dict(zip(ACTIVATION_ROW, activation_row(offsets.expand(5, -1, -1, -1).to(dtype)).tolist(), strict=True))
    assert same["signal"] <= 1e-6 * same["std"]  # identical samples: no signal (float rounding), whatever the std
    assert math.isnan(activation_row(torch.ones(1, 3)).tolist()[ACTIVATION_ROW.index("signal")])  # one sample


def test_activation_row_huge_values_stay_finite_and_nonfinite_is_counted_exactly() -> None:
    g = torch.Generator().manual_seed(4)
    huge = torch.randn(500, generator=g) * 3e30 + 1e30
    row = activation_row(huge).tolist()
    ref = _row_reference(huge)
    assert all(math.isfinite(v) for v in row)
    assert row[0] == pytest.approx(ref[0], rel=1e-4)
    assert row[1] == pytest.approx(ref[1], rel=1e-5)
    assert row[2] == pytest.approx(ref[2], rel=1e-6)
    bad = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, 0.999, -0.995, float("nan")])
    row = activation_row(bad, bounds=(-1.0, 1.0)).tolist()
    assert row[5] == 4  # 2 NaN, +Inf, -Inf
    assert row[3] == 1  # the one exact zero; NaN is not a zero
    assert row[4] == 5  # 1.0, inf, -inf, 0.999, -0.995 (NaN compares false)
    assert math.isnan(row[2])
    inf_only = activation_row(torch.tensor([2.0, float("inf")])).tolist()
    assert inf_only[2] == math.inf
    assert inf_only[5] == 1


def _row_spread_reference(w: torch.Tensor) -> float:
    a = w.double().reshape(w.shape[0], -1).numpy()
    scale = np.abs(a).max()
    return 0.0 if scale == 0 else float(np.abs(a - a.mean(axis=0, keepdims=True)).max() / scale)


def test_row_spread_against_a_numpy_reference() -> None:
    reference = _row_spread_reference
    g = torch.Generator().manual_seed(5)
    row = torch.randn(1, 3, 2, 2, generator=g)
    cases = [
        torch.randn(16, 9, generator=g),
        torch.randn(8, 3, 3, 3, generator=g) - 4.0,
        row.expand(6, 3, 2, 2).clone(),  # identical output units: 0
        torch.full((4, 5), 0.3),
        torch.zeros(3, 4),
        torch.randn(5, 5, generator=g).to(torch.bfloat16),
    ]
    for w in cases:
        assert row_spread(w).item() == pytest.approx(reference(w), rel=1e-5, abs=1e-7)
    assert row_spread(cases[2]).item() < 1e-6  # 0 up to the rounding of a float32 column mean
    assert math.isnan(row_spread(torch.tensor([[1.0, float("nan")], [2.0, 3.0]])).item())
    assert math.isnan(row_spread(torch.ones(4)).item())  # 1-D: not defined
    assert math.isnan(row_spread(torch.ones(1, 4)).item())  # one output unit: not defined


def test_tiny_values_whose_squares_underflow_are_reported_tiny_not_zero():
    x = torch.full((4096,), 1e-25)
    x[::2] = 3e-25
    cols = tensor_columns([x], ["norm", "std", "mean"])
    host = fetch(cols)
    repair([x], host, count_nonfinite=True)
    reference = x.double()
    assert host["norm"][0] == pytest.approx(torch.linalg.vector_norm(reference).item(), rel=1e-4)
    assert host["std"][0] == pytest.approx(reference.std().item(), rel=1e-4)
    assert host["mean"][0] == pytest.approx(reference.mean().item(), rel=1e-4)


def test_activation_rows_of_stacked_outputs_match_activation_row_of_each() -> None:
    # the staged (batched) path must give each call's row as the per-call reduction does, NaN/Inf/huge/half included
    torch.manual_seed(0)
    bad = torch.randn(4, 5, 3)
    bad[1, 0, 0], bad[2, 1, 1], bad[3] = float("nan"), float("inf"), 0.0
    cases = [
        torch.randn(5, 16, 8),
        torch.randn(3, 4, 3, 2, 2) * 1e30,
        torch.randn(4, 1, 6),  # one sample: NaN signal
        torch.randn(3, 7, dtype=torch.float64),
        torch.randn(2, 8, 5).half(),
        torch.zeros(3, 4, 4),
        bad,
    ]
    for x in cases:
        for bounds in (None, (-1.0, 1.0)):
            got, means = activation_rows_and_unit_means(x, bounds)
            torch.testing.assert_close(activation_rows(x, bounds), got, equal_nan=True)
            ref = torch.stack([activation_row(c, bounds) for c in x])
            ref_means = torch.stack([activation_row_and_unit_means(c, bounds)[1] for c in x])
            torch.testing.assert_close(means, ref_means, rtol=1e-5, atol=1e-6, equal_nan=True)
            assert got.dtype == torch.float32
            assert got.shape == (x.shape[0], len(ACTIVATION_ROW))
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_cpu_histogram_fast_path_matches_the_general_path() -> None:
    # finite CPU tensors take torch.histc; the bins, counts (up to float rounding at an edge) and moments must be the
    # general (device-agnostic) path's
    from lightning_init import stats

    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(1000, generator=g), torch.rand(37, 5, generator=g) * 1e6 - 3.0, torch.arange(10.0).half()):
        flat = x.reshape(-1).float()
        fast = stats._cpu_histogram(flat, HISTOGRAM_BINS)
        assert fast is not None
        finite = torch.isfinite(flat)
        lo, hi = flat.amin(), flat.amax()
        half = hi / 2 - lo / 2
        pos = ((flat / 2 - lo / 2) / half * HISTOGRAM_BINS).floor().clamp(0, HISTOGRAM_BINS - 1).long()
        general = torch.zeros(HISTOGRAM_BINS).scatter_add_(0, pos, torch.ones_like(flat))
        assert fast[0].sum().item() == flat.numel()
        assert (fast[0] - general).abs().max().item() <= 1
        ref = torch.stack([lo, hi, finite.sum().float(), flat.sum(), flat.square().sum()])
        torch.testing.assert_close(fast[1], ref, rtol=1e-5, atol=0)
        cols = histogram_columns([x], HISTOGRAM_BINS)
        torch.testing.assert_close(cols["counts"][0], fast[0])
    bad = torch.tensor([1.0, float("nan"), 2.0])
    assert stats._cpu_histogram(bad, HISTOGRAM_BINS) is None  # NaN/Inf, constant, empty: the general path
    assert stats._cpu_histogram(torch.full((3,), 2.0), HISTOGRAM_BINS) is None
    assert stats._cpu_histogram(torch.zeros(0), HISTOGRAM_BINS) is None
