"""Shared fixtures: one full demo run per test session, reused by the demo, CLI and TensorBoard-server tests."""

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_test_process():
    """Two cores, shared with the TensorBoard server and DDP workers: one intra-op thread keeps timings sane."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, list]:
    """The default `lightning-init demo` (fixed seed 0, default steps), run once: (log dir, results)."""
    from lightning_init.demo import run_demo

    out = tmp_path_factory.mktemp("demo_runs")
    return out, run_demo(out, progress=False)
