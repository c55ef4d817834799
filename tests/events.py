"""Read what users see: the event files a test's Trainer wrote (shared by the test modules)."""

import lightning.pytorch as pl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


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
