"""LightningCLI entry point for the example models: every callback, model and data option comes from YAML.

Run (from the repository root):

    python examples/cli.py fit --config examples/configs/mlp_kaiming_normal.yaml
    python examples/cli.py fit --config examples/configs/cnn_all_monitors.yaml --trainer.max_steps=50
    python examples/cli.py fit --config examples/configs/mlp_kaiming_normal.yaml --print_config

The model and the data are chosen by ``class_path`` (``lightning_init.models.MLPClassifier`` or ``SmallCNN``, and
a synthetic datamodule), so the same script serves every config, and ``lightning-init compare`` accepts them too.

Every config mistake is a parser error (one ``error:`` line, exit code 2): wrong types and out-of-range values are
refused while parsing, and a check only a class's ``__init__`` can make (e.g. ``mode`` given to scheme ``normal``) is
reported the same way by ``LightningInitCLI``.
"""

import lightning.pytorch as pl

from lightning_init.lightning_cli import LightningInitCLI


def main(args: list[str] | None = None) -> LightningInitCLI:
    return LightningInitCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
