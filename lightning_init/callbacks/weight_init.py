"""``WeightInit``: when to initialize (fit start, never on resume, identical on every DDP rank).

The math lives in :mod:`lightning_init.init` / :mod:`lightning_init.schemes`; this callback only schedules it.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

# Runtime import on purpose: LightningCLI (jsonargparse) checks these restricted types while parsing the config, so an
# out-of-range value is a parser error before the callback is built.
from lightning_init.argtypes import FiniteFloat, OpenUnitInterval, PositiveFiniteFloat, PositiveInt
from lightning_init.callbacks._compat import sharded_strategy, suspended_fsdp_hooks
from lightning_init.checks import check_bool, check_seed
from lightning_init.graph import call_with, to_device
from lightning_init.init import RESIDUAL_PRESETS, InitReport, ResidualPreset, init_module, materialize_
from lightning_init.lsuv import check_lsuv_args, default_forward
from lightning_init.rules import InitRule, as_rules
from lightning_init.schemes import (
    DATA_SCHEMES,
    FanMode,
    Nonlinearity,
    SchemeName,
    check_choice,
    check_magnitude,
    validate_scheme,
)
from lightning_init.sharded import init_sharded_, is_sharded
from lightning_init.writers import log_text

if TYPE_CHECKING:
    import lightning.pytorch as pl

#: Name of the optional LightningModule method that runs the model on a batch for LSUV: ``lsuv_forward(batch)``.
LSUV_FORWARD_HOOK = "lsuv_forward"


class WeightInit(Callback):
    r"""Apply a weight initializer to the LightningModule once, when fit starts.

    Every layer the module owns at ``on_fit_start`` is initialized, including layers built in ``setup`` or
    ``configure_model`` (both run before). ``scheme="auto"`` picks per layer from the activation that follows it
    (Xavier for tanh/sigmoid and for a layer followed by nothing, Kaiming for the ReLU family and GELU/SiLU/ELU/
    Softplus, LeCun normal for SELU); it runs one side-effect-free forward of ``example_input_array`` when the module
    has one. See :func:`lightning_init.init_module` for what norms, embeddings, RNNs and attention get.

    - **Resume:** when fit resumes from a checkpoint (``ckpt_path``) or this callback's state was restored from one
      (``load_state_dict``), it changes nothing and logs one info line.
    - **Reuse:** the same object in a later fit initializes that fit's model (a sweep loop that reuses its callback
      list gets the scheme's weights every time; the info line says it initialized a new model), unless the model is
      the very one it initialized before (a second ``fit`` continuing training: its weights are kept).
    - **DDP:** parameters are broadcast from rank 0 after init, so every rank holds the same weights.
    - **ModelParallelStrategy (FSDP2 ``fully_shard``, tensor parallel):** every rank runs the initializer on
      whole-shape copies of the sharded parameters, drawn from one stream (``seed``, or a seed drawn on rank 0 and
      broadcast), and keeps its own shard: the sharded model holds bit for bit what the unsharded model initialized
      with that seed holds (:func:`lightning_init.sharded.init_sharded_`; FSDP2's hooks are paused meanwhile, so
      ``auto``'s data-flow trace runs on the copies; peak memory: one whole copy of the parameters per rank during
      init). LSUV is refused. For LSUV, or for a model too large for one whole copy, call
      ``lightning_init.init_module(self, ..., seed=...)`` inside ``configure_model`` before ``fully_shard``.
    - **FSDPStrategy (FSDP1) / DeepSpeed:** refused (parameters are flattened shards); use ``ModelParallelStrategy``
      with ``fully_shard``, or ``init_module`` inside ``configure_model``.
    - **Report:** a per-layer table (layer, shape, scheme, fan_in, fan_out, gain, expected std, actual std) written
      to TensorBoard's Text tab under ``weight_init/report`` (every logger that takes text) and kept as
      ``callback.report`` (``report.to_text()`` prints it). The console gets one line on rank zero: how many tensors
      got which scheme, the largest deviation of a measured std from its formula, and the layers left symmetric or
      unresolved.
    - **Symmetry:** layers whose output units are all identical after init (zeros, constants) get a ``UserWarning``.
    - Torch's global RNG is never used or changed: ``seed`` seeds a private ``torch.Generator``; without it the
      generator is seeded from the OS.

    **LSUV** (``scheme="lsuv"``, Mishkin & Matas 2016, data-dependent): applied at the first training batch instead of
    fit start (``on_train_batch_start`` of step 0, on the batch Lightning hands it, already on the device: the
    dataloader is not iterated again, so its order and RNG are untouched). Linear and Conv1d/2d/3d layers get an
    orthogonal weight and a zero bias, then, in forward order, are rescaled until their output variance on that batch
    is 1 within ``lsuv_tol`` (at most ``lsuv_max_iters`` rescalings each). Every other layer gets what ``auto`` gives
    it (norms weight 1 / bias 0, embeddings N(0, 1), RNN gate blocks, ...); rules apply as for any scheme (``skip``
    leaves a layer untouched, another scheme takes it away from LSUV, ``scheme: lsuv`` in a rule gives LSUV to the
    matched layers only). The passes run in eval mode and leave each module's train/eval flag, buffers and torch's
    global RNG as they were. Per-layer iterations and variances are appended to the report; layers that cannot reach
    unit variance (zero output, NaN) are reported and warned about, never looped on. Under DDP every rank sees its
    own batch, so rank 0's result is broadcast.

    How the batch reaches the model: ``pl_module(batch)`` for a tensor, ``pl_module(batch[0])`` for a tuple/list
    (the ``(x, y)`` convention), ``pl_module(batch["x"])`` for a mapping. Anything else: define
    ``lsuv_forward(self, batch)`` on the LightningModule; it is called instead (under ``torch.no_grad()``, in eval
    mode) and may also ignore ``batch`` and run the model on data of your choice (Python-only way to give LSUV
    another batch)::

        class MyModel(pl.LightningModule):
            def lsuv_forward(self, batch):
                return self(batch["image"])

    Args:
        scheme: The initializer (``auto`` by default).
        mean: ``normal`` / ``trunc_normal`` mean (default 0).
        std: ``normal`` / ``trunc_normal`` standard deviation, > 0 (default 1).
        a: ``uniform`` / ``trunc_normal`` lower bound, or leaky_relu's negative slope for Kaiming / ``auto``.
        b: ``uniform`` / ``trunc_normal`` upper bound.
        mode: Kaiming fan mode (default ``fan_in``).
        nonlinearity: Kaiming / Xavier / orthogonal gain's nonlinearity; for ``auto``, overrides detection.
        gain: Xavier / orthogonal gain, > 0 (default 1).
        value: ``constant``'s value.
        bias: Constant for every bias (default 0).
        rules: Per-layer overrides, first match wins (``name`` glob and/or ``type``, a scheme and its parameters, or
            ``scheme: skip`` to leave layers untouched, e.g. a pretrained backbone).
        seed: Reproducible weights, independent of ``torch.manual_seed``.
        weights_loaded: You loaded weights yourself (fine-tuning): only layers that a rule matches are initialized,
            everything else keeps its weights.
        lsuv_tol: LSUV's tolerance on each layer's output variance, ``|var - 1| <= lsuv_tol``, in ``(0, 1)``
            (default 0.1). Only with ``scheme="lsuv"`` or an ``lsuv`` rule.
        lsuv_max_iters: LSUV's maximum number of rescalings per layer, ``>= 1`` (default 10). Only with LSUV.
        residual: A residual preset (``"none"``, ``"zero_last_norm"``, ``"scaled"``, ``"fixup"``; see
            :func:`lightning_init.init_module`); needs ``example_input_array`` unless the model traces with torch.fx.

    **Lazy modules** (``nn.LazyLinear``...): materialized by the dry forward of ``example_input_array``; without one,
    initialization waits for the first training batch (as LSUV does) and materializes them with a dry forward of that
    batch (the same conventions as LSUV: ``pl_module(batch)``, ``batch[0]``, ``batch["x"]`` or ``lsuv_forward``).

    Raises:
        ValueError: In ``__init__``, for an unknown scheme (with the closest name), a parameter the scheme does not
            take, a value of the wrong type (``std="0.1"``, ``seed=1.5``, ``weights_loaded="no"``), not finite
            (``bias=nan``) or out of range; at fit start, for a rule that matches no layer, or with LSUV a model
            with neither ``forward`` nor ``lsuv_forward``; with LSUV, at the first training batch and before any
            weight changes, for a batch the model's forward cannot take (wrong shape, unreadable structure).
        RuntimeError: In ``setup``, under FSDPStrategy or DeepSpeedStrategy, or with LSUV under ModelParallelStrategy.

    Example::

        import lightning.pytorch as pl
        from lightning_init import WeightInit

        trainer = pl.Trainer(callbacks=[WeightInit(scheme="kaiming_normal", nonlinearity="relu", seed=0)])
        trainer = pl.Trainer(callbacks=[WeightInit(scheme="lsuv", lsuv_tol=0.05, seed=0)])
    """

    def __init__(
        self,
        scheme: SchemeName = "auto",
        *,
        mean: FiniteFloat | None = None,
        std: PositiveFiniteFloat | None = None,
        a: FiniteFloat | None = None,
        b: FiniteFloat | None = None,
        mode: FanMode | None = None,
        nonlinearity: Nonlinearity | None = None,
        gain: PositiveFiniteFloat | None = None,
        value: FiniteFloat | None = None,
        bias: FiniteFloat = 0.0,
        rules: list[InitRule] | None = None,
        seed: int | None = None,
        weights_loaded: bool = False,
        lsuv_tol: OpenUnitInterval | None = None,
        lsuv_max_iters: PositiveInt | None = None,
        residual: ResidualPreset = "none",
    ) -> None:
        params = {"mean": mean, "std": std, "a": a, "b": b, "mode": mode, "nonlinearity": nonlinearity}
        params |= {"gain": gain, "value": value}
        self.scheme = scheme
        self.params: dict[str, Any] = {k: v for k, v in params.items() if v is not None}
        validate_scheme(scheme, self.params)
        self.rules = as_rules(rules)
        self.bias = check_magnitude("bias", bias)
        self.seed = check_seed("seed", seed)
        self.weights_loaded = check_bool("weights_loaded", weights_loaded)
        self.lsuv_tol = 0.1 if lsuv_tol is None else lsuv_tol
        self.lsuv_max_iters = 10 if lsuv_max_iters is None else lsuv_max_iters
        check_choice("residual", residual, RESIDUAL_PRESETS)
        self.residual = residual
        self._data_dependent = scheme in DATA_SCHEMES or any(r.scheme in DATA_SCHEMES for r in self.rules)
        if self._data_dependent:
            check_lsuv_args(self.lsuv_tol, self.lsuv_max_iters, prefix="lsuv_")
            if scheme == "lsuv" and self.bias != 0.0:
                raise ValueError(
                    f"`bias`={bias!r} cannot be used with scheme 'lsuv': LSUV zeros the biases it rescales."
                )
        else:
            for key, given in (("lsuv_tol", lsuv_tol), ("lsuv_max_iters", lsuv_max_iters)):
                if given is not None:
                    raise ValueError(
                        f"`{key}`={given!r} is only used by scheme 'lsuv' "
                        f"(scheme is {scheme!r} and no rule uses 'lsuv')."
                    )
        self.report: InitReport | None = None
        self._applied = False  # this object initialized a model (in this or an earlier fit)
        self._restored = False  # load_state_dict said the checkpointed run had initialized its model
        self._model: weakref.ref[torch.nn.Module] | None = None  # the model it initialized, not kept alive
        self._pending = False

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        refused = sharded_strategy(trainer.strategy, model_parallel=False)
        if refused is not None:
            raise RuntimeError(
                f"WeightInit cannot initialize parameters under {refused}: it flattens them into shards. Use "
                "`ModelParallelStrategy` with `fully_shard` in `configure_model` (FSDP2), or remove WeightInit and "
                "call `lightning_init.init_module(self, ...)` (same scheme and parameters) inside your "
                "LightningModule's `configure_model` instead."
            )
        if self._data_dependent and sharded_strategy(trainer.strategy) is not None:
            raise RuntimeError(
                f"WeightInit(scheme={self.scheme!r}) cannot run LSUV under {type(trainer.strategy).__name__}: LSUV "
                "rescales each layer from forward passes of whole weights, which a sharded model does not hold. Call "
                "`lightning_init.init_module(self, 'lsuv', lsuv_batch=batch, seed=0)` inside `configure_model` "
                "before `fully_shard`, with the same batch and seed on every rank, or train the LSUV step under "
                "`strategy='ddp'`."
            )

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        restored, self._restored = self._restored, False
        if trainer.ckpt_path is not None or restored:
            self._applied, self._model = True, weakref.ref(pl_module)
            where = f"checkpoint {trainer.ckpt_path}" if trainer.ckpt_path is not None else "restored callback state"
            rank_zero_info(f"WeightInit: resuming from {where}; weights left unchanged.")
            return
        if self._model is not None and self._model() is pl_module:
            rank_zero_info(
                "WeightInit: this callback initialized this same model in an earlier fit; weights left unchanged "
                "(training continues from them)."
            )
            return
        if self.weights_loaded and not self.rules:
            self._applied, self._model = True, weakref.ref(pl_module)
            rank_zero_info("WeightInit: weights_loaded=True and no rules; weights left unchanged.")
            return
        if _has_lazy(pl_module) and pl_module.example_input_array is not None:
            x = to_device(pl_module.example_input_array, pl_module.device)
            materialize_(pl_module, lambda: call_with(pl_module, x))  # before the monitors' first look, too
        if self._data_dependent or _has_lazy(pl_module):
            if self._data_dependent:
                _check_lsuv_forward(pl_module)
            self._pending = True  # applied at the first training batch: see on_train_batch_start
            return
        self._apply(trainer, pl_module, batch=None)

    @override
    def on_train_batch_start(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        if self._pending:
            self._apply(trainer, pl_module, batch=batch)

    @override
    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._pending:
            self._pending = False
            rank_zero_warn(f"WeightInit({self.scheme!r}): fit ended before the first training batch; nothing applied.")

    def _apply(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any) -> None:
        """Initialize, synchronize ranks, report. The one place a scheme is resolved and applied."""
        again = self._applied  # this object initialized another model in an earlier fit
        if batch is not None and _has_lazy(pl_module) and pl_module.example_input_array is None:
            forward = _lsuv_forward(pl_module) or default_forward
            materialize_(pl_module, lambda: forward(pl_module, batch))
        if batch is not None and self._data_dependent:
            _probe_lsuv_forward(pl_module, batch, self.scheme, self.lsuv_tol, self.lsuv_max_iters)
        sharded = any(is_sharded(p) for p in pl_module.parameters())
        seed = self.seed
        if sharded and seed is None:  # one stream for every rank's shards: rank 0's OS-seeded draw
            seed = int(trainer.strategy.broadcast(secrets.randbits(62)))

        def run(module: torch.nn.Module) -> InitReport:
            return init_module(
                module,
                self.scheme,
                rules=self.rules,
                bias=self.bias,
                seed=seed,
                example_input=pl_module.example_input_array,
                only_rules=self.weights_loaded,
                lsuv_batch=batch,
                lsuv_forward=_lsuv_forward(pl_module),
                lsuv_tol=self.lsuv_tol,
                lsuv_max_iters=self.lsuv_max_iters,
                residual=self.residual,
                **self.params,
            )

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if sharded:  # whole-shape copies, FSDP2's hooks paused: a data-flow trace runs on the copies only
                with suspended_fsdp_hooks(pl_module):
                    report = init_sharded_(pl_module, run)
            else:
                report = run(pl_module)
        if not sharded:
            _broadcast_from_rank_zero(trainer, pl_module)
        self._applied, self._pending, self.report = True, False, report
        self._model = weakref.ref(pl_module)
        for w in caught:
            rank_zero_warn(str(w.message), category=w.category)
        note = (
            " (a new model: this callback initialized another one in an earlier fit; nothing was restored from a "
            "checkpoint)"
            if again
            else ""
        )
        rank_zero_info(f"WeightInit ({self.scheme}){note}: {_summary(report)}")
        log_text(trainer, "weight_init/report", report.to_markdown(), trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"applied": self._applied or self._restored}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Called when a checkpoint is restored: the checkpointed run's model was initialized, and the weights about to
        # be (or just) loaded are its trained weights. Consumed by the next on_fit_start.
        self._restored = bool(state_dict.get("applied", False))


def _has_own_forward(pl_module: torch.nn.Module) -> bool:
    """Whether ``pl_module``'s class defines ``forward`` (nn.Module's and LightningModule's only raise)."""
    from lightning.pytorch import LightningModule

    forward = getattr(type(pl_module), "forward", None)
    return forward not in (None, torch.nn.Module.forward, LightningModule.forward)


