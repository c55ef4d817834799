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


def test_staged_and_direct_rows_agree_with_per_call_reductions_and_staging_is_bounded(monkeypatch) -> None:
    # Small outputs are staged (copied, reduced together at the end), large ones reduced in the hook: either way each
    # call's row is activation_row of that call's output; past STAGE_BYTES, outputs are reduced in the hook.
    from lightning_init import hooks
    from lightning_init.stats import activation_row

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 300), nn.Tanh(), nn.Linear(300, 6))
    names = [("0", model[0]), ("1", model[1]), ("2", model[2])]
    xs = [torch.randn(4, 6), torch.randn(80, 6), torch.randn(4, 6)]  # [80, 300]: above STAGE_NUMEL
    outs = []
    for x in xs:
        h0 = model[0](x)
        h1 = torch.tanh(h0)
        outs.append([h0, h1, model[2](h1)])
    expected = {n: [activation_row(o[i], (-1.0, 1.0) if n == "1" else None) for o in outs] for i, n in enumerate("012")}
    for budget in (hooks.STAGE_BYTES, 4 * 4 * 300 * 4):  # the default, and room for 4 staged [4, 300] outputs only
        monkeypatch.setattr(hooks, "STAGE_BYTES", budget)
        rec = ActivationRecorder()
        previous: dict = {}
        for repeat in range(2):  # the second logging step reuses the staging buffers
            rec.start(names)
            with torch.no_grad():
                for j, x in enumerate(xs):
                    if j:
                        rec.next_batch()  # each input its own micro-batch
                    model(x)
            rec.stop()
            staged = {k: s.buffer.data_ptr() for k, s in rec._stages.items()}
            got = rec.rows
            assert list(got) == ["0", "1", "2"]
            assert rec.numels["1"] == [1200, 24000, 1200]
            for n in "012":
                torch.testing.assert_close(torch.stack(got[n]), torch.stack(expected[n]), rtol=1e-5, atol=1e-6)
            # the signal's unit means: one state per call position, the two micro-batches merged (UnitMeans, Chan)
            states = rec.unit_means
            assert not rec.mixed
            assert [len(states[n]) for n in "012"] == [1, 1, 1]
            for i, n in enumerate("012"):
                assert states[n][0].samples == sum(x.shape[0] for x in xs)
                ref = torch.cat([o[i] for o in outs]).double().mean(0)
                torch.testing.assert_close(states[n][0].mean, ref, rtol=1e-5, atol=1e-6)
            moments = rec.moments()
            assert moments.shape == (3, 10)
            assert moments[:, 0].tolist() == [26400, 26400, 528]
            if repeat:
                assert staged == previous  # same buffers, refilled in place
            previous = staged
            assert sum(s.buffer.numel() * 4 for s in rec._stages.values()) <= budget
        rec.clear()
        assert not rec._stages
        assert not rec.rows
        assert not rec.active
