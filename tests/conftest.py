"""Shared fixtures: one full demo run per test session, reused by the demo, CLI and TensorBoard-server tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, list]:
    """The default `lightning-init demo` (fixed seed 0, default steps), run once: (log dir, results)."""
    from lightning_init.demo import run_demo

    out = tmp_path_factory.mktemp("demo_runs")
    return out, run_demo(out, progress=False)
