"""``torch.compile``d models (issue 7): weights and gradients as in an uncompiled run; activations skipped with one
warning where forward hooks cannot fire (Dynamo ignores hooks registered after compilation).

Backend ``eager`` (Dynamo tracing without a code generator): the hook behaviour is Dynamo's, whatever the backend, and
it runs in well under a second on CPU, where ``inductor`` would compile C++ for minutes.
"""

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import ActivationMonitor, GradientMonitor, WeightInit, WeightMonitor
from lightning_init.hooks import compiled_regions, original_name
from tests.helpers import quiet_trainer

BACKEND = "eager"


class Net(pl.LightningModule):
    """``net`` (compiled with ``compile_net``) followed by ``head`` (compiled only when the whole model is)."""

    def __init__(self, compile_net: bool = False) -> None:
        super().__init__()
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
        self.net = torch.compile(net, backend=BACKEND) if compile_net else net
        self.head = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def build(how: str) -> nn.Module:
    """The model as the user hands it to ``fit``: plain, with a compiled submodule, or compiled as a whole."""
    if how == "plain":
        return Net()
    if how == "submodule":
        return Net(compile_net=True)
    return torch.compile(Net(), backend=BACKEND)


class HookProbe(Callback):
    """Most forward hooks seen on the model's modules while a step runs."""

    def __init__(self) -> None:
        self.most = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.most = max(self.most, sum(len(m._forward_hooks) for m in pl_module.modules()))


def run(tmp_path: Path, how: str, max_steps: int = 6) -> tuple[EventAccumulator, list[str], HookProbe]:
    torch.manual_seed(0)
    probe = HookProbe()
    callbacks = [
        WeightInit(seed=0),
        WeightMonitor(every_n_steps=2, histogram_every_n_steps=None),
        GradientMonitor(every_n_steps=2, histogram_every_n_steps=None),
        ActivationMonitor(every_n_steps=2, histogram_every_n_steps=None),
        probe,
    ]
    trainer = quiet_trainer(
        logger=TensorBoardLogger(tmp_path, name=how),
        max_steps=max_steps,
        callbacks=callbacks,
    )
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)), batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(build(how), data)
    ea = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0})
    ea.Reload()
    return ea, [str(w.message) for w in caught if "lightning_init" in w.filename], probe


def series(ea: EventAccumulator, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """Per-layer scalar series of the given kinds, keyed by tag with the compile wrapper's segment removed."""
    return {
        original_name(tag): [(e.step, e.value) for e in ea.Scalars(tag)]
        for tag in ea.Tags()["scalars"]
        if tag.startswith(prefixes)
    }


# ----------------------------------------------------------------------------------------------- premises


def test_dynamo_ignores_forward_hooks_registered_after_compilation() -> None:
    """The torch behaviour the monitors must live with (torch 2.13): if this starts failing, hooks may work again."""
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    compiled = torch.compile(net, backend=BACKEND)
    x = torch.randn(2, 4)
    compiled(x)  # compiled without hooks
    calls: list[torch.Tensor] = []
    handle = net[0].register_forward_hook(lambda m, a, out: calls.append(out.detach()))
    compiled(x)
    handle.remove()
    net(x)  # the uncompiled module calls a hook registered the same way
    assert calls == []
    handle = net[0].register_forward_hook(lambda m, a, out: calls.append(out.detach()))
    net(x)
    handle.remove()
    assert len(calls) == 1


def test_compiled_regions_and_original_names() -> None:
    plain = Net()
    assert compiled_regions(plain) == []
    assert compiled_regions(Net(compile_net=True)) == ["net"]
    whole = torch.compile(Net(), backend=BACKEND)
    assert compiled_regions(whole._orig_mod) == []  # compiled, but not yet marked by Lightning's fit
    plain._compiler_ctx = {"compiler": "dynamo"}  # what trainer.fit(torch.compile(model)) leaves on the model
    assert compiled_regions(plain) == [""]
    assert [original_name(n) for n, _ in Net(compile_net=True).named_parameters()] == [
        n for n, _ in Net().named_parameters()
    ]
    assert original_name("_orig_mod.net.0.weight") == "net.0.weight"
    assert original_name("net.orig_mod.weight") == "net.orig_mod.weight"


# ----------------------------------------------------------------------------------------------- monitors


@pytest.mark.parametrize("how", ["submodule", "lightning_module"])
def test_weights_and_gradients_of_a_compiled_model_match_the_uncompiled_run(tmp_path: Path, how: str) -> None:
    plain, _, _ = run(tmp_path, "plain")
    compiled, _, _ = run(tmp_path, how)
    expected = series(plain, ("weight_", "grad_"))
    got = series(compiled, ("weight_", "grad_"))
    assert set(got) == set(expected)
    assert "weight_update_ratio/net.2.weight" in got
    assert "grad_norm/total" in got
    for tag, values in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in values], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in values], rel=1e-6, abs=1e-9), tag


