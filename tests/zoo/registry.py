"""``ZOO``: every zoo model by name, healthy ones and the deliberately broken variants of issue 11."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader

from tests.zoo import data, models


@dataclass(frozen=True)
class ZooSpec:
    """How to build and train one zoo entry.

    Attributes:
        name: the registry key.
        build: ``build(**overrides) -> ZooModule`` (keyword overrides such as ``lr=``); seed the RNG before calling.
        data: ``data(seed, steps) -> DataLoader`` of ``(x, y)`` batches, one per step.
        family: the architecture, in words.
        steps: default number of optimizer steps.
        broken: what is wrong with a broken variant, in words (``None``: a healthy model).
        expected_rule: the health rule(s) that should catch a broken variant (issue 11; ``()`` for healthy ones).
        notes: anything a reader of the zoo table should know.
    """

    name: str
    build: Callable[..., models.ZooModule]
    data: Callable[[int, int], DataLoader]
    family: str
    steps: int = 20
    broken: str | None = None
    expected_rule: tuple[str, ...] = ()
    notes: str = ""

    @property
    def healthy(self) -> bool:
        """A model that trains normally under its own init (as opposed to a broken variant)."""
        return self.broken is None


def _spec(name: str, build: Callable[..., models.ZooModule], loader: Callable[..., DataLoader], **kw: Any) -> ZooSpec:
    return ZooSpec(name=name, build=build, data=lambda seed, steps: loader(seed=seed, steps=steps), **kw)


_SPECS: list[ZooSpec] = [
    _spec(
        "resnet18",
        models.build_resnet,
        data.images,
        family="ResNet-18 layout [2,2,2,2], widths 8-64, BasicBlocks with projection shortcuts",
    ),
    _spec(
        "resnet18_zero_init_last",
        functools.partial(models.build_resnet, zero_init_last=True),
        data.images,
        family="ResNet-18 layout, every block's bn2 gamma = 0 (zero_init_residual)",
    ),
    _spec(
        "resnet10_zero_init_last",
        functools.partial(models.build_resnet, (1, 1, 1, 1), zero_init_last=True),
        data.images,
        family="ResNet-10 layout [1,1,1,1], bn2 gamma = 0",
    ),
    _spec(
        "mobilenet_v3",
        models.build_mobilenet_v3,
        data.images,
        family="MobileNetV3-small-like: depthwise, BN, SE (ReLU/Hardsigmoid), Hardswish",
        steps=60,  # at the recipe's lr the N(0, 0.01) classifier takes ~40 steps to move the loss
        notes="torchvision's RMSprop recipe, lr 0.064 scaled from batch 1024 to 32 (0.002): the N(0, 0.01) classifier "
        "moves the loss from ~step 40 (at 10x that lr the loss spikes back to chance after falling, and update_ratio "
        "says so)",
    ),
    _spec(
        "efficientnet",
        models.build_efficientnet,
        data.images,
        family="EfficientNet-B0-like: MBConv, BN, SE (SiLU/Sigmoid), SiLU",
    ),
    _spec(
        "vit",
        models.build_vit,
        data.images,
        family="ViT: patch conv, cls_token, pos_embed, fused qkv, pre-norm LayerNorm, GELU",
    ),
    _spec(
        "bert",
        models.build_bert,
        data.class_tokens,
        family="transformers BertForSequenceClassification, hidden 64, 2 layers, 2 heads",
    ),
    _spec(
        "gpt2",
        models.build_gpt2,
        data.lm_tokens,
        family="transformers GPT2LMHeadModel, n_embd 64, 2 layers, 2 heads, vocab 100, tied wte/lm_head",
    ),
    _spec(
        "lstm_lm",
        models.build_lstm_lm,
        data.lm_tokens,
        family="Embedding -> 2-layer LSTM -> Linear (untied)",
    ),
    _spec(
        "gru_lm",
        models.build_gru_lm,
        data.lm_tokens,
        family="Embedding -> 1-layer GRU -> Linear tied to the embedding",
    ),
    _spec(
        "transformer_encoder",
        models.build_transformer_encoder,
        data.class_tokens,
        family="nn.TransformerEncoder (batch_first, 2 layers, in_proj_weight/in_proj_bias) classifier",
    ),
    # ------------------------------------------------------------------------------ broken means loud (issue 11)
    _spec(
        "gpt2_tied_normal",
        functools.partial(models.build_gpt2, embedding_std=1.0),
        data.lm_tokens,
        family="GPT-2 as above, tied wte/lm_head re-drawn N(0, 1) after HF init",
        broken="logits ~50x too large: loss at init far above ln(100) = 4.6",
        expected_rule=("logits scale / loss at init (new rule)",),
    ),
    _spec(
        "deep_relu_xavier",
        models.build_deep_relu_xavier,
        data.teacher_vectors,
        family="30-layer plain ReLU MLP (width 64, no norm, no residual) under Xavier-normal",
        broken="activations shrink by ~sqrt(2) per layer: the output is ~1e-4 of the input, loss stuck at ln(4)",
        expected_rule=("vanishing_activation", "vanishing_grad"),
    ),
    _spec(
        "resnet18_lr100",
        functools.partial(models.build_resnet, lr=5.0),
        data.images,
        family="ResNet-18 layout with its healthy lr 0.05 x 100 (SGD lr 5.0)",
        broken="learning rate 100x too high: the loss diverges",
        expected_rule=("update_ratio", "exploding_grad", "nonfinite"),
    ),
    _spec(
        "nan_data",
        functools.partial(models.build_resnet, (1, 1, 1, 1)),
        functools.partial(data.nan_images, nan_from_step=5),
        family="ResNet-10 layout whose dataloader yields NaN images from step 5 on",
        broken="NaN inputs from step 5: NaN activations, loss and gradients",
        expected_rule=("nonfinite",),
    ),
    _spec(
        "zero_mlp",
        models.build_zero_mlp,
        data.teacher_vectors,
        family="4-layer tanh MLP with every weight and bias initialized to 0",
        broken="all units of each layer identical (and zero): only the output bias learns",
        expected_rule=("symmetric",),
    ),
]

#: Every zoo entry by name, healthy models first, then the broken variants.
ZOO: dict[str, ZooSpec] = {s.name: s for s in _SPECS}
#: Names of the models that train normally under their own init.
HEALTHY: tuple[str, ...] = tuple(n for n, s in ZOO.items() if s.healthy)
#: Names of the deliberately broken variants.
BROKEN: tuple[str, ...] = tuple(n for n, s in ZOO.items() if not s.healthy)
