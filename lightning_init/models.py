"""Small models and synthetic data for the demo, the examples and the benchmarks.

Everything here is generated in memory from fixed seeds: nothing is downloaded. The models are ordinary
LightningModules whose hyperparameters are plain typed arguments, so LightningCLI configures them from YAML.
"""

from __future__ import annotations

import itertools
from typing import Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init.schemes import check_choice

Activation = Literal["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "silu", "elu", "selu"]
Optimizer = Literal["sgd", "adam"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
}


class _Classifier(pl.LightningModule):
    """Cross-entropy classification steps shared by the demo models; subclasses define ``self.net``."""

    net: nn.Module

    def __init__(self, lr: float, optimizer: Optimizer, momentum: float) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {lr!r}")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"`optimizer` can be 'sgd' or 'adam', got {optimizer!r}")
        self.lr = lr
        self.optimizer_name = optimizer
        self.momentum = momentum

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=stage == "train")
        self.log(f"{stage}_acc", acc, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class MLPClassifier(_Classifier):
    """A plain multilayer perceptron: ``depth`` Linear layers, each hidden one followed by ``activation``.

    ``depth=2, width=8`` on 2 inputs is the seed's XOR network; ``depth=20`` is deep enough for the depth profile
    of a bad initializer (vanishing or exploding) to dominate training.

    Args:
        in_features: Input size.
        num_classes: Number of output logits.
        depth: Number of Linear layers (>= 1).
        width: Units of every hidden layer.
        activation: Nonlinearity after every hidden Linear layer.
        lr: Learning rate.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD momentum.
    """

    def __init__(
        self,
        in_features: int = 32,
        num_classes: int = 4,
        depth: int = 20,
        width: int = 64,
        activation: Activation = "relu",
        lr: float = 0.01,
        optimizer: Optimizer = "sgd",
        momentum: float = 0.9,
    ) -> None:
        super().__init__(lr=lr, optimizer=optimizer, momentum=momentum)
        if depth < 1:
            raise ValueError(f"`depth` must be >= 1, got {depth!r}")
        check_choice("activation", activation, tuple(sorted(_ACTIVATIONS)))
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        sizes = [in_features] + [width] * (depth - 1) + [num_classes]
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(n_in, n_out))
            if i < depth - 1:
                layers.append(_ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        self.example_input_array = torch.zeros(2, in_features)


class SmallCNN(_Classifier):
    """A small convolutional classifier: ``blocks`` of Conv2d + activation, max-pooling every two blocks.

    Args:
        in_channels: Image channels.
        num_classes: Number of output logits.
        channels: Output channels of the convolutions; one block per entry.
        activation: Nonlinearity after every convolution.
        image_size: Side of the square input images.
        lr: Learning rate.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD momentum.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 4,
        channels: tuple[int, ...] = (32, 32, 64, 64, 64, 64),
        activation: Activation = "relu",
        image_size: int = 32,
        lr: float = 0.01,
        optimizer: Optimizer = "sgd",
        momentum: float = 0.9,
    ) -> None:
        super().__init__(lr=lr, optimizer=optimizer, momentum=momentum)
        if not channels:
            raise ValueError("`channels` must name at least one convolution, got ()")
        check_choice("activation", activation, tuple(sorted(_ACTIVATIONS)))
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        c_in, side = in_channels, image_size
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), _ACTIVATIONS[activation]()]
            if i % 2 == 1 and side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
        self.net = nn.Sequential(*layers)
        self.example_input_array = torch.zeros(2, in_channels, image_size, image_size)


class _TensorDataModule(pl.LightningDataModule):
    """Train/val loaders over tensors made by ``_make``; the train loader shuffles with its own seeded generator."""

    def __init__(self, batch_size: int, seed: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.seed = seed
        self._train: TensorDataset | None = None
        self._val: TensorDataset | None = None

    def _make(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _sizes(self) -> tuple[int, int]:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if self._train is None:
            n_train, n_val = self._sizes()
            self._train = TensorDataset(*self._make(n_train, torch.Generator().manual_seed(self.seed)))
            self._val = TensorDataset(*self._make(n_val, torch.Generator().manual_seed(self.seed + 1)))

    def train_dataloader(self) -> DataLoader:
        assert self._train is not None, "setup() runs before the dataloaders"
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, generator=g, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        assert self._val is not None, "setup() runs before the dataloaders"
        return DataLoader(self._val, batch_size=max(self.batch_size, 256))


class XORDataModule(_TensorDataModule):
    """The seed's XOR problem: the four points of {0, 1}^2 (centred to {-1, 1}^2), label = x1 XOR x2.

    Args:
        repeats: How many copies of the four points make one training epoch.
        batch_size: Training batch size.
        seed: Seed of the shuffling order.
    """

    def __init__(self, repeats: int = 64, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.repeats = repeats

    def _sizes(self) -> tuple[int, int]:
        return 4 * self.repeats, 4

    def _make(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        bits = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
        reps = n // 4
        x = (2.0 * bits.float() - 1.0).repeat(reps, 1)
        y = (bits[:, 0] ^ bits[:, 1]).repeat(reps)
        return x, y


class TeacherDataModule(_TensorDataModule):
    """Gaussian inputs labelled by a fixed random linear teacher (``argmax(x @ T)``): learnable, not trivial.

    Args:
        in_features: Input size.
        num_classes: Number of classes.
        n_train: Training examples.
        n_val: Validation examples.
        batch_size: Training batch size.
        seed: Seed of the data and of the shuffling order (the teacher is fixed by ``teacher_seed``).
        teacher_seed: Seed of the teacher matrix.
    """

    def __init__(
        self,
        in_features: int = 32,
        num_classes: int = 4,
        n_train: int = 4096,
        n_val: int = 1024,
        batch_size: int = 128,
        seed: int = 0,
        teacher_seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.in_features = in_features
        self.num_classes = num_classes
        self.n_train = n_train
        self.n_val = n_val
        self.teacher = torch.randn(in_features, num_classes, generator=torch.Generator().manual_seed(teacher_seed))

    def _sizes(self) -> tuple[int, int]:
        return self.n_train, self.n_val

    def _make(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, self.in_features, generator=generator)
        return x, (x @ self.teacher).argmax(dim=1)


class BlobImagesDataModule(_TensorDataModule):
    """Noisy images with one bright blob; the label is the image quadrant that holds the blob.

    Args:
        image_size: Side of the square images.
        in_channels: Image channels.
        n_train: Training examples.
        n_val: Validation examples.
        batch_size: Training batch size.
        seed: Seed of the data and of the shuffling order.
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        n_train: int = 2048,
        n_val: int = 512,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.image_size = image_size
        self.in_channels = in_channels
        self.n_train = n_train
        self.n_val = n_val

    def _sizes(self) -> tuple[int, int]:
        return self.n_train, self.n_val

    def _make(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        s = self.image_size
        half = s // 2
        x = 0.5 * torch.randn(n, self.in_channels, s, s, generator=generator)
        y = torch.randint(0, 4, (n,), generator=generator)
        r = max(1, s // 8)
        cy = torch.randint(r, half - r + 1, (n,), generator=generator) + (y // 2) * half
        cx = torch.randint(r, half - r + 1, (n,), generator=generator) + (y % 2) * half
        rows = torch.arange(s).view(1, s, 1)
        cols = torch.arange(s).view(1, 1, s)
        blob = ((rows - cy.view(n, 1, 1)).abs() < r) & ((cols - cx.view(n, 1, 1)).abs() < r)
        x += 2.0 * blob.unsqueeze(1).float()
        return x, y


Parametrization = Literal["standard", "mup"]


class Readout(nn.Linear):
    """``nn.Linear`` whose output is multiplied by ``multiplier`` (muP's readout; 1 is a plain Linear layer).

    The multiplier is part of the module, as in the ``mup`` package's ``MuReadout``, so a forward hook (the monitors,
    the coordinate check) sees the logits the loss sees.
    """

    def __init__(self, in_features: int, out_features: int, multiplier: float = 1.0) -> None:
        super().__init__(in_features, out_features)
        self.multiplier = multiplier

    def forward(self, x: Tensor) -> Tensor:
        """``multiplier * (x @ weight.T + bias)``."""
        out = super().forward(x)
        return out * self.multiplier if self.multiplier != 1.0 else out

    def extra_repr(self) -> str:
        """``nn.Linear``'s description plus the multiplier."""
        return f"{super().extra_repr()}, multiplier={self.multiplier:g}"


class WidthMLP(_Classifier):
    r"""A ReLU MLP whose hidden width is one argument, in the standard parametrization or in muP (for Adam).

    ``depth`` Linear layers: an input layer ``in_features -> width``, ``depth - 2`` hidden ``width -> width`` layers
    and a readout ``width -> num_classes``, ReLU after each but the readout; trained with Adam. The initial weights are
    PyTorch's default (variance proportional to ``1 / fan_in``) or whatever a ``WeightInit`` callback applies: both
    parametrizations start from the same weights. They differ in how width enters training:

    - ``"standard"`` (SP): one learning rate ``lr`` for every parameter. Adam's update of a ``width x width`` weight
      has entries of size ~``lr`` whatever the width, so a hidden layer's output moves by ~``lr * width`` per step:
      the activations grow with width (the failure the coordinate check shows).
    - ``"mup"`` (Yang et al. 2022, *Tensor Programs V*, the rules for Adam with a readout multiplier, as the ``mup``
      package's ``MuReadout`` + ``MuAdam`` implement them): the readout's output is multiplied by
      ``base_width / width``; hidden (``width x width``) weights train with ``lr * base_width / fan_in``; the input
      weights, the biases and the readout weight with ``lr``. Every layer's output then moves by ``O(1)`` per step,
      whatever the width. At ``width == base_width`` the two are the same model.

    Example::

        lightning-init coordcheck --config examples/configs/coordcheck_mup.yaml \
            --width-arg model.init_args.width --widths 64 128 256 512 1024 --steps 5

    Args:
        in_features: Input size.
        num_classes: Number of output logits.
        depth: Number of Linear layers (>= 2).
        width: Units of every hidden layer.
        parametrization: ``"standard"`` or ``"mup"``.
        base_width: The width at which muP equals the standard parametrization.
        lr: Adam's learning rate (at ``base_width``).
    """

    def __init__(
        self,
        in_features: int = 32,
        num_classes: int = 4,
        depth: int = 4,
        width: int = 64,
        parametrization: Parametrization = "standard",
        base_width: int = 64,
        lr: float = 0.01,
    ) -> None:
        super().__init__(lr=lr, optimizer="adam", momentum=0.0)
        if depth < 2:
            raise ValueError(f"`depth` must be >= 2 (an input layer and a readout), got {depth!r}")
        for arg, value in (("width", width), ("base_width", base_width)):
            if value < 1:
                raise ValueError(f"`{arg}` must be >= 1, got {value!r}")
        check_choice("parametrization", parametrization, ("standard", "mup"))
        self.save_hyperparameters()
        self.parametrization = parametrization
        self.width = width
        self.base_width = base_width
        sizes = [in_features] + [width] * (depth - 1)
        layers: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise(sizes):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        multiplier = base_width / width if parametrization == "mup" else 1.0
        layers.append(Readout(width, num_classes, multiplier=multiplier))
        self.net = nn.Sequential(*layers)
        self.example_input_array = torch.zeros(2, in_features)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with one learning rate (standard) or with the hidden weights at ``lr * base_width / fan_in`` (muP)."""
        linears = [m for m in self.net.children() if isinstance(m, nn.Linear)]
        hidden = linears[1:-1]
        scaled = {id(m.weight) for m in hidden} if self.parametrization == "mup" else set()
        groups = [{"params": [p for p in self.parameters() if id(p) not in scaled], "lr": self.lr}]
        if scaled:
            fan_in = self.width  # every hidden weight is width x width
            groups.append({"params": [m.weight for m in hidden], "lr": self.lr * self.base_width / fan_in})
        return torch.optim.Adam(groups, lr=self.lr)
