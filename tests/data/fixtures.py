"""Tiny on-disk copies of the official dataset layouts and of the chosen Hub datasets' schemas.

Every builder writes real files (PIL images, parquet written by `datasets`) whose masks hold the *raw* encodings
of the real data, and returns ``{split: [raw mask arrays]}`` in the order the loader lists the rows, so tests
can compare what the package decodes with an independent, naive per-pixel mapping (:func:`naive_map`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
from PIL import Image

H, W = 12, 16  # every image/mask: small, not square

# ------------------------------------------------------------------------------------------------ naive mappings
# Written out independently of lad_hf.data.label_sets (facts: brief + cityscapesScripts + mmseg converter).

CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
COCO_UNUSED = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}


def ade_rule(v: int) -> int:
    return v - 1 if 1 <= v <= 150 else 255


def cityscapes_rule(v: int) -> int:
    return CITYSCAPES_TRAIN_IDS.get(v, 255)


def voc_rule(v: int) -> int:
    return v if 0 <= v <= 20 else 255


def coco_stuff_rule(v: int) -> int:
    if v < 0 or v > 181 or v in COCO_UNUSED:
        return 255
    return v - sum(1 for u in COCO_UNUSED if u < v)


def naive_map(raw: np.ndarray, rule: Callable[[int], int]) -> np.ndarray:
    """Pixel by pixel, in plain Python."""
    out = np.empty(raw.shape, dtype=np.int64)
    for i in range(raw.shape[0]):
        for j in range(raw.shape[1]):
            out[i, j] = rule(int(raw[i, j]))
    return out


# ------------------------------------------------------------------------------------------------ pixels


def _image(rng) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


def _mask(rng, values: Sequence[int], must: Sequence[int]) -> np.ndarray:
    m = rng.choice(np.asarray(values), size=(H, W)).astype(np.uint8)
    flat = m.reshape(-1)
    flat[: len(must)] = np.asarray(must, dtype=np.uint8)  # the interesting values are always present
    return m


def voc_palette() -> List[int]:
    """The standard VOC colour map (bit-interleaved), flattened for PIL ``putpalette``."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _voc_mask_image(m: np.ndarray) -> Image.Image:
    img = Image.fromarray(m, mode="P")
    img.putpalette(voc_palette())
    return img


def ade_mask(rng):
    return _mask(rng, range(151), [0, 1, 150, 7])


def cityscapes_mask(rng):
    return _mask(rng, range(34), [7, 26, 0, 33, 6, 9, 34 - 1])


def voc_mask(rng):
    m = _mask(rng, range(21), [0, 20, 15])
    m[0, :] = 255  # boundary lines
    m[:, -1] = 255
    return m


def coco_stuff_mask(rng):
    return _mask(rng, list(range(182)) + [255], [0, 11, 25, 90, 91, 181, 255, 12])


# ------------------------------------------------------------------------------------------------ official layouts


