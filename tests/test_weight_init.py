import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_init import InitRule, WeightInit
from tests.helpers import quiet_trainer


class TinyModel(pl.LightningModule):
    """A 4 -> 256 -> 256 -> 1 MLP; ``head`` is built in ``configure_model`` (after __init__, before on_fit_start)."""

    def __init__(self, width: int = 256, activation: str = "relu") -> None:
        super().__init__()
        act = nn.ReLU() if activation == "relu" else nn.Tanh()
        self.body = nn.Sequential(nn.Linear(4, width), act, nn.Linear(width, width), nn.Tanh())
        self.width = width
        self.head: nn.Module | None = None
        self.example_input_array = torch.zeros(2, 4)

    def configure_model(self) -> None:
        if self.head is None:
            self.head = nn.Linear(self.width, 1)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)), batch_size=8)


class FirstBatchWeights(pl.Callback):
    """Reference: a copy of every parameter at the first training batch."""

    def __init__(self):
        self.weights = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.weights is None:
            self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class RngSnapshot(pl.Callback):
    def __init__(self):
        self.state = None

    def on_fit_start(self, trainer, pl_module):
        self.state = torch.get_rng_state()


def _trainer(tmp_path, callbacks, max_steps=2, logger=False, **kw):
    return quiet_trainer(
        logger=logger,
        callbacks=callbacks,
        max_steps=max_steps,
        default_root_dir=tmp_path,
        **kw,
    )


def test_fit_applies_scheme_including_configure_model_layers(tmp_path):
    ref = FirstBatchWeights()
    _trainer(tmp_path, [WeightInit("kaiming_normal", nonlinearity="relu", bias=0.05, seed=0), ref]).fit(TinyModel())
    w = ref.weights
    # N = 65536 samples: sample std relative standard error 1/sqrt(2N) = 0.28 %; 6 % = 20 standard errors.
    assert w["body.2.weight"].std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.06)
    assert w["head.weight"].std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.3)  # 256 samples: 4.4 % SE
    assert torch.all(w["head.bias"] == 0.05)
    assert torch.all(w["body.0.bias"] == 0.05)


def test_auto_uses_example_input_and_report_reaches_tensorboard(tmp_path):
    ref = FirstBatchWeights()
    cb = WeightInit(seed=0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    _trainer(tmp_path, [cb, ref], logger=logger).fit(TinyModel())
    assert ref.weights["body.0.weight"].std().item() == pytest.approx(math.sqrt(2 / 4), rel=0.06)  # relu: Kaiming
    # tanh follows body.2: Xavier sqrt(2 / 512); N = 65536.
    assert ref.weights["body.2.weight"].std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.06)
    ea = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0}).Reload()
    tags = [t for t in ea.Tags()["tensors"] if t.startswith("weight_init/report")]
    assert tags
    text = ea.Tensors(tags[0])[0].tensor_proto.string_val[0].decode()
    assert "| layer | shape | scheme | fan_in | fan_out | gain | expected std | actual std |" in text
    assert "| body.2.weight | 256x256 | auto: xavier_normal (tanh) | 256 | 256 |" in text
    assert cb.report is not None
    assert len(cb.report.rows) == 3


def test_resume_changes_nothing_bit_for_bit(tmp_path):
    model = TinyModel()
    trainer = _trainer(tmp_path, [WeightInit("xavier_normal", seed=0)], max_steps=3)
    trainer.fit(model)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["callbacks"]["WeightInit"] == {"applied": True}

    ref, other = FirstBatchWeights(), WeightInit("zeros")
    _trainer(tmp_path, [other, ref], max_steps=5).fit(TinyModel(), ckpt_path=ckpt)
    assert other.report is None
    assert ref.weights.keys() == saved["state_dict"].keys()
    for key, value in saved["state_dict"].items():
        assert torch.equal(ref.weights[key], value), key


def test_restored_state_alone_skips(tmp_path):
    cb, ref = WeightInit("zeros"), FirstBatchWeights()
    cb.load_state_dict({"applied": True})
    model = TinyModel()
    model.configure_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _trainer(tmp_path, [cb, ref]).fit(model)
    assert all(torch.equal(ref.weights[k], v) for k, v in before.items())


def test_weights_loaded_initializes_only_rule_matches(tmp_path):
    model = TinyModel()
    model.configure_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = FirstBatchWeights()
    cb = WeightInit("zeros", weights_loaded=True, rules=[InitRule(name="head", scheme="normal", std=0.5)], seed=0)
    _trainer(tmp_path, [cb, ref]).fit(model)
    assert all(torch.equal(ref.weights[k], before[k]) for k in before if k.startswith("body"))
    assert not torch.equal(ref.weights["head.weight"], before["head.weight"])
    assert cb.report.skipped == ["body.0", "body.2"]