def _check_lsuv_forward(pl_module: "pl.LightningModule") -> None:
    """Refuse, at fit start, a model LSUV cannot run: neither ``forward`` nor ``lsuv_forward(self, batch)``."""
    if not callable(getattr(pl_module, LSUV_FORWARD_HOOK, None)) and not _has_own_forward(pl_module):
        raise ValueError(
            f"WeightInit(scheme='lsuv') runs the model on the first training batch, but {type(pl_module).__name__} "
            f"defines neither `forward` nor `{LSUV_FORWARD_HOOK}(self, batch)`: define `forward`, or "
            f"`{LSUV_FORWARD_HOOK}(self, batch)` returning the model's output on the batch."
        )


def _describe_batch(batch: Any) -> str:
    if isinstance(batch, torch.Tensor):
        return f"a tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, (tuple, list)):
        first = f", first element {_describe_batch(batch[0])}" if batch else ""
        return f"a {type(batch).__name__} of {len(batch)}{first}"
    if isinstance(batch, dict):
        return f"a dict with keys {sorted(map(str, batch))[:10]}"
    return f"a {type(batch).__name__}"


def _probe_lsuv_forward(pl_module: "pl.LightningModule", batch: Any, scheme: str, tol: float, max_iters: int) -> None:
    """Run LSUV's forward once on ``batch`` before any weight changes; refuse with a clear message if it fails.

    The probe runs like LSUV's own passes: eval mode, ``torch.no_grad()``, torch's RNG forked, each module's
    ``training`` flag restored; compiled code runs eagerly (``torch.compiler.set_stance("force_eager")``), so the probe
    compiles nothing that LSUV's hooked passes would then reuse.
    """
    custom = callable(getattr(pl_module, LSUV_FORWARD_HOOK, None))
    if not custom:
        check_lsuv_args(tol, max_iters, batch)  # a batch the default forward cannot read: its own message
    forward = _lsuv_forward(pl_module) or default_forward
    flags = [(m, m.training) for m in pl_module.modules()]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), _eager():
            for m, _ in flags:
                m.training = False
            forward(pl_module, batch)
    except Exception as err:
        how = f"`{LSUV_FORWARD_HOOK}(batch)`" if custom else _default_call(batch)
        raise ValueError(
            f"WeightInit({scheme!r}): LSUV runs the model on the first training batch ({_describe_batch(batch)}) "
            f"through {how}, which failed with {type(err).__name__}: {err}. No weight was changed. "
            + (
                f"Fix `{LSUV_FORWARD_HOOK}`."
                if custom
                else f"Define `{LSUV_FORWARD_HOOK}(self, batch)` on the LightningModule to say how the model consumes "
                "a batch."
            )
        ) from err
    finally:
        for m, training in flags:
            m.training = training


