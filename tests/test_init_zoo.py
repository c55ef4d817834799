"""``auto`` on the model zoo (issue 12): true fans, stds against the formulas, per-architecture choices, presets."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lightning_init import init_module
from tests.zoo.registry import HEALTHY, ZOO

pytest.importorskip("transformers")


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return ZOO[name].build()


def _auto(model: nn.Module, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return init_module(model, "auto", seed=0, example_input=model.example_input_array, **kw)


def _seen_shapes(model: nn.Module) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Reference: (input shape, output shape) of every module's first call, from plain forward hooks."""
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def hook(name):
        def record(_m, args, out):
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            out = out[0] if isinstance(out, tuple) else out
            if first is not None and isinstance(out, torch.Tensor) and name not in seen:
                seen[name] = (tuple(first.shape), tuple(out.shape))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    with torch.no_grad():
        model.eval()(model.example_input_array)
    for h in handles:
        h.remove()
    return seen


def _expected_fans(module: nn.Module, pname: str, p: torch.Tensor, shapes, blocks: int) -> tuple[int, int]:
    """The true fans from the shapes seen in a forward (independent of lightning_init's own bookkeeping)."""
    (x, y) = shapes
    if isinstance(module, nn.MultiheadAttention):
        return x[-1], y[-1]  # each q/k/v block maps embed_dim -> embed_dim
    if isinstance(module, nn.RNNBase):
        hidden = y[-1] // (2 if module.bidirectional else 1)
        layer_in = x[-1] if pname.endswith("_l0") and "ih" in pname else hidden
        return layer_in, hidden
    if isinstance(module, nn.modules.conv._ConvNd):
        k = math.prod(module.kernel_size)
        return x[1] // module.groups * k, y[1] // module.groups * k
    return x[-1], y[-1] // blocks


@pytest.mark.parametrize("name", HEALTHY)
def test_report_fans_are_true_fans_and_stds_match_the_formulas(name):
    model = _build(name)
    shapes = _seen_shapes(model)
    report = _auto(model)
    modules = dict(model.named_modules())
    checked = 0
    for row in report.rows:
        owner, pname = row.layer.rsplit(".", 1)
        module = modules[owner]
        p = module._parameters[pname]
        if row.fan_in is not None:
            where = owner if owner in shapes else owner.rsplit(".", 1)[0]  # MHA's out_proj runs inside MHA
            blocks = int(row.scheme.split(" x")[-1].split(" ")[0]) if " blocks" in row.scheme else 1
            if isinstance(module, nn.Embedding):  # tied readout: fan_in = d, fan_out = vocab
                assert (row.fan_in, row.fan_out) == (p.shape[1], p.shape[0]), row.layer
            else:
                assert (row.fan_in, row.fan_out) == _expected_fans(module, pname, p, shapes[where], blocks), row.layer
            checked += 1
        if p.numel() >= 10_000 and math.isfinite(row.expected_std) and row.expected_std > 0:
            assert row.actual_std == pytest.approx(row.expected_std, rel=0.05), row.layer
    assert checked >= 3


@pytest.mark.parametrize(("name", "classes"), [("gpt2", 100), ("bert", 4)])
def test_loss_at_init_is_chance(name, classes):
    model = _build(name)
    report = _auto(model)
    x, y = next(iter(ZOO[name].data(0, 1)))
    with torch.no_grad():
        loss = model.eval().loss((x, y)).item()
    assert loss == pytest.approx(math.log(classes), rel=0.10)
    if name == "gpt2":
        (row,) = [r for r in report.rows if r.layer == "net.transformer.wte.weight"]
        assert row.tied == ("net.lm_head.weight",)  # one row, every name
        assert row.expected_std == pytest.approx(math.sqrt(2 / (5 * 64)))  # tied in a transformer: small init


def test_gpt2_conv1d_fans_without_and_with_a_traced_forward():
    model = _build("gpt2")
    for example in (None, model.example_input_array):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = init_module(model, "kaiming_normal", nonlinearity="relu", seed=0, example_input=example)
        rows = {r.layer: r for r in report.rows}
        fc, proj = rows["net.transformer.h.0.mlp.c_fc.weight"], rows["net.transformer.h.0.mlp.c_proj.weight"]
        assert (fc.fan_in, fc.fan_out, proj.fan_in, proj.fan_out) == (64, 256, 256, 64)
        assert fc.actual_std == pytest.approx(math.sqrt(2 / 64), rel=0.05)  # 16384 samples
        assert proj.actual_std == pytest.approx(math.sqrt(2 / 256), rel=0.05)


