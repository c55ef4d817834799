"""Send results to every Lightning logger that can take them. Logger specifics live here and nowhere else.

What each logger receives (rank zero only):

============================  =======  ==========================  ==============================  ==========
logger                        scalars  images (heatmaps, charts)   text (init and health reports)  histograms
============================  =======  ==========================  ==============================  ==========
``TensorBoardLogger``         yes      Images tab                  Text tab                        yes
``WandbLogger``               yes      ``log_image``               ``log_text`` (a table)          ``wandb.Histogram``
``MLFlowLogger``              yes      ``MlflowClient.log_image``  artifact ``{tag}/step_{n}.md``  no
``CometLogger``               yes      ``Experiment.log_image``    ``Experiment.log_text``         no
``NeptuneLogger``             yes      ``run[tag].append(File)``   ``run[tag].append(text)``       no
``CSVLogger``                 yes      ``{log_dir}/images/{tag}/step_{n}.png``  ``{log_dir}/text/{tag}/step_{n}.md``  no
any other ``Logger``          yes      no                          no                              no
============================  =======  ==========================  ==============================  ==========

A logger that cannot take a kind gets one warning naming everything it will miss, the first time one of those
kinds is sent. A write that fails (an API that changed, a full disk) is one warning and that kind is not sent to
that logger again: monitoring never stops a fit. The custom-scalars layout is TensorBoard's own.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from tensorboard.compat.proto.histogram_pb2 import HistogramProto
from tensorboard.compat.proto.summary_pb2 import Summary

from lightning_init.callbacks._compat import event_file_writer, logger_prefix
from lightning_init.stats import HostHistogram

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import Logger
    from matplotlib.figure import Figure

    from lightning_init.figures import Rendered

#: The kinds of output besides scalars, as named in warnings.
IMAGES, TEXT, HISTOGRAMS = "images", "text", "histograms"
_WHAT: dict[str, str] = {
    IMAGES: "images (the depth-profile heatmaps and charts)",
    TEXT: "text (the init report and the health reports)",
    HISTOGRAMS: "histograms (weight/, grad/, activation/)",
}


def tensorboard_writers(trainer: "pl.Trainer") -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` attached to ``trainer`` (empty on non-zero ranks)."""
    if trainer.global_rank != 0:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


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


# ----------------------------------------------------------------------------------------- per-logger senders
# Each sender takes (logger, [(tag, payload), ...], step): every item of one kind of one step, so that a logger able to
# take them at once does (one TensorBoard event, one W&B row); :func:`_each` makes one from a per-item function.
# Payloads: images a ``Rendered``, text Markdown, histograms a ``HostHistogram``. A logger class is matched by the
# names of its classes (subclasses included), so that optional packages (wandb, mlflow, comet_ml, neptune) are
# imported only by the sender that needs them.


def _tb_image(logger: Any, tag: str, image: Rendered, step: int) -> None:
    height, width = image.rgb.shape[:2]
    summary = Summary(
        value=[
            Summary.Value(
                tag=tag,
                image=Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=image.png),
            )
        ]
    )
    writer = logger.experiment
    if not _add_summary(writer, summary, step):
        writer.add_image(tag, image.rgb, global_step=step, dataformats="HWC")
    writer.flush()


def _tb_text(logger: Any, tag: str, markdown: str, step: int) -> None:
    # TensorBoard renders text summaries as Markdown: pipe tables show as tables.
    logger.experiment.add_text(tag, markdown, global_step=step)
    logger.experiment.flush()