@pytest.mark.parametrize("seed", [None, 5])
def test_global_rng_untouched_and_seed_reproducible(tmp_path, seed):
    before, after, ref = RngSnapshot(), RngSnapshot(), FirstBatchWeights()
    torch.manual_seed(0)
    _trainer(tmp_path, [before, WeightInit("orthogonal", seed=seed), after, ref]).fit(TinyModel())
    assert torch.equal(before.state, after.state)
    if seed is not None:
        ref2 = FirstBatchWeights()
        torch.manual_seed(1234)  # different global RNG, different construction-time weights
        _trainer(tmp_path, [WeightInit("orthogonal", seed=seed), ref2]).fit(TinyModel())
        for key in ref.weights:
            assert torch.equal(ref.weights[key], ref2.weights[key]), key


def test_state_dict_round_trip():
    cb = WeightInit()
    assert cb.state_dict() == {"applied": False}
    cb.load_state_dict({"applied": True})
    assert cb.state_dict() == {"applied": True}


def test_bad_input_in_init():
    with pytest.raises(ValueError, match=r"`scheme` must be one of .*Did you mean 'kaiming_normal'\?"):
        WeightInit(scheme="kaiming_normall")
    with pytest.raises(ValueError, match=r"`std` must be a finite number > 0, got 0.0"):
        WeightInit(scheme="normal", std=0.0)
    with pytest.raises(ValueError, match=r"`std`=0.01 is not a parameter of scheme 'xavier_normal'"):
        WeightInit(scheme="xavier_normal", std=0.01)
    with pytest.raises(ValueError, match=r"Did you mean 'fan_out'\?"):
        WeightInit(scheme="kaiming_normal", mode="fan_ot")


def test_rule_matching_nothing_fails_at_fit_start(tmp_path):
    with pytest.raises(ValueError, match=r"InitRule\(name='backbone'.*matches no layer.*'body.0' \(Linear\)"):
        _trainer(tmp_path, [WeightInit(rules=[InitRule(name="backbone", scheme="skip")])]).fit(TinyModel())


def test_fsdp_is_refused_with_advice():
    trainer = type("T", (), {"strategy": FSDPStrategy()})()
    with pytest.raises(
        RuntimeError, match=r"FSDPStrategy.*lightning_init.init_module\(self, \.\.\.\).*configure_model"
    ):
        WeightInit().setup(trainer, None, "fit")


# ---------------------------------------------------------------- LSUV


