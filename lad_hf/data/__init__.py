"""Data: dataset (Hub or disk) → transforms → batch `{pixel_values, labels}`.

    loading.load_segmentation_dataset → transforms.apply_transforms → collator.SegmentationCollator

`arguments` declares the flags; `labels`, `columns` and `decoding` are the shared helpers; `validation` checks rows
before a long run.
"""

from .arguments import DataArguments
from .collator import SegmentationCollator, build_collator
from .columns import IMAGE_COLUMN_CANDIDATES, LABEL_COLUMN_CANDIDATES, ROW_INDEX_COLUMN, resolve_columns
from .decoding import decode_mask, load_image
from .label_sets import LABEL_SETS, LabelLUT, LabelSet, get_label_set, label_decoding, parse_label_map
from .labels import parse_id2label, parse_label_colors, reduce_id2label
from .layouts import Layout, detect_layout, load_layout
from .loading import load_segmentation_dataset
from .transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    EvalTransform,
    TrainTransform,
    apply_transforms,
    build_transforms,
)
from .validation import check_labels, drop_bad_samples, validate_dataset_sample

__all__ = [
    "DataArguments", "EvalTransform", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "IMAGE_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES", "ROW_INDEX_COLUMN", "SegmentationCollator", "TrainTransform", "apply_transforms",
    "build_collator", "build_transforms", "decode_mask", "load_image", "load_segmentation_dataset", "parse_id2label",
    "parse_label_colors", "reduce_id2label", "resolve_columns", "check_labels", "validate_dataset_sample", "drop_bad_samples",
    "LABEL_SETS", "LabelLUT", "LabelSet", "Layout", "detect_layout", "get_label_set", "label_decoding", "load_layout",
    "parse_label_map",
]
