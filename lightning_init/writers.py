"""Send results to Lightning loggers. TensorBoard specifics live here and nowhere else."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import TensorBoardLogger

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
