"""LightningCLI entry point for the example models: every callback, model and data option comes from YAML.

Run (from the repository root):

    python examples/cli.py fit --config examples/configs/mlp_kaiming_normal.yaml
    python examples/cli.py fit --config examples/configs/cnn_all_monitors.yaml --trainer.max_steps=50
    python examples/cli.py fit --config examples/configs/mlp_kaiming_normal.yaml --print_config

The model and the data are chosen by ``class_path`` (``lightning_init.models.MLPClassifier`` or ``SmallCNN``, and
a synthetic datamodule), so the same script serves every config, and ``lightning-init compare`` accepts them too.
"""

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
