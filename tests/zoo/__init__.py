"""The model zoo of issues 11 and 12: standard architectures at tiny sizes on synthetic data, plus broken variants.

``ZOO[name]`` describes an entry; :func:`run_zoo` trains it with the monitors attached and reads back the event files
and warnings; :func:`findings` names the flagged layers per rule. ``python -m tests.zoo.baseline`` prints the table.
"""

from tests.zoo.harness import (
    ZooRun,
    cached_run,
    check_consistent,
    findings,
    first_flagged,
    flagged_by_kind,
    health_counts,
    make_monitors,
    read_rows,
    run_zoo,
)
from tests.zoo.registry import BROKEN, HEALTHY, ZOO, ZooSpec

__all__ = [
    "BROKEN",
    "HEALTHY",
    "ZOO",
    "ZooRun",
    "ZooSpec",
    "cached_run",
    "check_consistent",
    "findings",
    "first_flagged",
    "flagged_by_kind",
    "health_counts",
    "make_monitors",
    "read_rows",
    "run_zoo",
]
