"""Depth-profile figures (matplotlib): labelled heatmaps and coord-check charts, read back from their pixels and
artists; the bounded history they are drawn from."""

import io
import itertools

import numpy as np
import pytest
from matplotlib.colors import LogNorm, to_rgb
from PIL import Image

from lightning_init.figures import (
    DPI,
    INVALID_STYLES,
    WIDTH_IN,
    ProfileHistory,
    depth_profile_figure,
    heatmap_figure,
    render,
)

LAYERS = [f"net.{2 * i}.weight" for i in range(6)]
STEPS = [0, 9, 19, 29, 39]


def luminance(rgb):
    """Rec. 709 relative luminance of sRGB-encoded uint8 colours (linearized)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def vanishing(n_layers=6, n_steps=5):
    """Every layer 10x smaller than the one before it."""
    return np.array([[10.0 ** (-i)] * n_steps for i in range(n_layers)])


def pixel(fig, rendered, ax, x, y):
    """The rendered RGB at data coordinates (x, y) of ``ax``."""
    px, py = ax.transData.transform((x, y))
    height = rendered.rgb.shape[0]
    return rendered.rgb[round(height - py), round(px)]


def test_heatmap_names_layers_and_steps_and_has_a_log_colour_bar():
    fig = heatmap_figure(vanishing(), LAYERS, STEPS, title="grad norm", label="grad norm")
    rendered = render(fig)
    ax, cax = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == LAYERS
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(s) for s in STEPS]
    assert ax.get_xlabel() == "logged step"
    assert ax.get_ylim() == (6, 0)  # the first layer (input side) at the top
    (mesh,) = [m for m in ax.collections if isinstance(m.norm, LogNorm)]
    assert (mesh.norm.vmin, mesh.norm.vmax) == (pytest.approx(1e-5), pytest.approx(1.0))  # whole decades
    labels = [t.get_text() for t in cax.get_yticklabels()]
    assert {"1e0", "1e-5"} <= set(labels), labels
    assert "log10" in cax.get_ylabel()
    assert rendered.rgb.shape[1] == round(WIDTH_IN * DPI)
    # Pixels: viridis brightens with the value, so the input side (top) is the brightest row.
    lum = [luminance(pixel(fig, rendered, ax, 2.5, r + 0.5)) for r in range(6)]
    assert all(a > b for a, b in itertools.pairwise(lum)), lum
    assert fig.legends == []  # nothing invalid: no legend


def test_heatmap_marks_nan_inf_and_zero_cells_and_explains_them():
    values = vanishing()
    values[1, 1], values[2, 2], values[3, 3] = np.nan, np.inf, 0.0
    fig = heatmap_figure(values, LAYERS, STEPS, title="t", label="activation std")
    rendered = render(fig)
    ax = fig.axes[0]
    for (row, col), key in zip([(1, 1), (2, 2), (3, 3)], ["nan", "inf", "zero"], strict=True):
        expected = np.array(to_rgb(INVALID_STYLES[key][0])) * 255
        assert np.abs(pixel(fig, rendered, ax, col + 0.5, row + 0.5) - expected).max() <= 2, key
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [label for _, label in INVALID_STYLES.values()]


def test_heatmap_of_nothing_but_zeros_has_no_colour_bar_but_a_legend():
    fig = heatmap_figure(np.zeros((2, 3)), LAYERS[:2], STEPS[:3], title="t", label="grad norm")
    render(fig)
    assert len(fig.axes) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["0 (no log)"]


def test_deep_models_show_every_kth_layer_name_without_overlap():
    layers = [f"encoder.layer.{i}.attention.output.dense.weight" for i in range(120)]
    fig = heatmap_figure(np.ones((120, 4)), layers, STEPS[:4], title="t", label="x")
    render(fig)
    ticks = fig.axes[0].get_yticklabels()
    assert 10 <= len(ticks) < 120
    boxes = [t.get_window_extent() for t in ticks]
    assert all(a.y0 >= b.y1 or b.y0 >= a.y1 for a, b in itertools.pairwise(boxes))  # no two labels overlap


@pytest.mark.parametrize("make", [heatmap_figure, depth_profile_figure])
def test_long_layer_names_are_shortened_and_keep_the_plot_inside_the_figure(make):
    # Deeply nested names (a depth sweep, a zoo model): the label margin must not eat the plot (it used to raise
    # matplotlib's "Width and height specified must be non-negative" at fit end).
    layers = [f"model.{'blocks.' * 12}{i}.mlp.fc.weight" for i in range(40)]
    fig = make(np.ones((40, 3)), layers, STEPS[:3], title="t", label="x")
    render(fig)
    ax = fig.axes[0]
    _, _, w, h = ax.get_position().bounds
    assert w > 0.3  # the plot keeps most of the figure
    assert h > 0.3
    ticks = ax.get_yticklabels() if make is heatmap_figure else ax.get_xticklabels()
    texts = [t.get_text() for t in ticks]
    assert texts
    assert all(t.startswith("\u2026") and t.endswith(".mlp.fc.weight") for t in texts)


def test_depth_profile_draws_one_line_per_step_coloured_by_step_on_a_log_axis():
    values = vanishing() * np.array([1.0, 2.0, 4.0, 8.0, 16.0])  # grows over steps
    fig = depth_profile_figure(values, LAYERS, STEPS, title="t", label="activation std")
    render(fig)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == len(LAYERS)]
    assert len(lines) == len(STEPS)
    for line, column in zip(lines, values.T, strict=True):
        assert list(line.get_ydata()) == pytest.approx(list(column))
    # Colour follows the step: the colour map runs from the first to the last step, distinct per line.
    colours = [tuple(line.get_color()) for line in lines]
    assert len(set(colours)) == len(STEPS)
    assert fig.axes[1].get_ylabel() == "logged step"


def test_depth_profile_keeps_at_most_max_lines_and_marks_zeros_and_nonfinite():
    values = np.ones((4, 30))
    values[1, :] = 0.0
    values[2, -1] = np.nan
    fig = depth_profile_figure(values, LAYERS[:4], list(range(30)), title="t", label="x", max_lines=6)
    render(fig)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 4]
    assert len(lines) == 6
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["0 (at some step)", "NaN/Inf (at some step)"]


@pytest.mark.parametrize("make", [heatmap_figure, depth_profile_figure])
def test_figures_refuse_mismatched_shapes(make):
    with pytest.raises(ValueError, match="`values`"):
        make(np.ones((2, 3)), ["a"], [0, 1, 2], title="t", label="x")
    with pytest.raises(ValueError, match="`values`"):
        make(np.ones((0, 0)), [], [], title="t", label="x")


def test_render_gives_the_same_picture_as_pixels_and_png():
    rendered = render(heatmap_figure(vanishing(), LAYERS, STEPS, title="t", label="x"))
    assert rendered.rgb.dtype == np.uint8
    assert rendered.rgb.ndim == 3
    decoded = np.asarray(Image.open(io.BytesIO(rendered.png)).convert("RGB"))
    assert (decoded == rendered.rgb).all()


def test_profile_history_bounded_and_uniform():
    history = ProfileHistory(max_columns=8)
    for step in range(100):
        history.append(step, {"a": float(step), "b": 2.0 * step})
    values, layers, steps = history.matrix()
    assert layers == ["a", "b"]
    assert len(history) == values.shape[1] == len(steps)
    assert values.shape[1] <= 9
    assert steps[-1] == 99
    assert (values[0] == np.array(steps, dtype=float)).all()
    assert (values[1] == 2 * values[0]).all()
    gaps = {b - a for a, b in itertools.pairwise(steps[:-1])}
    assert gaps == {16}  # 100 steps into <= 8 columns: stride 16


def test_profile_history_new_layer_is_nan_before():
    history = ProfileHistory()
    history.append(0, {"a": 1.0})
    history.append(1, {"a": 1.0, "b": 2.0})
    values, layers, steps = history.matrix()
    assert layers == ["a", "b"]
    assert steps == [0, 1]
    assert np.isnan(values[1, 0])
    assert values[1, 1] == 2.0


@pytest.mark.parametrize("bad", [0, 3, -2, 2.0, True])
def test_profile_history_validates(bad):
    with pytest.raises(ValueError, match="`max_columns`"):
        ProfileHistory(bad)
