"""fashion-scenes: a small semantic-segmentation dataset composed from real images.

Each scene is a square canvas. Its background is a random crop of a real photograph bundled with
scikit-image. On top of it lie 2-4 real Fashion-MNIST product photos, each scaled, tinted, flipped
and placed at random; later items occlude earlier ones. The label of an item is its *filled
silhouette* (grayscale > threshold, holes filled), painted with the item's class id.

The layouts and masks are composed by this module; every pixel comes from a real photograph.

Splits never share sources:

* `train` uses Fashion-MNIST's train split and the photos in `TRAIN_BACKGROUNDS`.
* `validation` uses Fashion-MNIST test images 0-4999, `test` uses test images 5000-9999,
  and both use the photos in `EVAL_BACKGROUNDS`.

Scene `i` of a split is drawn from its own RNG seeded by `(seed, split, i)`, so a small build is
a prefix of a large one with the same seed and canvas size.

Command line: `python -m lad_hf.fashion_scenes --output_dir DIR` (see `main`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFilter

from ..errors import LADError
from .fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    _resolve_fashion_dir,
    load_fashion_mnist,
)
from .card import dataset_card
from .mosaic import draw_mosaic, render_mosaic
from .png import _png, encode_png  # noqa: F401  (encode_png is re-exported)

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "EVAL_BACKGROUNDS",
    "FASHION_SCENES_ID2LABEL",
    "FASHION_SCENES_LABEL2ID",
    "SPLITS",
    "TRAIN_BACKGROUNDS",
    "SceneItem",
    "SceneLayout",
    "build_fashion_scenes",
    "cache_key",
    "encode_png",
    "filled_silhouette",
    "item_class",
    "item_gray",
    "load_fashion_mnist",
    "load_or_build_fashion_scenes",
    "main",
    "render_layout",
    "render_scene",
    "scene_layout",
]

# Bump when the way scenes are drawn or rendered changes; it is part of the cache key.
SCENES_VERSION = 1

FASHION_SCENES_ID2LABEL: dict[int, str] = {0: "background"}
FASHION_SCENES_ID2LABEL.update({i + 1: name for i, name in enumerate(FASHION_MNIST_CLASSES)})
FASHION_SCENES_LABEL2ID: dict[str, int] = {v: k for k, v in FASHION_SCENES_ID2LABEL.items()}
NUM_CLASSES = len(FASHION_SCENES_ID2LABEL)

SPLITS = ("train", "validation", "test")
_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}

# Which Fashion-MNIST split and index range each scene split draws its items from.
_FASHION_SOURCES = {
    "train": ("train", 0, 60000),
    "validation": ("test", 0, 5000),
    "test": ("test", 5000, 10000),
}

# Background photographs from skimage.data. All of these ship inside the scikit-image wheel
# (checked with scikit-image 0.26, no pooch, offline). `colorwheel` loads too but is a
# rendered graphic, not a photograph, so it is left out to keep "every pixel is real" true.
TRAIN_BACKGROUNDS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "rocket",
    "grass",
    "brick",
    "hubble_deep_field",
    "camera",
    "page",
    "moon",
)
EVAL_BACKGROUNDS: tuple[str, ...] = (
    "chelsea",
    "gravel",
    "immunohistochemistry",
    "text",
    "retina",
)
EXCLUDED_BACKGROUNDS = {"colorwheel": "synthetic graphic, not a photograph"}

MIN_CANVAS, MAX_CANVAS = 64, 256
ITEMS_PER_SCENE = (2, 4)  # inclusive
ITEM_SCALE = (0.30, 0.70)  # item box side as a fraction of the canvas side
CROP_FRACTION = (0.35, 1.0)  # background crop side as a fraction of the photo's shorter side
SILHOUETTE_THRESHOLD = 12  # grayscale value (0-255) above which a pixel belongs to the item

DESCRIPTION = (
    "fashion-scenes: semantic segmentation scenes composed by lad_hf.fashion_scenes. The layouts and the "
    "masks are composed; every pixel is real: items are Fashion-MNIST product photos (tinted, "
    "scaled, flipped), backgrounds are crops of photographs bundled with scikit-image. A mask pixel "
    "holds the class id of the item whose filled silhouette covers it, 0 for background. "
    "Train items come from Fashion-MNIST train, validation/test items from two disjoint halves of "
    "Fashion-MNIST test; train and validation/test use disjoint background photos."
)


# --------------------------------------------------------------------------------------------
# Background photographs
# --------------------------------------------------------------------------------------------

def _background_set(split: str) -> tuple[str, ...]:
    return TRAIN_BACKGROUNDS if split == "train" else EVAL_BACKGROUNDS


def _load_skimage_photo(name: str) -> np.ndarray:
    try:
        from skimage import data as skdata
    except ImportError as exc:
        raise LADError("fashion-scenes needs scikit-image; install it with `pip install 'lad-hf[demo]'`") from exc
    try:
        photo = getattr(skdata, name)()
    except Exception as exc:
        raise LADError(f"skimage.data.{name}() failed to load ({type(exc).__name__}: {exc})") from exc
    photo = np.asarray(photo)
    if photo.dtype != np.uint8:
        photo = (np.clip(photo.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if photo.ndim == 2:
        photo = np.repeat(photo[:, :, None], 3, axis=2)
    return np.ascontiguousarray(photo[:, :, :3])


@functools.lru_cache(maxsize=8)
def _background_photos(canvas_size: int) -> dict[str, Image.Image]:
    """All background photos as RGB PIL images, resized once so their shorter side is 2x the canvas."""
    out = {}
    for name in TRAIN_BACKGROUNDS + EVAL_BACKGROUNDS:
        img = Image.fromarray(_load_skimage_photo(name))
        w, h = img.size
        scale = 2 * canvas_size / min(w, h)
        out[name] = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return out


# --------------------------------------------------------------------------------------------
# Layout (pure RNG) and rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneItem:
    """One pasted product photo. `fashion_split`/`fashion_index` name the Fashion-MNIST source."""

    fashion_split: str
    fashion_index: int
    size: int
    top: int
    left: int
    tint: tuple[float, float, float]
    flip: bool


@dataclass(frozen=True)
class SceneLayout:
    """Everything random about one scene; `render_scene` turns it into pixels."""

    split: str
    index: int
    canvas_size: int
    background: str
    crop: tuple[float, float, float]  # side fraction of the shorter side, x and y position in [0, 1]
    background_flip: bool
    items: tuple[SceneItem, ...]


def _check_canvas_size(canvas_size: int) -> None:
    if not isinstance(canvas_size, (int, np.integer)) or not MIN_CANVAS <= canvas_size <= MAX_CANVAS:
        raise LADError(f"canvas_size must be an integer in {MIN_CANVAS}..{MAX_CANVAS}, got {canvas_size!r}")


def _check_split(split: str) -> None:
    if split not in _SPLIT_CODES:
        raise LADError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def scene_layout(split: str, index: int, *, seed: int = 0, canvas_size: int = 96) -> SceneLayout:
    """Draw the layout of scene `index` of `split`; depends only on (seed, split, index, canvas_size)."""
    _check_split(split)
    _check_canvas_size(canvas_size)
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])
    backgrounds = _background_set(split)
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    crop = (float(rng.uniform(*CROP_FRACTION)), float(rng.random()), float(rng.random()))
    background_flip = bool(rng.random() < 0.5)
    fashion_split, lo, hi = _FASHION_SOURCES[split]
    items = []
    for _ in range(int(rng.integers(ITEMS_PER_SCENE[0], ITEMS_PER_SCENE[1] + 1))):
        fashion_index = int(rng.integers(lo, hi))
        size = int(round(rng.uniform(*ITEM_SCALE) * canvas_size))
        top = int(rng.integers(0, canvas_size - size + 1))
        left = int(rng.integers(0, canvas_size - size + 1))
        tint = rng.uniform(0.15, 1.0, size=3)
        tint = tint / tint.max()  # keep the brightest channel at full strength so items stay visible
        flip = bool(rng.random() < 0.5)
        items.append(SceneItem(fashion_split, fashion_index, size, top, left, tuple(float(t) for t in tint), flip))
    return SceneLayout(split, int(index), int(canvas_size), background, crop, background_flip, tuple(items))


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # 4-connectivity


def filled_silhouette(gray: np.ndarray, threshold: int = SILHOUETTE_THRESHOLD) -> np.ndarray:
    """Boolean silhouette of a grayscale item: pixels > `threshold`, with enclosed holes filled.

    Same result as `scipy.ndimage.binary_fill_holes(gray > threshold)`: a hole is a background
    region not 4-connected to the border. Labelling the background is several times faster.
    """
    from scipy import ndimage

    solid = np.asarray(gray) > threshold
    regions, n = ndimage.label(~solid, structure=_CROSS)
    if n == 0:
        return solid
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (regions[0], regions[-1], regions[:, 0], regions[:, -1]):
        outside[edge] = True
    outside[0] = False  # label 0 is the item itself
    return ~outside[regions]


def _soft_alpha(silhouette: np.ndarray) -> np.ndarray:
    """Image alpha: 1 inside, 0.6 on the silhouette's 4-connected rim, 0 outside (never beyond the mask)."""
    inner = silhouette.copy()
    inner[1:] &= silhouette[:-1]
    inner[:-1] &= silhouette[1:]
    inner[:, 1:] &= silhouette[:, :-1]
    inner[:, :-1] &= silhouette[:, 1:]
    alpha = np.where(inner, np.float32(1.0), np.float32(0.6))
    alpha[~silhouette] = 0.0
    return alpha


