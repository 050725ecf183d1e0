"""`DataArguments`: which data is loaded and how it is preprocessed (flag names of transformers' examples)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional


from ..errors import LADError
from .label_sets import LABEL_SETS, get_label_set, parse_label_map

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DataArguments:
    r"""
    Arguments for the data, named as in transformers' `run_semantic_segmentation.py` where they overlap.

    Parameters that control which data is loaded:

        dataset_name (`str` or `None`, defaults to `None`):
            Hub dataset id, or a local path: a folder of parquet files (`train-*.parquet`,
            `validation.parquet`, or `train/` and `validation/` sub-folders), a `save_to_disk` folder, an
            image folder with `metadata.csv`/`metadata.jsonl` pairing `file_name` with a mask path column,
            or a single `.parquet` file.
        dataset_config_name (`str` or `None`, defaults to `None`): Hub dataset configuration.
        dataset_revision (`str`, defaults to `"main"`): Hub dataset revision.
        data_dir (`str` or `None`, defaults to `None`): Sub-folder of the dataset to read.
        image_column (`str` or `None`, defaults to `None`):
            Column of the images; `None` picks the first of `image`, `pixel_values`, `img`, ...
        label_column (`str` or `None`, defaults to `None`):
            Column of the masks; `None` picks the first of `label`, `annotation`, `mask`, `semantic_map`,
            `segmentation`, ...
        id2label (`str` or `None`, defaults to `None`):
            JSON file or inline JSON (`{"0": "road", ...}` or `["road", ...]`). Without it the names come from
            a `ClassLabel` feature of the label column, then an `id2label.json` next to the data.
        label_colors (`str` or `None`, defaults to `None`):
            JSON file or inline JSON mapping mask colours to class ids for RGB masks; a colour is `"r,g,b"`,
            `"#rrggbb"` or `"[r,g,b]"`. The inverse (id -> colour) is accepted too.
        label_set (`str` or `None`, defaults to `None`):
            A standard label set shipped with the package: `ade20k` (150 classes), `cityscapes` (19),
            `voc` (21) or `coco-stuff` (171). It gives the class names *and* maps the raw values of the
            official masks to train ids (e.g. Cityscapes labelIds -> trainIds, ADE20K 0 -> ignore and k -> k-1,
            COCO-Stuff ids 0..181 -> 0..170). A folder in one of the official layouts (ADEChallengeData2016,
            Cityscapes, VOCdevkit, COCO-Stuff 164K) selects its label set by itself; an explicit
            `--label_set` or `--id2label` wins (`--id2label` alone switches the automatic one off; with
            `--label_set` as well it only renames the classes).
        label_map (`str` or `None`, defaults to `None`):
            JSON file or inline JSON mapping raw mask values to train ids, like evaluate's `mean_iou`
            `label_map`: `{"7": 0, "8": 1, "26": 13}`; `null` means ignore. Unlisted values become
            `ignore_index`; add `"*": "keep"` to mark the map partial (unlisted values keep their value) or
            `"*": <id>` to send them all to one id. Wins over the map of `--label_set` and replaces
            `--do_reduce_labels`. Applied with one lookup table where masks are decoded (training and
            evaluation).
        do_reduce_labels (`bool`, defaults to `False`):
            Map mask value 0 (background) to `ignore_index` and every other value k to k-1, as the HF
            image processors do for ADE20k; `ignore_index` stays `ignore_index`.
        ignore_index (`int`, defaults to `255`): Label value excluded from the loss and the metrics.
        train_split (`str`, defaults to `"train"`), eval_split (`str`, defaults to `"validation"`):
            Split names; `val`/`valid`/`dev` are accepted for `validation` and vice versa.
        train_val_split (`float` or `None`, defaults to `None`):
            When the eval split is missing, carve this fraction of the train split (seeded) as validation.
        max_train_samples (`int` or `None`), max_eval_samples (`int` or `None`): Keep the first n rows.

    Parameters that control the preprocessing:

        crop_size (`int`, defaults to `512`): Side of the square training crop.
        min_scale (`float`, defaults to `0.5`), max_scale (`float`, defaults to `2.0`):
            Random resize ratio range for training, relative to the image size.
        eval_resize (`int` or `None`, defaults to `None`):
            `None` evaluates whole images (the collator pads them); an int resizes eval images to that square
            size (labels with nearest neighbour).
        hflip_prob (`float`, defaults to `0.5`): Horizontal flip probability for training.
        image_mean (`list[float]` or `None`), image_std (`list[float]` or `None`):
            Normalisation; `None` takes them from the model's image processor, else ImageNet's.
        pad_to_multiple_of (`int` or `None`, defaults to `None`): The collator pads H and W to a multiple of it.
        allow_outside_paths (`bool`, defaults to `False`): Let `metadata.csv`/`.jsonl` name files outside the
            dataset folder (absolute paths, `..`, symlinks leading out); refused by default.
        skip_bad_samples (`bool`, defaults to `False`):
            Instead of stopping: the CLI decodes every row once and drops unreadable rows and rows whose mask
            does not fit the image (`drop_bad_samples`; the count is logged again at the end of the run
            and stored in `lad_training_info.json`); image-folder rows whose files are missing are dropped; a
            row that still fails inside the lazy transforms becomes an all-ignore sample (with a warning).

    Note: Hub options shared with the model (`cache_dir`, `token`, `trust_remote_code`) live in
    `ModelArguments` and are passed to `load_segmentation_dataset` as keyword arguments (a second
    `--trust_remote_code` field would clash in `HfArgumentParser`; datasets>=4 ignores it anyway).
    """

    # -- which data --------------------------------------------------------------------------------------------------
    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hub dataset id or local path: parquet folder, save_to_disk folder, image folder with "
            "metadata.csv/metadata.jsonl, or a .parquet file."
        },
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_revision: str = field(default="main", metadata={"help": "Hub dataset revision (branch, tag or commit)."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Sub-folder of the dataset to read."})
    image_column: Optional[str] = field(
        default=None, metadata={"help": "Image column (default: first of image, pixel_values, img, ...)."}
    )
    label_column: Optional[str] = field(
        default=None,
        metadata={"help": "Mask column (default: first of label, annotation, mask, semantic_map, segmentation, ...)."},
    )
    id2label: Optional[str] = field(
        default=None,
        metadata={
            "help": 'Class names: JSON file or inline JSON, {"0": "road", ...} or ["road", ...]. Default: the '
            "label column's ClassLabel names, else id2label.json next to the data."
        },
    )
    label_colors: Optional[str] = field(
        default=None,
        metadata={
            "help": 'For RGB masks: JSON file or inline JSON mapping colours to ids, e.g. {"128,64,128": 0, '
            '"#f423e8": 1, "[0,0,0]": 255}.'
        },
    )
    label_set: Optional[str] = field(
        default=None,
        metadata={
            "help": "Standard label set (class names + raw-mask -> train-id map): "
            + ", ".join(f"{k} ({len(v.id2label)} classes)" for k, v in LABEL_SETS.items())
            + ". Picked automatically for folders in the official layouts.",
            "choices": sorted(LABEL_SETS),
        },
    )
    label_map: Optional[str] = field(
        default=None,
        metadata={
            "help": 'Raw mask value -> train id: JSON file or inline JSON, e.g. {"7": 0, "8": 1}; null = ignore; '
            'unlisted values are ignored unless "*": "keep" marks the map partial.'
        },
    )
    do_reduce_labels: bool = field(
        default=False,
        metadata={"help": "Map mask value 0 (background) to ignore_index and k to k-1 (ADE20k style)."},
    )
    ignore_index: int = field(default=255, metadata={"help": "Label value ignored by the loss and the metrics."})
    train_split: str = field(default="train", metadata={"help": "Name of the training split."})
    eval_split: str = field(
        default="validation", metadata={"help": "Name of the evaluation split (val/valid/dev also match)."}
    )
    train_val_split: Optional[float] = field(
        default=None,
        metadata={"help": "If the eval split is missing, carve this fraction of train as validation (seeded)."},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep only the first n training rows (debugging, quick runs)."}
    )
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep only the first n evaluation rows."})
    # -- preprocessing -----------------------------------------------------------------------------------------------
    crop_size: int = field(default=512, metadata={"help": "Side of the square random training crop."})
    min_scale: float = field(default=0.5, metadata={"help": "Smallest random resize ratio (training)."})
    max_scale: float = field(default=2.0, metadata={"help": "Largest random resize ratio (training)."})
    eval_resize: Optional[int] = field(
        default=None,
        metadata={"help": "Resize eval images to this square size (labels nearest). Default: whole images."},
    )
    hflip_prob: float = field(default=0.5, metadata={"help": "Horizontal flip probability (training)."})
    image_mean: Optional[List[float]] = field(
        default=None, metadata={"help": "Normalisation mean (default: the image processor's, else ImageNet's)."}
    )
    image_std: Optional[List[float]] = field(
        default=None, metadata={"help": "Normalisation std (default: the image processor's, else ImageNet's)."}
    )
    pad_to_multiple_of: Optional[int] = field(
        default=None, metadata={"help": "Collator pads height and width to a multiple of this (e.g. 14 or 32)."}
    )
    allow_outside_paths: bool = field(
        default=False,
        metadata={"help": "Let metadata.csv/.jsonl name files outside the dataset folder (absolute paths, '..', "
                          "symlinks leading out); refused by default."},
    )
    skip_bad_samples: bool = field(
        default=False,
        metadata={"help": "Drop unreadable rows and rows whose mask does not fit the image (counted at the end) instead of failing."},
    )

    def __post_init__(self):
        if self.label_set is not None:
            self.label_set = get_label_set(self.label_set).name  # LADError listing the choices
        if self.label_map is not None:
            parse_label_map(self.label_map, self.ignore_index)  # bad JSON fails now, not at the first batch
        if self.crop_size is None or int(self.crop_size) < 1:
            raise LADError(f"--crop_size must be a positive int, got {self.crop_size}")
        if not (0 < self.min_scale <= self.max_scale):
            raise LADError(
                f"--min_scale/--max_scale must satisfy 0 < min_scale <= max_scale, got {self.min_scale} and {self.max_scale}"
            )
        if not (0.0 <= self.hflip_prob <= 1.0):
            raise LADError(f"--hflip_prob must be in [0, 1], got {self.hflip_prob}")
        if self.train_val_split is not None and not (0.0 < self.train_val_split < 1.0):
            raise LADError(f"--train_val_split must be a fraction in (0, 1), got {self.train_val_split}")
        for name in ("max_train_samples", "max_eval_samples", "eval_resize", "pad_to_multiple_of"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise LADError(f"--{name} must be a positive int or unset, got {value}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None and len(value) not in (1, 3):
                raise LADError(f"--{name} needs 3 values (R G B) or 1, got {list(value)}")
        if self.image_std is not None and any(s <= 0 for s in self.image_std):
            raise LADError(f"--image_std values must be > 0, got {list(self.image_std)}")