class DeepTanh(pl.LightningModule):
    """A 20-layer tanh MLP (16 -> 32 -> ... -> 32), dropout on the output so training draws from the global RNG."""

    def __init__(self, depth: int = 20, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(16 if i == 0 else width, width), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(self.net(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x).mean(1, keepdim=True), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(256, 16, generator=g), torch.randn(256, 1, generator=g))
        return DataLoader(data, batch_size=64, shuffle=True)  # the order comes from torch's global RNG


class Recorder(pl.Callback):
    """Reference: every training batch and the global RNG state at each batch start; weights and flags at the first."""

    def __init__(self):
        self.batches, self.rng, self.weights, self.flags = [], [], None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append([t.clone() for t in batch])
        self.rng.append(torch.get_rng_state())
        if self.weights is None:
            self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self.flags = {n: m.training for n, m in pl_module.named_modules()}


def _linear_output_variances(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Independent measurement: biased float64 variance of every Linear's output, eval mode, own hooks."""
    out: dict[str, float] = {}
    handles = [
        m.register_forward_hook(lambda _m, _a, y, n=n: out.__setitem__(n, y.double().var(correction=0).item()))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


def test_lsuv_fit_unit_variance_on_first_batch_report_and_nothing_else_changed(tmp_path):
    tol = 0.05
    before, after = Recorder(), Recorder()  # on either side of WeightInit in the callback order
    cb = WeightInit("lsuv", lsuv_tol=tol, seed=0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    torch.manual_seed(0)
    _trainer(tmp_path, [before, cb, after], logger=logger, max_steps=8, max_epochs=2).fit(DeepTanh())

    # the batch LSUV used is the first training batch; measure every layer on it with our own hooks
    x = after.batches[0][0]
    model = DeepTanh()
    model.load_state_dict(after.weights)
    var = _linear_output_variances(model, x)
    assert len(var) == 20
    for name, v in var.items():
        assert abs(v - 1) <= tol, (name, v)
    model.load_state_dict(before.weights)  # PyTorch's default init on the same batch: the signal vanishes with depth
    assert _linear_output_variances(model, x)["net.38"] < 0.1  # measured 0.017

    # the report, read back from TensorBoard's Text tab: one LSUV row per layer with its iterations and variances
    ea = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0}).Reload()
    text = ea.Tensors("weight_init/report/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "LSUV (tol=0.05, max_iters=10): 20/20 layers converged" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if "| Linear |" in line]
    assert [r[0] for r in rows] == list(var)
    for name, _kind, iterations, _initial, final, converged, _reason in rows:
        assert 1 <= int(iterations) <= 10
        assert float(final) == pytest.approx(var[name], rel=1e-3)  # 4 significant digits in the table
        assert converged == "yes"
    assert "| net.0.weight | 32x16 | lsuv |" in text

    # nothing but the weights changed: flags, global RNG at every step, batch order (vs. a run without WeightInit)
    assert after.flags == before.flags
    assert all(after.flags.values())
    assert torch.equal(after.rng[0], before.rng[0])
    plain = Recorder()
    torch.manual_seed(0)
    _trainer(tmp_path, [plain], max_steps=8, max_epochs=2).fit(DeepTanh())
    assert len(plain.batches) == len(after.batches) == 8
    for i, (b1, b2) in enumerate(zip(plain.batches, after.batches, strict=True)):
        assert all(torch.equal(t1, t2) for t1, t2 in zip(b1, b2, strict=True)), i
        assert torch.equal(plain.rng[i], after.rng[i]), i


def test_lsuv_resume_changes_nothing(tmp_path):
    trainer = _trainer(tmp_path, [WeightInit("lsuv", seed=0)], max_steps=2)
    trainer.fit(TinyModel())
    ckpt = tmp_path / "lsuv.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    cb, ref = WeightInit("lsuv", seed=1), FirstBatchWeights()
    _trainer(tmp_path, [cb, ref], max_steps=4).fit(TinyModel(), ckpt_path=ckpt)
    assert cb.report is None
    for key, value in saved.items():
        assert torch.equal(ref.weights[key], value), key


class DictBatchModel(TinyModel):
    """Batches are dicts the default LSUV forward cannot read: the module says how with ``lsuv_forward``."""

    def __init__(self):
        super().__init__()
        self.lsuv_calls = 0

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch["features"]), batch["target"])

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        rows = [{"features": torch.randn(4, generator=g), "target": torch.randn(1, generator=g)} for _ in range(64)]
        return DataLoader(rows, batch_size=32)

    def lsuv_forward(self, batch):
        self.lsuv_calls += 1
        return self(batch["features"])


def test_lsuv_uses_the_modules_lsuv_forward(tmp_path):
    model, ref = DictBatchModel(), FirstBatchWeights()
    cb = WeightInit("lsuv", seed=0)
    _trainer(tmp_path, [cb, ref], max_steps=1).fit(model)
    assert model.lsuv_calls > 3  # order pass + one measurement per layer and rescaling
    assert cb.report.lsuv.converged
    check = DictBatchModel()
    check.configure_model()
    check.load_state_dict(ref.weights)
    x = next(iter(check.train_dataloader()))["features"]
    assert abs(_linear_output_variances(check, x)["head"] - 1) <= 0.1


def test_lsuv_bad_arguments_in_init():
    with pytest.raises(ValueError, match=r"`lsuv_tol` must be a number in \(0, 1\), got 1.5"):
        WeightInit("lsuv", lsuv_tol=1.5)
    with pytest.raises(ValueError, match=r"`lsuv_max_iters` must be an integer >= 1, got 0"):
        WeightInit("lsuv", lsuv_max_iters=0)
    with pytest.raises(ValueError, match=r"`lsuv_max_iters`=3 is only used by scheme 'lsuv'"):
        WeightInit("xavier_normal", lsuv_max_iters=3)
    with pytest.raises(ValueError, match=r"`bias`=0.1 cannot be used with scheme 'lsuv'"):
        WeightInit("lsuv", bias=0.1)
    WeightInit("xavier_normal", lsuv_tol=0.2, rules=[InitRule(name="head", scheme="lsuv")])  # a rule uses LSUV


# ---------------------------------------------------------------- LightningCLI


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])


