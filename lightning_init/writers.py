"""Send results to Lightning loggers. TensorBoard specifics live here and nowhere else."""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import TensorBoardLogger

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


def log_scalars(trainer: "pl.Trainer", metrics: Mapping[str, float], step: int) -> None:
    """Send ``metrics`` to every attached logger's ``log_metrics`` (TensorBoard, CSV, MLflow...), rank zero only."""
    if not metrics or trainer.global_rank != 0:
        return
    for logger in trainer.loggers:
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


def request_layout(trainer: "pl.Trainer", kind: str, stats: Sequence[str]) -> None:
    """Ask for one multi-line chart per ``(kind, stat)`` in the run's custom-scalars layout (:func:`write_layout`)."""
    charts = _LAYOUT_REQUESTS.setdefault(trainer, {})
    merged = charts.setdefault(kind, [])
    merged.extend(s for s in stats if s not in merged)


def layout(charts: Mapping[str, Sequence[str]]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: category ``lightning_init/{kind}``, one ``Multiline`` chart per stat.

    Each chart is titled ``{kind}_{stat}`` and matches the regex ``^{kind}_{stat}/``, so every layer (and
    ``grad_norm/total``) is a line of the same chart: a vanishing or exploding depth profile is visible at a glance.
    """
    return {
        f"lightning_init/{kind}": {f"{kind}_{stat}": ["Multiline", [f"^{kind}_{stat}/"]] for stat in stats}
        for kind, stats in charts.items()
        if stats
    }


def write_layout(trainer: "pl.Trainer") -> None:
    """Write the merged layout of every monitor of ``trainer`` once per TensorBoard writer (rank zero).

    Called when training starts, after every monitor's ``setup`` requested its charts, because TensorBoard keeps one
    layout per run and ``add_custom_scalars`` may be called only once per writer.
    """
    charts = _LAYOUT_REQUESTS.pop(trainer, None)
    if not charts:
        return
    for writer in tensorboard_writers(trainer):
        if writer in _LAYOUT_WRITTEN:
            continue
        writer.add_custom_scalars(layout(charts))
        _LAYOUT_WRITTEN.add(writer)
