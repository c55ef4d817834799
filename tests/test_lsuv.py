"""LSUV (Mishkin & Matas 2016) on plain torch models; variances re-measured here with independent forward hooks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import lsuv_
from lightning_init.lsuv import LSUVReport

HANDLED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def mlp(depth: int, width: int, act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(16 if i == 0 else width, width), act()]
    return nn.Sequential(*layers)


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator], torch.Tensor]]] = {
    "tanh_mlp20": (lambda: mlp(20, 64, nn.Tanh), lambda g: torch.randn(256, 16, generator=g)),
    "relu_mlp20": (lambda: mlp(20, 64, nn.ReLU), lambda g: torch.randn(256, 16, generator=g)),
    "cnn": (cnn, lambda g: torch.rand(64, 3, 16, 16, generator=g) * 2 + 0.5),
}


def output_variances(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Reference: variance over all elements of every Linear/Conv output, biased, float64, in eval mode."""
    out: dict[str, float] = {}
    handles = [
        m.register_forward_hook(lambda _m, _a, y, name=name: out.__setitem__(name, y.double().var(correction=0).item()))
        for name, m in model.named_modules()
        if isinstance(m, HANDLED)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return out


@pytest.mark.parametrize("kind", list(MODELS))
def test_unit_output_variance_on_batch_and_held_out(kind: str) -> None:
    torch.manual_seed(0)
    build, sample = MODELS[kind]
    model = build()
    data = torch.Generator().manual_seed(1)
    batch, held_out = sample(data), sample(data)
    tol = 0.1

    report = lsuv_(model, batch, tol=tol, generator=torch.Generator().manual_seed(2))

    n_layers = sum(isinstance(m, HANDLED) for m in model.modules())
    assert report.converged
    assert len(report.layers) == n_layers
    used, held = output_variances(model, batch), output_variances(model, held_out)
    assert len(used) == n_layers
    for name, var in used.items():
        assert abs(var - 1) <= tol, (name, var)
    for name, var in held.items():
        assert 0.5 <= var <= 2.0, (name, var)
    for r in report.layers:  # the report's final variance is what we measure independently
        assert r.final_variance == pytest.approx(used[r.name], rel=1e-6)
    for m in model.modules():
        if isinstance(m, HANDLED):
            assert torch.count_nonzero(m.bias) == 0
            # orthogonal pre-init then a scalar rescale: rows (or columns) orthogonal with a common norm
            w = m.weight.detach().flatten(1).double()
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            scale = gram.diagonal().mean()
            torch.testing.assert_close(gram / scale, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)


def test_execution_order_not_definition_order() -> None:
    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Linear(32, 32)
            self.early = nn.Linear(16, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.late(torch.tanh(self.early(x)))

    report = lsuv_(Reversed(), torch.randn(128, 16), generator=torch.Generator().manual_seed(0))
    assert [r.name for r in report.layers] == ["early", "late"]


class Noisy(nn.Module):
    """Dropout, BatchNorm and an explicit global-RNG draw: train mode would consume the RNG and update buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.bn = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = x + 0.01 * torch.randn_like(x)
        return self.head(self.fc2(self.drop(self.bn(self.fc1(x)))))


def test_leaves_modes_rng_grads_buffers_and_hooks_untouched() -> None:
    model = Noisy()
    model.train()
    model.head.eval()  # mixed flags must come back exactly
    model.fc2.weight.requires_grad_(False)
    flags = {n: m.training for n, m in model.named_modules()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    dataset = TensorDataset(torch.arange(32).float())

    def order(loader: DataLoader) -> list[float]:
        return [float(v) for (b,) in loader for v in b]

    torch.manual_seed(123)
    state = torch.get_rng_state()
    reference_order = order(DataLoader(dataset, batch_size=4, shuffle=True))  # shuffles from the global RNG
    seeded_reference = order(
        DataLoader(dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5))
    )
    torch.set_rng_state(state)

    def forward(m: nn.Module, batch: Any) -> Any:
        torch.randn(3)  # a user forward that draws from the global RNG
        return m(batch[0])

    report = lsuv_(model, (torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), None), forward=forward)

    assert torch.equal(torch.get_rng_state(), state)
    assert order(DataLoader(dataset, batch_size=4, shuffle=True)) == reference_order
    seeded = order(DataLoader(dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5)))
    assert seeded == seeded_reference
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n  # eval mode: BatchNorm statistics not updated
    assert all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not m._forward_hooks
        assert not m._forward_pre_hooks
    assert [r.name for r in report.layers] == ["fc1", "fc2", "head.1"]
    assert [s.name for s in report.skipped] == ["bn"]


def test_restores_everything_when_forward_raises() -> None:
    model = mlp(3, 8, nn.ReLU)
    model[2].eval()
    flags = [m.training for m in model.modules()]
    batch = torch.randn(32, 16)
    state = torch.get_rng_state()
    calls = [0]

    def forward(m: nn.Module, batch: Any) -> Any:
        calls[0] += 1
        if calls[0] == 3:
            torch.rand(5)
            raise RuntimeError("boom")
        return m(batch)

    with pytest.raises(RuntimeError, match="boom"):
        lsuv_(model, batch, forward=forward)
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), state)
    for m in model.modules():
        assert not m._forward_hooks


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("batch", "word"), [(-torch.rand(32, 8) - 0.1, "zero"), (torch.full((32, 8), math.nan), "not finite")]
)
def test_zero_or_nan_output_is_reported_and_terminates(batch: torch.Tensor, word: str) -> None:
    # ReLU of a negative input: everything after it sees zeros (or NaNs), so no rescaling can reach variance 1
    model = nn.Sequential(nn.ReLU(), nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    report = lsuv_(model, batch, max_iters=1000, generator=torch.Generator().manual_seed(0))
    assert not report.converged
    assert [r.name for r in report.layers] == ["1", "3"]
    for r in report.layers:
        assert not r.converged
        assert r.iterations == 0
        assert word in r.reason
    for p in model.parameters():
        assert torch.isfinite(p).all()


def test_tiny_variance_that_would_overflow_is_reported() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    batch = torch.randn(64, 8) * 1e-42  # float32 denormals: 1/std ~1e42 overflows float32 weights
    report = lsuv_(model, batch, orthogonal_preinit=False)
    assert not report.layers[0].converged
    assert torch.isfinite(model[0].weight).all()


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.shared = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(torch.tanh(self.shared(torch.tanh(self.inp(x)))))


def test_layer_called_twice_uses_pooled_variance_and_respects_max_iters() -> None:
    torch.manual_seed(0)
    batch = torch.randn(128, 16)
    model = Shared()
    report = lsuv_(model, batch, generator=torch.Generator().manual_seed(0))
    assert report.converged
    outputs: list[torch.Tensor] = []
    handle = model.shared.register_forward_hook(lambda _m, _a, y: outputs.append(y.detach().double().flatten()))
    with torch.no_grad():
        model(batch)
    handle.remove()
    assert len(outputs) == 2
    pooled = torch.cat(outputs).var(correction=0).item()
    assert abs(pooled - 1) <= 0.1
    assert report.layers[1].final_variance == pytest.approx(pooled, rel=1e-6)

    limited = lsuv_(Shared(), batch, max_iters=1, tol=0.001, generator=torch.Generator().manual_seed(0))
    shared = limited.layers[1]
    assert shared.iterations == 1
    assert not shared.converged
    assert "max_iters=1" in shared.reason


def test_skipped_modules_are_reported_and_untouched() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.conv = nn.Conv1d(8, 8, 3, padding=1)
            self.norm = nn.LayerNorm(8)
            self.up = nn.ConvTranspose1d(8, 8, 2)
            self.unused = nn.Linear(8, 8)
            self.frozen = nn.Linear(9, 8)
            self.param = nn.utils.parametrize.register_parametrization(nn.Linear(8, 8), "weight", nn.Identity())
            self.head = nn.Linear(8, 2)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            h = self.conv(self.emb(idx).transpose(1, 2))
            h = self.up(self.norm(h.transpose(1, 2)).transpose(1, 2))
            h = self.frozen(torch.cat([h.mean(-1), h.new_ones(h.shape[0], 1)], dim=1))
            return self.head(self.param(h))

    model = Mixed()
    before = {n: p.clone() for n, p in model.named_parameters()}
    report = lsuv_(model, torch.randint(0, 10, (16, 12)), layers=["conv", "head", "unused"])
    reasons = {s.name: s.reason for s in report.skipped}
    assert set(reasons) == {"emb", "norm", "up", "unused", "frozen", "param"}
    assert "Embedding" in reasons["emb"]
    assert "LayerNorm" in reasons["norm"]
    assert "ConvTranspose1d" in reasons["up"]
    assert "not called" in reasons["unused"]
    assert "`layers`" in reasons["frozen"]
    assert "reparametrized" in reasons["param"]
    assert [r.name for r in report.layers] == ["conv", "head"]
    for n, p in model.named_parameters():
        if not n.startswith(("conv.", "head.")):
            assert torch.equal(p, before[n]), n
    md = report.to_markdown()
    assert md.count("\n| conv |") == 1
    assert "| up | ConvTranspose1d |" in md


def test_reproducible_with_seeded_generator_and_independent_of_global_seed() -> None:
    batch = torch.randn(128, 16, generator=torch.Generator().manual_seed(0))

    def run(seed: int, global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(7)
        model = mlp(4, 32, nn.Tanh)
        torch.manual_seed(global_seed)
        lsuv_(model, batch, generator=torch.Generator().manual_seed(seed))
        return [p.detach().clone() for p in model.parameters()]

    a, b, c = run(3, 0), run(3, 99), run(4, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    # no generator: a private, nondeterministic one (two runs differ, global RNG untouched)
    m1, m2 = mlp(2, 8, nn.Tanh), mlp(2, 8, nn.Tanh)
    m2.load_state_dict(m1.state_dict())
    state = torch.get_rng_state()
    lsuv_(m1, batch)
    lsuv_(m2, batch)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(m1[0].weight, m2[0].weight)


def test_without_orthogonal_preinit_weights_are_only_rescaled() -> None:
    torch.manual_seed(0)
    model = mlp(3, 32, nn.Tanh)
    before = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    report = lsuv_(model, torch.randn(128, 16), orthogonal_preinit=False)
    assert report.converged
    for w0, m in zip(before, [m for m in model if isinstance(m, nn.Linear)], strict=True):
        ratio = m.weight.detach() / w0
        torch.testing.assert_close(ratio, torch.full_like(ratio, ratio.mean().item()), rtol=1e-4, atol=0)


@pytest.mark.parametrize(
    "batch",
    [
        (torch.randn(32, 16), torch.zeros(32)),
        [torch.randn(32, 16)],
        {"x": torch.randn(32, 16), "y": torch.zeros(32)},
    ],
)
def test_default_forward_batch_conventions(batch: Any) -> None:
    report = lsuv_(mlp(2, 8, nn.Tanh), batch)
    assert len(report.layers) == 2
    assert report.converged


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tol": 0.0}, r"`tol` must be a number in \(0, 1\), got 0.0"),
        ({"tol": 1.5}, "`tol`"),
        ({"max_iters": 0}, "`max_iters` must be an integer >= 1, got 0"),
        ({"layers": ["00"]}, "did you mean '0'"),
        ({"layers": ["1"]}, "'1', a Tanh"),
        ({"layers": "0"}, "sequence of qualified module names"),
        ({"batch": {"input": torch.randn(4, 16)}}, r"'x' key \(keys: \['input'\]\).*`forward="),
        ({"batch": ()}, "empty"),
        ({"batch": 3}, "got int"),
    ],
)
def test_bad_input(kwargs: dict[str, Any], match: str) -> None:
    batch = kwargs.pop("batch", torch.randn(4, 16))
    with pytest.raises(ValueError, match=match):
        lsuv_(mlp(2, 8, nn.Tanh), batch, **kwargs)


def test_report_markdown() -> None:
    report = lsuv_(nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8)), torch.randn(32, 16))
    assert isinstance(report, LSUVReport)
    lines = report.to_markdown().splitlines()
    assert lines[0].startswith("LSUV (tol=0.1, max_iters=10): 1/1 layers converged")
    assert lines[4].startswith("| 0 | Linear | ")
    assert "| 1 | BatchNorm1d | BatchNorm1d is not rescaled" in report.to_markdown()


def test_preinit_is_the_schemes_orthogonal_sampler() -> None:
    # one sampler for the whole package: LSUV's pre-init is schemes.orthogonal_ on the same generator, up to LSUV's
    # positive scalar rescaling
    from lightning_init.schemes import orthogonal_

    model = nn.Sequential(nn.Linear(16, 8))
    lsuv_(model, torch.randn(64, 16), generator=torch.Generator().manual_seed(3))
    reference = orthogonal_(torch.empty(8, 16), 1.0, torch.Generator().manual_seed(3))
    w = model[0].weight.detach()
    scale = (w.norm() / reference.norm()).item()
    torch.testing.assert_close(w / scale, reference, rtol=1e-5, atol=1e-6)
