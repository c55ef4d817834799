import io
import itertools
import struct
import zlib

import numpy as np
import pytest

from lightning_init.heatmap import INVALID_COLOR, ProfileHistory, colorize, depth_profile_image, to_png


def luminance(rgb):
    """Rec. 709 relative luminance of sRGB-encoded uint8 colours (linearized)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def decode_png(data):
    """Minimal PNG decoder (8-bit RGB/grey, any of the 5 filter types), written from the PNG specification."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color_type, _, _, interlace = header
    assert depth == 8
    assert interlace == 0
    channels = {0: 1, 2: 3}[color_type]
    raw = zlib.decompress(idat)
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.int64)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)], dtype=np.uint8).astype(np.int64)
        prev = out[y - 1] if y else np.zeros(stride, dtype=np.int64)
        assert f == 0 or f in (1, 2, 3, 4)
        if f == 0:
            out[y] = line
        elif f == 2:
            out[y] = (line + prev) % 256
        else:  # sequential filters
            for x in range(stride):
                a = out[y, x - channels] if x >= channels else 0
                b, c = prev[x], (prev[x - channels] if x >= channels else 0)
                pred = {1: a, 3: (a + b) // 2}.get(f)
                if pred is None:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                out[y, x] = (line[x] + pred) % 256
    shape = (height, width, channels) if channels == 3 else (height, width)
    return out.astype(np.uint8).reshape(shape)


def test_colormap_luminance_is_monotonic():
    lum = luminance(colorize(np.linspace(0, 1, 101)))
    assert np.all(np.diff(lum) > 0)


def test_decaying_profile_is_a_colour_gradient():
    # 6 layers, activation std falling 10x per layer (vanishing), 5 steps.
    values = np.repeat((10.0 ** -np.arange(6))[:, None], 5, axis=1)
    image = depth_profile_image(values, cell_height=4, cell_width=3, colorbar=False)
    assert image.shape == (24, 15, 3)
    assert image.dtype == np.uint8
    centers = image[2::4, 1]  # one pixel per layer
    lum = luminance(centers)
    assert np.all(np.diff(lum) < 0)  # darker and darker toward the output
    assert tuple(centers[0]) == (0xFD, 0xE7, 0x25)  # largest value: top of viridis
    assert tuple(centers[-1]) == (0x44, 0x01, 0x54)  # smallest: bottom
    # Nearest neighbour: every pixel of a cell has the cell's colour.
    assert (image[4:8, 0:3] == image[4, 0]).all()


def test_log_scale_positions_colours_by_exponent():
    values = np.array([[1e-8, 1e-4, 1.0]])
    image = depth_profile_image(values, cell_height=1, cell_width=1, colorbar=False, vmin=-8, vmax=0)
    assert (image[0] == colorize(np.array([0.0, 0.5, 1.0]))).all()


def test_invalid_values_get_the_distinct_colour():
    values = np.array([[1.0, np.nan], [np.inf, 0.0], [-1.0, 1e-3]])
    image = depth_profile_image(values, cell_height=1, cell_width=1, colorbar=False)
    invalid = np.array(INVALID_COLOR, dtype=np.uint8)
    assert (image[0, 1] == invalid).all()
    assert (image[1, 0] == invalid).all()
    assert (image[1, 1] == invalid).all()
    assert (image[2, 0] == invalid).all()
    assert not (image[0, 0] == invalid).all()
    all_nan = depth_profile_image(np.full((2, 2), np.nan), colorbar=False)
    assert (all_nan == invalid).all()


def test_colorbar_and_labels():
    values = np.logspace(-11, 0, 12)[:, None] * np.ones((1, 20))
    plain = depth_profile_image(values, colorbar=False)
    image = depth_profile_image(values)
    assert image.shape[0] >= plain.shape[0]
    assert image.shape[1] > plain.shape[1]
    assert (image[: plain.shape[0], : plain.shape[1]] == plain).all()
    # The bar: brightest on top, darkest at the bottom.
    bar = image[:, plain.shape[1] + 6 + 5]
    assert luminance(bar[0]) > luminance(bar[-1])
    assert np.all(np.diff(luminance(bar)) <= 2e-3)  # monotone up to uint8 rounding
    # Labels drawn in ink right of the bar (1e0 on top, 1e-11 at the bottom).
    labels = image[:, plain.shape[1] + 6 + 10 + 3 :]
    assert (labels == 235).all(axis=-1).any()
    no_labels = depth_profile_image(values, labels=False)
    assert no_labels.shape[1] < image.shape[1]


@pytest.mark.parametrize("shape", [(0, 3), (3,), (2, 2, 2)])
def test_bad_values_raise(shape):
    with pytest.raises(ValueError, match="`values`"):
        depth_profile_image(np.ones(shape))


def test_png_round_trip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    assert (decode_png(to_png(image)) == image).all()
    grey = rng.integers(0, 256, size=(3, 4), dtype=np.uint8)
    assert (decode_png(to_png(grey)) == grey).all()
    heat = depth_profile_image(np.logspace(-3, 3, 8)[:, None] * np.ones((1, 9)))
    assert (decode_png(to_png(heat)) == heat).all()


def test_png_readable_by_pillow():
    pil = pytest.importorskip("PIL.Image")
    heat = depth_profile_image(np.logspace(-3, 3, 8)[:, None] * np.ones((1, 9)))
    decoded = np.asarray(pil.open(io.BytesIO(to_png(heat))).convert("RGB"))
    assert (decoded == heat).all()


def test_png_rejects_bad_images():
    with pytest.raises(ValueError, match="`image`"):
        to_png(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="`image`"):
        to_png(np.zeros((2, 2, 4), dtype=np.uint8))


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