def test_gelu_new_gets_the_gelu_rule_and_fused_qkv_per_block():
    from transformers.activations import NewGELUActivation

    mlp = nn.Sequential(nn.Linear(64, 256), NewGELUActivation(), nn.Linear(256, 64))  # no attention: Kaiming
    rows = {r.layer: r for r in _auto_on(mlp, torch.zeros(2, 64)).rows}
    assert rows["0.weight"].scheme == "auto: kaiming_normal (gelu)"
    assert rows["0.weight"].expected_std == pytest.approx(math.sqrt(2 / 64))
    report = _auto(_build("gpt2"))  # in a transformer block: gelu_new recognized, small init
    rows = {r.layer: r for r in report.rows}
    assert rows["net.transformer.h.0.mlp.c_fc.weight"].scheme == "auto: small_init (gelu, transformer block, d=64)"
    attn = rows["net.transformer.h.0.attn.c_attn.weight"]
    assert attn.scheme.endswith("x3 blocks")
    assert (attn.fan_in, attn.fan_out) == (64, 64)  # per 64x64 block
    assert attn.expected_std == pytest.approx(math.sqrt(2 / (5 * 64)))
    vit = {r.layer: r for r in _auto(_build("vit")).rows}
    assert vit["net.blocks.0.attn.qkv.weight"].expected_std == pytest.approx(math.sqrt(2 / (5 * 32)))


