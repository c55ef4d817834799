"""The data flow (lightning_init.graph): followers, residual branches, data-flow order, fused splits."""

import pytest
import torch
from torch import nn

from lightning_init.graph import dataflow_order, symbolic, trace
from tests.zoo.models import BasicBlock as Block  # torchvision's: the downsample conv runs between conv2 and the ReLU


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.blocks = nn.Sequential(Block(8, 8), Block(8, 16, 2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.blocks(self.act(self.stem(x)))
        return self.fc(x.mean((2, 3)))


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("build", ["traced", "symbolic"])
def test_every_conv2_feeds_the_relu_after_the_addition(build):
    m = TinyResNet()
    flow = trace(m, X) if build == "traced" else symbolic(m)
    followers = flow.followers()
    for name in ("blocks.0.conv2", "blocks.1.conv2", "blocks.1.downsample.0", "blocks.0.conv1", "stem"):
        assert followers[name] == ("relu", None), name
    assert followers["fc"] == ("linear", None)


def test_residual_branches_and_their_last_layer_and_norm():
    flow = trace(TinyResNet(), X)
    found = [(r.last_layer, r.last_norm, r.shortcut_layers) for r in flow.residuals()]
    assert found == [
        ("blocks.0.conv2", "blocks.0.bn2", ()),
        ("blocks.1.conv2", "blocks.1.bn2", ("blocks.1.downsample.0",)),
    ]
    assert flow.residuals()[1].branch_layers == ("blocks.1.conv1", "blocks.1.conv2")


def test_dataflow_order_puts_downsample_at_its_blocks_depth():
    m = TinyResNet()
    order = dataflow_order(m, X)
    assert dataflow_order(m) == order  # torch.fx gives the same order without an input
    depth = trace(m, X).depth()
    assert depth["blocks.1.downsample.0"] == depth["blocks.1.conv1"] == depth["blocks.0.conv2"] + 1
    assert order.index("blocks.1.downsample.0") < order.index("blocks.1.conv2")
    assert order[0] == "stem"
    assert order[-1] == "fc"


def test_trace_is_side_effect_free_and_records_shapes():
    m = TinyResNet().train()
    before = m.blocks[0].bn1.running_mean.clone()
    state = torch.get_rng_state()
    flow = trace(m, X)
    assert torch.equal(m.blocks[0].bn1.running_mean, before)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(mod.training for mod in m.modules())
    (call,) = flow.calls("fc")
    assert call.in_shapes[0] == (2, 16)
    assert call.out_shapes[0] == (2, 10)
    assert not any(h for mod in m.modules() for h in (mod._forward_hooks, mod._forward_pre_hooks))


class FusedQKV(nn.Module):
    def __init__(self, d=8, heads=2):
        super().__init__()
        self.qkv, self.proj, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


def test_fused_qkv_split_seen_in_the_data_flow():
    flow = trace(FusedQKV(), torch.randn(2, 5, 8))
    assert flow.split_into("qkv") == 3
    assert flow.split_into("proj") is None


def test_gpt2_data_flow():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    flow = trace(model, torch.randint(0, 50, (2, 8)))
    followers = flow.followers()
    assert followers["transformer.h.0.mlp.c_fc"] == ("gelu", None)  # gelu_new, found by the probe
    assert followers["transformer.h.0.attn.c_proj"] == ("linear", None)
    assert flow.split_into("transformer.h.1.attn.c_attn") == 3
    last = [r.last_layer for r in flow.residuals()]
    assert last == [f"transformer.h.{i}.{p}.c_proj" for i in range(2) for p in ("attn", "mlp")]


class PositionTables(nn.Module):
    """Token, position (``arange``) and segment tables (a constant buffer; ``zeros_like``), summed: BERT's layout."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(10, 4), nn.Embedding(6, 4)
        self.seg, self.seg2 = nn.Embedding(2, 4), nn.Embedding(2, 4)
        self.register_buffer("segments", torch.zeros(1, 5, dtype=torch.long))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.tok(x) + self.pos(positions) + self.seg(self.segments) + self.seg2(torch.zeros_like(x))
        return self.head(self.tok(x.flip(1)) + h)


@pytest.mark.parametrize("build", ["traced", "symbolic"])
def test_reads_input_tells_position_tables_from_the_content_table(build):
    m = PositionTables()
    x = torch.randint(0, 10, (2, 5))
    flow = trace(m, x) if build == "traced" else symbolic(m)
    assert flow.reads_input("tok") is True
    assert flow.reads_input("pos") is False  # arange(x.shape[1]): a shape query is not the input's values
    assert flow.reads_input("seg") is False
    assert flow.reads_input("seg2") is False  # zeros_like(x): the input's shape, not its values
    assert flow.reads_input("head") is True
    assert flow.reads_input("missing") is None
