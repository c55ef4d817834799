import pytest
import torch
from torch import nn

from lightning_init.hooks import ActivationRecorder, HookSet
from lightning_init.stats import ACTIVATION_ROW


def test_hookset_remove_is_idempotent_and_a_context_manager() -> None:
    layer = nn.Linear(2, 2)
    calls = []
    with HookSet() as hooks:
        hooks.add(layer.register_forward_hook(lambda m, a, o: calls.append(1)))
        assert len(hooks) == 1
        layer(torch.ones(1, 2))
    assert len(layer._forward_hooks) == 0
    assert len(hooks) == 0
    hooks.remove()
    layer(torch.ones(1, 2))
    assert calls == [1]

    def failing() -> None:
        with HookSet() as hooks:
            hooks.add(layer.register_forward_hook(lambda m, a, o: None))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        failing()
    assert len(layer._forward_hooks) == 0


class TupleOut(nn.Module):
    def forward(self, x: torch.Tensor):
        return {"ids": x.long(), "out": (x * 2, x)}


def test_recorder_keeps_small_rows_in_execution_order_and_removes_hooks() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), TupleOut())
    order = [("2", model[2]), ("1", model[1]), ("0", model[0])]  # registration order is not execution order
    rec = ActivationRecorder()
    rec.start(order, histograms=True)
    x = torch.randn(5, 3)
    model(x)
    model(x)
    assert list(rec.rows) == ["0", "1", "2"]
    assert all(
        len(v) == 2 and v[0].shape == (len(ACTIVATION_ROW),) and v[0].dtype == torch.float32 for v in rec.rows.values()
    )
    assert rec.numels["2"] == [20, 20]
    assert rec.bounded == {"2": False, "1": True, "0": False}
    assert set(rec.histograms) == {"0", "1", "2"}
    assert rec.rows["2"][0].tolist()[0] == pytest.approx(
        (model[1].forward(model[0].forward(x)) * 2).mean().item(), abs=1e-6
    )
    rec.enabled = False
    model(x)
    assert len(rec.rows["0"]) == 2
    rec.clear()
    assert not rec.active
    assert not rec.rows
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_recorder_reduces_half_precision_in_float32() -> None:
    layer = nn.Identity()
    rec = ActivationRecorder()
    rec.start([("id", layer)])
    x = torch.full((10,), 300.0, dtype=torch.float16)
    layer(x)
    assert rec.rows["id"][0].dtype == torch.float32
    rec.clear()
