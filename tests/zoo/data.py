"""Synthetic, learnable data for the zoo: generated in memory from seeds, nothing downloaded.

Every loader yields ``(x, y)`` batches in a fixed order (no shuffling: the samples are already random), one batch per
optimizer step; ``steps * batch_size`` samples make one epoch, so a run of ``steps`` steps sees every sample once.
The *task* (class prototypes, the next-token rule) is fixed by ``TASK_SEED``; the run's ``seed`` draws the samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

#: Seed of the task itself (prototypes, token permutation): the same problem for every run seed.
TASK_SEED = 1234

IMAGE_CLASSES = 10
IMAGE_SIZE = 16
IMAGE_CHANNELS = 3
#: Images per optimizer step.
IMAGE_BATCH = 32
VOCAB = 100
SEQ_LEN = 16
TOKEN_CLASSES = 4


def _loader(x: Tensor, y: Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False, drop_last=True)


def image_prototypes(classes: int = IMAGE_CLASSES, channels: int = IMAGE_CHANNELS, size: int = IMAGE_SIZE) -> Tensor:
    """One smooth random pattern per class (4x4 Gaussian noise upsampled bilinearly), unit std: ``[C, ch, s, s]``."""
    g = torch.Generator().manual_seed(TASK_SEED)
    coarse = torch.randn(classes, channels, 4, 4, generator=g)
    protos = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return protos / protos.std()


def image_tensors(n: int, seed: int, *, noise: float = 1.0) -> tuple[Tensor, Tensor]:
    """``n`` images ``prototype[y] + noise * N(0, 1)`` with uniform labels ``y`` (10 classes, 3 x 16 x 16)."""
    g = torch.Generator().manual_seed(seed)
    protos = image_prototypes()
    y = torch.randint(0, protos.shape[0], (n,), generator=g)
    x = protos[y] + noise * torch.randn(n, *protos.shape[1:], generator=g)
    return x, y


def images(seed: int = 0, steps: int = 20, batch_size: int = IMAGE_BATCH) -> DataLoader:
    """Class-prototype images: a CNN/ViT task whose loss falls from ln(10) within a few steps."""
    return _loader(*image_tensors(steps * batch_size, seed), batch_size)


def nan_images(seed: int = 0, steps: int = 20, batch_size: int = IMAGE_BATCH, *, nan_from_step: int = 5) -> DataLoader:
    """Like :func:`images`, but every input from step ``nan_from_step`` on is NaN (a broken data pipeline)."""
    x, y = image_tensors(steps * batch_size, seed)
    x[nan_from_step * batch_size :] = math.nan
    return _loader(x, y, batch_size)


def token_permutation(vocab: int = VOCAB) -> Tensor:
    """The next-token rule: ``next = perm[token]``, a fixed random permutation of the vocabulary."""
    return torch.randperm(vocab, generator=torch.Generator().manual_seed(TASK_SEED))


def lm_tensors(n: int, seed: int, *, vocab: int = VOCAB, seq_len: int = SEQ_LEN) -> tuple[Tensor, Tensor]:
    """``n`` sequences that follow ``token_permutation`` from a random first token: inputs and next-token targets."""
    g = torch.Generator().manual_seed(seed)
    perm = token_permutation(vocab)
    seq = torch.empty(n, seq_len + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for t in range(seq_len):
        seq[:, t + 1] = perm[seq[:, t]]
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def lm_tokens(seed: int = 0, steps: int = 20, batch_size: int = 16) -> DataLoader:
    """Next-token prediction on sequences of a deterministic permutation rule (chance loss: ln 100 = 4.6)."""
    return _loader(*lm_tensors(steps * batch_size, seed), batch_size)


def class_token_tensors(
    n: int, seed: int, *, vocab: int = VOCAB, seq_len: int = SEQ_LEN, classes: int = TOKEN_CLASSES
) -> tuple[Tensor, Tensor]:
    """Bag-of-tokens classification: half the tokens of a class-``c`` sequence come from the ``c``-th vocabulary slice.

    Token 0 is left out (BERT's padding id); the other half of the tokens are uniform noise over the vocabulary.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    width = (vocab - 1) // classes
    signal = 1 + y.unsqueeze(1) * width + torch.randint(0, width, (n, seq_len), generator=g)
    noise = torch.randint(1, vocab, (n, seq_len), generator=g)
    x = torch.where(torch.rand(n, seq_len, generator=g) < 0.5, signal, noise)
    return x, y


def class_tokens(seed: int = 0, steps: int = 20, batch_size: int = 16) -> DataLoader:
    """Sequence classification (4 classes, chance loss ln 4 = 1.39) for BERT and the TransformerEncoder."""
    return _loader(*class_token_tensors(steps * batch_size, seed), batch_size)


def teacher_tensors(n: int, seed: int, *, features: int = 32, classes: int = 4) -> tuple[Tensor, Tensor]:
    """Gaussian vectors labelled by a fixed random linear teacher, ``argmax(x @ T)`` (for the MLP variants)."""
    teacher = torch.randn(features, classes, generator=torch.Generator().manual_seed(TASK_SEED))
    x = torch.randn(n, features, generator=torch.Generator().manual_seed(seed))
    return x, (x @ teacher).argmax(dim=1)


def teacher_vectors(seed: int = 0, steps: int = 20, batch_size: int = 64) -> DataLoader:
    """Linear-teacher classification of 32-d Gaussian vectors (4 classes, chance loss ln 4 = 1.39)."""
    return _loader(*teacher_tensors(steps * batch_size, seed), batch_size)
