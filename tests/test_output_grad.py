"""GradientMonitor(stats=[..., "output_grad"]): ||dL/dh|| per module against theory and torch.autograd.grad."""

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import GradientMonitor, WeightInit
from lightning_init.health import check_backprop
from lightning_init.stats import output_grad_stats
from tests.helpers import events, quiet_trainer, scalars


class Net(pl.LightningModule):
    """``self.net`` applied to the batch; loss: cross-entropy (classes) or mean square of the output (``mse``)."""

    def __init__(self, net: nn.Module, *, mse: bool = False, lr: float = 0.1) -> None:
        super().__init__()
        self.net = net
        self.mse = mse
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def loss(self, out, y):
        return out.square().mean() if self.mse else nn.functional.cross_entropy(out, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Shared(nn.Module):
    """Linear -> ReLU(inplace) -> the same Linear twice (with a ReLU between) -> readout."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.act = nn.ReLU(inplace=True)
        self.shared = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        h = self.act(self.inp(x))
        h = torch.relu(self.shared(h))
        h = self.act(self.shared(h))  # the same Linear, and the same in-place ReLU, a second time
        return self.out(h)


def _data(n=16, d=8, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _loader(x, y, batch_size):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _fit(model, x, y, *, tmp_path, steps=1, batch_size=None, callbacks=(), **trainer_kwargs):
    trainer = quiet_trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        callbacks=[GradientMonitor(stats=["norm", "output_grad"], every_n_steps=1), *callbacks],
        **trainer_kwargs,
    )
    trainer.fit(model, _loader(x, y, batch_size or len(x)))
    return trainer


def _logged(trainer, names, step=0):
    ea = events(trainer)
    return {n: scalars(ea, f"output_grad_norm/{n}")[step] for n in names}


def _reference(model, modules, x, y):
    """||dL/dh|| of every call of each module (root of the sum of squares over calls), by torch.autograd.grad."""
    outputs = {name: [] for name in modules}
    handles = [
        m.register_forward_hook(lambda mod, a, out, name=name: outputs[name].append(out)) for name, m in modules.items()
    ]
    try:  # the reference model computes the same with out-of-place activations (see _out_of_place)
        loss = model.loss(model(x), y)
    finally:
        for h in handles:
            h.remove()
    flat = [t for name in modules for t in outputs[name]]
    grads = torch.autograd.grad(loss, flat)
    out, i = {}, 0
    for name in modules:
        k = len(outputs[name])
        out[name] = math.sqrt(sum(float(g.double().square().sum()) for g in grads[i : i + k]))
        i += k
    return out


def _out_of_place(module):
    for m in module.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return module


def test_output_grad_stats_is_the_norm_of_the_concatenation():
    g = torch.randn(3, 50, dtype=torch.float64) * 1e-3 + 2e-4
    stats = output_grad_stats(g.numel(), float(g.mean()), float(g.std()), scale=4.0)
    assert stats["norm"] == pytest.approx(float(g.norm()) / 4.0, rel=1e-12)
    assert stats["std"] == pytest.approx(float(g.std()) / 4.0, rel=1e-12)
    assert math.isnan(output_grad_stats(0, math.nan, math.nan)["norm"])


def test_backprop_rules_on_a_depth_profile():
    flat = {f"l{i}": {"norm": 1.0} for i in range(5)}
    assert check_backprop(flat, step=0) == []
    vanishing = {f"l{i}": {"norm": 10.0 ** (i - 4) * 1e-1} for i in range(5)}  # 1e-5 ... 1e-1, input first
    flagged = check_backprop(vanishing, step=3)
    assert {f.layers[0] for f in flagged} == {"l0"}  # 1e-5 < 1e-3 * 1e-1; l1 = 1e-4 is 1e-3 of l4: not below
    assert flagged[0].rule == "vanishing_backprop"
    assert "Kaiming" in flagged[0].message
    exploding = {"l0": {"norm": 1e5}, "l1": {"norm": 1.0}, "l2": {"norm": 1.0}}
    assert [f.rule for f in check_backprop(exploding, step=0)] == ["exploding_backprop"]
    assert [f.rule for f in check_backprop({"l0": {"norm": math.nan, "nonfinite": 3.0}}, step=0)] == ["nonfinite"]


def test_matches_autograd_with_a_shared_module_and_inplace_relu(tmp_path):
    torch.manual_seed(0)
    model = Net(Shared())
    reference_model = _out_of_place(copy.deepcopy(model))
    x, y = _data()
    trainer = _fit(model, x, y, tmp_path=tmp_path)
    names = ["net.inp", "net.shared", "net.out"]
    got = _logged(trainer, names)
    ref = _reference(reference_model, {n: reference_model.get_submodule(n) for n in names}, x, y)
    for n in names:
        assert got[n] == pytest.approx(ref[n], rel=1e-4), n
    assert not any(m._forward_hooks for m in model.modules())  # every hook removed after fit


def test_accumulated_micro_batches_give_the_full_batch_signal(tmp_path):
    torch.manual_seed(1)
    model = Net(nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)))
    reference_model = copy.deepcopy(model)
    x, y = _data(n=16)
    trainer = _fit(model, x, y, tmp_path=tmp_path, batch_size=8, accumulate_grad_batches=2)
    names = ["net.0", "net.2"]
    got = _logged(trainer, names)
    ref = _reference(reference_model, {n: reference_model.get_submodule(n) for n in names}, x, y)  # mean over 16
    for n in names:
        assert got[n] == pytest.approx(ref[n], rel=1e-4), n


def test_deep_linear_orthogonal_net_keeps_the_backprop_norm_constant(tmp_path):
    torch.manual_seed(0)
    depth = 12
    model = Net(nn.Sequential(*[nn.Linear(32, 32, bias=False) for _ in range(depth)]), mse=True)
    x, y = _data(n=64, d=32)
    trainer = _fit(model, x, y, tmp_path=tmp_path, callbacks=[WeightInit(scheme="orthogonal", seed=0)])
    norms = _logged(trainer, [f"net.{i}" for i in range(depth)])
    # theory: g_l = W_{l+1}^T g_{l+1} with W orthogonal, so ||g_l|| = ||g_{l+1}|| exactly
    assert norms["net.0"] / norms[f"net.{depth - 1}"] == pytest.approx(1.0, rel=0.05)
    ea = events(trainer)
    assert scalars(ea, "health/vanishing_backprop")[0] == 0
    assert scalars(ea, "health/exploding_backprop")[0] == 0


class _Snapshot(pl.Callback):
    """The weights as the first training batch sees them (after WeightInit)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters() if n.endswith("weight")}


