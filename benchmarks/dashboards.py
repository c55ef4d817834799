"""How fast the user-facing output answers: `lightning-init --help` and drawing one figure.

    .venv/bin/python benchmarks/dashboards.py

Prints the wall time of `lightning-init --help` (a fresh interpreter each time, median of 5; the goal is well under
2 s: the command imports torch/Lightning only inside a subcommand), and the CPU time to draw and encode each figure
of a 20-layer MLP's 31 logged steps (median of 5; figures are drawn only on histogram steps and at fit end). Not a
test: numbers depend on the machine and on what else runs on it.
"""

import statistics
import subprocess
import sys
import time

import numpy as np

from lightning_init.figures import depth_profile_figure, heatmap_figure, render


def help_seconds(repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lightning_init.cli", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def figure_cpu_seconds(make, repeats: int = 5) -> float:
    layers = [f"net.{2 * i}.weight" for i in range(20)]
    steps = [0, *range(9, 300, 10)]
    values = np.array([[10.0 ** (-1.2 * i) * (1 + 0.01 * j) for j in range(len(steps))] for i in range(20)])
    render(make(values, layers, steps, title="warm-up", label="grad norm"))  # font cache, imports
    times = []
    for _ in range(repeats):
        start = time.process_time()
        render(make(values, layers, steps, title="grad norm", label="grad norm"))
        times.append(time.process_time() - start)
    return statistics.median(times)


if __name__ == "__main__":
    print(f"lightning-init --help: {help_seconds():.3f} s wall (median of 5)")
    for name, make in (("heatmap", heatmap_figure), ("depth-profile", depth_profile_figure)):
        ms = 1000 * figure_cpu_seconds(make)
        print(f"{name} figure (20 layers x 31 steps): {ms:.0f} ms CPU to draw and encode (median of 5)")
