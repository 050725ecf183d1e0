"""Tests for lad_hf.fashion_scenes (fashion-scenes). Offline and small: 40/10/10 scenes at 64 px."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import io  # noqa: E402
import json  # noqa: E402
from collections import deque  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import skimage  # noqa: E402,F401  (the demo extra; make test installs it)
import datasets  # noqa: E402
from PIL import Image  # noqa: E402

from lad_hf.fashion_scenes import dataset as scenes  # noqa: E402
from lad_hf.errors import LADError  # noqa: E402

SMALL = dict(num_train=40, num_validation=10, num_test=10, canvas_size=64)




def _raw(ds, column):
    """Stored PNG bytes of a column, without decoding."""
    return [row["bytes"] for row in ds.cast_column(column, datasets.Image(decode=False))[column]]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return scenes.build_fashion_scenes(seed=0, cache_dir=tmp_path_factory.mktemp("arrow"), **SMALL)


@pytest.fixture(scope="module")
def fashion():
    return scenes.load_fashion_mnist()


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def test_id2label():
    assert len(scenes.FASHION_SCENES_ID2LABEL) == 11
    assert scenes.FASHION_SCENES_ID2LABEL[0] == "background"
    assert scenes.FASHION_SCENES_ID2LABEL[1] == "t-shirt/top"
    assert scenes.FASHION_SCENES_ID2LABEL[10] == "ankle boot"
    assert scenes.FASHION_SCENES_LABEL2ID["bag"] == 9






def test_background_sets_disjoint_and_load_offline():
    assert not set(scenes.TRAIN_BACKGROUNDS) & set(scenes.EVAL_BACKGROUNDS)
    assert not set(scenes.EXCLUDED_BACKGROUNDS) & set(scenes.TRAIN_BACKGROUNDS + scenes.EVAL_BACKGROUNDS)
    photos = scenes._background_photos(64)
    assert set(photos) == set(scenes.TRAIN_BACKGROUNDS + scenes.EVAL_BACKGROUNDS)
    for photo in photos.values():
        assert photo.mode == "RGB" and min(photo.size) == 128


def test_bad_arguments():
    with pytest.raises(LADError, match="canvas_size"):
        scenes.scene_layout("train", 0, canvas_size=32)
    with pytest.raises(LADError, match="canvas_size"):
        scenes.build_fashion_scenes(canvas_size=300)
    with pytest.raises(LADError, match="split"):
        scenes.scene_layout("val", 0)
    with pytest.raises(LADError, match="num_train"):
        scenes.build_fashion_scenes(num_train=0)


# ---------------------------------------------------------------------------------------------
# Layouts: sources per split, prefix property
# ---------------------------------------------------------------------------------------------


def test_layout_sources_respect_splits():
    for split, (fashion_split, lo, hi) in {
        "train": ("train", 0, 60000),
        "validation": ("test", 0, 5000),
        "test": ("test", 5000, 10000),
    }.items():
        backgrounds = scenes.TRAIN_BACKGROUNDS if split == "train" else scenes.EVAL_BACKGROUNDS
        used = set()
        for i in range(300):
            layout = scenes.scene_layout(split, i, seed=3, canvas_size=64)
            assert layout.background in backgrounds
            assert 2 <= len(layout.items) <= 4
            for item in layout.items:
                assert item.fashion_split == fashion_split and lo <= item.fashion_index < hi
                assert 0.3 * 64 - 1 <= item.size <= 0.7 * 64 + 1
                assert 0 <= item.top <= 64 - item.size and 0 <= item.left <= 64 - item.size
                used.add(item.fashion_index)
        assert len(used) > 500  # items are spread over the pool


def test_layout_depends_only_on_seed_split_index():
    a = scenes.scene_layout("train", 17, seed=5, canvas_size=64)
    assert a == scenes.scene_layout("train", 17, seed=5, canvas_size=64)
    assert a != scenes.scene_layout("train", 17, seed=6, canvas_size=64)
    assert a != scenes.scene_layout("validation", 17, seed=5, canvas_size=64)
    assert a != scenes.scene_layout("train", 18, seed=5, canvas_size=64)


# ---------------------------------------------------------------------------------------------
# Silhouettes and rendering
# ---------------------------------------------------------------------------------------------


def _naive_filled(gray, threshold):
    """Reference: flood-fill the background from the border (4-connected); the rest is the item."""
    solid = gray > threshold
    h, w = solid.shape
    outside = np.zeros_like(solid)
    queue = deque((y, x) for y in range(h) for x in range(w) if (y in (0, h - 1) or x in (0, w - 1)) and not solid[y, x])
    for y, x in queue:
        outside[y, x] = True
    while queue:
        y, x = queue.popleft()
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w and not solid[ny, nx] and not outside[ny, nx]:
                outside[ny, nx] = True
                queue.append((ny, nx))
    return ~outside


def test_filled_silhouette_matches_flood_fill(fashion):
    ring = np.zeros((9, 9), np.uint8)
    ring[2:7, 2:7] = 200
    ring[4, 4] = 0  # a hole
    ring[3:6, 0] = 0
    assert scenes.filled_silhouette(ring)[4, 4]
    diagonal_gap = np.full((5, 5), 200, np.uint8)
    diagonal_gap[2, 2] = 0
    diagonal_gap[1, 1] = 0  # touches the hole only diagonally: still a hole
    assert scenes.filled_silhouette(diagonal_gap).all()
    rng = np.random.default_rng(0)
    cases = [rng.integers(0, 40, size=(rng.integers(5, 30), rng.integers(5, 30))).astype(np.uint8) for _ in range(30)]
    images = fashion["train"][0]
    present = np.flatnonzero(images.reshape(len(images), -1).any(1))  # the test fixture zeroes unused images
    cases += [images[i] for i in rng.choice(present, 30)]
    item = scenes.SceneItem("train", int(present[0]), 50, 0, 0, (1.0, 1.0, 1.0), False)
    for i in rng.choice(present, 10):
        cases.append(scenes.item_gray(scenes.SceneItem("train", int(i), 50, 0, 0, (1.0, 1.0, 1.0), True), fashion))
    assert scenes.item_gray(item, fashion).shape == (50, 50)
    holes = 0
    for gray in cases:
        expected = _naive_filled(gray, scenes.SILHOUETTE_THRESHOLD)
        got = scenes.filled_silhouette(gray)
        assert got.dtype == bool and np.array_equal(got, expected)
        holes += int((expected != (gray > scenes.SILHOUETTE_THRESHOLD)).any())
    assert holes > 0  # the cases do exercise hole filling


def test_single_item_mask_is_its_filled_silhouette(fashion):
    present = np.flatnonzero(fashion["train"][0].reshape(60000, -1).any(1))
    for index in present[[0, 1, 2, len(present) // 2, -1]].tolist():
        item = scenes.SceneItem("train", index, 40, 10, 7, (1.0, 0.5, 0.25), index % 2 == 1)
        layout = scenes.SceneLayout("train", 0, 64, "brick", (1.0, 0.0, 0.0), False, (item,))
        image, mask = scenes.render_layout(layout)
        gray = scenes.item_gray(item, fashion)
        silhouette = scenes.filled_silhouette(gray)
        cls = scenes.item_class(item, fashion)
        assert cls == int(fashion["train"][1][index]) + 1
        expected = np.zeros((64, 64), np.uint8)
        expected[10:50, 7:47][silhouette] = cls
        assert np.array_equal(mask, expected)
        # alpha is 1 inside the silhouette (away from its rim): the pixels are the tinted photo
        inner = silhouette.copy()
        inner[1:] &= silhouette[:-1]
        inner[:-1] &= silhouette[1:]
        inner[:, 1:] &= silhouette[:, :-1]
        inner[:, :-1] &= silhouette[:, 1:]
        tinted = np.rint(gray[..., None].astype(np.float32) * np.float32([1.0, 0.5, 0.25]))
        assert np.abs(image[10:50, 7:47][inner].astype(int) - tinted[inner]).max() <= 1
        # outside the item the background photo is untouched
        background, _ = scenes.render_layout(scenes.SceneLayout("train", 0, 64, "brick", (1.0, 0.0, 0.0), False, ()))
        assert np.array_equal(image[expected == 0], background[expected == 0])


def test_later_items_occlude_earlier(fashion):
    labels = fashion["train"][1]
    a = int(np.flatnonzero(labels == 1)[0])  # trouser
    b = int(np.flatnonzero(labels == 8)[0])  # bag
    first = scenes.SceneItem("train", a, 40, 10, 10, (1.0, 1.0, 1.0), False)
    second = scenes.SceneItem("train", b, 40, 20, 20, (1.0, 1.0, 1.0), False)
    _, mask = scenes.render_layout(scenes.SceneLayout("train", 0, 64, "brick", (1.0, 0.0, 0.0), False, (first, second)))
    on_top = scenes.filled_silhouette(scenes.item_gray(second, fashion))
    assert (mask[20:60, 20:60][on_top] == 9).all()
    assert (mask == 2).any()  # the trouser still shows where the bag does not cover it


def test_encode_png_round_trip():
    rng = np.random.default_rng(0)
    for array in (rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), rng.integers(0, 11, (64, 64), dtype=np.uint8)):
        decoded = Image.open(io.BytesIO(scenes.encode_png(array)))
        assert decoded.mode == ("RGB" if array.ndim == 3 else "L")
        assert np.array_equal(np.asarray(decoded), array)


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


def test_dataset_structure(small):
    assert set(small) == {"train", "validation", "test"}
    assert {k: len(v) for k, v in small.items()} == {"train": 40, "validation": 10, "test": 10}
    for split in small.values():
        assert isinstance(split.features["image"], datasets.Image)
        assert isinstance(split.features["label"], datasets.Image)
        assert "composed" in split.info.description and "real" in split.info.description
        assert '"10": "ankle boot"' in split.info.description
    row = small["train"][0]
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    assert row["label"].mode == "L" and row["label"].size == (64, 64)


def test_masks_hold_class_ids_and_items(small):
    multi = 0
    total = 0
    for split in small.values():
        for mask in split["label"]:
            values = np.unique(np.asarray(mask))
            assert values.min() >= 0 and values.max() <= 10
            foreground = set(values.tolist()) - {0}
            assert foreground, "every scene shows at least one item"
            multi += len(foreground) >= 2
            total += 1
    assert multi >= 0.7 * total


def test_rows_match_render_scene(small):
    for split, i in (("train", 0), ("train", 39), ("validation", 3), ("test", 9)):
        image, mask = scenes.render_scene(split, i, seed=0, canvas_size=64)
        assert np.array_equal(np.asarray(small[split][i]["image"]), np.asarray(image))
        assert np.array_equal(np.asarray(small[split][i]["label"]), np.asarray(mask))


def test_determinism_and_seed(small, tmp_path):
    again = scenes.build_fashion_scenes(seed=0, cache_dir=tmp_path / "a", **SMALL)
    for split in small:
        assert _raw(again[split], "image") == _raw(small[split], "image")
        assert _raw(again[split], "label") == _raw(small[split], "label")
    other = scenes.build_fashion_scenes(seed=1, cache_dir=tmp_path / "b", **SMALL)
    for split in small:
        assert _raw(other[split], "image") != _raw(small[split], "image")


def test_small_build_is_prefix_of_larger(small, tmp_path):
    prefix = scenes.build_fashion_scenes(
        num_train=15, num_validation=4, num_test=3, canvas_size=64, seed=0, cache_dir=tmp_path
    )
    for split in small:
        n = len(prefix[split])
        assert _raw(prefix[split], "image") == _raw(small[split], "image")[:n]
        assert _raw(prefix[split], "label") == _raw(small[split], "label")[:n]


def test_splits_share_no_scene(small):
    train = set(_raw(small["train"], "image"))
    assert not train & set(_raw(small["validation"], "image"))
    assert not set(_raw(small["validation"], "image")) & set(_raw(small["test"], "image"))


def test_load_or_build_round_trip(small, tmp_path, monkeypatch):
    loaded = scenes.load_or_build_fashion_scenes(tmp_path, seed=0, **SMALL)
    folder = tmp_path / scenes.cache_key(seed=0, **SMALL)
    assert (folder / "dataset_dict.json").is_file()
    assert scenes.read_id2label(folder) == scenes.FASHION_SCENES_ID2LABEL
    assert json.loads((folder / "id2label.json").read_text())["0"] == "background"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "semantic-segmentation" in card
    assert "composed" in card and "MIT" in card and "skimage.data" in card
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging leftovers
    for split in small:
        assert _raw(loaded[split], "image") == _raw(small[split], "image")
        assert _raw(loaded[split], "label") == _raw(small[split], "label")
        assert loaded[split].info.description == small[split].info.description

    def fail(*args, **kwargs):
        raise AssertionError("should have loaded from the cache")

    monkeypatch.setattr(scenes, "build_fashion_scenes", fail)
    cached = scenes.load_or_build_fashion_scenes(tmp_path, seed=0, **SMALL)
    assert _raw(cached["test"], "label") == _raw(small["test"], "label")


def test_cache_key_encodes_params():
    keys = {
        scenes.cache_key(**SMALL, seed=0),
        scenes.cache_key(**SMALL, seed=1),
        scenes.cache_key(**{**SMALL, "canvas_size": 96}, seed=0),
        scenes.cache_key(**{**SMALL, "num_train": 41}, seed=0),
    }
    assert len(keys) == 4


def test_cli(tmp_path, capsys):
    args = ["--output_dir", str(tmp_path), "--num_train", "6", "--num_validation", "2", "--num_test", "2"]
    assert scenes.main(args + ["--canvas_size", "64", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    folder = Path(tmp_path) / scenes.cache_key(6, 2, 2, 64, 2)
    assert str(folder) in out and (folder / "id2label.json").is_file()
    assert scenes.main(args + ["--fashion_mnist_dir", str(tmp_path / "missing")]) == 2
    assert "apt-get" in capsys.readouterr().err


def test_blurred_regime_blurs_images_only(tmp_path):
    """blur_sigma: images are the sharp render through a Gaussian blur; masks are unchanged; its own cache folder."""
    sizes = dict(num_train=3, num_validation=2, num_test=2, canvas_size=64)
    sharp = scenes.build_fashion_scenes(seed=0, cache_dir=tmp_path / "a", **sizes)
    blurred = scenes.build_fashion_scenes(seed=0, cache_dir=tmp_path / "b", blur_sigma=2.5, **sizes)
    for i in range(2):
        image = np.asarray(scenes.render_scene("validation", i, seed=0, canvas_size=64)[0])
        got = np.asarray(blurred["validation"][i]["image"])
        assert np.array_equal(got, scenes.blur_image(image, 2.5))
        assert np.array_equal(np.asarray(blurred["validation"][i]["label"]), np.asarray(sharp["validation"][i]["label"]))
        # a blur smooths: neighbouring pixels differ less than in the sharp image
        step = lambda a: np.abs(np.diff(a.astype(int), axis=1)).mean()  # noqa: E731
        assert step(got) < 0.6 * step(image)
    assert scenes.cache_key(**sizes, blur_sigma=2.5).endswith("_blur2.5")
    assert scenes.cache_key(**sizes) == scenes.cache_key(**sizes, blur_sigma=0.0)  # old keys are unchanged
    with pytest.raises(LADError, match="blur_sigma"):
        scenes.build_fashion_scenes(blur_sigma=-1, **sizes)