def item_gray(item: SceneItem, fashion: dict) -> np.ndarray:
    """The item's grayscale photo, flipped if asked and resized (bilinear) to `item.size` pixels."""
    gray = fashion[item.fashion_split][0][item.fashion_index]
    if item.flip:
        gray = gray[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(gray)).resize((item.size, item.size), Image.BILINEAR))


def item_class(item: SceneItem, fashion: dict) -> int:
    """Class id of an item in `FASHION_SCENES_ID2LABEL` (Fashion-MNIST label + 1)."""
    return int(fashion[item.fashion_split][1][item.fashion_index]) + 1


def _render(layout: SceneLayout, fashion: dict, photos: dict[str, Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    cs = layout.canvas_size
    bg = photos[layout.background]
    w, h = bg.size
    side = layout.crop[0] * min(w, h)
    x0 = layout.crop[1] * (w - side)
    y0 = layout.crop[2] * (h - side)
    crop = bg.resize((cs, cs), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    if layout.background_flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas = np.array(crop, dtype=np.float32)
    mask = np.zeros((cs, cs), dtype=np.uint8)
    for item in layout.items:
        gray = item_gray(item, fashion)
        sil = filled_silhouette(gray)
        alpha = _soft_alpha(sil)[:, :, None]
        rgb = gray[:, :, None].astype(np.float32) * np.asarray(item.tint, dtype=np.float32)
        region = canvas[item.top : item.top + item.size, item.left : item.left + item.size]
        region += alpha * (rgb - region)
        mask_region = mask[item.top : item.top + item.size, item.left : item.left + item.size]
        mask_region[sil] = item_class(item, fashion)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, mask


def render_layout(
    layout: SceneLayout, *, fashion_mnist_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render a layout as (HxWx3 uint8 image, HxW uint8 mask of class ids)."""
    return _render(layout, load_fashion_mnist(fashion_mnist_dir), _background_photos(layout.canvas_size))


def render_scene(
    split: str,
    index: int,
    *,
    seed: int = 0,
    canvas_size: int = 96,
    fashion_mnist_dir: str | os.PathLike | None = None,
) -> tuple[Image.Image, Image.Image]:
    """Render one scene as (RGB image, mode-"L" mask of class ids), exactly as the dataset stores it."""
    layout = scene_layout(split, index, seed=seed, canvas_size=canvas_size)
    image, mask = render_layout(layout, fashion_mnist_dir=fashion_mnist_dir)
    return Image.fromarray(image, "RGB"), Image.fromarray(mask, "L")


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------





def blur_image(image: np.ndarray, sigma: float) -> np.ndarray:
    """The image seen through a Gaussian blur of std `sigma` px (the mask is not blurred): a harder regime where
    RGB alone leaves the items' outlines ambiguous while colour and texture remain."""
    if not sigma:
        return image
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=float(sigma))))


def _class_items(fashion: dict, split: str) -> dict[int, np.ndarray]:
    """Fashion-MNIST indices per scene class (1..10) within the range `split` draws from."""
    fashion_split, lo, hi = _FASHION_SOURCES[split]
    labels = fashion[fashion_split][1][lo:hi]
    return {k + 1: np.flatnonzero(labels == k) + lo for k in range(len(FASHION_MNIST_CLASSES))}


def mosaic_layout(split: str, index: int, fashion: dict, *, seed: int = 0, canvas_size: int = 96):
    """Draw the mosaic layout of scene `index` of `split` (see `lad_hf.fashion_scenes.mosaic`)."""
    _check_split(split)
    _check_canvas_size(canvas_size)
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index), 1])
    return draw_mosaic(rng, split, index, canvas_size, _FASHION_SOURCES[split][0], _class_items(fashion, split),
                       _background_set(split))