def make_ade_layout(root, n_train=2, n_val=2, seed=0, nested=True) -> Dict[str, List[np.ndarray]]:
    """``ADEChallengeData2016/images/{training,validation}/*.jpg`` + ``annotations/.../*.png`` (0 = other, 1..150)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / ("ADEChallengeData2016" if nested else "")
    raws: Dict[str, List[np.ndarray]] = {}
    for split, folder, prefix, n in (("train", "training", "ADE_train", n_train), ("validation", "validation", "ADE_val", n_val)):
        (base / "images" / folder).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        raws[split] = []
        for k in range(1, n + 1):
            stem = f"{prefix}_{k:08d}"
            _image(rng).save(base / "images" / folder / f"{stem}.jpg")
            m = ade_mask(rng)
            Image.fromarray(m, mode="L").save(base / "annotations" / folder / f"{stem}.png")
            raws[split].append(m)
    (base / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n")
    return raws


def make_cityscapes_layout(root, n_train=2, n_val=2, seed=0) -> Dict[str, List[np.ndarray]]:
    """``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_{labelIds,color,instanceIds}.png``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    raws: Dict[str, List[np.ndarray]] = {}
    plan = {"train": ("train", ["aachen", "bochum"], n_train), "validation": ("val", ["frankfurt"], n_val)}
    for split, (folder, cities, n) in plan.items():
        raws[split] = []
        entries = []
        for k in range(n):
            city = cities[k % len(cities)]
            entries.append((city, f"{city}_{k:06d}_000019"))
        for city, stem in sorted(entries):
            img_dir = root / "leftImg8bit" / folder / city
            gt_dir = root / "gtFine" / folder / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            _image(rng).save(img_dir / f"{stem}_leftImg8bit.png")
            m = cityscapes_mask(rng)
            Image.fromarray(m, mode="L").save(gt_dir / f"{stem}_gtFine_labelIds.png")
            # distractors a real gtFine folder holds next to the labelIds
            Image.fromarray(np.full((H, W, 4), 200, np.uint8), mode="RGBA").save(gt_dir / f"{stem}_gtFine_color.png")
            Image.fromarray(m.astype(np.uint16) * 1000).save(gt_dir / f"{stem}_gtFine_instanceIds.png")  # 16-bit
            (gt_dir / f"{stem}_gtFine_polygons.json").write_text("{}")
            raws[split].append(m)
    return raws