def _cli(tmp_path, init_args: str, extra=()):
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            trainer:
              accelerator: cpu
              devices: 1
              max_steps: 2
              logger: false
              enable_checkpointing: false
              enable_progress_bar: false
              enable_model_summary: false
              callbacks:
                - class_path: lightning_init.WeightInit
                  init_args:
            """
        )
        + textwrap.indent(textwrap.dedent(init_args), " " * 8)
    )
    args = ["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}", *extra]
    return LightningCLI(TinyModel, args=args, save_config_callback=None)


def test_cli_yaml_fit_with_rules(tmp_path):
    cli = _cli(
        tmp_path,
        """\
        scheme: kaiming_normal
        nonlinearity: relu
        seed: 3
        rules:
          - name: "head"
            scheme: normal
            std: 0.01
          - type: Linear
            scheme: xavier_uniform
            gain: 2.0
        """,
    )
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, WeightInit))
    assert cb.rules == [
        InitRule(name="head", scheme="normal", std=0.01),
        InitRule(type="Linear", scheme="xavier_uniform", gain=2.0),
    ]
    assert cli.trainer.global_step == 2
    assert [r.scheme for r in cb.report.rows] == ["xavier_uniform", "xavier_uniform", "normal"]


def test_cli_print_config_documents_parameters(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _cli(tmp_path, "scheme: normal\nstd: 0.02\n", extra=["--print_config"])
    out = capsys.readouterr().out
    for key in (
        "scheme: normal",
        "std: 0.02",
        "mode: null",
        "nonlinearity: null",
        "rules: null",
        "weights_loaded: false",
    ):
        assert key in out


def test_cli_typo_is_a_parser_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(tmp_path, "scheme: kaiming_normall\n")
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "error:" in err
    assert "kaiming_normall" in err
    assert "'kaiming_normal'" in err
    with pytest.raises(SystemExit):
        _cli(tmp_path, "scheme: kaiming_normal\nmode: fan_ot\n")
    assert "fan_ot" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("init_args", "key", "restriction"),
    [
        ("scheme: normal\nstd: -1.0\n", "std", "v>0"),
        ("scheme: xavier_normal\ngain: 0.0\n", "gain", "v>0"),
        ("scheme: lsuv\nlsuv_tol: 1.5\n", "lsuv_tol", "v>0 and v<1"),
        ("scheme: lsuv\nlsuv_max_iters: 0\n", "lsuv_max_iters", "v>0"),
    ],
)
def test_cli_out_of_range_is_a_parser_error(tmp_path, capsys, init_args, key, restriction):
    # restricted types (jsonargparse.typing) make LightningCLI refuse the value while parsing: exit code 2, the key,
    # the value and the restriction in the message, no traceback, no Trainer built
    with pytest.raises(SystemExit) as exc:
        _cli(tmp_path, init_args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f'Parser key "{key}"' in err
    assert f"does not conform to restriction {restriction}" in err
    assert "Traceback" not in err


def test_cli_cross_argument_errors_refused_before_training(tmp_path):
    # a parameter the scheme does not take depends on another argument: no type can say it, so WeightInit's
    # ValueError (raised when LightningCLI instantiates it, before the Trainer exists) names it
    with pytest.raises(ValueError, match=r"`gain`=2.0 is not a parameter of scheme 'normal'"):
        _cli(tmp_path, "scheme: normal\ngain: 2.0\n")
    with pytest.raises(ValueError, match=r"`lsuv_tol`=0.05 is only used by scheme 'lsuv'"):
        _cli(tmp_path, "scheme: normal\nlsuv_tol: 0.05\n")


def test_cli_yaml_lsuv_fit(tmp_path):
    cli = _cli(tmp_path, "scheme: lsuv\nlsuv_tol: 0.05\nlsuv_max_iters: 5\nseed: 0\n")
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, WeightInit))
    assert cli.trainer.global_step == 2
    assert cb.report.lsuv is not None
    assert (cb.report.lsuv.tol, cb.report.lsuv.max_iters) == (0.05, 5)
    assert [r.name for r in cb.report.lsuv.layers] == ["body.0", "body.2", "head"]
    assert cb.report.lsuv.converged


# ---------------------------------------------------------------- DDP

DDP_SCRIPT = """
import json, sys, torch
import lightning.pytorch as pl
sys.path.insert(0, {root!r})
from tests.test_weight_init import TinyModel
from lightning_init import WeightInit

class Checksums(pl.Callback):
    def __init__(self):
        self.first = None
        self.batch = None
    def _sum(self, m):
        return torch.stack([p.detach().double().sum() * (i + 1) for i, p in enumerate(m.parameters())]).sum().reshape(1)
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first is None:
            self.first = trainer.strategy.all_gather(self._sum(pl_module)).flatten().tolist()
            self.batch = trainer.strategy.all_gather(batch[0].double().sum().reshape(1)).flatten().tolist()
    def on_train_end(self, trainer, pl_module):
        last = trainer.strategy.all_gather(self._sum(pl_module)).flatten().tolist()
        if trainer.global_rank == 0:
            json.dump({{"first": self.first, "last": last, "batch": self.batch}}, open({out!r}, "w"))