def _eager() -> contextlib.AbstractContextManager[Any]:
    """Run ``torch.compile``d code eagerly inside the block (torch >= 2.6; earlier versions: no change)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _default_call(batch: Any) -> str:
    if isinstance(batch, torch.Tensor):
        return "the default `pl_module(batch)`"
    if isinstance(batch, (tuple, list)):
        return "the default `pl_module(batch[0])`"
    return "the default `pl_module(batch['x'])`"


def _lsuv_forward(pl_module: "pl.LightningModule") -> Callable[[torch.nn.Module, Any], Any] | None:
    """The LightningModule's ``lsuv_forward(batch)`` as LSUV's ``forward(module, batch)``, or ``None`` (default)."""
    method = getattr(pl_module, LSUV_FORWARD_HOOK, None)
    if not callable(method):
        return None
    return lambda _module, batch: method(batch)


def _has_lazy(module: torch.nn.Module) -> bool:
    return any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in module.parameters())


def _broadcast_from_rank_zero(trainer: "pl.Trainer", module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (DDP broadcast only once, when it wrapped the model)."""
    if trainer.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        torch.distributed.broadcast(tensor.data, src=0)


#: Tensors below this many elements are left out of the console line's std check (their sample std is too noisy).
_STD_CHECK_MIN_NUMEL = 10_000


def _summary(report: InitReport) -> str:
    """The console line for ``report``: tensors per scheme, the worst measured-vs-formula std, what needs a look."""
    counts: dict[str, int] = {}
    for row in report.rows:
        counts[row.scheme] = counts.get(row.scheme, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    schemes = ", ".join(f"{name} x{n}" for name, n in ranked[:4]) + (
        f", {len(ranked) - 4} more" if len(ranked) > 4 else ""
    )
    parts = [f"{len(report.rows)} tensors ({schemes}), biases {report.bias:g}"]
    checked = [
        abs(r.actual_std / r.expected_std - 1)
        for r in report.rows
        if math.prod(r.shape) >= _STD_CHECK_MIN_NUMEL and math.isfinite(r.expected_std) and r.expected_std > 0
    ]
    if checked:
        parts.append(f"measured std within {100 * max(checked):.1f} % of the formula on {len(checked)} of them")
    if report.symmetric:
        parts.append(f"SYMMETRIC: {', '.join(report.symmetric)}")
    if report.unresolved:
        parts.append(f"auto could not resolve (xavier_normal): {', '.join(report.unresolved)}")
    parts.append("per-layer table: Text tab `weight_init/report`, or `.report.to_text()`")
    return "; ".join(parts) + "."
