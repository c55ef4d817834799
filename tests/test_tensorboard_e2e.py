"""A real `tensorboard` server on the demo's logs serves every kind of data the product writes."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, route: str):
    with urllib.request.urlopen(f"{base}/{route}", timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(demo_run):
    log_dir, results = demo_run
    port = _free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    proc = subprocess.Popen(
        [str(tensorboard), "--logdir", str(log_dir), "--host", "127.0.0.1", "--port", str(port), "--load_fast=false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    expected_runs = {f"{r.experiment}/{r.scheme}" for r in results}
    try:
        deadline = time.monotonic() + 120
        # The server answers, and lists a run, before it has read the run's events: wait until every plugin's
        # tags cover every run (the runs are read one after another by a background thread).
        routes = [f"data/plugin/{p}/tags" for p in ("scalars", "histograms", "images", "text")]
        while True:
            try:
                if set(_get(base, "data/runs")) >= expected_runs and all(
                    set(_get(base, route)) >= expected_runs for route in routes
                ):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tensorboard did not serve the runs: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        yield base, results
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode is not None  # no stray server process


def test_every_run_is_served(server):
    base, results = server
    runs = set(_get(base, "data/runs"))
    assert {f"{r.experiment}/{r.scheme}" for r in results} <= runs


def test_scalars_of_every_kind_and_health_counts(server):
    base, _ = server
    tags = _get(base, "data/plugin/scalars/tags")["deep_relu/normal_std=0.01"]
    for prefix in ("weight_std/", "weight_update_ratio/", "grad_norm/", "grad_ratio/", "activation_std/", "health/"):
        assert any(t.startswith(prefix) for t in tags), prefix
    assert "grad_norm/total" in tags
    # The values themselves: the vanishing run's first-layer gradient norm is served as a finite number.
    series = _get(base, "data/plugin/scalars/scalars?run=deep_relu/normal_std%3D0.01&tag=grad_norm/net.0.weight")
    assert len(series) > 1
    assert all(len(point) == 3 for point in series)  # [wall_time, step, value]


def test_histograms_of_every_kind(server):
    base, _ = server
    tags = _get(base, "data/plugin/histograms/tags")["deep_relu/kaiming_normal_nonlinearity=relu"]
    for prefix in ("weight/", "grad/", "activation/"):
        assert any(t.startswith(prefix) for t in tags), prefix


def test_heatmap_image_and_text_reports(server):
    base, _ = server
    images = _get(base, "data/plugin/images/tags")["deep_relu/normal_std=0.01"]
    assert any("heatmap" in t for t in images), images
    texts = _get(base, "data/plugin/text/tags")["deep_relu/normal_std=0.01"]
    assert any(t.startswith("weight_init/report") for t in texts), texts
    assert any(t.startswith("health/") for t in texts), texts


def test_custom_scalars_layout_puts_every_layer_on_one_chart(server):
    base, _ = server
    layout = _get(base, "data/plugin/custom_scalars/layout")
    charts = {c["title"]: c for cat in layout["category"] for c in cat["chart"]}
    for title in ("weight_std", "grad_norm", "activation_std"):
        assert title in charts, sorted(charts)
        assert charts[title]["multiline"]["tag"] == [f"^{title}/"]