if __name__ == "__main__":
    torch.manual_seed(0)
    cb = Checksums()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir={tmp!r}, callbacks=[{init}, cb])
    trainer.fit(TinyModel(width=32))
    # Lightning destroys the process group at exit only for NCCL; a gloo group left to the interpreter's
    # teardown can abort the process ("terminate called without an active exception", exit -6)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
"""


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("init", ["WeightInit('kaiming_normal', nonlinearity='relu')", "WeightInit('lsuv')"])
def test_ddp_ranks_end_identical_without_seed(tmp_path, init):
    # lsuv: applied at the first batch, on which every rank holds a different shard of the data
    root = str(Path(__file__).resolve().parents[1])
    out = tmp_path / "checksums.json"
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT.format(root=root, out=str(out), tmp=str(tmp_path), init=init))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = json.loads(out.read_text())
    assert len(sums["first"]) == 2
    assert sums["batch"][0] != sums["batch"][1]  # the ranks initialized on different batches
    assert sums["first"][0] == sums["first"][1]
    assert sums["last"][0] == sums["last"][1]


def test_reused_callback_initializes_each_new_model(tmp_path, caplog):
    """A sweep loop reusing its callback list: the second fit's fresh model gets the scheme too (issue 13)."""
    init = WeightInit(scheme="normal", std=0.05, seed=0)
    firsts = []
    for run in range(2):
        first = FirstBatchWeights()
        model = TinyModel()
        model.configure_model()
        with torch.no_grad():  # a default init far from the scheme's: the test fails if WeightInit does nothing
            for p in model.parameters():
                p.fill_(0.7)
        with caplog.at_level("INFO"):
            _trainer(tmp_path / str(run), [init, first], max_steps=1).fit(model)
        firsts.append(first.weights)
    assert "initialized another one in an earlier fit" in caplog.text
    assert "resuming" not in caplog.text
    for weights in firsts:
        for key in ("body.0.weight", "body.2.weight", "head.weight"):
            w = weights[key].double()
            assert abs(w.mean().item()) < 6 * 0.05 / math.sqrt(w.numel())
            assert w.std().item() == pytest.approx(0.05, rel=6 * math.sqrt(0.5 / w.numel()) + 0.02)
        assert torch.all(weights["body.0.bias"] == 0)


def test_second_fit_of_the_same_model_keeps_its_weights(tmp_path):
    init, model = WeightInit(scheme="normal", std=0.05, seed=0), TinyModel()
    _trainer(tmp_path, [init], max_steps=3).fit(model)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    first = FirstBatchWeights()
    _trainer(tmp_path, [init, first], max_steps=4).fit(model)
    for key, value in trained.items():
        assert torch.equal(first.weights[key], value), key


def test_restored_state_is_a_resume(tmp_path, caplog):
    """load_state_dict (a checkpoint restore) means the weights come from the checkpoint: left unchanged."""
    init = WeightInit(scheme="normal", std=0.05, seed=0)
    init.load_state_dict({"applied": True})
    model = TinyModel()
    model.configure_model()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    first = FirstBatchWeights()
    with caplog.at_level("INFO"):
        _trainer(tmp_path, [init, first], max_steps=1).fit(model)
    assert "resuming from restored callback state" in caplog.text
    for key, value in before.items():
        assert torch.equal(first.weights[key], value), key


def test_console_line_summarizes_the_report_in_one_line():
    from lightning_init.callbacks.weight_init import _summary
    from lightning_init.init import InitReport, LayerInit

    rows = [
        LayerInit("a.weight", (128, 128), "auto: kaiming_normal (relu)", 128, 128, math.sqrt(2), 0.125, 0.12875),
        LayerInit("b.weight", (128, 128), "auto: kaiming_normal (relu)", 128, 128, math.sqrt(2), 0.125, 0.125),
        LayerInit("c.weight", (10, 128), "auto: xavier_normal (linear)", 128, 10, 1.0, 0.12, 0.3),  # small: unchecked
    ]
    line = _summary(InitReport(rows=rows, symmetric=["c"]))
    assert "\n" not in line
    assert line.startswith("3 tensors (auto: kaiming_normal (relu) x2, auto: xavier_normal (linear) x1), biases 0")
    assert "measured std within 3.0 % of the formula on 2 of them" in line  # |0.12875 / 0.125 - 1| = 3 %
    assert "SYMMETRIC: c" in line
    assert "weight_init/report" in line
