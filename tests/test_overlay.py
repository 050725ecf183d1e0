"""`lad_hf.overlay`: palette, colourised class maps, the blend formula, legends and evaluation panels."""

import numpy as np
import pytest

from lad_hf.overlay import blend, colorize, denormalize, overlay_image, palette, panel


def test_palette_is_distinct_and_stable():
    p = palette(171)
    assert p.shape == (171, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == 171
    assert np.array_equal(palette(5), p[:5])  # a class keeps its colour whatever K


def test_colorize_and_blend_follow_the_formula():
    colours = palette(3)
    mask = np.array([[0, 1], [2, 255]])
    rgb = colorize(mask, colours)
    assert np.array_equal(rgb[0, 1], colours[1]) and np.array_equal(rgb[1, 1], [0, 0, 0])  # ignore -> black
    image = np.full((2, 2, 3), 100, np.uint8)
    out = blend(image, mask, colours, alpha=0.25)
    want = np.round(0.75 * 100 + 0.25 * colours[2].astype(float))
    assert np.array_equal(out[1, 0], want.astype(np.uint8))
    assert np.array_equal(out[1, 1], image[1, 1])  # ignored pixels untouched


def test_overlay_has_a_legend_of_the_classes_present():
    mask = np.zeros((40, 50), np.int64)
    mask[:, 25:] = 2
    img = overlay_image(np.zeros((40, 50, 3), np.uint8), mask, 3, {0: "road", 1: "car", 2: "sky"})
    arr = np.asarray(img)
    assert img.height == 40 and img.width > 50
    legend = arr[:, 50:]
    # two rows (classes 0 and 2, not 1): the swatches carry their colours
    for colour in palette(3)[[0, 2]]:
        assert (legend == colour).all(-1).sum() > 20
    assert (legend == palette(3)[1]).all(-1).sum() == 0


def test_panel_and_denormalize():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    x = np.random.default_rng(0).normal(size=(3, 8, 6)).astype(np.float32)
    img = denormalize(x, mean, std)
    assert img.shape == (8, 6, 3)
    assert img[0, 0, 1] == pytest.approx(np.clip((x[1, 0, 0] * 0.2 + 0.4) * 255, 0, 255), abs=0.51)
    p = panel(img, np.zeros((8, 6), int), np.ones((8, 6), int), 2)
    assert p.shape == (8, 3 * 6 + 8, 3) and np.array_equal(p[0, -1], palette(2)[1])
