"""WeightInit and the three monitors on a deep ReLU MLP, with a plain Trainer and a TensorBoard logger.

python examples/plain_trainer.py                 # then: tensorboard --logdir lightning_logs
python examples/plain_trainer.py --scheme normal --std 0.01   # watch the signal vanish with depth
"""

import argparse

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_init import ActivationMonitor, GradientMonitor, WeightInit, WeightMonitor
from lightning_init.models import MLPClassifier, TeacherDataModule


def main(argv: list[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", default="auto")
    parser.add_argument("--std", type=float, default=None, help="std of the `normal` scheme")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--log-dir", default="lightning_logs")
    args = parser.parse_args(argv)

    params = {} if args.std is None else {"std": args.std}
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        logger=TensorBoardLogger(args.log_dir, name="plain_trainer", version=args.scheme),
        callbacks=[
            WeightInit(scheme=args.scheme, seed=0, **params),
            WeightMonitor(),
            ActivationMonitor(),
            GradientMonitor(),
        ],
        log_every_n_steps=10,
        limit_val_batches=0,
        enable_checkpointing=False,
    )
    trainer.fit(MLPClassifier(depth=args.depth), datamodule=TeacherDataModule())
    print(f"TensorBoard logs in {trainer.logger.log_dir}\n  tensorboard --logdir {args.log_dir}")
    return trainer


if __name__ == "__main__":
    main()