def make_voc_layout(root, n_train=2, n_val=2, seed=0, nested=True) -> Dict[str, List[np.ndarray]]:
    """``VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/{train,val,trainval}.txt}``."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "VOCdevkit" / "VOC2012" if nested else Path(root)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "Annotations"):
        (base / d).mkdir(parents=True, exist_ok=True)
    raws: Dict[str, List[np.ndarray]] = {}
    ids = {"train": [f"2007_{k:06d}" for k in range(n_train)], "validation": [f"2008_{k:06d}" for k in range(n_val)]}
    for split, names in ids.items():
        raws[split] = []
        for i in names:
            _image(rng).save(base / "JPEGImages" / f"{i}.jpg")
            m = voc_mask(rng)
            _voc_mask_image(m).save(base / "SegmentationClass" / f"{i}.png")
            raws[split].append(m)
    _image(rng).save(base / "JPEGImages" / "2009_999999.jpg")  # detection-only image: in no segmentation list
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids["train"]) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids["validation"]) + "\n")
    (base / "ImageSets/Segmentation/trainval.txt").write_text("\n".join(ids["train"] + ids["validation"]) + "\n")
    return raws


def make_coco_stuff_layout(root, n_train=2, n_val=2, seed=0) -> Dict[str, List[np.ndarray]]:
    """``images/{train2017,val2017}/*.jpg`` + ``stuffthingmaps_trainval2017/{train2017,val2017}/*.png`` (raw ids)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    raws: Dict[str, List[np.ndarray]] = {}
    for split, folder, n in (("train", "train2017", n_train), ("validation", "val2017", n_val)):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "stuffthingmaps_trainval2017" / folder).mkdir(parents=True, exist_ok=True)
        raws[split] = []
        for k in range(n):
            stem = f"{(k + 1) * 139 + (0 if split == 'train' else 7):012d}"
            _image(rng).save(root / "images" / folder / f"{stem}.jpg")
            m = coco_stuff_mask(rng)
            Image.fromarray(m, mode="L").save(root / "stuffthingmaps_trainval2017" / folder / f"{stem}.png")
            raws[split].append(m)
    return raws


# ------------------------------------------------------------------------------------------------ Hub schemas


def _png_cell(img: Image.Image) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _jpeg_cell(img: Image.Image) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return {"bytes": buf.getvalue(), "path": None}


def _write_parquet(root: Path, split_file: str, columns: dict, features) -> None:
    from datasets import Dataset

    (root / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=features).to_parquet(str(root / "data" / split_file))


def make_hub_scene_parse_150(root, n=2, seed=0) -> Dict[str, List[np.ndarray]]:
    """merve/scene_parse_150: image, annotation (L PNG, 0 = other, 1..150), scene_category (ClassLabel);
    splits train/validation/test (test annotations are all 0 in SceneParse150's script)."""
    from datasets import ClassLabel, Features, Image as ImageFeature

    rng = np.random.default_rng(seed)
    root = Path(root)
    feats = Features({"image": ImageFeature(), "annotation": ImageFeature(),
                      "scene_category": ClassLabel(names=["airport_terminal", "art_gallery", "badlands"])})
    raws = {}
    for split in ("train", "validation", "test"):
        masks = [ade_mask(rng) if split != "test" else np.zeros((H, W), np.uint8) for _ in range(n)]
        _write_parquet(root, f"{split}-00000-of-00001.parquet", {
            "image": [_jpeg_cell(_image(rng)) for _ in masks],
            "annotation": [_png_cell(Image.fromarray(m, mode="L")) for m in masks],
            "scene_category": [int(i % 3) for i in range(n)],
        }, feats)
        raws[split] = masks
    return raws


def make_hub_chris1_cityscapes(root, n=2, seed=0) -> Dict[str, List[np.ndarray]]:
    """Chris1/cityscapes: image, semantic_segmentation (labelIds stored as 3 equal channels); train/validation/test."""
    from datasets import Features, Image as ImageFeature

    rng = np.random.default_rng(seed)
    root = Path(root)
    feats = Features({"image": ImageFeature(), "semantic_segmentation": ImageFeature()})
    raws = {}
    for split in ("train", "validation", "test"):
        masks = [cityscapes_mask(rng) for _ in range(n)]
        _write_parquet(root, f"{split}-00000-of-00001.parquet", {
            "image": [_png_cell(_image(rng)) for _ in masks],
            "semantic_segmentation": [_png_cell(Image.fromarray(np.stack([m] * 3, -1), mode="RGB")) for m in masks],
        }, feats)
        raws[split] = masks
    return raws


def make_hub_nateraw_voc(root, n=2, seed=0) -> Dict[str, List[np.ndarray]]:
    """nateraw/pascal-voc-2012: image, mask (palette PNG of class indices, 255 boundaries); splits train/val."""
    from datasets import Features, Image as ImageFeature

    rng = np.random.default_rng(seed)
    root = Path(root)
    feats = Features({"image": ImageFeature(), "mask": ImageFeature()})
    raws = {}
    for split, canon in (("train", "train"), ("val", "validation")):
        masks = [voc_mask(rng) for _ in range(n)]
        _write_parquet(root, f"{split}-00000-of-00001.parquet", {
            "image": [_jpeg_cell(_image(rng)) for _ in masks],
            "mask": [_png_cell(_voc_mask_image(m)) for m in masks],
        }, feats)
        raws[canon] = masks
    return raws


def make_hub_gate_coco_stuff(root, n=2, seed=0) -> Dict[str, List[np.ndarray]]:
    """GATE-engine/COCOStuff164K: image, mask (L PNG of raw stuffthingmaps ids, 255 unlabeled); splits train/val."""
    from datasets import Features, Image as ImageFeature

    rng = np.random.default_rng(seed)
    root = Path(root)
    feats = Features({"image": ImageFeature(), "mask": ImageFeature()})
    raws = {}
    for split, canon in (("train", "train"), ("val", "validation")):
        masks = [coco_stuff_mask(rng) for _ in range(n)]
        _write_parquet(root, f"{split}-00000-of-00002.parquet", {
            "image": [_jpeg_cell(_image(rng)) for _ in masks],
            "mask": [_png_cell(Image.fromarray(m, mode="L")) for m in masks],
        }, feats)
        raws[canon] = masks
    return raws
