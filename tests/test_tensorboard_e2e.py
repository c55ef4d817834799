"""A real `tensorboard` server on the demo's logs serves every kind of data the product writes."""

import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_init.figures import DPI, WIDTH_IN

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


def _image(base: str, run: str, tag: str) -> np.ndarray:
    """The latest image of ``tag`` in ``run`` as served by TensorBoard's images plugin, decoded (PIL)."""
    query = urllib.parse.urlencode({"run": run, "tag": tag, "sample": 0})
    entries = _get(base, f"data/plugin/images/images?{query}")
    with urllib.request.urlopen(f"{base}/data/plugin/images/individualImage?{entries[-1]['query']}", timeout=10) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def test_figures_are_served_as_labelled_images_for_every_run(server):
    base, results = server
    tags = _get(base, "data/plugin/images/tags")
    scalar_tags = _get(base, "data/plugin/scalars/tags")
    for r in results:
        run = f"{r.experiment}/{r.scheme}"
        for kind in ("weight", "grad", "activation"):
            # The weight figures show update ratios; a run whose weights never move from exactly 0 (xor/zeros: only the
            # biases learn) has no defined update ratio at any step, so there is nothing to draw and no figure.
            # The figures draw non-bias parameters only (biases are not judged by depth).
            drawable = kind != "weight" or any(
                t.startswith("weight_update_ratio/") and not t.endswith(".bias") for t in scalar_tags[run]
            )
            for figure in ("heatmap", "depth_profile"):
                assert (f"health/{kind}_{figure}" in tags[run]) == drawable, (run, sorted(tags[run]))
        for tag in ("health/activation_heatmap", "health/grad_depth_profile"):
            image = _image(base, run, tag)
            assert image.shape[1] == round(WIDTH_IN * DPI), image.shape  # its own width: about a card's
            colours = len(np.unique(image.reshape(-1, 3), axis=0))
            assert colours > 50, (run, tag, colours)  # a drawn figure, not a blank
            # Labels: dark text pixels in the left margin (layer names / the y axis) and the bottom margin.
            luminance = image @ np.array([0.299, 0.587, 0.114])
            assert (luminance[:, : image.shape[1] // 8] < 100).sum() > 100, (run, tag)
            assert (luminance[-image.shape[0] // 6 :, :] < 100).sum() > 100, (run, tag)


def test_text_reports(server):
    base, _ = server
    texts = _get(base, "data/plugin/text/tags")["deep_relu/normal_std=0.01"]
    assert any(t.startswith("weight_init/report") for t in texts), texts
    assert any(t.startswith("health/") for t in texts), texts


def test_custom_scalars_layout_opens_on_health_and_stays_small(server):
    base, _ = server
    layout = _get(base, "data/plugin/custom_scalars/layout")
    categories = [cat["title"] for cat in layout["category"]]
    assert categories[0] == "lightning_init/health", categories
    charts = [c for cat in layout["category"] for c in cat["chart"]]
    first = layout["category"][0]["chart"]
    assert first[0]["title"] == "health/total"
    assert first[0]["multiline"]["tag"] == ["^(health/total)$"]
    assert {c["title"] for c in first[1:]} == {
        "health: gradient rules",
        "health: activation rules",
        "health: weight rules",
    }
    # Few lines per chart: no per-layer chart unless asked for; each chart's regex matches a handful of tags.
    tags = _get(base, "data/plugin/scalars/tags")["deep_relu/normal_std=0.01"]
    for chart in charts:
        (regex,) = chart["multiline"]["tag"]
        matched = [t for t in tags if re.search(regex, t)]
        assert 1 <= len(matched) <= 6, (chart["title"], matched)
    assert len(charts) <= 6
    # health/total is logged, and counts the layers flagged by any rule: > 0 on a vanishing run, 0 on a healthy one.
    series = _get(base, "data/plugin/scalars/scalars?run=deep_relu/normal_std%3D0.01&tag=health/total")
    assert max(v for _, _, v in series) > 0
    healthy = _get(base, "data/plugin/scalars/scalars?run=deep_tanh/xavier_normal&tag=health/total")
    assert max(v for _, _, v in healthy) == 0
