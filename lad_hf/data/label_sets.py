"""Standard label sets shipped with the package (`--label_set`) and the raw-value -> train-id lookup tables
(`--label_map`) that the mask decoder applies.

A `LabelSet` names the classes (`id2label`, train ids 0..K-1) and says how the raw values stored in the
official masks become train ids (`label_map`). The remapping is done by one numpy lookup table
(`LabelLUT`) where masks are decoded (`lad_hf.data.decoding.decode_mask`), for training and
evaluation alike.

Sources the lists were checked against (facts only; no code was copied):

* `ade20k` -- the 150 SceneParsing classes of mmsegmentation `mmseg/datasets/ade.py` (`ADE20KDataset`,
  `reduce_zero_label=True`: annotation 0 is "other" and ignored, k -> k-1); same order as the
  `huggingface/label-files` `ade20k-id2label.json` used by transformers' example and the
  `id2label` of the `nvidia/segformer-*-finetuned-ade-*` checkpoints, checked name by name. Class 7 is
  spelled `'bed '` (trailing space) in all three and is kept so: distillation and `evaluate` compare
  `id2label` with those checkpoints' exactly.
* `cityscapes` -- names from mmsegmentation `mmseg/datasets/cityscapes.py`; the labelId -> trainId table
  from cityscapesScripts `cityscapesscripts/helpers/labels.py` (ids 0..33 and -1; every label whose trainId
  is 255 or -1 is ignored). Some forks of that file add lane-line labels 34..45; they are not part of the
  official 19-class benchmark and are ignored here like every other unlisted value.
* `voc` -- the 21 names of mmsegmentation `mmseg/datasets/voc.py` (`VOCDataset`); masks hold the class
  index (palette PNG), 255 marks object boundaries ("void") and is ignored.
* `coco-stuff` -- the 171 names (80 things + 91 stuff) of mmsegmentation `mmseg/datasets/coco_stuff.py`
  (`COCOStuffDataset`); the raw `stuffthingmaps_trainval2017` PNGs hold 0-based COCO ids 0..181 and 255
  (unlabeled). mmsegmentation's `tools/dataset_converters/coco_stuff164k.py` (`clsID_to_trID`) maps the
  171 used ids to 0..170 in order; the 11 ids it leaves out (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90: COCO
  classes that were dropped, e.g. "street sign", "hat") and 255 become the ignore index.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import LADError

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Class lists
# ---------------------------------------------------------------------------------------------------------------------

ADE20K_CLASSES: Tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

CITYSCAPES_CLASSES: Tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

#: Official Cityscapes labelId -> trainId (the 19 evaluated classes); every other labelId is ignored.
CITYSCAPES_LABEL_ID_TO_TRAIN_ID: Dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}

VOC_CLASSES: Tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

COCO_STUFF_CLASSES: Tuple[str, ...] = (
    # 80 things
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
    # 91 stuff
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)

#: 0-based COCO ids 0..181 of the stuffthingmaps that no annotation uses (dropped COCO categories).
COCO_STUFF_UNUSED_IDS: Tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

#: Raw stuffthingmaps value -> contiguous train id 0..170 (the used ids, in order).
COCO_STUFF_RAW_TO_TRAIN_ID: Dict[int, int] = {
    raw: i for i, raw in enumerate(r for r in range(182) if r not in COCO_STUFF_UNUSED_IDS)
}

#: ADEChallengeData2016 annotation value k (1..150) -> train id k-1; 0 ("other") is ignored.
ADE20K_RAW_TO_TRAIN_ID: Dict[int, int] = {k: k - 1 for k in range(1, 151)}


# ---------------------------------------------------------------------------------------------------------------------
# Lookup table
# ---------------------------------------------------------------------------------------------------------------------

#: Largest raw mask value a lookup table covers explicitly (16-bit masks); larger values use the default rule.
_MAX_TABLE_KEY = 65535


class LabelLUT:
    """Raw mask value -> train id as one numpy table, applied with a single fancy-indexing lookup.

    `table[v]` is the train id of raw value `v` for `0 <= v < len(table)`. Values outside the table
    (negative, or beyond it) become `ignore_index`, or keep their value when `keep_unlisted` (a partial
    map). The table is at least 256 long, so `uint8` masks are looked up without a range check or a cast.
    """

    def __init__(self, table: np.ndarray, ignore_index: int = 255, keep_unlisted: bool = False,
                 default: Optional[int] = None):
        table = np.asarray(table, dtype=np.int64)
        if table.ndim != 1:
            raise LADError(f"a label lookup table must be 1-D, got shape {table.shape}")
        if table.size < 256:
            fill = np.arange(256, dtype=np.int64) if keep_unlisted else np.full(
                256, ignore_index if default is None else default, dtype=np.int64)
            fill[: table.size] = table
            table = fill
        self.table = table
        self.ignore_index = int(ignore_index)
        self.keep_unlisted = bool(keep_unlisted)
        self.default = int(ignore_index if default is None else default)

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, Optional[int]], ignore_index: int = 255, keep_unlisted: bool = False,
                     default: Optional[int] = None) -> "LabelLUT":
        """`{raw: train_id}` (`None` = ignore) -> table; unlisted values -> `default` (`ignore_index`) or,
        with `keep_unlisted`, unchanged."""
        keys = [int(k) for k in mapping]
        if any(k < 0 for k in keys):
            raise LADError(f"label map keys must be mask values >= 0, got {sorted(k for k in keys if k < 0)[:5]}")
        if any(k > _MAX_TABLE_KEY for k in keys):
            raise LADError(f"label map keys must be <= {_MAX_TABLE_KEY} (16-bit masks), got {max(keys)}")
        size = max(256, max(keys, default=-1) + 1)
        fill = ignore_index if default is None else default
        table = np.arange(size, dtype=np.int64) if keep_unlisted else np.full(size, fill, dtype=np.int64)
        for k, v in mapping.items():
            table[int(k)] = ignore_index if v is None else int(v)
        return cls(table, ignore_index=ignore_index, keep_unlisted=keep_unlisted, default=default)

    @property
    def max_train_id(self) -> Optional[int]:
        """Largest train id the table produces (ignore excluded); `None` for a partial map (unbounded)."""
        if self.keep_unlisted:
            return None
        values = self.table[self.table != self.ignore_index]
        extra = [] if self.default == self.ignore_index else [self.default]
        allv = np.concatenate([values, np.asarray(extra, dtype=np.int64)])
        return int(allv.max()) if allv.size else None

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if values.dtype == np.uint8:  # the table has >= 256 entries: no range check, no cast
            return self.table[values]
        v = values.astype(np.int64, copy=False)
        n = self.table.shape[0]
        inside = (v >= 0) & (v < n)
        if inside.all():
            return self.table[v]
        out = self.table[np.clip(v, 0, n - 1)]
        outside = ~inside
        out[outside] = v[outside] if self.keep_unlisted else self.default
        return out

    def __repr__(self) -> str:
        return f"LabelLUT(size={self.table.size}, ignore_index={self.ignore_index}, keep_unlisted={self.keep_unlisted})"


# ---------------------------------------------------------------------------------------------------------------------
# Label sets
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSet:
    """A standard dataset's classes and the encoding of its official masks.

    Attributes:
        name: Registry key (the `--label_set` value).
        id2label: Train id -> class name, ids 0..K-1.
        label_map: Raw mask value -> train id; values not listed become `ignore_index`. `None` when the masks
            already hold train ids (only `ignore_index` is special).
        reduce_labels: The map is the "reduce labels" shift (0 -> ignore, k -> k-1), i.e. what
            `--do_reduce_labels` does; both may then be given without applying the shift twice.
        ignore_index: The raw value meaning "ignore" in the official masks (remapped to the run's
            `--ignore_index` when they differ).
        description: One line for `--help` and logs.
        source: Where the class list and the encoding were checked.
    """

    name: str
    id2label: Mapping[int, str]
    label_map: Optional[Mapping[int, int]] = None
    reduce_labels: bool = False
    ignore_index: int = 255
    description: str = ""
    source: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def lookup_table(self, ignore_index: Optional[int] = None) -> Optional[LabelLUT]:
        """The raw -> train-id table for a run whose ignore index is `ignore_index` (default: the set's).

        `None` when the masks need no remapping (train-id masks and the same ignore index).
        """
        ignore = self.ignore_index if ignore_index is None else int(ignore_index)
        if self.label_map is None:
            if ignore == self.ignore_index:
                return None
            # train-id masks, different ignore value: identity except the set's ignore value
            return LabelLUT.from_mapping({self.ignore_index: None}, ignore_index=ignore, keep_unlisted=True)
        return LabelLUT.from_mapping(
            {k: (None if v == self.ignore_index else v) for k, v in self.label_map.items()}, ignore_index=ignore
        )


def _names(names: Sequence[str]) -> Dict[int, str]:
    return {i: n for i, n in enumerate(names)}


LABEL_SETS: Dict[str, LabelSet] = {
    "ade20k": LabelSet(
        name="ade20k",
        id2label=_names(ADE20K_CLASSES),
        label_map=ADE20K_RAW_TO_TRAIN_ID,
        reduce_labels=True,
        description="ADE20K SceneParsing (ADEChallengeData2016): 150 classes; raw 0 = other (ignored), k -> k-1",
        source="mmsegmentation mmseg/datasets/ade.py (reduce_zero_label=True)",
    ),
    "cityscapes": LabelSet(
        name="cityscapes",
        id2label=_names(CITYSCAPES_CLASSES),
        label_map=CITYSCAPES_LABEL_ID_TO_TRAIN_ID,
        description="Cityscapes: 19 trainId classes from *_gtFine_labelIds.png (labelIds 0..33; void ids ignored)",
        source="cityscapesScripts cityscapesscripts/helpers/labels.py; mmsegmentation mmseg/datasets/cityscapes.py",
    ),
    "voc": LabelSet(
        name="voc",
        id2label=_names(VOC_CLASSES),
        label_map=None,
        description="PASCAL VOC 2012: 21 classes (0 = background); 255 = boundary (ignored)",
        source="mmsegmentation mmseg/datasets/voc.py",
    ),
    "coco-stuff": LabelSet(
        name="coco-stuff",
        id2label=_names(COCO_STUFF_CLASSES),
        label_map=COCO_STUFF_RAW_TO_TRAIN_ID,
        description="COCO-Stuff 164K: 171 classes (80 things + 91 stuff) from stuffthingmaps (COCO ids 0..181; "
        "11 unused ids and 255 ignored)",
        source="mmsegmentation mmseg/datasets/coco_stuff.py and tools/dataset_converters/coco_stuff164k.py",
    ),
}


def get_label_set(name: str) -> LabelSet:
    """The registered `LabelSet` called `name`; `LADError` listing the choices otherwise."""
    key = str(name).strip()
    if key in LABEL_SETS:
        return LABEL_SETS[key]
    lowered = {k.lower(): k for k in LABEL_SETS}
    if key.lower() in lowered:
        return LABEL_SETS[lowered[key.lower()]]
    raise LADError(f"--label_set {name!r} is not a known label set; choose one of {sorted(LABEL_SETS)}")


# ---------------------------------------------------------------------------------------------------------------------
# --label_map
# ---------------------------------------------------------------------------------------------------------------------

_UNLISTED_KEY = "*"


def _read_json(value: str, flag: str) -> Any:
    text = value.strip()
    path = os.path.expanduser(text)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LADError(f"{flag}: cannot read JSON file {path}: {str(e).splitlines()[0]}") from None
    if text[:1] == "{":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise LADError(f"{flag}: invalid inline JSON ({e.msg} at char {e.pos}): {text[:80]}") from None
    raise LADError(f'{flag} must be an existing JSON file or an inline JSON object like {{"7": 0, "8": 1}}; '
                   f"got {text[:80]!r}")


def parse_label_map(value: Union[str, Mapping], ignore_index: int = 255) -> LabelLUT:
    """`--label_map` -> `LabelLUT`.

    A JSON object (inline or in a file) mapping raw mask values to train ids, like the `label_map` of
    evaluate's `mean_iou`: `{"7": 0, "8": 1, "26": 13}`. A value `null` (or `"ignore"`) maps to
    `ignore_index`. Unlisted raw values become `ignore_index` -- unless the map holds the key `"*"`:
    `"*": "keep"` marks the map *partial* (unlisted values keep their value, as evaluate does),
    `"*": "ignore"` is the default, and `"*": <int>` sends every unlisted value to that id.
    """
    flag = "--label_map"
    data = _read_json(value, flag) if isinstance(value, str) else value
    if not isinstance(data, Mapping):
        raise LADError(f'{flag} must be a JSON object mapping raw mask values to train ids, e.g. {{"7": 0}}; '
                       f"got a {type(data).__name__}")
    keep_unlisted, default = False, None
    mapping: Dict[int, Optional[int]] = {}
    for k, v in data.items():
        if str(k).strip() == _UNLISTED_KEY:
            rule = v.strip().lower() if isinstance(v, str) else v
            if rule == "keep":
                keep_unlisted = True
            elif rule in ("ignore", None):
                default = None
            elif isinstance(rule, int) and not isinstance(rule, bool) and rule >= 0:
                default = int(rule)
            else:
                raise LADError(f'{flag}: "*" (the rule for unlisted values) must be "keep", "ignore" or an id >= 0, '
                               f"got {v!r}")
            continue
        try:
            raw = int(str(k).strip())
        except ValueError:
            raise LADError(f"{flag}: keys must be raw mask values (integers), got {k!r}") from None
        if v is None or (isinstance(v, str) and v.strip().lower() == "ignore"):
            mapping[raw] = None
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            mapping[raw] = int(v)
        else:
            raise LADError(f"{flag}: value for {k!r} must be a train id >= 0 or null (ignore), got {v!r}")
    if not mapping and not keep_unlisted and default is None:
        raise LADError(f"{flag} is empty; map at least one raw value to a train id")
    return LabelLUT.from_mapping(mapping, ignore_index=ignore_index, keep_unlisted=keep_unlisted, default=default)


# ---------------------------------------------------------------------------------------------------------------------
# What the decoder applies
# ---------------------------------------------------------------------------------------------------------------------


def label_decoding(data_args, ignore_index: Optional[int] = None) -> Tuple[Optional[LabelLUT], bool]:
    """`(lookup table or None, do_reduce_labels)` that mask decoding applies for `data_args`.

    `--label_map` wins over `--label_set`; either replaces `--do_reduce_labels`: giving it as well is
    accepted for a set whose map *is* the reduction (`ade20k`) and is an error otherwise (it would shift the
    ids a second time).
    """
    ignore = int(data_args.ignore_index if ignore_index is None else ignore_index)
    reduce = bool(getattr(data_args, "do_reduce_labels", False))
    label_map = getattr(data_args, "label_map", None)
    if label_map:
        if reduce:
            raise LADError(
                '--label_map and --do_reduce_labels both remap mask values; write the shift into the map '
                '(e.g. {"0": null, "1": 0, "2": 1}) and drop --do_reduce_labels'
            )
        return parse_label_map(label_map, ignore), False
    name = getattr(data_args, "label_set", None)
    if name:
        label_set = get_label_set(name)
        if reduce and not label_set.reduce_labels:
            raise LADError(
                f"--do_reduce_labels cannot be combined with --label_set {label_set.name}: the label set already maps "
                "the raw mask values to train ids; drop --do_reduce_labels"
            )
        return label_set.lookup_table(ignore), False
    return None, reduce