def _render_objects(split, i, seed, canvas_size, fashion, photos):
    return _render(scene_layout(split, i, seed=seed, canvas_size=canvas_size), fashion, photos)


def _render_mosaic(split, i, seed, canvas_size, fashion, photos):
    return render_mosaic(mosaic_layout(split, i, fashion, seed=seed, canvas_size=canvas_size), fashion, photos)


# layout name -> renderer of scene i: "objects" (2-4 items on a photo) or "mosaic" (many touching regions)
LAYOUTS = {"objects": _render_objects, "mosaic": _render_mosaic}


def render_any(layout: str, split: str, index: int, *, seed: int = 0, canvas_size: int = 96,
               fashion_mnist_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) arrays of scene `index` of `split` in the named `layout`."""
    return LAYOUTS[layout](split, index, seed, canvas_size, load_fashion_mnist(fashion_mnist_dir),
                           _background_photos(canvas_size))


def _generate(
    split: str, shards: Sequence[tuple[int, int]], seed: int, canvas_size: int, fashion_mnist_dir: str | None, version: str,
    blur_sigma: float = 0.0, layout: str = "objects",
) -> Iterator[dict]:
    """datasets generator: yields the scenes of `split` in the index ranges `shards`."""
    del version  # only part of the fingerprint
    fashion = load_fashion_mnist(fashion_mnist_dir)
    photos = _background_photos(canvas_size)
    render = LAYOUTS[layout]
    for start, stop in shards:
        for i in range(start, stop):
            image, mask = render(split, i, seed, canvas_size, fashion, photos)
            yield {"image": _png(blur_image(image, blur_sigma)), "label": _png(mask)}


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _features():
    import datasets

    return datasets.Features({"image": datasets.Image(), "label": datasets.Image()})


def _description() -> str:
    return DESCRIPTION + " id2label: " + json.dumps({str(k): v for k, v in FASHION_SCENES_ID2LABEL.items()})


def build_fashion_scenes(
    num_train: int = 20000,
    num_validation: int = 1000,
    num_test: int = 2000,
    canvas_size: int = 96,
    seed: int = 0,
    fashion_mnist_dir: str | os.PathLike | None = None,
    *,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    blur_sigma: float = 0.0,
    layout: str = "objects",
):
    """Build fashion-scenes as a `datasets.DatasetDict` with splits train/validation/test.

    `layout` is `"objects"` (2-4 items on a photo) or `"mosaic"` (canvases tiled by 10-30 touching regions whose
    class shows only in texture statistics; `lad_hf.fashion_scenes.mosaic`). `blur_sigma` > 0 blurs every image (Gaussian, std in px; masks stay sharp): the "blurred" difficulty, where
    RGB alone leaves the grouping ambiguous and a label-assisted teacher has something to read.

    Columns: `image` (RGB) and `label` (mode "L" mask of class ids 0..10, see
    `FASHION_SCENES_ID2LABEL`), both `datasets.Image`. `num_proc` defaults to up to 2
    processes for large splits; `cache_dir` is where `datasets` writes the Arrow files
    (default: the `datasets` cache).
    """
    import datasets

    _check_canvas_size(canvas_size)
    if layout not in LAYOUTS:
        raise LADError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    if not isinstance(blur_sigma, (int, float)) or blur_sigma < 0:
        raise LADError(f"blur_sigma must be a number >= 0, got {blur_sigma!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise LADError(f"seed must be a non-negative integer, got {seed!r}")
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    for split, n in sizes.items():
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise LADError(f"num_{split} must be a positive integer, got {n!r}")
    directory, _ = _resolve_fashion_dir(fashion_mnist_dir)
    load_fashion_mnist(fashion_mnist_dir)  # fail early, with the one-line message
    _background_photos(canvas_size)
    fashion_arg = str(fashion_mnist_dir) if fashion_mnist_dir else None
    features = _features()
    out = {}
    for split, n in sizes.items():
        procs = num_proc if num_proc is not None else (min(2, os.cpu_count() or 1) if n >= 2000 else 1)
        procs = max(1, min(int(procs), n))
        bounds = np.linspace(0, n, max(procs, 1) * 4 + 1).round().astype(int) if procs > 1 else np.array([0, n])
        shards = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        version = f"v{SCENES_VERSION}-{_source_hash()}"
        fingerprint = hashlib.sha256(
            json.dumps([version, split, n, canvas_size, int(seed), str(directory)] + ([float(blur_sigma)] if blur_sigma else [])
            + ([layout] if layout != "objects" else [])).encode()
        ).hexdigest()[:32]
        ds = datasets.Dataset.from_generator(
            _generate,
            features=features,
            cache_dir=str(cache_dir) if cache_dir else None,
            gen_kwargs={
                "split": split,
                "shards": shards,
                "seed": int(seed),
                "canvas_size": int(canvas_size),
                "fashion_mnist_dir": fashion_arg,
                "version": version,
                "blur_sigma": float(blur_sigma),
                "layout": layout,
            },
            num_proc=procs if procs > 1 else None,
            split=datasets.NamedSplit(split),
            fingerprint=fingerprint,
        )
        ds.info.description = _description()
        out[split] = ds
    return datasets.DatasetDict(out)


def cache_key(
    num_train: int = 20000,
    num_validation: int = 1000,
    num_test: int = 2000,
    canvas_size: int = 96,
    seed: int = 0,
    blur_sigma: float = 0.0,
    layout: str = "objects",
) -> str:
    """Folder name that encodes the build parameters (and `SCENES_VERSION`)."""
    blur = f"_blur{float(blur_sigma):g}" if blur_sigma else ""
    kind = f"_{layout}" if layout != "objects" else ""
    return (f"fashion-scenes-v{SCENES_VERSION}{kind}_{canvas_size}px_seed{seed}_{num_train}-{num_validation}-"
            f"{num_test}{blur}")


def load_or_build_fashion_scenes(cache_dir: str | os.PathLike, **kwargs):
    """Load fashion-scenes from `cache_dir/<cache_key>`, building and saving it there first if needed.

    `kwargs` are those of `build_fashion_scenes`. The saved folder also holds
    `id2label.json` and a `README.md` dataset card.
    """
    import datasets

    params = {
        k: kwargs.get(k, v)
        for k, v in (("num_train", 20000), ("num_validation", 1000), ("num_test", 2000), ("canvas_size", 96), ("seed", 0),
                     ("blur_sigma", 0.0), ("layout", "objects"))
    }
    target = Path(cache_dir).expanduser() / cache_key(**params)
    if (target / "dataset_dict.json").is_file() and (target / "id2label.json").is_file():
        return datasets.load_from_disk(str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        kwargs.setdefault("cache_dir", work / "arrow-cache")
        dsd = build_fashion_scenes(**kwargs)
        staging = work / "dataset"
        dsd.save_to_disk(str(staging))
        (staging / "id2label.json").write_text(
            json.dumps({str(k): v for k, v in FASHION_SCENES_ID2LABEL.items()}, indent=2) + "\n"
        )
        (staging / "README.md").write_text(dataset_card(
            params, version=SCENES_VERSION, id2label=FASHION_SCENES_ID2LABEL, train_backgrounds=TRAIN_BACKGROUNDS,
            eval_backgrounds=EVAL_BACKGROUNDS, threshold=SILHOUETTE_THRESHOLD))
        del dsd
        if target.exists():  # incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def read_id2label(dataset_dir: str | os.PathLike) -> dict[int, str]:
    """Read `id2label.json` from a saved fashion-scenes folder."""
    return {int(k): v for k, v in json.loads((Path(dataset_dir) / "id2label.json").read_text()).items()}


def main(argv: Iterable[str] | None = None) -> int:
    """CLI: build fashion-scenes into `--output_dir` (cached by parameters) and print where it is."""
    parser = argparse.ArgumentParser(prog="python -m lad_hf.fashion_scenes", description=main.__doc__)
    parser.add_argument("--output_dir", required=True, help="folder that receives <cache_key>/ with the dataset")
    parser.add_argument("--num_train", type=int, default=20000)
    parser.add_argument("--num_validation", type=int, default=1000)
    parser.add_argument("--num_test", type=int, default=2000)
    parser.add_argument("--canvas_size", type=int, default=96, help=f"canvas side in pixels, {MIN_CANVAS}..{MAX_CANVAS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fashion_mnist_dir",
        default=None,
        help=f"folder with the Fashion-MNIST idx .gz files (default ${FASHION_MNIST_ENV} or {DEFAULT_FASHION_MNIST_DIR})",
    )
    parser.add_argument("--num_proc", type=int, default=None, help="processes per split (default: up to 2)")
    parser.add_argument("--blur_sigma", type=float, default=0.0,
                        help="Gaussian blur of the images in px (masks stay sharp): the harder 'blurred' regime")
    parser.add_argument("--layout", default="objects", choices=sorted(LAYOUTS),
                        help="objects: 2-4 items on a photo; mosaic: many touching regions, class only in texture")
    args = parser.parse_args(None if argv is None else list(argv))
    start = time.perf_counter()
    try:
        dsd = load_or_build_fashion_scenes(
            args.output_dir,
            num_train=args.num_train,
            num_validation=args.num_validation,
            num_test=args.num_test,
            canvas_size=args.canvas_size,
            seed=args.seed,
            fashion_mnist_dir=args.fashion_mnist_dir,
            num_proc=args.num_proc,
            blur_sigma=args.blur_sigma,
            layout=args.layout,
        )
    except LADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = Path(args.output_dir) / cache_key(args.num_train, args.num_validation, args.num_test, args.canvas_size, args.seed, args.blur_sigma,
                                        args.layout)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in dsd.items())
    print(f"fashion-scenes at {path} ({sizes}) in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
