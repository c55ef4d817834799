"""Every Lightning logger gets what it can take: scalars, images, text reports, histograms; read back from each
logger's own files (CSV directory, MLflow file store, W&B offline run). One warning names what a logger misses."""

import io
import json
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from PIL import Image

from lightning_init import ActivationMonitor, GradientMonitor, WeightInit, WeightMonitor
from lightning_init.models import MLPClassifier, TeacherDataModule
from lightning_init.writers import markdown_table
from tests.helpers import quiet_trainer

pytestmark = pytest.mark.slow

STEPS = 3


def fit(loggers) -> list[str]:
    """A 3-layer MLP, every monitor every step, histograms at step 1; the warnings it gave."""
    monitors = [
        cls(every_n_steps=1, histogram_every_n_steps=2) for cls in (WeightMonitor, ActivationMonitor, GradientMonitor)
    ]
    trainer = quiet_trainer(
        max_steps=STEPS, logger=loggers, callbacks=[WeightInit("kaiming_normal", seed=0), *monitors]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = TeacherDataModule(n_train=256, n_val=32, batch_size=32)
        trainer.fit(MLPClassifier(depth=3, width=16), datamodule=data)
    return [str(w.message) for w in caught if "lightning_init:" in str(w.message)]


def is_png_of_a_figure(data: bytes) -> None:
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert image.shape[1] >= 400  # a labelled figure, not a bare array of cells
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20


def test_csv_logger_gets_scalars_figures_and_reports_as_files(tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    messages = fit([logger])
    root = Path(logger.log_dir)
    header = (root / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"grad_norm/total", "health/vanishing_grad", "activation_std/net.0"} <= set(header)
    for tag in ("health/grad_heatmap", "health/grad_depth_profile", "health/activation_heatmap"):
        pngs = sorted((root / "images" / tag).glob("step_*.png"))
        assert pngs, tag
        is_png_of_a_figure(pngs[-1].read_bytes())
    report = (root / "text" / "health" / "grad_report" / f"step_{STEPS}.md").read_text()
    assert markdown_table(report)[0][:3] == ["layer", "kind", "health"]
    assert (root / "text" / "weight_init" / "report" / "step_0.md").is_file()
    missing = [m for m in messages if "CSVLogger cannot take" in m]
    assert len(missing) == 1, messages
    assert "histograms" in missing[0]


def test_mlflow_logger_gets_scalars_images_and_report_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = MLFlowLogger(experiment_name="lightning_init", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    messages = fit([logger])
    run = next((tmp_path / "mlruns").glob(f"*/{logger.run_id}"))
    # MLflow's file store: one file per metric key, lines "timestamp value step".
    lines = (run / "metrics" / "grad_norm" / "total").read_text().split("\n")
    steps = sorted({int(line.split()[2]) for line in lines if line})
    assert steps == list(range(STEPS))
    assert (run / "metrics" / "health" / "vanishing_grad").is_file()
    images = list((run / "artifacts" / "images").glob("health~grad_heatmap+step+*.png"))
    assert images, sorted(p.name for p in (run / "artifacts").rglob("*"))[:20]
    is_png_of_a_figure(images[0].read_bytes())
    assert list((run / "artifacts" / "images").glob("health~activation_depth_profile+step+*.png"))
    report = (run / "artifacts" / "health" / "grad_report" / f"step_{STEPS}.md").read_text()
    assert markdown_table(report)[0][:3] == ["layer", "kind", "health"]
    assert (run / "artifacts" / "weight_init" / "report" / "step_0.md").is_file()
    missing = [m for m in messages if "MLFlowLogger cannot take" in m]
    assert len(missing) == 1, messages
    assert "histograms" in missing[0]
    assert "images" not in missing[0]


def wandb_records(path: Path) -> list:
    """The complete records of a W&B run file (LevelDB log format: 32 KiB blocks of CRC32/length/type-framed
    chunks); stops at a chunk not fully written yet."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) != crc:
            break  # still being written
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_gets_scalars_images_tables_and_histograms(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="lightning_init")
    try:
        messages = fit([logger])
    finally:
        logger.experiment.finish()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    # `finish()` may return before W&B's service has written the last records: wait for the run's exit record.
    deadline = time.monotonic() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(run_file)):
        assert time.monotonic() < deadline, "the W&B run file never got its exit record"
        time.sleep(0.2)
    history: dict[str, list[str]] = {}
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                history.setdefault(item.key or "/".join(item.nested_key), []).append(item.value_json)
    assert len(history["grad_norm/total"]) == STEPS
    assert "health/vanishing_grad" in history
    assert "health/total" in history
    assert json.loads(history["health/grad_heatmap/_type"][0]) == "images/separated"
    assert json.loads(history["grad/net.0.weight/_type"][0]) == "histogram"
    assert json.loads(history["health/grad_report/_type"][0]) == "table-file"
    files = run_file.parent / "files"
    (png,) = list((files / "media" / "images" / "health").glob("grad_heatmap_*.png"))[-1:]
    is_png_of_a_figure(png.read_bytes())
    (table,) = list((files / "media" / "table" / "health").glob("grad_report_*.table.json"))[-1:]
    content = json.loads(table.read_text())
    assert content["columns"][:3] == ["layer", "kind", "health"]
    assert len(content["data"]) == 6  # 3 weights + 3 biases
    assert not [m for m in messages if "cannot take" in m], messages


def test_tensorboard_is_not_warned_and_an_unknown_logger_is_warned_once(tmp_path):
    from lightning.pytorch.loggers import Logger

    class Plain(Logger):
        name, version = "plain", 0

        def __init__(self):
            super().__init__()
            self.seen = []

        def log_metrics(self, metrics, step=None):
            self.seen.append(step)

        def log_hyperparams(self, *args, **kwargs):
            pass

    plain = Plain()
    messages = fit([TensorBoardLogger(tmp_path), plain])
    assert plain.seen  # the scalars
    (missing,) = [m for m in messages if "cannot take" in m]
    assert missing.startswith("lightning_init: Plain cannot take images")
    assert "text" in missing
    assert "histograms" in missing