def test_deep_tanh_net_under_small_normal_decays_by_the_factor_the_weights_predict(tmp_path):
    torch.manual_seed(0)
    depth, width = 20, 64
    layers = [nn.Linear(32, width), nn.Tanh()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, 4))
    model = Net(nn.Sequential(*layers))
    x, y = _data(n=256, d=32)
    snap = _Snapshot()
    with pytest.warns(UserWarning, match="vanishing backprop signal"):
        trainer = _fit(model, x, y, tmp_path=tmp_path, callbacks=[WeightInit(scheme="normal", std=0.01, seed=0), snap])
    linears = [f"net.{2 * i}" for i in range(depth)]
    norms = _logged(trainer, linears)
    # theory: tanh' ~ 1 at these tiny pre-activations, so g_l ~ W_{l+1}^T g_{l+1}; for a g with uncorrelated
    # coordinates E||W^T g||^2 = ||W||_F^2 / fan_out * ||g||^2: the factor is ||W_{l+1}||_F / sqrt(fan_out)
    measured, predicted = [], []
    for i in range(depth - 2):  # hidden -> hidden (the readout's 4 logit gradients sum to 0: not isotropic)
        w = snap.weights[f"{linears[i + 1]}.weight"]
        predicted.append(float(w.norm()) / math.sqrt(w.shape[0]))
        measured.append(norms[linears[i]] / norms[linears[i + 1]])
    for m, p in zip(measured, predicted, strict=True):
        assert m == pytest.approx(p, rel=0.10), (measured, predicted)
    assert sum(map(math.log, measured)) == pytest.approx(sum(map(math.log, predicted)), rel=0.01)
    ea = events(trainer)
    assert scalars(ea, "health/vanishing_backprop")[0] > 0
    assert "health/output_grad_heatmap" in ea.Tags()["images"]


def test_weights_bit_identical_with_and_without_and_hooks_removed_on_error(tmp_path):
    def run(with_monitor):
        torch.manual_seed(0)
        model = Net(Shared())
        x, y = _data()
        callbacks = [GradientMonitor(stats=["norm", "output_grad"], every_n_steps=1)] if with_monitor else []
        trainer = quiet_trainer(max_steps=3, default_root_dir=tmp_path, callbacks=callbacks)
        trainer.fit(model, _loader(x, y, 8))
        return model

    a, b = run(True), run(False)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n

    class Boom(Net):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            if self.global_step == 1:
                raise RuntimeError("boom")
            return loss

    model = Boom(Shared())
    x, y = _data()
    trainer = quiet_trainer(
        max_steps=3, default_root_dir=tmp_path, callbacks=[GradientMonitor(stats=["output_grad"], every_n_steps=1)]
    )
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(model, _loader(x, y, 8))
    assert not any(m._forward_hooks for m in model.modules())


def test_not_measured_unless_asked_and_not_on_other_steps(tmp_path):
    torch.manual_seed(0)
    model = Net(Shared())
    x, y = _data(n=32)
    trainer = quiet_trainer(max_steps=4, default_root_dir=tmp_path, callbacks=[GradientMonitor(every_n_steps=2)])
    trainer.fit(model, _loader(x, y, 8))
    assert not any(t.startswith("output_grad") for t in events(trainer).Tags()["scalars"])
    trainer = quiet_trainer(
        max_steps=4,
        default_root_dir=tmp_path / "b",
        callbacks=[GradientMonitor(stats=["output_grad"], every_n_steps=2)],
    )
    trainer.fit(Net(Shared()), _loader(x, y, 8))
    ea = events(trainer)
    assert set(scalars(ea, "output_grad_norm/net.shared")) == {0, 1, 3}  # the logging steps only
    assert not any(t.startswith("grad_norm/") for t in ea.Tags()["scalars"])


def test_unscaled_under_16_mixed(tmp_path):
    torch.manual_seed(0)
    model = Net(nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)))
    reference_model = copy.deepcopy(model)
    x, y = _data()
    # Lightning maps precision="16-mixed" to bf16 on CPU; the plugin built by hand runs float16 autocast with a
    # GradScaler on CPU, as "16-mixed" does on a GPU
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    plugin = MixedPrecision(precision="16-mixed", device="cpu", scaler=scaler)
    trainer = _fit(model, x, y, tmp_path=tmp_path, plugins=[plugin])
    assert trainer.precision_plugin.scaler is scaler  # the loss was multiplied by 4096 before backward
    names = ["net.0", "net.2"]
    got = _logged(trainer, names)
    ref = _reference(reference_model, {n: reference_model.get_submodule(n) for n in names}, x, y)
    for n in names:  # float16 forward/backward: ~1e-3 relative; the loss scale (65536) divided out
        assert got[n] == pytest.approx(ref[n], rel=2e-2), n
    assert scalars(events(trainer), "amp/loss_scale")[0] > 1
