"""lightning_init.roles: one definition of what a parameter is, checked on torch, HF and hand-written modules."""

import pytest
import torch
from torch import nn

from lightning_init.roles import ROLES, is_bias_name, is_norm, parameter_role, parameter_roles


class HandLayerNorm(nn.Module):
    """A LayerNorm written by hand (ConvNeXt style), zero gamma: detected by behaviour, not by type."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = 1e-6

    def forward(self, x):
        x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()
        return x * self.weight + self.bias


class HandRMSNorm(nn.Module):
    """Llama-style RMSNorm: `variance_epsilon`, one 1-D parameter."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.variance_epsilon = 1e-6

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * self.weight


class LayerScale(nn.Module):
    """timm-style layer scale: an `eps`-free 1-D multiplier; has an `eps` here to make the attribute test ambiguous."""

    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(1e-5 * torch.ones(c))
        self.eps = 1e-6

    def forward(self, x):
        return x * self.gamma


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.norm = HandLayerNorm(8)
        self.ls = LayerScale(8)
        self.rms = HandRMSNorm(8)
        self.act = nn.PReLU()


def test_vit_like_free_parameters_and_behavioural_norms():
    roles = parameter_roles(TinyViT())
    assert roles == {
        "cls_token": "free",
        "pos_embed": "free",
        "patch.weight": "weight",
        "patch.bias": "bias",
        "norm.weight": "norm_weight",
        "norm.bias": "norm_bias",
        "ls.gamma": "free",
        "rms.weight": "norm_weight",
        "act.weight": "free",
    }


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_layers(cls):
    roles = parameter_roles(cls(4, 8, num_layers=2, bidirectional=True))
    for name, role in roles.items():
        expected = "recurrent" if name.startswith("weight_hh") else "bias" if name.startswith("bias_") else "weight"
        assert role == expected, name
    cell = parameter_roles(nn.LSTMCell(4, 8))
    assert cell == {"weight_ih": "weight", "weight_hh": "recurrent", "bias_ih": "bias", "bias_hh": "bias"}


def test_attention_and_transformer_encoder():
    layer = nn.TransformerEncoderLayer(16, 2, 32)
    roles = parameter_roles(layer)
    assert roles["self_attn.in_proj_weight"] == "weight"
    assert roles["self_attn.in_proj_bias"] == "bias"
    assert roles["self_attn.out_proj.bias"] == "bias"
    assert roles["norm1.weight"] == "norm_weight"
    assert roles["norm2.bias"] == "norm_bias"
    mha = parameter_roles(nn.MultiheadAttention(8, 2, add_bias_kv=True, kdim=4, vdim=4))
    assert mha["q_proj_weight"] == mha["k_proj_weight"] == "weight"
    assert mha["bias_k"] == mha["bias_v"] == "bias"


@pytest.mark.parametrize(
    "norm",
    [nn.BatchNorm1d(8), nn.BatchNorm2d(8), nn.LayerNorm(8), nn.GroupNorm(2, 8), nn.InstanceNorm1d(8, affine=True)],
)
def test_torch_norms(norm):
    assert is_norm(norm)
    assert parameter_role(norm, "weight") == "norm_weight"
    assert parameter_role(norm, "bias") == "norm_bias"


def test_norm_probe_leaves_module_and_rng_alone():
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    m = HandLayerNorm(8)
    before = [p.clone() for p in m.parameters()]
    assert is_norm(m)
    assert not is_norm(LayerScale(8))
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))


def test_hf_gpt2_and_bert():
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=8)
    )
    roles = parameter_roles(gpt2)
    assert roles["transformer.wte.weight"] == roles["lm_head.weight"] == "embedding"  # tied: one tensor, one role
    assert roles["transformer.h.0.attn.c_attn.weight"] == "weight"  # HF Conv1D
    assert roles["transformer.h.0.attn.c_attn.bias"] == "bias"
    assert roles["transformer.h.0.ln_1.weight"] == "norm_weight"
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    assert parameter_roles(t5.T5LayerNorm(8)) == {"weight": "norm_weight"}
    bert = transformers.BertModel(
        transformers.BertConfig(
            num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=50
        )
    )
    roles = parameter_roles(bert)
    assert roles["embeddings.token_type_embeddings.weight"] == "embedding"
    assert roles["encoder.layer.0.attention.self.key.bias"] == "bias"
    assert set(roles.values()) <= set(ROLES)


def test_lazy_parameters_and_missing_name():
    lazy = nn.LazyLinear(3)
    assert parameter_roles(lazy) == {"weight": "weight", "bias": "bias"}
    with pytest.raises(KeyError, match="no parameter 'gamma'"):
        parameter_role(nn.Linear(2, 2), "gamma")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fc.bias", True),
        ("attn.in_proj_bias", True),
        ("rnn.bias_ih_l0", True),
        ("rnn.bias_hh_l1_reverse", True),
        ("fc.weight", False),
        ("relative_position_bias_table", False),
        ("biased", False),
    ],
)
def test_bias_names(name, expected):
    assert is_bias_name(name) is expected
