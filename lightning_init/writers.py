"""Send results to Lightning loggers. TensorBoard specifics live here and nowhere else."""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary

from lightning_init.callbacks._compat import event_file_writer, logger_prefix
from lightning_init.heatmap import to_png
from lightning_init.stats import HostHistogram

if TYPE_CHECKING:
    import lightning.pytorch as pl


def tensorboard_writers(trainer: "pl.Trainer") -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` attached to ``trainer`` (empty on non-zero ranks)."""
    if trainer.global_rank != 0:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def log_text(trainer: "pl.Trainer", tag: str, markdown: str, step: int) -> None:
    """Write ``markdown`` to TensorBoard's Text tab under ``tag`` (rank zero, TensorBoard loggers only).

    TensorBoard renders text summaries as Markdown, so tables written as Markdown pipe tables show as tables.
    """
    for writer in tensorboard_writers(trainer):
        writer.add_text(tag, markdown, global_step=step)
        writer.flush()


def _add_summary(writer: Any, summary: Summary, step: int) -> bool:
    """Hand a ready ``Summary`` to ``writer``'s event file writer; ``False`` if this writer cannot take it.

    ``SummaryWriter`` has no public method that takes a built ``Summary``, hence the one private call
    (:func:`lightning_init.callbacks._compat.event_file_writer`). A writer without it, or with its own protobuf
    classes (tensorboardX raises ``TypeError``), returns ``False`` and the caller falls back to the public API.
    """
    try:
        file_writer = event_file_writer(writer)
        if file_writer is None:
            return False
        file_writer.add_summary(summary, step)
    except TypeError:
        return False
    return True


def _add_png(writer: Any, tag: str, image: np.ndarray, png: bytes, step: int) -> None:
    """Write an encoded PNG as an image summary.

    ``SummaryWriter.add_image`` encodes with PIL, which is not a dependency of this package, so the summary is built
    here from :func:`lightning_init.heatmap.to_png` and handed to the writer with :func:`_add_summary`; a writer that
    cannot take it falls back to ``add_image``.
    """
    height, width = image.shape[:2]
    summary = Summary(
        value=[
            Summary.Value(
                tag=tag,
                image=Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png),
            )
        ]
    )
    if not _add_summary(writer, summary, step):
        writer.add_image(tag, image, global_step=step, dataformats="HWC")


def log_image(trainer: "pl.Trainer", tag: str, image: np.ndarray, step: int) -> None:
    """Write an ``uint8`` ``(H, W, 3)`` RGB image to TensorBoard's Images tab under ``tag`` (rank zero, TB only).

    Encoded as PNG without PIL (:func:`lightning_init.heatmap.to_png`). Each call adds one image at ``step``;
    TensorBoard shows the latest with a step slider over the earlier ones.
    """
    tb = tensorboard_writers(trainer)
    if not tb:
        return
    arr = np.asarray(image)
    png = to_png(arr)
    for writer in tb:
        _add_png(writer, tag, arr, png, step)
        writer.flush()


def _add_scalars_at_once(logger: TensorBoardLogger, metrics: Mapping[str, float], step: int) -> bool:
    """Write every scalar of ``metrics`` in ONE ``Summary`` event; ``False`` if this writer cannot take it.

    ``TensorBoardLogger.log_metrics`` calls ``SummaryWriter.add_scalar`` once per key: one protobuf, one event and one
    trip through the writer thread's queue per value, ~60 ms for the ~650 scalars of three monitors on a 20-layer
    MLP. A single ``Summary`` holding all of them is ~1 ms and reads back identically (TensorBoard's readers and
    ``EventAccumulator`` iterate over ``summary.value``: same tags, values, steps). The logger's ``prefix`` is applied
    as ``log_metrics`` would (``{prefix}-{key}``; :func:`lightning_init.callbacks._compat.logger_prefix`). A writer
    that cannot take the summary (see :func:`_add_summary`) falls back to ``log_metrics``.
    """
    prefix = logger_prefix(logger)
    join = getattr(logger, "LOGGER_JOIN_CHAR", "-")
    summary = Summary(
        value=[
            Summary.Value(tag=f"{prefix}{join}{key}" if prefix else key, simple_value=float(value))
            for key, value in metrics.items()
        ]
    )
    return _add_summary(logger.experiment, summary, step)


def log_scalars(trainer: "pl.Trainer", metrics: Mapping[str, float], step: int) -> None:
    """Send ``metrics`` to every attached logger (TensorBoard, CSV, MLflow...), rank zero only.

    TensorBoard loggers receive all of them in one event (:func:`_add_scalars_at_once`); every other logger through
    its ``log_metrics``.
    """
    if not metrics or trainer.global_rank != 0:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and _add_scalars_at_once(logger, metrics, step):
            continue
        logger.log_metrics(dict(metrics), step=step)


def log_histograms(trainer: "pl.Trainer", histograms: Mapping[str, HostHistogram], step: int) -> None:
    """Write pre-binned histograms (finite values only) to every TensorBoard logger via ``add_histogram_raw``.

    The buckets come from :func:`lightning_init.stats.histogram_columns`, so values beyond ±1e20, on which
    ``SummaryWriter.add_histogram`` raises "The histogram is empty", are drawn like any other.
    """
    for writer in tensorboard_writers(trainer):
        for tag, h in histograms.items():
            writer.add_histogram_raw(
                tag,
                min=h.min,
                max=h.max,
                num=h.num,
                sum=h.sum,
                sum_squares=h.sum_squares,
                bucket_limits=h.bucket_limits,
                bucket_counts=h.bucket_counts,
                global_step=step,
            )


#: Charts requested by monitors, per trainer (weakly held), until the layout is written: kind -> stats.
_LAYOUT_REQUESTS: weakref.WeakKeyDictionary[Any, dict[str, list[str]]] = weakref.WeakKeyDictionary()
#: Writers that already received a layout (``SummaryWriter.add_custom_scalars`` may be called once per writer).
_LAYOUT_WRITTEN: weakref.WeakSet[Any] = weakref.WeakSet()


#: The pseudo-kind under which monitors request the health chart (see :func:`layout`).
HEALTH_CHART = "health"


def request_health_chart(trainer: "pl.Trainer") -> None:
    """Ask for the ``health`` chart (every ``health/*`` count on one multi-line chart) in the run's layout."""
    _LAYOUT_REQUESTS.setdefault(trainer, {}).setdefault(HEALTH_CHART, [])


def request_layout(trainer: "pl.Trainer", kind: str, stats: Sequence[str]) -> None:
    """Ask for one multi-line chart per ``(kind, stat)`` in the run's custom-scalars layout (:func:`write_layout`)."""
    charts = _LAYOUT_REQUESTS.setdefault(trainer, {})
    merged = charts.setdefault(kind, [])
    merged.extend(s for s in stats if s not in merged)


def layout(charts: Mapping[str, Sequence[str]]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: category ``lightning_init/{kind}``, one ``Multiline`` chart per stat.

    Each chart is titled ``{kind}_{stat}`` and matches the regex ``^{kind}_{stat}/``, so every layer (and
    ``grad_norm/total``) is a line of the same chart: a vanishing or exploding depth profile is visible at a glance.
    When :data:`HEALTH_CHART` was requested (:func:`request_health_chart`), category ``lightning_init/health`` holds
    one chart ``health`` matching ``^health/``: the number of flagged layers of every rule over time.
    """
    out: dict[str, dict[str, list[Any]]] = {
        f"lightning_init/{kind}": {f"{kind}_{stat}": ["Multiline", [f"^{kind}_{stat}/"]] for stat in stats}
        for kind, stats in charts.items()
        if stats and kind != HEALTH_CHART
    }
    if HEALTH_CHART in charts:
        out[f"lightning_init/{HEALTH_CHART}"] = {HEALTH_CHART: ["Multiline", [f"^{HEALTH_CHART}/"]]}
    return out


def write_layout(trainer: "pl.Trainer") -> None:
    """Write the merged layout of every monitor of ``trainer`` once per run directory (rank zero).

    A fit resumed from a checkpoint whose logger writes into the directory of the run it continues (same ``version``)
    finds that run's layout there and does not write a second one.

    Called when training starts, after every monitor's ``setup`` requested its charts, because TensorBoard keeps one
    layout per run and ``add_custom_scalars`` may be called only once per writer.
    """
    charts = _LAYOUT_REQUESTS.pop(trainer, None)
    if not charts:
        return
    resuming = trainer.ckpt_path is not None
    for writer in tensorboard_writers(trainer):
        if writer in _LAYOUT_WRITTEN:
            continue
        if resuming and _run_has_layout(writer.get_logdir()):
            _LAYOUT_WRITTEN.add(writer)  # a resumed run writing into the directory of the run it continues
            continue
        writer.add_custom_scalars(layout(charts))
        _LAYOUT_WRITTEN.add(writer)


#: The tag under which ``SummaryWriter.add_custom_scalars`` stores the layout.
_LAYOUT_TAG = "custom_scalars__config__"


def _run_has_layout(log_dir: str, first_events: int = 256) -> bool:
    """Whether an event file in ``log_dir`` already holds a custom-scalars layout (one per run directory).

    The layout is written when training starts, so only the first ``first_events`` events of each file are read.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for i, event in enumerate(EventFileLoader(str(path)).Load()):
            if i >= first_events:
                break
            if any(v.tag == _LAYOUT_TAG for v in event.summary.value):
                return True
    return False
