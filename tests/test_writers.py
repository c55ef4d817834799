import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from lightning_init import writers
from lightning_init.stats import HostHistogram


def _trainer(tmp_path: Path) -> pl.Trainer:
    loggers = [TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")]
    return pl.Trainer(accelerator="cpu", devices=1, logger=loggers, enable_progress_bar=False)


def _events(trainer: pl.Trainer) -> EventAccumulator:
    trainer.loggers[0].experiment.flush()
    ea = EventAccumulator(trainer.loggers[0].log_dir, size_guidance={"tensors": 0, "histograms": 0, "scalars": 0})
    ea.Reload()
    return ea


def test_layout_has_one_multiline_chart_per_kind_and_stat_when_per_layer_charts_are_asked_for() -> None:
    assert writers.layout({"grad": ["norm", "ratio"], "weight": []}, per_layer=["grad", "weight"]) == {
        "lightning_init/summary": {"grad_norm/total": ["Multiline", ["^grad_norm/total"]]},
        "lightning_init/grad": {
            "grad_norm": ["Multiline", ["^grad_norm/"]],
            "grad_ratio": ["Multiline", ["^grad_ratio/"]],
        },
    }


def test_layout_puts_health_first_and_per_layer_charts_only_on_request() -> None:
    health = {
        "weight": ["health/symmetric", "health/update_ratio"],
        "grad": ["health/vanishing_grad", "health/nonfinite_grad"],
    }
    out = writers.layout({"grad": ["norm"], "weight": ["std"]}, health)
    assert list(out) == ["lightning_init/health", "lightning_init/summary"]
    assert out["lightning_init/health"] == {
        "health/total": ["Multiline", ["^(health/total)$"]],
        "health: gradient rules": ["Multiline", ["^(health/vanishing_grad|health/nonfinite_grad)$"]],
        "health: weight rules": ["Multiline", ["^(health/symmetric|health/update_ratio)$"]],
    }
    # The regexes match their tags exactly (TensorBoard applies them as regular expressions).
    regex = re.compile(out["lightning_init/health"]["health: gradient rules"][1][0])
    assert regex.match("health/vanishing_grad")
    assert not regex.match("health/vanishing_grad_x")
    assert not regex.match("health/total")


def test_layout_is_merged_and_written_once_per_writer(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    writers.request_layout(trainer, "weight", ["std"], per_layer=True)
    writers.request_layout(trainer, "grad", ["norm"])
    writers.request_layout(trainer, "grad", ["norm", "std"], per_layer=True)
    writers.request_health_chart(trainer, "grad", ["health/vanishing_grad"])
    writers.write_layout(trainer)
    writers.request_layout(trainer, "activation", ["std"], per_layer=True)
    writers.write_layout(trainer)  # add_custom_scalars may be called once per writer: ignored
    configs = _events(trainer).Tensors("custom_scalars__config__")
    assert len(configs) == 1
    layout = layout_pb2.Layout()
    layout.ParseFromString(configs[0].tensor_proto.string_val[0])
    assert layout.category[0].title == "lightning_init/health"
    assert [c.title for cat in layout.category for c in cat.chart] == [
        "health/total",
        "health: gradient rules",
        "grad_norm/total",
        "grad_norm",
        "grad_std",
        "weight_std",
    ]


def test_scalars_go_to_every_logger(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    writers.log_scalars(trainer, {"weight_std/a": 0.5}, step=3)
    trainer.loggers[1].save()
    assert [e.value for e in _events(trainer).Scalars("weight_std/a")] == [0.5]
    assert "weight_std/a" in Path(trainer.loggers[1].log_dir, "metrics.csv").read_text()


def test_raw_histograms_with_huge_values(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    h = HostHistogram(-1e30, 1e30, 3.0, 0.0, 2e60, [0.0, 1e30], [2.0, 1.0])
    writers.log_histograms(trainer, {"grad/w": h}, step=7)
    (event,) = _events(trainer).Histograms("grad/w")
    assert event.step == 7
    assert event.histogram_value.num == 3
    assert list(event.histogram_value.bucket) == pytest.approx([2.0, 1.0])


def test_histograms_of_a_step_are_one_event_read_back_like_add_histogram_raw(tmp_path: Path) -> None:
    # all histograms of one call go out as ONE Summary event; TensorBoard must read what SummaryWriter's own
    # add_histogram_raw (one event per tag) writes: same tags, steps and every field of the histogram
    hists = {
        f"grad/net.{i}.weight": HostHistogram(
            -i - 0.5, i + 0.25, 10.0 + i, 0.1 * i, 3.0 + i, [0.0, 1.0, i + 0.25], [4.0, 5.0 + i, 1.0]
        )
        for i in range(30)
    }
    hists["grad/huge"] = HostHistogram(-1e30, 1e30, 3.0, 0.0, 2e60, [0.0, 1e30], [2.0, 1.0])
    trainer = _trainer(tmp_path)
    reference = TensorBoardLogger(tmp_path, name="reference")
    for step in (0, 4):
        writers.log_histograms(trainer, hists, step=step)
        for tag, h in hists.items():
            reference.experiment.add_histogram_raw(
                tag, *h[:5], bucket_limits=h.bucket_limits, bucket_counts=h.bucket_counts, global_step=step
            )
    reference.experiment.flush()
    want = EventAccumulator(reference.log_dir, size_guidance={"histograms": 0})
    want.Reload()
    got = _events(trainer)
    assert sorted(got.Tags()["histograms"]) == sorted(want.Tags()["histograms"]) == sorted(hists)
    for tag in hists:
        assert [(e.step, e.histogram_value) for e in got.Histograms(tag)] == [
            (e.step, e.histogram_value) for e in want.Histograms(tag)
        ], tag
    # one event per step (plus the file version event), not one per tag
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (path,) = Path(trainer.loggers[0].log_dir).glob("events.out.tfevents.*")
    events = [e for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]
    assert [len(e.summary.value) for e in events] == [len(hists), len(hists)]


@pytest.mark.parametrize("prefix", ["", "run"])
def test_scalars_in_one_event_read_back_like_log_metrics(tmp_path: Path, prefix: str) -> None:
    # All scalars of one call go out as one Summary event; TensorBoard must read exactly what Lightning's own
    # TensorBoardLogger.log_metrics (one add_scalar per key) writes: same tags, values (float32), steps.
    metrics = {f"weight_std/net.{i}.weight": 0.1 * i + 1e-3 for i in range(40)}
    metrics.update({"grad_norm/total": 1e30, "grad_mean/a": -2.5e-9, "grad_std/nan": float("nan")})
    metrics["grad_abs_max/inf"] = float("inf")
    fast = TensorBoardLogger(tmp_path, name="fast", prefix=prefix)
    reference = TensorBoardLogger(tmp_path, name="reference", prefix=prefix)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=[fast], enable_progress_bar=False)
    for step in (0, 5):
        writers.log_scalars(trainer, metrics, step=step)
        reference.log_metrics(metrics, step=step)

    def read(logger: TensorBoardLogger) -> dict[str, list[tuple[int, float]]]:
        logger.experiment.flush()
        ea = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
        ea.Reload()
        return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}

    got, expected = read(fast), read(reference)
    assert len(expected) == len(metrics)
    assert all(tag.startswith("run-") for tag in expected) == bool(prefix)
    assert got.keys() == expected.keys()
    for tag, events in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in events] == [0, 5]
        for (_, a), (_, b) in zip(got[tag], events, strict=True):
            assert a == b or (a != a and b != b), tag  # equal, or both NaN


def test_scalar_summary_is_the_protobuf_built_message_byte_for_byte() -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary

    from lightning_init.writers import scalar_summary

    metrics = {"a/b": 1.5, "weight_norm/net.0.weight": 1e300, "x" * 300: float("nan"), "é/ü": -0.0, "tiny": -1e-45}
    metrics |= {"int": 3, f"grad_norm/{'deep.' * 40}w": 2.0**-140}
    for prefix in ("", "run-"):
        ref = Summary(value=[Summary.Value(tag=prefix + k, simple_value=float(v)) for k, v in metrics.items()])
        assert scalar_summary(metrics, prefix).SerializeToString() == ref.SerializeToString()
        # the same tags again (the message's template is reused), new values
        again = {k: (-v if isinstance(v, float) else v + 1) for k, v in metrics.items()}
        ref = Summary(value=[Summary.Value(tag=prefix + k, simple_value=float(v)) for k, v in again.items()])
        assert scalar_summary(again, prefix).SerializeToString() == ref.SerializeToString()
    assert scalar_summary({}).SerializeToString() == b""
