"""The mosaic layout: canvases fully tiled by touching regions, class only in texture statistics."""

import numpy as np
import pytest

from lad_hf.errors import LADError
from lad_hf.fashion_scenes import dataset as scenes
from lad_hf.fashion_scenes.mosaic import CONTRAST_BANK, MOSAIC_REGIONS, TINT_BANK, region_map, render_mosaic


@pytest.fixture(scope="module")
def fashion():
    return scenes.load_fashion_mnist()


def _layout(fashion, split="train", i=0, seed=0):
    return scenes.mosaic_layout(split, i, fashion, seed=seed, canvas_size=64)


def test_regions_tile_the_canvas_and_the_mask_follows_the_regions(fashion):
    for i in range(3):
        layout = _layout(fashion, i=i)
        assert MOSAIC_REGIONS[0] <= len(layout.regions) <= MOSAIC_REGIONS[1]
        image, mask = render_mosaic(layout, fashion, scenes._background_photos(64))
        owner = region_map(layout)
        labels = np.array([r.label for r in layout.regions])
        assert np.array_equal(mask, labels[owner])  # every pixel is its region's class; no empty background
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        # one class holds several regions (3-6 classes for 10-30 regions)
        assert len(set(labels.tolist())) < len(labels)


def test_region_map_is_the_weighted_voronoi_argmin(fashion):
    layout = _layout(fashion, i=1)
    owner = region_map(layout)
    for (y, x) in [(0, 0), (10, 50), (33, 7), (63, 63)]:  # naive loop over the seeds, float64
        d = [np.hypot(y + 0.5 - r.y, x + 0.5 - r.x) * r.weight for r in layout.regions]
        assert owner[y, x] == int(np.argmin(d))


def test_every_region_has_the_canvas_mean_and_a_bank_tint(fashion):
    """rgb = tint · (m + c·(g − mean g)): a region's mean over its pixels is tint · m, whatever its class."""
    layout = _layout(fashion, i=2)
    image, _ = render_mosaic(layout, fashion, scenes._background_photos(64))
    owner = region_map(layout)
    for i, r in enumerate(layout.regions):
        inside = owner == i
        if inside.sum() < 20:
            continue
        assert tuple(r.tint) in TINT_BANK and r.contrast in CONTRAST_BANK
        mean = image[inside].astype(np.float64).mean(0)
        np.testing.assert_allclose(mean, np.asarray(r.tint) * layout.mean, atol=0.6)  # rounding only: the contrast shrinks instead of clipping


def test_textures_come_from_items_of_the_regions_class_and_split(fashion):
    for split, (fsplit, lo, hi) in scenes._FASHION_SOURCES.items():
        layout = _layout(fashion, split=split)
        assert layout.fashion_split == fsplit
        for r in layout.regions:
            assert all(lo <= i < hi for i in r.items)
            assert all(int(fashion[fsplit][1][i]) + 1 == r.label for i in r.items)
            assert (r.label == 0) == (not r.items)  # class 0: a photo region
            if r.label == 0:
                assert r.photo in scenes._background_set(split)


def test_layouts_are_deterministic_and_the_build_is_cached_apart(fashion, tmp_path):
    assert _layout(fashion, i=4) == _layout(fashion, i=4)
    assert _layout(fashion, i=4) != _layout(fashion, i=4, seed=1)
    assert "mosaic" in scenes.cache_key(8, 4, 4, 64, 0, layout="mosaic")
    assert scenes.cache_key(8, 4, 4, 64, 0) == scenes.cache_key(8, 4, 4, 64, 0, layout="objects")
    dsd = scenes.load_or_build_fashion_scenes(tmp_path, num_train=3, num_validation=2, num_test=2, canvas_size=64,
                                              layout="mosaic")
    image, mask = scenes.render_any("mosaic", "validation", 1, canvas_size=64)
    assert np.array_equal(np.asarray(dsd["validation"][1]["label"]), mask)
    assert np.array_equal(np.asarray(dsd["validation"][1]["image"]), image)
    assert "touching regions" in (tmp_path / scenes.cache_key(3, 2, 2, 64, 0, layout="mosaic") / "README.md").read_text()
    with pytest.raises(LADError, match="layout must be one of"):
        scenes.build_fashion_scenes(2, 2, 2, 64, layout="tiles")