def _auto_on(model: nn.Module, example, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return init_module(model, "auto", seed=0, example_input=example, **kw)


def _std(t: torch.Tensor) -> float:
    return float(t.detach().float().std(correction=0))


@pytest.mark.parametrize(("name", "d"), [("gpt2", 64), ("vit", 32), ("bert", 64), ("transformer_encoder", 64)])
def test_transformer_block_layers_get_small_init(name, d):
    model = _build(name)
    rows = {r.layer: r for r in _auto(model).rows}
    blocks = {
        "gpt2": "net.transformer.h.",
        "vit": "net.blocks.",
        "bert": "net.bert.encoder.layer.",
        "transformer_encoder": "net.encoder.layers.",
    }[name]
    params = dict(model.named_parameters())
    inside = [n for n, p in params.items() if n.startswith(blocks) and p.ndim == 2]
    assert len(inside) >= 8
    small = math.sqrt(2 / (5 * d))  # Nguyen & Salazar 2019, d the residual stream's width
    for n in inside:
        assert rows[n].expected_std == pytest.approx(small), n
        assert "small_init" in rows[n].scheme, n
    pooled = torch.cat([params[n].detach().flatten() for n in inside])  # >= 32768 samples
    assert _std(pooled) == pytest.approx(small, rel=0.02)
    outside = [r for r in rows.values() if not r.layer.startswith(blocks)]
    assert not any("small_init (" in r.scheme and "embedding" not in r.scheme for r in outside)


def test_bert_embeddings_normalized_get_small_init_and_unnormalized_ones_keep_the_default():
    bert = _build("bert")
    rows = {r.layer: r for r in _auto(bert).rows}
    small = math.sqrt(2 / (5 * 64))
    words = bert.net.bert.embeddings.word_embeddings
    assert rows["net.bert.embeddings.word_embeddings.weight"].expected_std == pytest.approx(small)
    assert _std(words.weight[1:]) == pytest.approx(small, rel=0.1)  # 6336 samples
    assert bool((words.weight[0] == 0).all())  # padding row
    assert rows["net.bert.pooler.dense.weight"].scheme == "auto: xavier_normal (tanh)"  # not on a residual branch
    te = _build("transformer_encoder")
    rows = {r.layer: r for r in _auto(te).rows}
    assert rows["net.embed.weight"].expected_std == 1.0  # fed to attention unnormalized: torch's default
    gpt2 = {r.layer: r for r in _auto(_build("gpt2")).rows}
    assert gpt2["net.transformer.wte.weight"].expected_std == pytest.approx(small)  # tied: the stream's scale


def _trunc_std(std: float, a: float, b: float) -> float:
    """The std of N(0, std) truncated to [a, b] (scipy as the independent reference)."""
    from scipy.stats import truncnorm

    return float(truncnorm(a / std, b / std, scale=std).std())


@pytest.mark.parametrize(
    ("name", "tables", "content"),
    [
        ("bert", ("position_embeddings", "token_type_embeddings"), "net.bert.embeddings.word_embeddings"),
        ("gpt2", ("wpe",), "net.transformer.wte"),
        ("transformer_encoder", ("pos",), "net.embed"),
    ],
)
def test_tables_indexed_by_positions_get_the_position_embedding_default(name, tables, content):
    model = _build(name)
    rows = {r.layer: r for r in _auto(model).rows}
    modules = dict(model.named_modules())
    trunc = _trunc_std(0.02, -0.04, 0.04)  # 0.0176: timm's trunc_normal_(pos_embed, std=.02), as a free pos_embed
    for table in tables:
        (full,) = [n for n in modules if n.endswith(f".{table}")]
        row = rows[f"{full}.weight"]
        assert row.scheme == "auto: trunc_normal(std=0.02) (position table)", full
        assert row.expected_std == pytest.approx(trunc, rel=1e-3), full
        w = modules[full].weight.detach()
        assert float(w.abs().max()) <= 0.04
        if w.numel() >= 2048:
            assert _std(w) == pytest.approx(trunc, rel=0.1), full
    assert "position table" not in rows[f"{content}.weight"].scheme  # indexed by the input: the content table


def test_attention_found_from_a_score_product_fed_to_a_softmax():
    class Eager(nn.Module):
        def __init__(self, d: int = 32) -> None:
            super().__init__()
            self.norm, self.q, self.k, self.v, self.o = nn.LayerNorm(d), *(nn.Linear(d, d) for _ in range(4))

        def forward(self, x):
            h = self.norm(x)
            scores = self.q(h) @ self.k(h).transpose(-2, -1) / math.sqrt(h.shape[-1])
            return x + self.o(torch.softmax(scores, dim=-1) @ self.v(h))

    class NoAttention(Eager):
        def forward(self, x):
            h = self.norm(x)
            return x + self.o(torch.tanh(self.q(h) * self.k(h)) + self.v(h))

    rows = {r.layer: r for r in _auto_on(Eager(), torch.zeros(2, 5, 32)).rows}
    assert all(rows[f"{n}.weight"].expected_std == pytest.approx(math.sqrt(2 / 160)) for n in "qkvo")
    rows = {r.layer: r for r in _auto_on(NoAttention(), torch.zeros(2, 5, 32)).rows}
    assert all("small_init" not in rows[f"{n}.weight"].scheme for n in "qkvo")  # a residual MLP is not a transformer


@pytest.mark.parametrize("name", ["resnet18", "resnet10_zero_init_last"])
def test_every_resnet_conv2_gets_kaiming(name):
    model = _build(name)
    rows = {r.layer: r for r in _auto(model).rows}
    conv2 = [n for n, m in model.named_modules() if n.endswith("conv2")]
    assert len(conv2) >= 4
    for n in conv2:
        assert rows[f"{n}.weight"].scheme == "auto: kaiming_normal (relu)", n


def test_zero_init_last_gammas_kept_under_auto_and_zeroed_by_the_preset():
    model = _build("resnet18_zero_init_last")
    _auto(model)
    gammas = [m.weight for n, m in model.named_modules() if n.endswith("bn2")]
    assert gammas
    assert all(bool((g == 0).all()) for g in gammas)
    plain = _build("resnet18")
    report = _auto(plain, residual="zero_last_norm")
    assert all(bool((m.weight == 0).all()) for n, m in plain.named_modules() if n.endswith("bn2"))
    assert all(bool((m.weight == 1).all()) for n, m in plain.named_modules() if n.endswith("bn1"))
    assert not report.symmetric


def test_vit_free_parameters_get_the_documented_defaults():
    model = _build("vit")
    rows = {r.layer: r for r in _auto(model).rows}
    assert rows["net.cls_token"].expected_std == 1e-6
    assert model.net.cls_token.std().item() == pytest.approx(1e-6, rel=0.3)  # 32 samples
    # trunc_normal(std=0.02) truncated at +-2 std: 0.02 * 0.8796
    assert rows["net.pos_embed"].expected_std == pytest.approx(0.02 * 0.8796, rel=1e-3)
    assert model.net.pos_embed.abs().max().item() <= 0.04
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init_module(
            model, example_input=model.example_input_array, rules=[{"name": "net.cls_token", "scheme": "zeros"}]
        )
    assert bool((model.net.cls_token == 0).all())


def test_residual_scaled_gives_gpt2_projections_base_std_over_sqrt_2n():
    model = _build("gpt2")
    rows = {r.layer: r for r in _auto(model, residual="scaled").rows}
    n_layer = 2
    for i in range(n_layer):
        attn, mlp = rows[f"net.transformer.h.{i}.attn.c_proj.weight"], rows[f"net.transformer.h.{i}.mlp.c_proj.weight"]
        base = math.sqrt(2 / (5 * 64))  # auto's base in a transformer block: small init (the preset replaces the 0)
        assert attn.expected_std == pytest.approx(base / math.sqrt(2 * n_layer))
        assert mlp.expected_std == pytest.approx(base / math.sqrt(2 * n_layer))
        assert mlp.actual_std == pytest.approx(mlp.expected_std, rel=0.05)  # 16384 samples
        assert rows[f"net.transformer.h.{i}.mlp.c_fc.weight"].expected_std == pytest.approx(base)


def test_residual_fixup_zeroes_branch_ends_and_scales_the_rest():
    model = _build("resnet10_zero_init_last")
    rows = {r.layer: r for r in _auto(model, residual="fixup").rows}
    branches = 4
    for i in range(1, 5):
        assert bool((getattr(model.net, f"layer{i}")[0].conv2.weight == 0).all())
        conv1 = rows[f"net.layer{i}.0.conv1.weight"]
        assert conv1.expected_std == pytest.approx(math.sqrt(2 / conv1.fan_in) * branches ** (-1 / 2))
    assert bool((model.net.fc.weight == 0).all())  # the output layer


def test_presets_need_a_data_flow():
    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + x if x.sum() > 0 else x  # data-dependent: torch.fx cannot trace it

    with pytest.raises(ValueError, match=r"`residual`='scaled' needs the model's data flow"):
        init_module(Opaque(), residual="scaled")
    with pytest.raises(ValueError, match=r"`residual` must be one of .*Did you mean 'scaled'"):
        init_module(Opaque(), residual="scaleed")


def test_transposed_conv_keeps_the_variance_level():
    for stride, padding in ((1, 0), (2, 1)):
        model = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, stride=stride, padding=padding), nn.ReLU())
        x = torch.randn(16, 64, 8, 8, generator=torch.Generator().manual_seed(0))
        report = init_module(model, seed=0, example_input=x[:2])
        with torch.no_grad():
            ratio = model[0](x).var().item() / x.var().item()
        assert ratio == pytest.approx(2.0, rel=0.1)  # Kaiming for ReLU: output variance = 2 x input variance
        assert "ConvTranspose: fan_in" in report.rows[0].note


