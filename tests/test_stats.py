import math

import numpy as np
import pytest
import torch

from lightning_init.stats import (
    HISTOGRAM_BINS,
    activation_row,
    combine_activation_rows,
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
    half = torch.randn(100, dtype=torch.float16)
    assert activation_row(half).dtype == torch.float32
    assert activation_row(half).tolist()[1] == pytest.approx(half.float().std().item(), rel=1e-5)


def test_combine_rows_equals_statistics_of_the_concatenation() -> None:
    g = torch.Generator().manual_seed(0)
    parts = [
        torch.randn(30, generator=g) + 5,
        torch.randn(7, generator=g) * 3,
        torch.relu(torch.randn(50, generator=g)),
    ]
    rows = [activation_row(p).tolist() for p in parts]
    out = combine_activation_rows([p.numel() for p in parts], rows, bounded=False)
    cat = torch.cat(parts).double()
    assert out["mean"] == pytest.approx(cat.mean().item(), rel=1e-6)
    assert out["std"] == pytest.approx(cat.std().item(), rel=1e-6)
    assert out["abs_max"] == pytest.approx(cat.abs().max().item(), rel=1e-6)
    assert out["zero_fraction"] == pytest.approx((cat == 0).double().mean().item())
    assert "saturation" not in out


def test_first_float_tensor_of_structured_outputs() -> None:
    a, b = torch.ones(2), torch.zeros(3)
    assert first_float_tensor((a, (b, b))) is a
    assert first_float_tensor({"idx": torch.arange(3), "out": [b]}) is b
    assert first_float_tensor([torch.arange(2)]) is None
