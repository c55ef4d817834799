"""The zoo's architectures, written from the papers / reference implementations' designs (not copied), tiny sizes.

Each ``build_*`` function returns a :class:`ZooModule` (a LightningModule around the network) already initialized
the way its reference implementation does it (torchvision for the CNNs, timm for the ViT, Hugging Face's own
``post_init`` for BERT / GPT-2, PyTorch's word-language-model example for the RNN LMs, PyTorch's defaults for
``nn.TransformerEncoder``). Seed the global RNG before building (the harness does) for a reproducible init.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tests.zoo import data

Task = Literal["classify", "lm"]
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop"]


class ZooModule(pl.LightningModule):
    """Cross-entropy training of ``net`` with the architecture's usual optimizer; logs ``train_loss`` every step.

    ``task="classify"``: ``net(x)`` gives ``[B, classes]`` logits for labels ``[B]``; ``task="lm"``: ``[B, T, vocab]``
    logits for next tokens ``[B, T]``. A Hugging Face ``ModelOutput`` is read through its ``.logits``.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        task: Task,
        optimizer: OptimizerName,
        lr: float,
        example_input_array: Tensor,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.optimizer_name = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.example_input_array = example_input_array

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        logits = getattr(out, "logits", out)
        assert isinstance(logits, Tensor)
        return logits

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def describe_optimizer(self) -> str:
        """The optimizer and its hyperparameters, in words (e.g. ``"SGD(lr=0.05, momentum=0.9)"``)."""
        name = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}[self.optimizer_name]
        args = [f"lr={self.lr:g}"]
        if self.optimizer_name in ("sgd", "rmsprop"):
            args.append(f"momentum={self.momentum:g}")
        if self.weight_decay:
            args.append(f"weight_decay={self.weight_decay:g}")
        return f"{name}({', '.join(args)})"

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.parameters()
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer_name == "rmsprop":  # torchvision's MobileNetV3 / EfficientNet recipe (TF-style eps)
            return torch.optim.RMSprop(
                params, lr=self.lr, alpha=0.9, eps=0.0316, momentum=self.momentum, weight_decay=self.weight_decay
            )
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


def _images_example() -> Tensor:
    return torch.zeros(2, data.IMAGE_CHANNELS, data.IMAGE_SIZE, data.IMAGE_SIZE)


def _tokens_example() -> Tensor:
    return torch.ones(2, data.SEQ_LEN, dtype=torch.long)


def _image_classifier(net: nn.Module, optimizer: OptimizerName, **hyper: float) -> ZooModule:
    """``net`` classifying the zoo's images with ``optimizer`` and its hyperparameters (``lr=``, ``momentum=``...)."""
    return ZooModule(net, task="classify", optimizer=optimizer, example_input_array=_images_example(), **hyper)


def _token_model(net: nn.Module, task: Task, optimizer: OptimizerName, **hyper: float) -> ZooModule:
    """``net`` on the zoo's token sequences (``task``: ``"classify"`` or ``"lm"``), as :func:`_image_classifier`."""
    return ZooModule(net, task=task, optimizer=optimizer, example_input_array=_tokens_example(), **hyper)


