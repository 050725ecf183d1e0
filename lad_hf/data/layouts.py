"""The official on-disk layouts of the standard datasets, found and loaded from `--dataset_name DIR`.

=================  ======================================================================  ==============
layout             folders (under DIR, or the named sub-folder of DIR)                      label set
=================  ======================================================================  ==============
ADEChallenge2016   `images/{training,validation}/*.jpg` +                                 `ade20k`
                   `annotations/{training,validation}/*.png` (also `DIR/ADEChallengeData2016`)
Cityscapes         `leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png` +              `cityscapes`
                   `gtFine/<split>/<city>/*_gtFine_labelIds.png`
VOC 2012           `JPEGImages/`, `SegmentationClass/`, `ImageSets/Segmentation/        `voc`
                   {train,val}.txt` in `DIR/VOCdevkit/VOC2012`, `DIR/VOC2012` or `DIR`
COCO-Stuff 164K    `images/{train2017,val2017}/*.jpg` +                                   `coco-stuff`
                   `stuffthingmaps_trainval2017/{train2017,val2017}/*.png`
=================  ======================================================================  ==============

Splits come from the layout (`training`/`train`/`train2017` -> `train`, `validation`/`val`/
`val2017` -> `validation`, Cityscapes `test` -> `test`). `load_layout` returns a `DatasetDict`
whose `image` and `label` columns are `datasets.Image` features holding file paths (decoded lazily) and
the name of the layout's `lad_hf.data.label_sets.LabelSet`, which maps the raw mask values to train ids.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ..errors import LADError

logger = logging.getLogger(__name__)

_IMAGE_EXTS = (".jpg", ".jpeg", ".png")

Pairs = List[Tuple[str, str]]


@dataclass
class Layout:
    """A detected official layout.

    Attributes:
        name: `"ade20k"`, `"cityscapes"`, `"voc"` or `"coco-stuff"`.
        root: The folder the layout's paths are relative to.
        label_set: Name of its `lad_hf.data.label_sets.LabelSet`.
        title: Human name for messages.
        split_folders: Canonical split -> the folders (relative to `root`) it needs, for error messages.
    """

    name: str
    root: str
    label_set: str
    title: str
    split_folders: Dict[str, Tuple[str, ...]] = field(default_factory=dict)

    def expected(self, split: str) -> str:
        """The folders (and list file) that make `split`, as absolute paths joined for a message."""
        folders = self.split_folders[split]
        return " and ".join(os.path.join(self.root, f) + ("" if f.endswith(".txt") else os.sep) for f in folders)


# ---------------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------------


def _isdir(*parts: str) -> bool:
    return os.path.isdir(os.path.join(*parts))


def _ade_root(path: str) -> Optional[str]:
    for root in (path, os.path.join(path, "ADEChallengeData2016")):
        if _isdir(root, "images") and _isdir(root, "annotations") and any(
            _isdir(root, kind, s) for kind in ("images", "annotations") for s in ("training", "validation")
        ):
            return root
    return None


def _cityscapes_root(path: str) -> Optional[str]:
    return path if _isdir(path, "leftImg8bit") and _isdir(path, "gtFine") else None


def _voc_root(path: str) -> Optional[str]:
    for root in (os.path.join(path, "VOCdevkit", "VOC2012"), os.path.join(path, "VOC2012"), path):
        if _isdir(root, "JPEGImages") and _isdir(root, "SegmentationClass") and _isdir(root, "ImageSets", "Segmentation"):
            return root
    return None


def _coco_stuff_root(path: str) -> Optional[str]:
    return path if _isdir(path, "images") and _isdir(path, "stuffthingmaps_trainval2017") else None


_ADE_SPLITS = {"train": "training", "validation": "validation"}
_CITYSCAPES_SPLITS = {"train": "train", "validation": "val", "test": "test"}
_VOC_SPLITS = {"train": "train", "validation": "val"}
_COCO_SPLITS = {"train": "train2017", "validation": "val2017"}


def detect_layout(path: str) -> Optional[Layout]:
    """The official layout found at `path` (a folder), or `None`."""
    if not os.path.isdir(path):
        return None
    root = _voc_root(path)
    if root:
        return Layout("voc", root, "voc", "VOC 2012", {
            s: ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation", f"{d}.txt"))
            for s, d in _VOC_SPLITS.items()
        })
    root = _cityscapes_root(path)
    if root:
        return Layout("cityscapes", root, "cityscapes", "Cityscapes", {
            s: (os.path.join("leftImg8bit", d), os.path.join("gtFine", d)) for s, d in _CITYSCAPES_SPLITS.items()
        })
    root = _coco_stuff_root(path)
    if root:
        return Layout("coco-stuff", root, "coco-stuff", "COCO-Stuff 164K", {
            s: (os.path.join("images", d), os.path.join("stuffthingmaps_trainval2017", d)) for s, d in _COCO_SPLITS.items()
        })
    root = _ade_root(path)
    if root:
        return Layout("ade20k", root, "ade20k", "ADEChallengeData2016 (ADE20K)", {
            s: (os.path.join("images", d), os.path.join("annotations", d)) for s, d in _ADE_SPLITS.items()
        })
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Pairs per split
# ---------------------------------------------------------------------------------------------------------------------


def _images_in(folder: str) -> List[str]:
    return sorted(
        e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(_IMAGE_EXTS) and not e.name.startswith(".")
    )


def _split_present(layout: Layout, split: str) -> bool:
    """Whether `split` is there; a split with only some of its folders raises `LADError`."""
    folders = layout.split_folders[split]
    if layout.name == "voc":  # JPEGImages/SegmentationClass are shared; the list file makes the split
        return os.path.isfile(os.path.join(layout.root, folders[-1]))
    there = [os.path.isdir(os.path.join(layout.root, f)) for f in folders]
    if all(there):
        return True
    if not any(there):
        return False
    missing = [os.path.join(layout.root, f) + os.sep for f, ok in zip(folders, there) if not ok]
    raise LADError(
        f"{layout.title} layout at {layout.root}: the {split!r} split is incomplete, {' and '.join(missing)} "
        f"is missing (expected {layout.expected(split)})"
    )


def _pairs_flat(image_dir: str, mask_dir: str, mask_name: Callable[[str], str]) -> Tuple[Pairs, List[str]]:
    pairs, missing = [], []
    for name in _images_in(image_dir):
        mask = os.path.join(mask_dir, mask_name(name))
        (pairs if os.path.isfile(mask) else missing).append((os.path.join(image_dir, name), mask))
    return pairs, [m for _, m in missing]


def _stem_png(name: str) -> str:
    return os.path.splitext(name)[0] + ".png"


def _ade_pairs(layout: Layout, split: str) -> Tuple[Pairs, List[str]]:
    d = _ADE_SPLITS[split]
    return _pairs_flat(os.path.join(layout.root, "images", d), os.path.join(layout.root, "annotations", d), _stem_png)


def _coco_pairs(layout: Layout, split: str) -> Tuple[Pairs, List[str]]:
    d = _COCO_SPLITS[split]
    return _pairs_flat(
        os.path.join(layout.root, "images", d), os.path.join(layout.root, "stuffthingmaps_trainval2017", d), _stem_png
    )


def _cityscapes_pairs(layout: Layout, split: str) -> Tuple[Pairs, List[str]]:
    d = _CITYSCAPES_SPLITS[split]
    image_root = os.path.join(layout.root, "leftImg8bit", d)
    mask_root = os.path.join(layout.root, "gtFine", d)
    pairs: Pairs = []
    missing: List[str] = []
    suffix = "_leftImg8bit.png"
    for city in sorted(e.name for e in os.scandir(image_root) if e.is_dir()):
        for name in sorted(os.listdir(os.path.join(image_root, city))):
            if not name.endswith(suffix):
                continue
            mask = os.path.join(mask_root, city, name[: -len(suffix)] + "_gtFine_labelIds.png")
            image = os.path.join(image_root, city, name)
            if os.path.isfile(mask):
                pairs.append((image, mask))
            else:
                missing.append(mask)
    return pairs, missing


def _voc_pairs(layout: Layout, split: str) -> Tuple[Pairs, List[str]]:
    list_file = os.path.join(layout.root, "ImageSets", "Segmentation", f"{_VOC_SPLITS[split]}.txt")
    with open(list_file, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    pairs: Pairs = []
    missing: List[str] = []
    for i in ids:
        image = os.path.join(layout.root, "JPEGImages", i + ".jpg")
        mask = os.path.join(layout.root, "SegmentationClass", i + ".png")
        if os.path.isfile(image) and os.path.isfile(mask):
            pairs.append((image, mask))
        else:
            missing.append(image if not os.path.isfile(image) else mask)
    return pairs, missing


_PAIRS = {"ade20k": _ade_pairs, "cityscapes": _cityscapes_pairs, "voc": _voc_pairs, "coco-stuff": _coco_pairs}


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def load_layout(
    path: str,
    layout: Optional[Layout] = None,
    *,
    require: Iterable[str] = (),
    skip_bad_samples: bool = False,
):
    """Load the official layout at `path` -> `(DatasetDict, label_set_name)`.

    Every split whose folders exist is loaded (`image` and `label` columns of file paths, as
    `datasets.Image` features: decoded lazily). A split named in `require` (canonical names `train`,
    `validation`, `test`) that is absent raises one `LADError` naming the folders expected; so do a
    split with only some of its folders, an empty split, and images without a mask (with `skip_bad_samples`
    those images are dropped, with a warning, instead).
    """
    import datasets

    layout = layout or detect_layout(path)
    if layout is None:
        raise LADError(f"{path} is not in one of the official layouts (ADEChallengeData2016, Cityscapes, VOCdevkit, "
                       "COCO-Stuff 164K)")
    out = {}
    for split in layout.split_folders:
        if not _split_present(layout, split):
            continue
        pairs, missing = _PAIRS[layout.name](layout, split)
        if missing:
            if not skip_bad_samples:
                raise LADError(
                    f"{layout.title} layout at {layout.root}: {len(missing)} {split} image(s) have no mask (or a listed "
                    f"file is missing), e.g. {missing[:3]}; restore them or pass --skip_bad_samples to drop those rows"
                )
            logger.warning("%s %s: dropping %d image(s) without a mask, e.g. %s", layout.title, split, len(missing), missing[:3])
        if not pairs:
            raise LADError(f"{layout.title} layout at {layout.root}: the {split!r} split is empty; expected image/mask "
                           f"pairs in {layout.expected(split)}")
        images, masks = zip(*pairs)
        ds = datasets.Dataset.from_dict({"image": list(images), "label": list(masks)})
        out[split] = ds.cast_column("image", datasets.Image()).cast_column("label", datasets.Image())
    for split in require:
        if split not in layout.split_folders:
            raise LADError(f"{layout.title} layout at {layout.root} has no {split!r} split; its splits are "
                           f"{list(layout.split_folders)}")
        if split not in out:
            raise LADError(f"{layout.title} layout at {layout.root} has no {split!r} split: expected {layout.expected(split)}")
    if not out:
        raise LADError(f"{layout.title} layout at {layout.root} holds no split; expected e.g. "
                       f"{layout.expected(next(iter(layout.split_folders)))}")
    logger.info("%s layout at %s: %s (label set %s)", layout.title, layout.root,
                ", ".join(f"{k} {len(v)} rows" for k, v in out.items()), layout.label_set)
    return datasets.DatasetDict(out), layout.label_set
