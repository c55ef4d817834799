"""Every example runs, with short settings."""

import importlib.util
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = sorted((EXAMPLES / "configs").glob("*.yaml"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _scalar_tags(log_dir: Path) -> set[str]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_there_is_one_config_per_main_scheme_and_a_monitors_config():
    names = {p.stem for p in CONFIGS}
    assert {"mlp_zeros", "mlp_xavier_normal", "mlp_kaiming_normal", "mlp_auto"} <= names
    assert any(n.startswith("cnn") for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_cli_config_fits(config, tmp_path):
    cli = _load("cli")
    result = cli.main(
        [
            "fit",
            f"--config={config}",
            "--trainer.max_steps=10",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert result.trainer.global_step == 10
    tags = _scalar_tags(Path(result.trainer.logger.log_dir))
    assert any(t.startswith("weight_std/") for t in tags)
    assert any(t.startswith("grad_norm/") for t in tags)
    assert any(t.startswith("activation_std/") for t in tags)


@pytest.mark.slow
def test_xor_example_zero_init_fails_and_random_init_learns(tmp_path, capsys):
    accuracy = _load("xor").main(["--steps", "300", "--log-dir", str(tmp_path)])
    assert accuracy["zeros"] == 0.5
    assert accuracy["xavier_normal"] == 1.0
    assert accuracy["kaiming_normal"] == 1.0
    assert "symmetric" in capsys.readouterr().out


@pytest.mark.slow
def test_plain_trainer_example(tmp_path):
    trainer = _load("plain_trainer").main(["--steps", "10", "--depth", "4", "--log-dir", str(tmp_path)])
    assert trainer.global_step == 10
    assert any(t.startswith("activation_std/") for t in _scalar_tags(Path(trainer.logger.log_dir)))