# --------------------------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    As in torchvision, one in-place ``relu`` module is called twice, and the projection shortcut ``downsample``
    (1x1 conv + BN) runs after ``bn2``, before the addition.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """CIFAR-style ResNet for small images: 3x3 stem (no max-pool), four stages of BasicBlocks, avg-pool, fc.

    Init as torchvision: Kaiming normal (fan_out, ReLU) convs, BN gamma 1 / beta 0, PyTorch's default Linear;
    ``zero_init_last`` zeroes every block's ``bn2`` gamma (torchvision ``zero_init_residual``, timm
    ``zero_init_last``, Goyal et al. 2017).
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (8, 16, 32, 64),
        num_classes: int = data.IMAGE_CLASSES,
        *,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(data.IMAGE_CHANNELS, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c_in = widths[0]
        for i, (n, c) in enumerate(zip(layers, widths, strict=True)):
            blocks = [BasicBlock(c_in if j == 0 else c, c, stride=(1 if i == 0 or j > 0 else 2)) for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c
        self.n_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet(
    layers: Sequence[int] = (2, 2, 2, 2), *, zero_init_last: bool = False, lr: float = 0.05, momentum: float = 0.9
) -> ZooModule:
    """ResNet (default: the ResNet-18 layout [2, 2, 2, 2], widths 8-16-32-64) with SGD + momentum."""
    net = ResNet(layers, zero_init_last=zero_init_last)
    return _image_classifier(net, "sgd", lr=lr, momentum=momentum)


# ------------------------------------------------------------------------------------- MobileNetV3 / EfficientNet


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor``, never more than 10 % down (the MobileNet channel rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional activation, 'same' padding."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: Callable[[], nn.Module] | None = None,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gating: ``x * gate(fc2(act(fc1(avgpool(x)))))`` with 1x1 convs (Hu et al. 2018)."""

    def __init__(
        self, channels: int, squeeze: int, act: Callable[[], nn.Module], gate: Callable[[], nn.Module]
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = gate()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 / EfficientNet MBConv: 1x1 expand, depthwise kxk, SE, linear 1x1 project, residual if same shape.

    The expansion is skipped when ``expanded == c_in`` (as in both references).
    """

    def __init__(
        self,
        c_in: int,
        expanded: int,
        c_out: int,
        kernel: int,
        stride: int,
        act: Callable[[], nn.Module],
        se: SqueezeExcitation | None,
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(ConvNormAct(c_in, expanded, 1, act=act))
        layers.append(ConvNormAct(expanded, expanded, kernel, stride=stride, groups=expanded, act=act))
        if se is not None:
            layers.append(se)
        layers.append(ConvNormAct(expanded, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


def _init_mobile(net: nn.Module, linear: Literal["normal", "uniform"]) -> None:
    """torchvision's init: Kaiming normal fan_out convs (bias 0), BN 1/0; Linear N(0, 0.01) (MobileNetV3) or
    U(-1/sqrt(out), 1/sqrt(out)) (EfficientNet), bias 0."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
            nn.init.zeros_(m.bias)


class MobileNetV3(nn.Module):
    """MobileNetV3-small-like: Hardswish stem, inverted residuals (ReLU or Hardswish; SE with ReLU + Hardsigmoid),
    1x1 last conv, avg-pool, Linear + Hardswish + Dropout + Linear classifier."""

    #: (kernel, expanded, out, SE, activation, stride)
    CONFIG: tuple[tuple[int, int, int, bool, str, int], ...] = (
        (3, 16, 16, True, "relu", 2),
        (3, 48, 24, False, "relu", 2),
        (3, 56, 24, False, "relu", 1),
        (5, 96, 40, True, "hardswish", 2),
        (5, 120, 40, True, "hardswish", 1),
    )

    def __init__(self, num_classes: int = data.IMAGE_CLASSES, last_conv: int = 128, last_channel: int = 128) -> None:
        super().__init__()
        acts: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "hardswish": nn.Hardswish}
        layers: list[nn.Module] = [ConvNormAct(data.IMAGE_CHANNELS, 16, 3, stride=1, act=nn.Hardswish)]
        c_in = 16
        for kernel, expanded, c_out, use_se, act, stride in self.CONFIG:
            se = None
            if use_se:
                se = SqueezeExcitation(expanded, _make_divisible(expanded // 4), nn.ReLU, nn.Hardsigmoid)
            layers.append(InvertedResidual(c_in, expanded, c_out, kernel, stride, acts[act], se))
            c_in = c_out
        layers.append(ConvNormAct(c_in, last_conv, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(last_channel, num_classes)
        )
        _init_mobile(self, "normal")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class EfficientNet(nn.Module):
    """EfficientNet-B0-like: SiLU everywhere, MBConv blocks with SE (SiLU + Sigmoid, squeeze = block input / 4),
    1x1 head conv, avg-pool, Dropout + Linear."""

    #: (expand ratio, kernel, stride, in, out, repeats)
    CONFIG: tuple[tuple[int, int, int, int, int, int], ...] = (
        (1, 3, 1, 16, 8, 1),
        (4, 3, 2, 8, 16, 2),
        (4, 5, 2, 16, 24, 2),
    )

    def __init__(self, num_classes: int = data.IMAGE_CLASSES, head: int = 96) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvNormAct(data.IMAGE_CHANNELS, 16, 3, stride=1, act=nn.SiLU)]
        c_out = 16
        for ratio, kernel, stride, c_in, c_out, repeats in self.CONFIG:
            stage: list[nn.Module] = []
            for j in range(repeats):
                cin = c_in if j == 0 else c_out
                expanded = cin * ratio
                se = SqueezeExcitation(expanded, max(1, cin // 4), nn.SiLU, nn.Sigmoid)
                stage.append(InvertedResidual(cin, expanded, c_out, kernel, stride if j == 0 else 1, nn.SiLU, se))
            layers.append(nn.Sequential(*stage))
        layers.append(ConvNormAct(c_out, head, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, num_classes))
        _init_mobile(self, "uniform")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


#: torchvision's MobileNetV3 recipe (references/classification: ``--opt rmsprop --lr 0.064 --wd 0.00001``, momentum
#: 0.9, RMSprop ``alpha=0.9, eps=0.0316``) is for a global batch of 8 x 128 = 1024; its README scales the learning rate
#: with the batch, as the TF EfficientNet/MnasNet RMSprop recipes do (``base_lr x batch / 256``): 0.064 x 32 / 1024.
MOBILENET_V3_LR = 0.064 * data.IMAGE_BATCH / 1024


def build_mobilenet_v3(lr: float = MOBILENET_V3_LR, momentum: float = 0.9) -> ZooModule:
    """MobileNetV3-style net (Hardswish, SE with Hardsigmoid) with torchvision's RMSprop recipe, lr scaled to the batch.

    At 10x that lr (0.02) RMSprop grows the N(0, 0.01) classifier 0.1-0.33 of its scale per step and the loss spikes
    back to chance after falling (step 23 of 30): ``update_ratio`` says so, truly.
    """
    return _image_classifier(MobileNetV3(), "rmsprop", lr=lr, momentum=momentum, weight_decay=1e-5)


def build_efficientnet(lr: float = 0.05, momentum: float = 0.9) -> ZooModule:
    """EfficientNet-style net (SiLU, SE with Sigmoid) with SGD + momentum."""
    return _image_classifier(EfficientNet(), "sgd", lr=lr, momentum=momentum)


# ------------------------------------------------------------------------------------------------------------ ViT


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches -> ``dim`` tokens through one strided conv."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(data.IMAGE_CHANNELS, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` Linear(d, 3d) and an output ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021): patch conv, class token, learned position embedding, pre-norm blocks, head.

    timm's default init: trunc_normal(std .02) Linear weights and zero biases, ``pos_embed`` trunc_normal(.02),
    ``cls_token`` N(0, 1e-6), LayerNorm 1 / 0; the patch conv keeps PyTorch's default.
    """

    def __init__(
        self,
        patch: int = 4,
        dim: int = 32,
        depth: int = 2,
        heads: int = 2,
        mlp_ratio: int = 2,
        num_classes: int = data.IMAGE_CLASSES,
    ) -> None:
        super().__init__()
        n_patches = (data.IMAGE_SIZE // patch) ** 2
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, dim))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def build_vit(lr: float = 1e-3, weight_decay: float = 0.05) -> ZooModule:
    """ViT-tiny-like (patch 4 on 16x16, dim 32, 2 blocks, 2 heads) with AdamW."""
    return _image_classifier(VisionTransformer(), "adamw", lr=lr, weight_decay=weight_decay)


# ------------------------------------------------------------------------------------------- BERT / GPT-2 (HF)


def build_bert(lr: float = 5e-3, weight_decay: float = 0.01) -> ZooModule:
    """``BertForSequenceClassification`` from a tiny config (hidden 64, 2 layers, 2 heads), HF's random init."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(  # type: ignore[call-arg]  # num_labels goes through PretrainedConfig's **kwargs
        vocab_size=data.VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=32,
        num_labels=data.TOKEN_CLASSES,
        pad_token_id=0,
    )
    return _token_model(BertForSequenceClassification(config), "classify", "adamw", lr=lr, weight_decay=weight_decay)


def gpt2_net() -> Any:
    """``GPT2LMHeadModel`` from a tiny config (2 layers, n_embd 64, 2 heads, vocab 100), ``lm_head`` tied to ``wte``.

    Typed ``Any``: transformers' own annotations do not let mypy follow ``net.transformer.wte``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=data.VOCAB,
        n_positions=32,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=data.VOCAB - 1,
        eos_token_id=data.VOCAB - 1,
    )
    return GPT2LMHeadModel(config)


def build_gpt2(lr: float = 3e-3, weight_decay: float = 0.01, *, embedding_std: float | None = None) -> ZooModule:
    """Tiny GPT-2 LM with AdamW; ``embedding_std`` re-draws the tied ``wte`` / ``lm_head`` as N(0, std) (broken: 1)."""
    net = gpt2_net()
    if embedding_std is not None:
        nn.init.normal_(net.transformer.wte.weight, 0.0, embedding_std)
    return _token_model(net, "lm", "adamw", lr=lr, weight_decay=weight_decay)


# ---------------------------------------------------------------------------------------------------- RNN LMs


class RNNLM(nn.Module):
    """Embedding -> LSTM/GRU -> Linear LM (PyTorch's word_language_model example).

    Init as that example: embedding and decoder U(-0.1, 0.1), decoder bias 0, the RNN keeps PyTorch's default
    U(-1/sqrt(hidden), 1/sqrt(hidden)); ``tie`` shares the decoder weight with the embedding (Press & Wolf 2017).
    """

    def __init__(
        self, cell: Literal["lstm", "gru"], embed: int = 32, hidden: int = 64, layers: int = 2, *, tie: bool = False
    ) -> None:
        super().__init__()
        if tie and embed != hidden:
            raise ValueError(f"a tied decoder needs `embed` == `hidden`, got {embed} and {hidden}")
        self.encoder = nn.Embedding(data.VOCAB, embed)
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(embed, hidden, num_layers=layers, batch_first=True)
        self.decoder = nn.Linear(hidden, data.VOCAB)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie:
            self.decoder.weight = self.encoder.weight

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(self.encoder(x))
        return self.decoder(out)


def build_lstm_lm(lr: float = 2e-2) -> ZooModule:
    """2-layer LSTM LM (embed 32, hidden 64, untied decoder) with Adam."""
    return _token_model(RNNLM("lstm"), "lm", "adam", lr=lr)


def build_gru_lm(lr: float = 1e-2) -> ZooModule:
    """1-layer GRU LM (embed = hidden = 64) with the decoder tied to the embedding, Adam."""
    net = RNNLM("gru", embed=64, hidden=64, layers=1, tie=True)
    return _token_model(net, "lm", "adam", lr=lr)


# ----------------------------------------------------------------------------------------- TransformerEncoder


class TransformerClassifier(nn.Module):
    """Token + learned position embedding -> ``nn.TransformerEncoder`` (batch_first, GELU) -> mean-pool -> Linear.

    PyTorch's defaults throughout (the layers' own init: Xavier-uniform ``in_proj_weight``, zero ``in_proj_bias``,
    default Linear; embeddings N(0, 1) scaled by 1/sqrt(d) at the input, as ``nn.Transformer`` tutorials do).
    """

    def __init__(self, dim: int = 64, heads: int = 2, ff: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(data.VOCAB, dim)
        self.pos = nn.Embedding(data.SEQ_LEN, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, data.TOKEN_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        h = (self.embed(x) + self.pos(positions)) / math.sqrt(self.dim)
        return self.head(self.encoder(h).mean(dim=1))


def build_transformer_encoder(lr: float = 1e-3, weight_decay: float = 0.01) -> ZooModule:
    """2-layer ``nn.TransformerEncoder`` classifier (d 64, 2 heads, ff 128) with AdamW."""
    return _token_model(TransformerClassifier(), "classify", "adamw", lr=lr, weight_decay=weight_decay)


# ------------------------------------------------------------------------------------------------------- MLPs


class PlainMLP(nn.Sequential):
    """``depth`` Linear layers with ``act`` between them: no norm, no residual (for the broken variants)."""

    def __init__(
        self, depth: int, width: int = 64, features: int = 32, classes: int = 4, act: type[nn.Module] = nn.ReLU
    ) -> None:
        sizes = [features] + [width] * (depth - 1) + [classes]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < depth - 1:
                layers.append(act())
        super().__init__(*layers)


def build_deep_relu_xavier(depth: int = 30, lr: float = 0.01, momentum: float = 0.9) -> ZooModule:
    """Broken: a ``depth``-layer plain ReLU MLP under Xavier-normal (gain 1: the variance halves at every layer)."""
    net = PlainMLP(depth)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return ZooModule(
        net, task="classify", optimizer="sgd", lr=lr, momentum=momentum, example_input_array=torch.zeros(2, 32)
    )


def build_zero_mlp(depth: int = 4, lr: float = 0.01, momentum: float = 0.9) -> ZooModule:
    """Broken: a tanh MLP with every weight and bias zero (all units of a layer identical, forever)."""
    net = PlainMLP(depth, act=nn.Tanh)
    for p in net.parameters():
        nn.init.zeros_(p)
    return ZooModule(
        net, task="classify", optimizer="sgd", lr=lr, momentum=momentum, example_input_array=torch.zeros(2, 32)
    )