@pytest.mark.parametrize("how", ["submodule", "lightning_module"])
def test_activations_inside_compiled_code_are_skipped_with_one_warning(tmp_path: Path, how: str) -> None:
    ea, ours, probe = run(tmp_path, how, max_steps=6)
    activation_tags = {t for t in ea.Tags()["scalars"] if t.startswith("activation_")}
    compiled_warnings = [m for m in ours if "torch.compile" in m]
    assert len(compiled_warnings) == 1
    if how == "submodule":
        assert "net" in compiled_warnings[0]
        # outside the compiled submodule, activations are still recorded, at every logging step
        assert {t.split("/")[1] for t in activation_tags} == {"head"}
        assert [e.step for e in ea.Scalars("activation_std/head")] == [0, 1, 3, 5]
        assert probe.most == 1
    else:
        assert activation_tags == set()
        assert probe.most == 0  # no hook ever registered: nothing for Dynamo to trace into the graph


def test_compiled_submodule_keeps_the_tags_of_the_uncompiled_model(tmp_path: Path) -> None:
    plain, _, _ = run(tmp_path, "plain", max_steps=2)
    compiled, _, _ = run(tmp_path, "submodule", max_steps=2)
    wanted = ("weight_", "grad_")
    assert {t for t in compiled.Tags()["scalars"] if t.startswith(wanted)} == {
        t for t in plain.Tags()["scalars"] if t.startswith(wanted)
    }


# ----------------------------------------------------------------------------------------------- WeightInit


class InitialWeights(Callback):
    """The weights the first step starts from (after LSUV, which runs in WeightInit's on_train_batch_start)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            self.weights = {original_name(n): p.detach().clone() for n, p in pl_module.named_parameters()}


@pytest.mark.parametrize("how", ["submodule", "lightning_module"])
@pytest.mark.parametrize("scheme", ["auto", "lsuv"])
def test_weight_init_on_a_compiled_model_gives_the_uncompiled_weights(how: str, scheme: str) -> None:
    """``auto`` reads the activations through the compile wrapper; LSUV's forwards run through compiled code."""
    weights = {}
    for variant in ("plain", how):
        model = build(variant)
        module = getattr(model, "_orig_mod", model)  # the LightningModule inside a torch.compile wrapper
        module.example_input_array = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
        init, initial = WeightInit(scheme=scheme, seed=0), InitialWeights()
        trainer = quiet_trainer(
            logger=False,
            max_steps=1,
            callbacks=[init, initial],
        )
        g = torch.Generator().manual_seed(0)
        data = DataLoader(TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)), batch_size=8)
        trainer.fit(model, data)
        assert init.report is not None
        assert init.report.unresolved == []
        weights[variant] = initial.weights
    assert set(weights["plain"]) == set(weights[how])
    for name, w in weights["plain"].items():
        torch.testing.assert_close(weights[how][name], w, rtol=1e-6, atol=1e-7)