def test_readme_auto_table_is_what_the_script_prints():
    from pathlib import Path

    from benchmarks.auto_table import choices_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in choices_table(["resnet18_zero_init_last", "gpt2"])[2:]:
        assert line in readme, f"README's auto table is stale (run python -m benchmarks.auto_table --write): {line}"


@pytest.mark.parametrize(
    ("name", "act"),
    [("gpt2", "net.transformer.h.0.mlp.act"), ("bert", "net.bert.encoder.layer.0.intermediate.intermediate_act_fn")],
)
def test_activation_monitor_sees_hf_activation_modules(name, act):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.zoo.harness import cached_run

    run = cached_run(name)
    tags = EventAccumulator(str(run.log_dir)).Reload().Tags()["scalars"]
    assert f"activation_std/{act}" in tags


@pytest.mark.parametrize("residual", ["none", "scaled", "zero_last_norm", "fixup"])
def test_gpt2_loss_at_init_is_chance_under_every_residual_preset(residual):
    # fixup zeroes every branch's end: the stream is the tied embedding alone, and at small init the logit of the
    # input token itself (d x std = sqrt(2d/5) = 5.1) would put the loss 20 % above ln(vocab)
    model = _build("gpt2")
    rows = {r.layer: r for r in _auto(model, residual=residual).rows}
    x, y = next(iter(ZOO["gpt2"].data(0, 1)))
    with torch.no_grad():
        loss = model.eval().loss((x, y)).item()
    assert loss == pytest.approx(math.log(100), rel=0.10)
    std = rows["net.transformer.wte.weight"].expected_std
    assert std == pytest.approx(1 / 64 if residual == "fixup" else math.sqrt(2 / (5 * 64)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_auto_trains_no_worse_than_the_models_own_init(name):
    # issue 12's acceptance: after 30 steps of the model's own optimizer (AdamW) on the same data and dropout draws,
    # the mean loss under auto is at most 1.1 x the mean loss under the model's own (HF) init; over 4 seeds it
    # measured 0.74 (GPT-2) and 0.62 (BERT), the noise floor of the own init re-drawn being ~1.0-1.06 (20 seeds)
    from benchmarks.auto_ratio import measure

    torch.set_num_threads(1)
    r = measure(name, range(4))
    assert r.ratio <= 1.1, (r.own, r.auto)
    assert all(math.isfinite(a) for a in r.auto + r.own)
