"""Every bad input is refused before training, with a message naming the argument and the value (issue 13).

Two tables:

- ``PYTHON``: calls from Python. Each case builds the object (or runs ``init_module`` / a fit) and must raise the
  given exception type with a message that contains every fragment (the argument and the value, and for names the
  "did you mean"). Cases that need a model run a fit of a tiny model with a sentinel callback: the sentinel must see no
  training batch end and the weights must be unchanged, i.e. the refusal came before training.
- ``YAML``: configs for ``examples/cli.py``, run in-process through its ``main`` (a LightningCLI: parsing and
  instantiation are exactly the script's), must exit with code 2, print no traceback and name the key and the value
  on stderr. One case also runs the script as a subprocess, to see what a user's shell sees.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import (
    ActivationMonitor,
    GradientMonitor,
    HealthThresholds,
    InitRule,
    WeightInit,
    WeightMonitor,
    init_module,
)
from lightning_init import schemes as S
from tests.helpers import quiet_trainer

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


@dataclass(frozen=True)
class Bad:
    """One bad input: what to run, the exception it must raise, fragments its message must contain."""

    id: str
    run: Callable[[Path], Any]
    exc: type[BaseException]
    fragments: tuple[str, ...]


# --------------------------------------------------------------------------------------------------------------------
# Tiny models and a sentinel: "refused before training" is measured, not assumed.
# --------------------------------------------------------------------------------------------------------------------


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)), batch_size=8)


class NoForward(Net):
    """A model whose training_step calls ``body`` directly: no ``forward``, no ``lsuv_forward``."""

    forward = nn.Module.forward  # type: ignore[assignment]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self.body(batch[0]), batch[1])


class WrongShapeData(Net):
    """Batches of 5 features for a model that takes 3: the first forward fails."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0][:, :3]).sum()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(16, 5), torch.randn(16, 1)), batch_size=8)


class Frozen(Net):
    def __init__(self) -> None:
        super().__init__()
        self.body.requires_grad_(False)
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Sentinel(pl.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.batches += 1


def fit(callback: pl.Callback, model: pl.LightningModule | None = None) -> Callable[[Path], None]:
    """A fit that must be refused before training: no batch may end and no weight may change."""

    def run(tmp_path: Path) -> None:
        m = model if model is not None else Net()
        before = {k: v.detach().clone() for k, v in m.state_dict().items()}
        sentinel = Sentinel()
        try:
            quiet_trainer(max_steps=2, logger=False, default_root_dir=tmp_path, callbacks=[callback, sentinel]).fit(m)
        finally:
            assert sentinel.batches == 0, "training ran before the refusal"
            for k, v in m.state_dict().items():
                assert torch.equal(v, before[k]), f"{k} was written before the refusal"

    return run


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[Path], Any]:
    return lambda _tmp: fn(*args, **kwargs)


def init_only(*args: Any, **kwargs: Any) -> Callable[[Path], None]:
    """``init_module`` on a model: refused before any parameter changes."""

    def run(_tmp: Path) -> None:
        m = Net()
        before = {k: v.detach().clone() for k, v in m.state_dict().items()}
        try:
            init_module(m, *args, **kwargs)
        finally:
            for k, v in m.state_dict().items():
                assert torch.equal(v, before[k]), f"{k} was written before the refusal"

    return run


