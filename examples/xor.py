"""The seed's XOR example with a plain Trainer: a zero init cannot learn XOR, a random init can.

    python examples/xor.py            # zeros vs xavier_normal vs kaiming_normal, 300 steps each
    python examples/xor.py --steps 50

A zero init leaves every hidden unit with the same weights, so they compute and learn the same thing and the
network behaves like a single unit: the loss stays at ln 2 and the accuracy at chance. WeightInit says so when it
applies the init, and WeightMonitor's health check flags the hidden layer as "symmetric" during training.
"""

import argparse
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_init import WeightInit, WeightMonitor
from lightning_init.models import MLPClassifier, XORDataModule


def fit_xor(scheme: str, steps: int, log_dir: str, seed: int = 0) -> float:
    """Fit the 2-8-2 tanh MLP on XOR under ``scheme`` and return its accuracy on the four points."""
    pl.seed_everything(seed, verbose=False)
    model = MLPClassifier(in_features=2, num_classes=2, depth=2, width=8, activation="tanh", lr=0.1)
    data = XORDataModule(seed=seed)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=TensorBoardLogger(log_dir, name="xor", version=scheme),
        callbacks=[WeightInit(scheme=scheme, seed=seed), WeightMonitor(every_n_steps=10)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        log_every_n_steps=10,
    )
    trainer.fit(model, datamodule=data)
    x, y = data.val_dataloader().dataset.tensors
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-dir", default="lightning_logs")
    args = parser.parse_args(argv)
    accuracy = {}
    for scheme in ("zeros", "xavier_normal", "kaiming_normal"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            accuracy[scheme] = fit_xor(scheme, args.steps, args.log_dir)
        said = sorted({str(w.message).split(".")[0] for w in caught if "symmetric" in str(w.message)})
        print(f"{scheme:15s} accuracy {100 * accuracy[scheme]:5.1f} %", *(f"\n    warned: {s}" for s in said))
    return accuracy


if __name__ == "__main__":
    main()
