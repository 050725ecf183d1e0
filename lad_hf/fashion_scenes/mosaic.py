"""The mosaic layout of fashion-scenes: canvases fully tiled by many touching regions whose class shows only in
statistics over the region.

A canvas is a multiplicatively weighted Voronoi diagram of `MOSAIC_REGIONS` seeds (curved, touching boundaries; no
empty background). A canvas uses 3-6 of the 11 classes, so one class holds several regions, some touching, some
apart. A region of a garment class is filled with a tiling of Fashion-MNIST photos of that class (several items, one
random scale per region); a region of class 0 with a grayscale crop of a background photograph. Every region then
gets the canvas's mean intensity and a contrast and tint drawn from banks shared by all classes:

    rgb(p) = tint_r · (m + c_r · (g(p) − mean_{q ∈ r} g(q)))        for p in region r

(c_r shrinks where rgb would leave 0..255, so the mean is kept exactly)
so neither brightness nor colour identifies a class or reveals a boundary by its mean: only the texture statistics
over a region do. The same split rules as the object layout hold (train items from Fashion-MNIST train, validation
and test from two halves of its test split; disjoint photos).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

MOSAIC_REGIONS = (10, 30)  # inclusive
CLASSES_PER_CANVAS = (3, 6)  # inclusive
THUMB_FRACTION = (0.14, 0.22)  # thumbnail side as a fraction of the canvas side
ITEMS_PER_REGION = 4
# banks shared by all classes: a region's contrast and tint say nothing about its class
CONTRAST_BANK = (0.55, 0.7, 0.85, 1.0)
TINT_BANK = ((1.0, 1.0, 1.0), (1.08, 0.98, 0.9), (0.9, 1.0, 1.08), (1.05, 0.92, 1.02), (0.95, 1.05, 0.97))


@dataclass(frozen=True)
class MosaicRegion:
    """One region: its seed point, Voronoi weight, class and fill (items, thumbnail size, offset, contrast, tint)."""

    y: float
    x: float
    weight: float
    label: int
    items: tuple[int, ...]  # Fashion-MNIST indices (class > 0) or () for a photo region
    thumb: int
    offset: tuple[int, int]
    contrast: float
    tint: tuple[float, float, float]
    photo: str = ""
    crop: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class MosaicLayout:
    """Everything random about one mosaic scene; `render_mosaic` turns it into pixels."""

    split: str
    index: int
    canvas_size: int
    fashion_split: str
    mean: float
    regions: tuple[MosaicRegion, ...]


def draw_mosaic(rng: np.random.Generator, split: str, index: int, canvas_size: int, fashion_split: str,
                class_items: dict[int, np.ndarray], photos: tuple[str, ...]) -> MosaicLayout:
    """Draw a mosaic layout from `rng`. `class_items[k]` lists the Fashion-MNIST indices of class k (1..10)."""
    n = int(rng.integers(MOSAIC_REGIONS[0], MOSAIC_REGIONS[1] + 1))
    k = int(rng.integers(CLASSES_PER_CANVAS[0], CLASSES_PER_CANVAS[1] + 1))
    palette = rng.choice(11, size=k, replace=False)
    labels = np.concatenate([palette, rng.choice(palette, size=max(0, n - k))])[:n]  # every palette class appears
    rng.shuffle(labels)
    regions = []
    for label in labels.tolist():
        thumb = int(round(rng.uniform(*THUMB_FRACTION) * canvas_size))
        items = tuple(int(i) for i in rng.choice(class_items[label], size=ITEMS_PER_REGION)) if label else ()
        regions.append(MosaicRegion(
            y=float(rng.uniform(0, canvas_size)), x=float(rng.uniform(0, canvas_size)),
            weight=float(rng.uniform(0.7, 1.3)), label=int(label), items=items, thumb=max(6, thumb),
            offset=(int(rng.integers(0, 64)), int(rng.integers(0, 64))),
            contrast=float(rng.choice(CONTRAST_BANK)), tint=tuple(TINT_BANK[int(rng.integers(len(TINT_BANK)))]),
            photo=photos[int(rng.integers(len(photos)))] if not label else "",
            crop=(float(rng.random()), float(rng.random())),
        ))
    return MosaicLayout(split, int(index), int(canvas_size), fashion_split, float(rng.uniform(70, 150)),
                        tuple(regions))


def region_map(layout: MosaicLayout) -> np.ndarray:
    """[H, W] index of the region owning each pixel: argmin_i w_i · |p − s_i| (curved boundaries)."""
    cs = layout.canvas_size
    yy, xx = np.mgrid[0:cs, 0:cs].astype(np.float32) + 0.5
    seeds = np.array([(r.y, r.x, r.weight) for r in layout.regions], dtype=np.float32)
    d = np.hypot(yy[None] - seeds[:, 0, None, None], xx[None] - seeds[:, 1, None, None]) * seeds[:, 2, None, None]
    return d.argmin(0)


def _tiled(images: np.ndarray, items: tuple[int, ...], thumb: int, offset: tuple[int, int], cs: int) -> np.ndarray:
    """A cs×cs grayscale texture: the items' photos at `thumb` px, tiled row by row (item order cycles)."""
    tiles = [np.asarray(Image.fromarray(images[i]).resize((thumb, thumb), Image.BILINEAR), dtype=np.float32)
             for i in items]
    reps = cs // thumb + 2
    rows = [np.concatenate([tiles[(r * reps + c) % len(tiles)] for c in range(reps)], axis=1) for r in range(reps)]
    big = np.concatenate(rows, axis=0)
    oy, ox = offset[0] % thumb, offset[1] % thumb
    return big[oy : oy + cs, ox : ox + cs]


def _photo_texture(photo: Image.Image, crop: tuple[float, float], cs: int) -> np.ndarray:
    gray = np.asarray(photo.convert("L"), dtype=np.float32)
    h, w = gray.shape
    y0, x0 = int(crop[0] * (h - cs)), int(crop[1] * (w - cs))
    return gray[y0 : y0 + cs, x0 : x0 + cs]


def render_mosaic(layout: MosaicLayout, fashion: dict, photos: dict) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 image, HxW uint8 mask) of a mosaic layout."""
    cs = layout.canvas_size
    images = fashion[layout.fashion_split][0]
    owner = region_map(layout)
    canvas = np.zeros((cs, cs, 3), dtype=np.float32)
    mask = np.zeros((cs, cs), dtype=np.uint8)
    for i, r in enumerate(layout.regions):
        inside = owner == i
        if not inside.any():
            continue
        tex = (_tiled(images, r.items, r.thumb, r.offset, cs) if r.label else _photo_texture(photos[r.photo], r.crop, cs))
        g = tex[inside] - tex[inside].mean()
        tint = np.asarray(r.tint, dtype=np.float32)
        # the contrast shrinks where it would clip, so the region's mean stays exactly tint · m
        room = min(layout.mean / max(-g.min(), 1e-6), (255.0 / tint.max() - layout.mean) / max(g.max(), 1e-6))
        values = layout.mean + min(r.contrast, room) * g
        canvas[inside] = values[:, None] * tint
        mask[inside] = r.label
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mask