V = ValueError
# fmt: off
PYTHON: list[Bad] = [
    # WeightInit: scheme and parameters
    Bad("scheme-typo", call(WeightInit, "kaiming_normall"), V, ("`scheme`", "'kaiming_normall'", "'kaiming_normal'?")),
    Bad("std-str", call(WeightInit, "normal", std="0.1"), V, ("`std`", "'0.1'", "> 0")),
    Bad("std-negative", call(WeightInit, "normal", std=-1.0), V, ("`std`", "-1.0", "> 0")),
    Bad("std-nan", call(WeightInit, "normal", std=NAN), V, ("`std`", "nan", "finite")),
    Bad("std-huge", call(WeightInit, "normal", std=1e30), V, ("`std`=1e+30", "overflow")),
    Bad("uniform-huge", call(WeightInit, "uniform", a=-1e300, b=1e300), V, ("`a`=-1e+300", "`b`=1e+300")),
    Bad("uniform-reversed", call(WeightInit, "uniform", a=1.0, b=0.0), V, ("`a` < `b`", "a=1.0", "b=0.0")),
    Bad("trunc-far", call(WeightInit, "trunc_normal", a=40.0, b=41.0), V, ("a=40.0", "b=41.0", "within 37")),
    Bad("mean-inf", call(WeightInit, "normal", mean=INF), V, ("`mean`", "inf", "finite")),
    Bad("param-of-other-scheme", call(WeightInit, "normal", mode="fan_in"), V, ("`mode`='fan_in'", "`mean`, `std`")),
    Bad("mode-typo", call(WeightInit, "kaiming_normal", mode="fan_avg"), V, ("`mode`", "'fan_avg'", "'fan_in'")),
    Bad("nonlinearity-typo", call(WeightInit, "kaiming_normal", nonlinearity="rellu"), V, ("`nonlinearity`", "relu'?")),
    Bad("gain-zero", call(WeightInit, "xavier_normal", gain=0.0), V, ("`gain`", "0.0", "> 0")),
    Bad("gain-bool", call(WeightInit, "xavier_normal", gain=True), V, ("`gain`", "True")),
    Bad("constant-no-value", call(WeightInit, "constant"), V, ("`value`", "got none")),
    Bad("constant-nan", call(WeightInit, "constant", value=NAN), V, ("`value`", "nan")),
    Bad("kaiming-a-negative", call(WeightInit, "kaiming_normal", a=-0.1), V, ("`a`", "-0.1")),
    # WeightInit: the other arguments
    Bad("bias-nan", call(WeightInit, bias=NAN), V, ("`bias`", "nan", "finite")),
    Bad("bias-inf", call(WeightInit, bias=INF), V, ("`bias`", "inf")),
    Bad("bias-str", call(WeightInit, bias="x"), V, ("`bias`", "'x'")),
    Bad("bias-huge", call(WeightInit, bias=1e30), V, ("`bias`=1e+30", "too large")),
    Bad("seed-str", call(WeightInit, seed="abc"), V, ("`seed`", "'abc'", "integer")),
    Bad("seed-float", call(WeightInit, seed=1.5), V, ("`seed`", "1.5", "integer")),
    Bad("seed-bool", call(WeightInit, seed=True), V, ("`seed`", "True")),
    Bad("weights-loaded-str", call(WeightInit, weights_loaded="no"), V, ("`weights_loaded`", "'no'", "True or False")),
    Bad("weights-loaded-int", call(WeightInit, weights_loaded=1), V, ("`weights_loaded`", "1")),
    Bad("rules-str", call(WeightInit, rules="abc"), V, ("`rules`", "'abc'", "list")),
    Bad("rules-single", call(WeightInit, rules=InitRule(name="x")), V, ("`rules`", "wrap it in a list")),
    Bad("rules-item-int", call(WeightInit, rules=[5]), V, ("`rules[0]`", "5")),
    Bad("rules-key-typo", call(WeightInit, rules=[{"nme": "x"}]), V, ("`rules[0]`", "'nme'", "'name'?")),
    Bad("rules-bad-std", call(WeightInit, rules=[{"name": "x", "scheme": "normal", "std": -2}]), V, ("`std`", "-2")),
    Bad("lsuv-tol", call(WeightInit, "lsuv", lsuv_tol=1.5), V, ("`lsuv_tol`", "1.5", "(0, 1)")),
    Bad("lsuv-iters", call(WeightInit, "lsuv", lsuv_max_iters=0), V, ("`lsuv_max_iters`", "0", ">= 1")),
    Bad("lsuv-tol-unused", call(WeightInit, "normal", lsuv_tol=0.1), V, ("`lsuv_tol`=0.1", "only used by")),
    Bad("lsuv-bias", call(WeightInit, "lsuv", bias=0.1), V, ("`bias`=0.1", "lsuv")),
    # InitRule
    Bad("rule-name-int", call(InitRule, name=5), V, ("`name`", "5", "glob")),
    Bad("rule-type-int", call(InitRule, type=5), V, ("`type`", "5", "class")),
    Bad("rule-type-not-module", call(InitRule, type=int), V, ("`type`", "int", "nn.Module")),
    Bad("rule-empty", call(InitRule), V, ("`name`", "`type`", "neither")),
    Bad("rule-scheme-typo", call(InitRule, name="x", scheme="nrmal"), V, ("`scheme`", "'nrmal'", "'normal'?")),
    Bad("rule-std-str", call(InitRule, name="x", scheme="normal", std="0.1"), V, ("`std`", "'0.1'")),
    Bad("rule-bias-nan", call(InitRule, name="x", bias=NAN), V, ("`bias`", "nan")),
    Bad("rule-skip-params", call(InitRule, name="x", scheme="skip", std=0.1), V, ("'skip'", "std")),
    # init_module (pure torch): refused before any parameter changes
    Bad("init-module-none", call(init_module, None), V, ("`module`", "None", "nn.Module")),
    Bad("init-module-class", call(init_module, Net), V, ("`module`", "instantiate")),
    Bad("init-seed-str", init_only(seed="abc"), V, ("`seed`", "'abc'")),
    Bad("init-bias-nan", init_only(bias=NAN), V, ("`bias`", "nan")),
    Bad("init-rules-str", init_only(rules="abc"), V, ("`rules`", "'abc'")),
    Bad("init-only-rules-str", init_only(only_rules="yes"), V, ("`only_rules`", "'yes'")),
    Bad("init-std-huge", init_only("normal", std=1e30), V, ("`std`=1e+30",)),
    Bad("init-rule-type-typo", init_only(rules=[InitRule(type="Linaer")]), V, ("type='Linaer'", "'Linear'?")),
    Bad("init-rule-no-match", init_only(rules=[InitRule(name="head*")]), V, ("name='head*'", "matches no layer")),
    Bad("init-lsuv-no-batch", init_only("lsuv"), V, ("`lsuv_batch`", "got none")),
    # initializers called directly: nothing written either (tests/test_schemes.py checks the tensor)
    Bad("normal_-std-str", call(S.normal_, torch.zeros(2, 2), std="1"), V, ("`std`", "'1'")),
    Bad("uniform_-reversed", call(S.uniform_, torch.zeros(2, 2), 1.0, 0.0), V, ("a=1.0", "b=0.0")),
    Bad("trunc_normal_-far", call(S.trunc_normal_, torch.zeros(2), 0.0, 1.0, 9.0e2, 1e3), V, ("a=900.0", "within 37")),
    Bad("orthogonal_-1d", call(S.orthogonal_, torch.zeros(3)), V, ("at least 2 dimensions", "(3,)")),
    # fit-time refusals: before the first training batch ends, nothing written
    Bad("fit-rule-no-match", fit(WeightInit(rules=[InitRule(name="encoder.*")])), V, ("name='encoder.*'", "no layer")),
    Bad("fit-lsuv-no-forward", fit(WeightInit("lsuv"), NoForward()), V, ("`forward`", "`lsuv_forward(self, batch)`")),
    Bad("fit-lsuv-wrong-shape", fit(WeightInit("lsuv"), WrongShapeData()), V, ("(8, 5)", "No weight was changed")),
    # monitors
    Bad("monitor-every-0", call(WeightMonitor, every_n_steps=0), V, ("`every_n_steps`", "0")),
    Bad("monitor-every-str", call(GradientMonitor, every_n_steps="10"), V, ("`every_n_steps`", "'10'")),
    Bad("monitor-hist-negative", call(WeightMonitor, histogram_every_n_steps=-1), V,
        ("`histogram_every_n_steps`", "-1")),
    Bad("monitor-figure-0", call(ActivationMonitor, figure_every_n_steps=0), V, ("`figure_every_n_steps`", "0")),
    Bad("monitor-stat-typo", call(GradientMonitor, stats=["nrm"]), V, ("`stats`", "'nrm'", "'norm'?")),
    Bad("monitor-on-anomaly", call(ActivationMonitor, on_anomaly="rase"), V, ("`on_anomaly`", "'rase'", "'raise'?")),
    Bad("monitor-dead-fraction", call(ActivationMonitor, dead_fraction=1.5), V, ("`dead_fraction`", "1.5")),
    Bad("monitor-ratio-order", call(WeightMonitor, update_ratio_low=1e-2, update_ratio_high=1e-3), V,
        ("`update_ratio_high`", "`update_ratio_low`", "0.001")),
    Bad("monitor-stats-empty", call(WeightMonitor, stats=[]), V, ("`stats`", "[]", "'norm'")),
    Bad("monitor-include-nomatch", fit(WeightMonitor(include="nomatch*")), V,
        ("`include`=['nomatch*']", "body.0.weight")),
    Bad("monitor-exclude-all", fit(GradientMonitor(exclude="*")), V, ("`exclude`=['*']", "removes all")),
    Bad("monitor-types-typo", fit(ActivationMonitor(module_types=["Linaer"])), V,
        ("`module_types`=['Linaer']", "'Linear'?")),
    Bad("monitor-include-modules", fit(ActivationMonitor(include=["head*"])), V, ("`include`=['head*']", "body.0")),
    Bad("thresholds-nan", call(HealthThresholds, dead_fraction=NAN), V, ("`dead_fraction`", "nan")),
    Bad("thresholds-typo", call(HealthThresholds, dead_frac=0.5), TypeError, ("`dead_frac`", "0.5", "'dead_fraction'")),
    Bad("thresholds-order", call(HealthThresholds, update_ratio_low=1e-2, update_ratio_high=1e-3), V,
        ("`update_ratio_high`", "0.001")),
]
# fmt: on


