"""Shared test helpers: a quiet single-CPU Trainer and readers of the event files it wrote."""

from typing import Any

import lightning.pytorch as pl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """``pl.Trainer`` on one CPU, without progress bar, model summary or checkpoints, logging every step.

    Any argument overrides these defaults (e.g. ``enable_checkpointing=True``).
    """
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "log_every_n_steps": 1,
    }
    return pl.Trainer(**{**defaults, **kwargs})


def events(trainer: pl.Trainer) -> EventAccumulator:
    """Every scalar, histogram, tensor and image event of ``trainer``'s TensorBoard logger."""
    ea = EventAccumulator(
        trainer.logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0}
    )
    ea.Reload()
    return ea


def scalars(ea: EventAccumulator, tag: str) -> dict[int, float]:
    """Step -> value of ``tag``; fails if a step was logged twice."""
    out: dict[int, float] = {}
    for e in ea.Scalars(tag):
        assert e.step not in out, f"{tag} logged twice at step {e.step}"
        out[e.step] = e.value
    return out