def _tb_histograms(logger: Any, items: Sequence[tuple[str, HostHistogram]], step: int) -> None:
    """Every histogram of one step in ONE ``Summary`` event (as the scalars: :func:`_add_scalars_at_once`).

    ``add_histogram_raw`` per tag is one event and one trip through the writer thread's bounded queue each; with
    ~150 histograms (GPT-2 tiny, three monitors) the training thread waited ~13 ms per histogram step on that queue.
    One ``Summary`` with one value per tag reads back identically (``EventAccumulator`` iterates over its values).
    A writer that cannot take a built ``Summary`` gets ``add_histogram_raw`` per tag. Pre-binned either way: values
    beyond +-1e20, on which ``add_histogram`` raises "The histogram is empty", are drawn like any other.
    """
    summary = Summary(
        value=[
            Summary.Value(
                tag=tag,
                histo=HistogramProto(
                    min=h.min,
                    max=h.max,
                    num=h.num,
                    sum=h.sum,
                    sum_squares=h.sum_squares,
                    bucket_limit=h.bucket_limits,
                    bucket=h.bucket_counts,
                ),
            )
            for tag, h in items
        ]
    )
    if not _add_summary(logger.experiment, summary, step):
        for tag, h in items:
            logger.experiment.add_histogram_raw(
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


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row (an escaped pipe is a literal pipe)."""
    inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def markdown_table(markdown: str) -> tuple[list[str], list[list[str]]] | None:
    """The header and rows of the first pipe table in ``markdown`` (``None`` if it has none)."""
    lines = [line.strip() for line in markdown.splitlines()]
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and lines[i + 1].startswith("|") and set(lines[i + 1]) <= set("|-: "):
            header = _cells(lines[i])
            rows = []
            for line in lines[i + 2 :]:
                if not line.startswith("|"):
                    break
                rows.append((_cells(line) + [""] * len(header))[: len(header)])
            return header, rows
    return None


def _wandb_image(logger: Any, tag: str, image: Rendered, step: int) -> None:
    logger.log_image(key=tag, images=[image.rgb], step=step)


def _wandb_text(logger: Any, tag: str, markdown: str, step: int) -> None:
    table = markdown_table(markdown)
    if table is None:
        logger.log_text(key=tag, columns=["text"], data=[[markdown]], step=step)
    else:
        logger.log_text(key=tag, columns=table[0], data=table[1], step=step)


def _wandb_histograms(logger: Any, items: Sequence[tuple[str, HostHistogram]], step: int) -> None:
    """Every histogram of one step in one ``log_metrics`` call (one W&B history row, not one per tag)."""
    import wandb

    logged = {}
    for tag, h in items:
        edges = np.array([h.min, *h.bucket_limits], dtype=np.float64)
        edges[-1] = max(edges[-1], edges[-2])
        logged[tag] = wandb.Histogram(np_histogram=(np.asarray(h.bucket_counts), edges))
    logger.log_metrics(logged, step=step)


def _mlflow_image(logger: Any, tag: str, image: Rendered, step: int) -> None:
    logger.experiment.log_image(logger.run_id, image.rgb, key=tag, step=step)


def _mlflow_text(logger: Any, tag: str, markdown: str, step: int) -> None:
    logger.experiment.log_text(logger.run_id, markdown, f"{tag}/step_{step}.md")


def _comet_image(logger: Any, tag: str, image: Rendered, step: int) -> None:
    logger.experiment.log_image(image.rgb, name=tag, step=step)


def _comet_text(logger: Any, tag: str, markdown: str, step: int) -> None:
    logger.experiment.log_text(markdown, step=step, metadata={"tag": tag})


def _neptune_image(logger: Any, tag: str, image: Rendered, step: int) -> None:
    from neptune.types import File

    logger.run[tag].append(File.as_image(image.rgb.astype(np.float64) / 255.0), step=step)


def _neptune_text(logger: Any, tag: str, markdown: str, step: int) -> None:
    logger.run[tag].append(markdown, step=step)


def _file(logger: Any, kind: str, tag: str, step: int, suffix: str) -> Path:
    path = Path(logger.log_dir, kind, *tag.split("/")).joinpath(f"step_{step}{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _csv_image(logger: Any, tag: str, image: Rendered, step: int) -> None:
    _file(logger, "images", tag, step, ".png").write_bytes(image.png)


def _csv_text(logger: Any, tag: str, markdown: str, step: int) -> None:
    _file(logger, "text", tag, step, ".md").write_text(markdown + "\n")


Sender = Callable[[Any, Sequence[tuple[str, Any]], int], None]


def _each(send_one: Callable[[Any, str, Any, int], None]) -> Sender:
    """A sender that hands the items to ``send_one(logger, tag, payload, step)`` one by one."""

    def send(logger: Any, items: Sequence[tuple[str, Any]], step: int) -> None:
        for tag, payload in items:
            send_one(logger, tag, payload, step)

    return send


#: Logger class name -> the sender of each kind it can take (first matching class of the logger's MRO wins).
SENDERS: dict[str, dict[str, Sender]] = {
    "TensorBoardLogger": {IMAGES: _each(_tb_image), TEXT: _each(_tb_text), HISTOGRAMS: _tb_histograms},
    "WandbLogger": {IMAGES: _each(_wandb_image), TEXT: _each(_wandb_text), HISTOGRAMS: _wandb_histograms},
    "MLFlowLogger": {IMAGES: _each(_mlflow_image), TEXT: _each(_mlflow_text)},
    "CometLogger": {IMAGES: _each(_comet_image), TEXT: _each(_comet_text)},
    "NeptuneLogger": {IMAGES: _each(_neptune_image), TEXT: _each(_neptune_text)},
    "CSVLogger": {IMAGES: _each(_csv_image), TEXT: _each(_csv_text)},
}

#: Loggers already warned about (what they miss, or a failed write), so that each warning is given once.
_WARNED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def senders(logger: Logger) -> dict[str, Sender]:
    """What ``logger`` can take besides scalars: kind -> sender (see :data:`SENDERS`)."""
    for cls in type(logger).__mro__:
        if cls.__name__ in SENDERS:
            return SENDERS[cls.__name__]
    return {}


def _warn_once(logger: Any, key: str, message: str) -> None:
    warned = _WARNED.setdefault(logger, set())
    if key not in warned:
        warned.add(key)
        rank_zero_warn(message, category=UserWarning)


def _send(trainer: "pl.Trainer", kind: str, items: Sequence[tuple[str, Any]], step: int) -> None:
    """Send ``(tag, payload)`` items of ``kind`` to every logger of ``trainer`` that can take them (rank zero)."""
    if not items or trainer.global_rank != 0:
        return
    for logger in trainer.loggers:
        available = senders(logger)
        send = available.get(kind)
        name = type(logger).__name__
        if send is None:
            missed = [_WHAT[k] for k in _WHAT if k not in available]
            _warn_once(
                logger,
                "missing",
                f"lightning_init: {name} cannot take {', '.join(missed)}; it receives the scalars only of those. "
                "Add a TensorBoardLogger (or W&B) to see them.",
            )
            continue
        if kind in _WARNED.get(logger, set()):
            continue  # a write of this kind failed before
        try:
            send(logger, items, step)
        except Exception as err:  # a logger's failure must not stop the fit: said once, not retried
            _warn_once(logger, kind, f"lightning_init: sending {_WHAT[kind]} to {name} failed ({err!r}); not retried.")


def log_text(trainer: "pl.Trainer", tag: str, markdown: str, step: int) -> None:
    """Send a Markdown report to every logger that takes text (TensorBoard's Text tab renders pipe tables)."""
    _send(trainer, TEXT, [(tag, markdown)], step)


def wants_images(trainer: "pl.Trainer") -> bool:
    """Whether any logger of ``trainer`` takes images on this rank (else a figure need not even be drawn)."""
    return trainer.global_rank == 0 and any(IMAGES in senders(logger) for logger in trainer.loggers)


def log_image(
    trainer: "pl.Trainer",
    tag: str,
    image: Figure | Rendered | np.ndarray | Callable[[], Figure | None],
    step: int,
) -> None:
    """Send a picture to every logger that takes images: a matplotlib ``Figure`` (drawn once:
    :func:`lightning_init.figures.render`), a drawn :class:`~lightning_init.figures.Rendered`, an ``uint8``
    ``(H, W, 3)`` RGB array (encoded as PNG once), or a function that makes the figure (called only if some logger
    takes images; ``None``: nothing to draw).
    """  # noqa: D205
    from lightning_init.figures import Rendered, render

    if trainer.global_rank != 0:
        return
    if not wants_images(trainer):
        _send(trainer, IMAGES, [(tag, None)], step)  # nothing takes it: only the warning of what is missed
        return
    if callable(image):
        made = image()
        if made is None:
            return
        image = made
    if isinstance(image, Rendered):
        picture = image
    elif isinstance(image, np.ndarray):
        import io

        from PIL import Image

        arr = np.ascontiguousarray(image, dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(arr).save(buffer, format="PNG")
        picture = Rendered(rgb=arr, png=buffer.getvalue())
    else:
        picture = render(image)
    _send(trainer, IMAGES, [(tag, picture)], step)


def log_histograms(trainer: "pl.Trainer", histograms: Mapping[str, HostHistogram], step: int) -> None:
    """Send pre-binned histograms (finite values only) to every logger that takes histograms."""
    _send(trainer, HISTOGRAMS, list(histograms.items()), step)


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
    return _add_summary(logger.experiment, scalar_summary(metrics, f"{prefix}{join}" if prefix else ""), step)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: Serialized ``Summary.value`` entry of each tag up to its float (the tags repeat every logging step).
_SCALAR_HEADS: dict[str, bytes] = {}


def _scalar_head(tag: str) -> bytes:
    head = _SCALAR_HEADS.get(tag)
    if head is None:
        if len(_SCALAR_HEADS) > 1_000_000:  # bounded: a run with ever new tags does not grow it forever
            _SCALAR_HEADS.clear()
        raw = tag.encode()
        value = b"\x0a" + _varint(len(raw)) + raw + b"\x15"  # Value.tag (field 1), then Value.simple_value (field 2)
        head = _SCALAR_HEADS[tag] = b"\x0a" + _varint(len(value) + 4) + value  # Summary.value (field 1)
    return head


class _ScalarTemplate(NamedTuple):
    """The wire format of one ``Summary`` for a fixed sequence of tags, values zeroed, and where the values go."""

    wire: np.ndarray  # uint8
    slots: np.ndarray  # int64 byte offsets of every value's 4 bytes, [values, 4]


#: (prefix, tags) -> template; the tags of a monitor's logging step repeat every step (a few entries per run).
_SCALAR_TEMPLATES: dict[tuple[str, tuple[str, ...]], _ScalarTemplate] = {}


def _scalar_template(prefix: str, keys: tuple[str, ...]) -> _ScalarTemplate:
    found = _SCALAR_TEMPLATES.get((prefix, keys))
    if found is not None:
        return found
    if len(_SCALAR_TEMPLATES) >= 64:  # bounded: a run whose tags change every step does not grow it forever
        _SCALAR_TEMPLATES.clear()
    heads = [_scalar_head(prefix + key if prefix else key) for key in keys]
    ends = np.cumsum([len(h) + 4 for h in heads], dtype=np.int64)
    wire = np.frombuffer(b"".join(h + b"\0\0\0\0" for h in heads), dtype=np.uint8).copy()
    slots = (ends - 4)[:, None] + np.arange(4, dtype=np.int64)
    template = _SCALAR_TEMPLATES[(prefix, keys)] = _ScalarTemplate(wire, slots)
    return template


def scalar_summary(metrics: Mapping[str, float], prefix: str = "") -> Summary:
    """One ``Summary`` with a ``simple_value`` per metric (tag ``prefix + key``), built from its wire format.

    Equal to ``Summary(value=[Summary.Value(tag=..., simple_value=v), ...])`` (float32 values; beyond its range,
    ``inf``), many times cheaper for thousands of scalars: the message's bytes for a sequence of tags are kept (a
    monitor logs the same tags every logging step), the values are packed in one numpy cast and written into their
    slots in one vectorized store, and the message is parsed once (in C).
    """
    if not metrics:
        return Summary()
    with np.errstate(over="ignore"):
        packed = np.fromiter(metrics.values(), dtype=np.float64, count=len(metrics)).astype("<f4")
    template = _scalar_template(prefix, tuple(metrics))
    wire = template.wire.copy()
    wire[template.slots] = packed.view(np.uint8).reshape(-1, 4)
    return Summary.FromString(wire.tobytes())


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


#: Charts requested by monitors, per trainer (weakly held), until the layout is written.
_LAYOUT_REQUESTS: weakref.WeakKeyDictionary[Any, _Requests] = weakref.WeakKeyDictionary()
#: Writers that already received a layout (``SummaryWriter.add_custom_scalars`` may be called once per writer).
_LAYOUT_WRITTEN: weakref.WeakSet[Any] = weakref.WeakSet()

#: The tag of the total: layers flagged by any rule (every monitor of the trainer) at the latest logging step.
HEALTH_TOTAL = "health/total"
#: The order of the health charts (the first category of the layout) and their titles.
_HEALTH_GROUPS: dict[str, str] = {
    "grad": "health: gradient rules",
    "activation": "health: activation rules",
    "weight": "health: weight rules",
    "output_grad": "health: backprop rules",
}


class _Requests:
    """What the monitors of one trainer asked for: health tags per kind, statistics per kind, per-layer charts."""

    def __init__(self) -> None:
        self.health: dict[str, list[str]] = {}
        self.stats: dict[str, list[str]] = {}
        self.per_layer: set[str] = set()


def request_health_chart(trainer: "pl.Trainer", kind: str = "", tags: Sequence[str] = ()) -> None:
    """Ask for the health charts: ``health/total`` and one chart of ``kind``'s ``health/*`` tags (all if empty)."""
    requests = _LAYOUT_REQUESTS.setdefault(trainer, _Requests())
    merged = requests.health.setdefault(kind, [])
    merged.extend(t for t in tags if t not in merged)


def request_layout(trainer: "pl.Trainer", kind: str, stats: Sequence[str], *, per_layer: bool = False) -> None:
    """Ask for ``kind``'s charts: the summary (``grad_norm/total``), and with ``per_layer`` one multi-line chart per
    ``(kind, stat)`` with every layer on it (:func:`layout`).
    """  # noqa: D205
    requests = _LAYOUT_REQUESTS.setdefault(trainer, _Requests())
    merged = requests.stats.setdefault(kind, [])
    merged.extend(s for s in stats if s not in merged)
    if per_layer:
        requests.per_layer.add(kind)


def _exact(tags: Sequence[str]) -> str:
    return "^(" + "|".join(re.escape(t) for t in tags) + ")$"


def layout(
    charts: Mapping[str, Sequence[str]],
    health: Mapping[str, Sequence[str]] | None = None,
    per_layer: Iterable[str] | None = None,
) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout, health first, few lines per chart by default.

    1. ``lightning_init/health`` (when health was requested): ``health/total`` (one line per run), then one chart per
       kind with that kind's ``health/*`` counts (matched exactly; ``health/*`` as a whole when no tags were given).
    2. ``lightning_init/summary``: ``grad_norm/total`` when gradients are monitored.
    3. Only for the kinds in ``per_layer``: ``lightning_init/{kind}``, one ``Multiline`` chart ``{kind}_{stat}`` per
       statistic matching ``^{kind}_{stat}/``, every layer a line. Opt-in: with many layers and many runs such charts
       draw hundreds of lines (the depth-profile figures in the Images tab show the same at a glance).

    Args:
        charts: kind -> statistics the monitors log.
        health: kind -> its ``health/*`` tags (``""`` -> all ``health/*``); ``None``: no health charts.
        per_layer: kinds whose per-layer charts are wanted.
    """
    out: dict[str, dict[str, list[Any]]] = {}
    if health is not None:
        group: dict[str, list[Any]] = {HEALTH_TOTAL: ["Multiline", [_exact([HEALTH_TOTAL])]]}
        for kind in sorted(health, key=lambda k: list(_HEALTH_GROUPS).index(k) if k in _HEALTH_GROUPS else 99):
            tags = list(health[kind])
            if tags:
                group[_HEALTH_GROUPS.get(kind, f"health: {kind} rules")] = ["Multiline", [_exact(tags)]]
            else:
                group["health"] = ["Multiline", ["^health/"]]
        out["lightning_init/health"] = group
    if "grad" in charts:
        out["lightning_init/summary"] = {"grad_norm/total": ["Multiline", ["^grad_norm/total"]]}
    for kind in per_layer or ():
        stats = charts.get(kind, [])
        if stats:
            out[f"lightning_init/{kind}"] = {f"{kind}_{stat}": ["Multiline", [f"^{kind}_{stat}/"]] for stat in stats}
    return out


def write_layout(trainer: "pl.Trainer") -> None:
    """Write the merged layout of every monitor of ``trainer`` once per run directory (rank zero).

    A fit resumed from a checkpoint whose logger writes into the directory of the run it continues (same ``version``)
    finds that run's layout there and does not write a second one.

    Called when training starts, after every monitor's ``setup`` requested its charts, because TensorBoard keeps one
    layout per run and ``add_custom_scalars`` may be called only once per writer.
    """
    requests = _LAYOUT_REQUESTS.pop(trainer, None)
    if requests is None:
        return
    charts = layout(requests.stats, requests.health or None, sorted(requests.per_layer))
    if not charts:
        return
    resuming = trainer.ckpt_path is not None
    for writer in tensorboard_writers(trainer):
        if writer in _LAYOUT_WRITTEN:
            continue
        if resuming and _run_has_layout(writer.get_logdir()):
            _LAYOUT_WRITTEN.add(writer)  # a resumed run writing into the directory of the run it continues
            continue
        writer.add_custom_scalars(charts)
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