@pytest.mark.parametrize("case", PYTHON, ids=[c.id for c in PYTHON])
def test_python_bad_input_is_refused_before_training(case: Bad, tmp_path: Path) -> None:
    with pytest.raises(case.exc) as info:
        case.run(tmp_path)
    message = str(info.value)
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in the message: {message}"


# --------------------------------------------------------------------------------------------------------------------
# YAML through examples/cli.py (LightningCLI), in-process: exit code 2, one error line, no traceback.
# --------------------------------------------------------------------------------------------------------------------

BASE = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  limit_val_batches: 0
model:
  class_path: lightning_init.models.MLPClassifier
  init_args: {depth: 2, width: 8}
data:
  class_path: lightning_init.models.TeacherDataModule
  init_args: {batch_size: 16}
"""


def _callback(cls: str, **init_args: str) -> str:
    args = "".join(f"\n        {k}: {v}" for k, v in init_args.items())
    return f"trainer:\n  callbacks:\n    - class_path: lightning_init.{cls}\n      init_args:{args}\n"


@dataclass(frozen=True)
class BadYaml:
    id: str
    yaml: str
    fragments: tuple[str, ...]


# fmt: off
YAML: list[BadYaml] = [
    BadYaml("every-n-steps-0", _callback("WeightMonitor", every_n_steps="0"), ("every_n_steps", "0")),
    BadYaml("histogram-negative", _callback("GradientMonitor", histogram_every_n_steps="-1"),
            ("histogram_every_n_steps", "-1")),
    BadYaml("figure-0", _callback("WeightMonitor", figure_every_n_steps="0"), ("figure_every_n_steps", "0")),
    BadYaml("dead-fraction", _callback("ActivationMonitor", dead_fraction="1.5"), ("dead_fraction", "1.5")),
    BadYaml("dead-fraction-nan", _callback("ActivationMonitor", dead_fraction=".nan"), ("dead_fraction", "nan")),
    BadYaml("exploding-norm-nan", _callback("GradientMonitor", exploding_grad_norm=".nan"),
            ("exploding_grad_norm", "nan")),
    BadYaml("update-ratio-order", _callback("WeightMonitor", update_ratio_low="0.01", update_ratio_high="0.001"),
            ("update_ratio_high", "update_ratio_low", "0.001")),
    BadYaml("on-anomaly-typo", _callback("WeightMonitor", on_anomaly="rase"), ("on_anomaly", "rase")),
    BadYaml("scheme-typo", _callback("WeightInit", scheme="kaiming_normall"), ("scheme", "kaiming_normall")),
    BadYaml("param-of-other-scheme", _callback("WeightInit", scheme="normal", mode="fan_in"), ("mode", "fan_in")),
    BadYaml("std-zero", _callback("WeightInit", scheme="normal", std="0"), ("std", "0")),
    BadYaml("std-huge", _callback("WeightInit", scheme="normal", std="1e30"), ("std", "1e+30")),
    BadYaml("bias-nan", _callback("WeightInit", bias=".nan"), ("bias", "nan")),
    BadYaml("bias-inf", _callback("WeightInit", bias=".inf"), ("bias", "inf")),
    BadYaml("seed-str", _callback("WeightInit", seed="abc"), ("seed", "abc")),
    BadYaml("weights-loaded-str", _callback("WeightInit", weights_loaded="maybe"), ("weights_loaded", "maybe")),
    BadYaml("lsuv-tol", _callback("WeightInit", scheme="lsuv", lsuv_tol="1.5"), ("lsuv_tol", "1.5")),
    BadYaml("lsuv-iters", _callback("WeightInit", scheme="lsuv", lsuv_max_iters="0"), ("lsuv_max_iters", "0")),
    BadYaml("uniform-reversed", _callback("WeightInit", scheme="uniform", a="1", b="0"), ("`a` < `b`", "a=1.0")),
    BadYaml("trunc-far", _callback("WeightInit", scheme="trunc_normal", a="40", b="41"), ("a=40.0", "b=41.0")),
    BadYaml("rule-key-typo", _callback("WeightInit", rules="[{name: body, sheme: normal}]"), ("sheme",)),
    BadYaml("rule-scheme-typo", _callback("WeightInit", rules="[{name: body, scheme: nrmal}]"), ("scheme", "nrmal")),
    BadYaml("model-depth", "model:\n  init_args:\n    depth: -3\n", ("depth", "-3")),
]
# fmt: on


def _load_cli() -> Any:
    spec = importlib.util.spec_from_file_location("examples_cli", ROOT / "examples" / "cli.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli_main() -> Callable[..., Any]:
    return _load_cli().main


@pytest.mark.parametrize("case", YAML, ids=[c.id for c in YAML])
def test_yaml_bad_input_is_a_parser_error(case: BadYaml, cli_main: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "bad.yaml").write_text(case.yaml)
    args = ["fit", f"--config={tmp_path / 'base.yaml'}", f"--config={tmp_path / 'bad.yaml'}"]
    args.append(f"--trainer.default_root_dir={tmp_path}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        cli_main(args)
    stderr = err.getvalue()
    assert info.value.code == 2, stderr
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, stderr
    for fragment in case.fragments:
        assert fragment in error_lines[0], f"{fragment!r} not in: {error_lines[0]}"


def test_yaml_bad_input_from_the_shell(tmp_path: Path) -> None:
    """The real script in a subprocess: what a user sees (exit code 2, one error line, no traceback)."""
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "bad.yaml").write_text(_callback("WeightInit", scheme="normal", mode="fan_in"))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "cli.py"),
            "fit",
            f"--config={tmp_path / 'base.yaml'}",
            f"--config={tmp_path / 'bad.yaml'}",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: WeightInit: `mode`='fan_in' is not a parameter of scheme 'normal'" in proc.stderr


def test_compare_reports_a_config_mistake_as_a_parser_error(tmp_path: Path) -> None:
    """``lightning-init compare`` reads the config through the same LightningInitCLI: exit 2, one error line."""
    from lightning_init.cli import main

    (tmp_path / "bad.yaml").write_text(BASE.replace("{depth: 2, width: 8}", "{depth: -3, width: 8}"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main(["compare", f"--config={tmp_path / 'bad.yaml'}", "--schemes", "normal", "--steps=1", f"--out={tmp_path}"])
    assert info.value.code == 2
    assert "Traceback" not in err.getvalue()
    assert [line for line in err.getvalue().splitlines() if line.startswith("error:")] == [
        "error: MLPClassifier: `depth` must be >= 1, got -3"
    ]


def test_a_frozen_model_is_a_warning_not_an_error(tmp_path: Path) -> None:
    """When no filter is the reason (every selected parameter frozen), GradientMonitor warns once and training runs."""
    model = Net()
    model.body.requires_grad_(False)
    model.body[2].bias.requires_grad_(True)  # something to optimize, nothing GradientMonitor selects
    sentinel = Sentinel()
    with pytest.warns(UserWarning, match=r"GradientMonitor: none of the selected parameters .* frozen"):
        quiet_trainer(max_steps=2, logger=False, default_root_dir=tmp_path,
                      callbacks=[GradientMonitor(include="body.0.*"), sentinel]).fit(model)  # fmt: skip
    assert sentinel.batches == 2


def test_table_is_large_enough() -> None:
    assert len(PYTHON) + len(YAML) >= 60
