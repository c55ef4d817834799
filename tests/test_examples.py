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


README = EXAMPLES.parent / "README.md"


def _readme_block(section: str, language: str) -> str:
    """The first fenced ``language`` block after the heading ``section`` of README.md."""
    text = README.read_text()
    start = text.index(f"\n{section}\n")
    fence = text.index(f"```{language}\n", start) + len(f"```{language}\n")
    return text[fence : text.index("```", fence)]


def test_readme_documents_every_tag_and_every_example_config():
    from lightning_init.health import RULES_BY_KIND, health_tag
    from lightning_init.stats import ACTIVATION_STATS, GRAD_STATS, OUTPUT_GRAD_STATS, WEIGHT_STATS

    text = README.read_text()
    for kind, stats in (("weight", WEIGHT_STATS), ("grad", GRAD_STATS), ("activation", ACTIVATION_STATS)):
        for stat in stats:
            if (kind, stat) == ("grad", "output_grad"):  # its own tags: output_grad_{stat}/{module}
                for own in OUTPUT_GRAD_STATS:
                    assert f"`output_grad_{own}/" in text, own
                continue
            assert f"`{kind}_{stat}/" in text, (kind, stat)
        for rule in RULES_BY_KIND[kind]:
            assert health_tag(rule, kind) in text, (kind, rule)
        for tag in (f"`{kind}/", f"health/{kind}_report", f"health/{kind}_heatmap"):
            assert tag in text, tag
    for rule in RULES_BY_KIND["output_grad"]:
        assert health_tag(rule, "output_grad") in text, rule
    for tag in ("health/output_grad_report", "health/output_grad_heatmap"):
        assert tag in text, tag
    for tag in ("weight_init/report", "`lightning_init/{kind}`", "`{kind}_{stat}`", "`lightning_init/health`"):
        assert tag in text, tag
    assert "PLACEHOLDER" not in text
    assert "\nDEMO_TABLE\n" not in text
    for config in CONFIGS:
        assert f"`{config.stem}" in text, config.stem


@pytest.mark.slow
def test_readme_yaml_example_parses_and_fits(tmp_path, capsys):
    config = tmp_path / "readme.yaml"
    config.write_text(_readme_block("## Use it from LightningCLI", "yaml"))
    cli = _load("cli")
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", f"--config={config}", "--print_config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    for expected in ("class_path: lightning_init.WeightInit", "dead_fraction: 0.9", "on_anomaly: stop"):
        assert expected in printed, expected
    result = cli.main(
        [
            "fit",
            f"--config={config}",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert result.trainer.global_step == 2
    init = next(c for c in result.trainer.callbacks if type(c).__name__ == "WeightInit")
    assert [r.name for r in init.rules] == ["net.38"]
    assert init.report is not None


@pytest.mark.slow
def test_readme_trainer_snippet_runs(tmp_path, monkeypatch):
    code = _readme_block("## Use it with a Trainer", "python")
    assert "max_steps=300" in code
    monkeypatch.chdir(tmp_path)  # the snippet logs to ./lightning_logs
    namespace: dict = {}
    exec(compile(code.replace("max_steps=300", "max_steps=2"), "README.md", "exec"), namespace)
    assert namespace["trainer"].global_step == 2
    tags = _scalar_tags(Path(namespace["trainer"].logger.log_dir))
    for prefix in ("weight_std/", "grad_norm/", "activation_std/", "health/"):
        assert any(t.startswith(prefix) for t in tags), prefix
