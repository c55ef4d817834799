"""``LightningInitCLI``: a ``LightningCLI`` whose config mistakes all end as parser errors (one line, exit code 2).

LightningCLI (jsonargparse) already refuses a wrong type or a value outside a restricted type (``PositiveInt``,
``OpenUnitInterval``, ... see :mod:`lightning_init.types`) while it parses, with ``error: Parser key "...": ...`` and
exit code 2. A check that only ``__init__`` can make (two arguments that contradict each other, a parameter of
another scheme) raises ``ValueError`` later, while the config's classes are instantiated, and plain LightningCLI shows
it as a traceback. This subclass turns such a ``ValueError`` into the same kind of parser error, naming the class
that refused (``error: WeightInit: `mode`='fan_in' is not a parameter of scheme 'normal' ...``).

Use it in a script exactly like ``LightningCLI``::

    from lightning_init.lightning_cli import LightningInitCLI

    LightningInitCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True)
"""

from __future__ import annotations

import re
import sys
import traceback
from types import TracebackType
from typing import IO, Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

__all__ = ["LightningInitCLI", "OneLineErrorParser", "condense_error", "refusing_class"]

_KEY = re.compile(r'^\s*Parser key "(?P<key>[^"]+)":\s*$')
_CLASS = re.compile(r"^\s*- Problem with given class_path '(?P<cls>[^']+)':\s*$")
_GIVEN = re.compile(r"^\s*Given value: (?P<value>.*)$")
#: Lines of a jsonargparse union message that say what the value is *not* (the other members of ``X | None``, the
#: subclass forms), not why it was refused.
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Expected a <class 'NoneType'>",
    "Not a valid subclass of",
    "Subclass types expect one of",
    "- a class path (str)",
    "- a dict with",
    "- a dict without",
)


def condense_error(message: str) -> str:
    """One line from a jsonargparse error: the key (with the class that owns it), the reason and the given value.

    A value refused inside ``trainer.callbacks`` is reported by jsonargparse as a tree of union alternatives (the
    callback list, a single callback, ``None``; the restricted type, ``None``). Only one branch says why: the innermost
    ``Parser key``, its first reason and its given value, e.g. ``trainer.callbacks: WeightInit.std: Not of type
    PositiveFloat: does not conform to restriction v>0 (given: 0)``. Messages that are not such trees are returned
    with their lines joined.
    """
    lines = message.splitlines()
    keys = [m["key"] for m in map(_KEY.match, lines) if m]
    classes = [m["cls"].rsplit(".", 1)[-1] for m in map(_CLASS.match, lines) if m]
    reasons = []
    for line in lines:
        text = line.strip()
        if not text or _KEY.match(line) or _CLASS.match(line) or _GIVEN.match(line):
            continue
        if any(text.startswith(n) or text.startswith(f"- {n}") for n in _NOISE):
            continue
        reasons.append(text.removeprefix("- "))
    given = next((m["value"] for m in map(_GIVEN.match, lines) if m), None)
    if not reasons:
        return " ".join(t.strip() for t in lines if t.strip())
    where = (
        ".".join(keys[-1:]) if not classes else f"{keys[0]}: {classes[-1]}" + (f".{keys[-1]}" if len(keys) > 1 else "")
    )
    reason = reasons[0]
    shown = given is None or any(f"{w} {given}" in reason for w in ("got", "value:", "Got value:")) or len(given) > 200
    value = "" if shown else f" (given: {given})"
    return f"{where}: {reason}{value}" if where else reason


class OneLineErrorParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose errors are one usage line and one ``error:`` line (exit code 2).

    The reason of a refused value is condensed by :func:`condense_error`; ``--help`` lists every option as usual.
    """

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # Nested parsers (a subclass's init_args) raise instead of exiting: their message is part of the outer one,
        # which is condensed once, when it is shown.
        super().error(condense_error(message) if self.exit_on_error else message, ex)

    @override
    def print_usage(self, file: IO[str] | None = None) -> None:  # type: ignore[override]
        (file or sys.stderr).write(f"usage: {self.prog} [options]\n")


def refusing_class(tb: TracebackType | None) -> str | None:
    """The name of the class whose ``__init__`` (or dataclass ``__post_init__``) raised, from a traceback.

    The innermost constructor frame is the one that judged the arguments (an ``InitRule`` built inside
    ``WeightInit.__init__`` names ``InitRule``).
    """
    name = None
    for frame, _ in traceback.walk_tb(tb):
        if frame.f_code.co_name in ("__init__", "__post_init__") and "self" in frame.f_locals:
            name = type(frame.f_locals["self"]).__name__
    return name


class LightningInitCLI(LightningCLI):
    """``LightningCLI`` that reports a ``ValueError`` raised while instantiating the config as a parser error.

    Everything else is LightningCLI's: arguments, subcommands, ``--print_config``, exit code 2 for parser errors.
    Every error, from parsing or from a constructor, is one line (see :class:`OneLineErrorParser`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Same arguments as ``LightningCLI``; ``parser_class`` defaults to :class:`OneLineErrorParser`."""
        kwargs.setdefault("parser_class", OneLineErrorParser)
        super().__init__(*args, **kwargs)

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            origin = _origin(err)
            owner = refusing_class(origin.__traceback__)
            self.parser.error(f"{owner}: {origin}" if owner else str(origin))


def _origin(err: BaseException) -> BaseException:
    """The first ``ValueError`` of ``err``'s chain: jsonargparse re-raises a constructor's ``ValueError`` wrapped."""
    seen = {id(err)}
    while True:
        nxt = err.__cause__ or err.__context__
        if not isinstance(nxt, ValueError) or id(nxt) in seen:
            return err
        seen.add(id(nxt))
        err = nxt
