import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


@pytest.mark.slow
def test_overhead_benchmark_quick_runs_and_prints_ratios(tmp_path: Path) -> None:
    # Smoke test only: the benchmark runs end to end with tiny sizes and prints its tables. No target is asserted
    # (timings on shared CI machines are noise).
    env = {**os.environ, "TMPDIR": str(tmp_path), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "torch.get_num_threads() = 1" in out
    for model in ("mlp", "cnn"):
        for config in ("bare", "all e1", "all e5 h5", "naive e1", "grad_norm e5"):
            row = re.search(rf"^\| {re.escape(config)} \| {model} \| .*$", out, re.MULTILINE)
            assert row, f"no row for {config!r} on {model}:\n{out}"
            # steps/s, then the slowdown ratio with its min-max spread, then the overhead in percent
            assert re.search(r"\| \d+\.\d+ \| \d+\.\d{3}x \(\d+\.\d{3}-\d+\.\d{3}\) \| [+-]\d+\.\d %", row.group(0))
    assert re.search(r"^\| bare \| mlp \| 0/0 \| [\d.]+ \| 1\.000x", out, re.MULTILINE)
    assert re.search(r"^verdict: (flat|GROWS)", out, re.MULTILINE)
    assert ("wandb e1" in out) != ("`import wandb` failed" in out)


REDUCTIONS = SCRIPT.with_name("reductions.py")


def test_reductions_benchmark_quick_runs_and_prints_before_and_after(tmp_path: Path) -> None:
    # Smoke test of the kernel micro-benchmark: each fix prints a before and an after row with two timings.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(REDUCTIONS), "--quick"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^\| (.+?) \| (\d+\.\d\d) \| (\d+\.\d\d) \|$", proc.stdout, re.MULTILINE)
    for fix in ("1.", "2.", "3.", "4.", "5."):
        labels = [label for label, _, _ in rows if label.startswith(fix)]
        assert any("before" in label for label in labels), (fix, proc.stdout)
        assert any("after" in label for label in labels), (fix, proc.stdout)


COST = SCRIPT.with_name("cost.py")


@pytest.mark.slow
def test_cost_benchmark_quick_prints_the_issue_14_table(tmp_path: Path) -> None:
    # Smoke test only (no timing is asserted): every row of the table, the depth-sweep slope, the bandwidth line.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(COST), "--quick"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^measured memory read bandwidth: \d+\.\d GB/s$", out, re.MULTILINE)
    for model in ("mlp", "resnet18", "gpt2"):
        row = re.search(
            rf"^\| {model} \| [\d.]+ \| \d+\.\d{{3}}x \(.*\) \| \d+\.\d{{3}}x \| \d+\.\d{{3}}x \| .+ MB \| .+ ms \|$",
            out,
            re.MULTILINE,
        )
        assert row, f"no row for {model}:\n{out}"
    assert re.search(r"^depth-sweep slope: -?\d+\.\d{3} ms per layer", out, re.MULTILINE)
    assert re.search(r"^RSS over 100 steps .*: (flat|GROWS)", out, re.MULTILINE)


def test_cost_benchmark_gpu_variant_skips_without_cuda(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.with_name("cost_gpu.py"))],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import torch

    if not torch.cuda.is_available():
        assert proc.stdout.startswith("skipped: no CUDA device")


@pytest.mark.slow
def test_a_torchmetrics_metric_sync_takes_more_than_the_monitors_one_collective(tmp_path: Path) -> None:
    # README (Performance): why the activation moments are not a torchmetrics Metric. Counted in 2 gloo processes:
    # torchmetrics' sync of one state makes several collectives (barrier, shape gather, data gather); the monitor's
    # merge of the same table is one all_gather. If a torchmetrics release syncs a state in one collective, this
    # fails and the README's reason is stale.
    script = SCRIPT.with_name("torchmetrics_sync.py")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metric = re.search(r"^one Metric state, one sync: +(\d+) collectives", proc.stdout, re.MULTILINE)
    ours = re.search(r"^the monitor's one table gather: +(\d+) collective", proc.stdout, re.MULTILINE)
    assert metric, proc.stdout
    assert ours, proc.stdout
    assert int(ours.group(1)) == 1
    assert int(metric.group(1)) > 1
