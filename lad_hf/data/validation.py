"""Checks before a long run: the first rows decode and fit; `--skip_bad_samples` drops the rows that do not."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import torch

from ..errors import LADError
from .arguments import DataArguments
from .columns import ROW_INDEX_COLUMN, resolve_columns, undecoded
from .decoding import decode_mask, load_image
from .label_sets import LabelLUT, label_decoding
from .labels import parse_label_colors

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Errors raised while loading batches (possibly in DataLoader workers)
# ---------------------------------------------------------------------------------------------------------------------


class BadSampleError(LADError):
    """A bad row met while loading batches: the lazy transforms and the collator raise it.

    It survives DataLoader workers as one line. torch re-raises a worker's exception in the main process as
    `type(exc)(msg)` where `msg` is "Caught X in DataLoader worker process N.\nOriginal Traceback ..." (the
    whole worker traceback, see `torch._utils.ExceptionWrapper.reraise`); this constructor recognises that text
    and keeps only the original message (`"validation row 17: ..."`), which the CLI prints as its one line.
    """

    def __init__(self, message: Any = "", *args: Any):
        if isinstance(message, str) and message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = _original_message(message, type(self))
        super().__init__(message, *args)


def _original_message(wrapped: str, cls: type) -> str:
    """The exception message inside a formatted traceback (its last `module.Class: message` line)."""
    prefixes = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
    for line in reversed(wrapped.splitlines()):
        for prefix in prefixes:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
    return wrapped.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------


def validate_dataset_sample(
    dataset,
    num_labels: int,
    ignore_index: int = 255,
    n: int = 32,
    *,
    data_args: Optional[DataArguments] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    label_colors: Optional[Union[str, Mapping]] = None,
    do_reduce_labels: Optional[bool] = None,
    split: str = "dataset",
    label_map: Optional[Union[LabelLUT, Mapping]] = None,
) -> Dict[str, Any]:
    """Check the first `n` raw rows (any transform is bypassed) before a long run.

    Raises `LADError` for: an empty dataset; an image and mask of different sizes; label values
    `>= num_labels` (or negative) that are not `ignore_index`; fewer than two classes across the sampled
    masks. Column names, colours, label reduction and the `--label_set`/`--label_map` remapping default to
    `data_args` when given (values are checked after remapping). A `DatasetDict`
    is checked split by split. Returns `{"rows_checked", "classes_seen", "smallest": (h, w, row)}` (for a dict: per
    split).
    """
    if isinstance(dataset, dict):  # DatasetDict
        return {
            name: validate_dataset_sample(
                ds, num_labels, ignore_index, n, data_args=data_args, image_column=image_column,
                label_column=label_column, label_colors=label_colors, do_reduce_labels=do_reduce_labels, split=name,
                label_map=label_map,
            )
            for name, ds in dataset.items()
        }
    if data_args is not None:
        image_column = image_column or data_args.image_column
        label_column = label_column or data_args.label_column
        label_colors = label_colors if label_colors is not None else data_args.label_colors
        lut, reduce = label_decoding(data_args, ignore_index)
        label_map = lut if label_map is None else label_map
        do_reduce_labels = reduce if do_reduce_labels is None else do_reduce_labels
    if label_map is not None and not isinstance(label_map, LabelLUT):
        label_map = LabelLUT.from_mapping(label_map, ignore_index=ignore_index)
    colors = parse_label_colors(label_colors) if isinstance(label_colors, str) else label_colors
    if len(dataset) == 0:
        raise LADError(_empty_split_message(split, data_args))
    raw = dataset.with_format(None) if getattr(dataset, "format", {}).get("type") is not None else dataset
    image_col, label_col = resolve_columns(raw, image_column, label_column)
    k = min(int(n), len(raw))
    rows = undecoded(raw.select(range(k)), [image_col, label_col])  # we decode: a bad file names its row
    seen: set = set()
    smallest = None
    for i in range(k):
        row = rows[i]
        rid = row.get(ROW_INDEX_COLUMN, i)
        h, w, values = _check_row(row, rid, image_col, label_col, colors, bool(do_reduce_labels), ignore_index,
                                  label_map, num_labels, split)
        seen.update(int(v) for v in values if v != ignore_index)
        if smallest is None or h * w < smallest[0] * smallest[1]:
            smallest = (h, w, rid)
    if len(seen) < 2:
        raise LADError(
            f"{split}: the first {k} masks contain only class(es) {sorted(seen)} besides ignore_index={ignore_index}; "
            "segmentation needs >= 2 classes; check --label_column, --label_colors and --do_reduce_labels"
        )
    return {"rows_checked": k, "classes_seen": sorted(seen), "smallest": smallest}


def _check_row(row, rid, image_col: str, label_col: str, colors, reduce: bool, ignore_index: int, label_map,
               num_labels: int, split: str):
    """(height, width, label values) of one raw row, fully decoded; a bad row raises one line naming it."""
    try:
        image = load_image(row[image_col])  # a full decode: truncated files fail here, not mid-training
        h, w = image.size[1], image.size[0]
        label = decode_mask(row[label_col], colors, reduce, ignore_index, label_map=label_map)
    except LADError as e:
        raise LADError(f"{split} row {rid}: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise LADError(
            f"{split} row {rid}: cannot decode the image or mask ({str(e).splitlines()[0]}); fix or remove the "
            "file, or pass --skip_bad_samples to drop such rows"
        ) from None
    if label.shape != (h, w):
        raise LADError(
            f"{split} row {rid}: image is {h}x{w} (HxW) but its mask is {label.shape[0]}x{label.shape[1]}; "
            "fix the data or pass --skip_bad_samples"
        )
    values = np.unique(label)
    bad = values[((values >= num_labels) | (values < 0)) & (values != ignore_index)]
    if bad.size:
        shown = bad[:10].tolist()
        raise LADError(
            f"{split} row {rid}: label values {shown} are outside 0..{num_labels - 1} and not ignore_index="
            f"{ignore_index}; pass --label_set for a standard dataset (ade20k, cityscapes, voc, coco-stuff) or "
            f"--label_map to remap raw values, --do_reduce_labels if 0 is background, an --id2label listing "
            f"all classes, or the right --ignore_index"
        )
    return h, w, values


def _empty_split_message(split: str, data_args: Optional[DataArguments]) -> str:
    dropped = len((getattr(data_args, "skipped_bad_samples", None) or {}).get(split, ()))
    if dropped:
        return (f"{split} split is empty: --skip_bad_samples dropped all its {dropped} row(s) as unreadable (see the "
                "warnings above); fix the data or check --image_column/--label_column/--label_colors")
    if split == "train":
        name = data_args.train_split if data_args is not None else "train"
        return f"train split {name!r} is empty (0 rows); check --dataset_name and --train_split"
    if split != "validation":
        return f"{split} is empty (0 rows); check --dataset_name and the split names"
    name = data_args.eval_split if data_args is not None else "validation"
    if data_args is not None and data_args.train_val_split:
        return (f"validation split {name!r} is empty (0 rows) (--train_val_split only replaces a missing "
                "split); pass --eval_split NAME of a split that has rows, or remove the empty split from the data")
    return (f"validation split {name!r} is empty (0 rows); pass --train_val_split 0.1 to carve a validation set from the "
            "training rows, or --eval_split NAME of a split that has rows")


def drop_bad_samples(
    dataset,
    data_args: Optional[DataArguments] = None,
    *,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    split: str = "dataset",
):
    """`--skip_bad_samples`: decode every row once and drop the unreadable ones -> `(dataset, dropped row ids)`.

    A row is dropped when its image or mask cannot be decoded (corrupt or truncated file, RGB mask with unknown
    colours) or when the mask's size differs from the image's. Each dropped row is logged; the caller reports the
    count at the end of the run. Costs one full decode of the split.
    """
    if len(dataset) == 0:
        return dataset, []
    image_column = image_column or (data_args.image_column if data_args else None)
    label_column = label_column or (data_args.label_column if data_args else None)
    colors = parse_label_colors(data_args.label_colors) if data_args is not None else None
    ignore_index = data_args.ignore_index if data_args is not None else 255
    label_map, reduce = label_decoding(data_args) if data_args is not None else (None, False)
    raw = dataset.with_format(None) if getattr(dataset, "format", {}).get("type") is not None else dataset
    image_col, label_col = resolve_columns(raw, image_column, label_column)
    cols = [image_col, label_col] + ([ROW_INDEX_COLUMN] if ROW_INDEX_COLUMN in raw.column_names else [])
    cells = undecoded(raw.select_columns(cols), [image_col, label_col])
    keep: List[int] = []
    dropped: List[int] = []
    for i, row in enumerate(cells):
        rid = int(row.get(ROW_INDEX_COLUMN, i))
        try:
            image = load_image(row[image_col])
            label = decode_mask(row[label_col], colors, reduce, ignore_index, label_map=label_map)
            if label.shape != (image.size[1], image.size[0]):
                raise LADError(f"image is {image.size[1]}x{image.size[0]} (HxW) but its mask is {label.shape[0]}x{label.shape[1]}")
        except (LADError, OSError, ValueError, SyntaxError) as e:
            logger.warning("%s row %d dropped (--skip_bad_samples): %s", split, rid, str(e).splitlines()[0] if str(e) else type(e).__name__)
            dropped.append(rid)
            continue
        keep.append(i)
    if dropped:
        dataset = dataset.select(keep, keep_in_memory=True)
    return dataset, dropped

def check_labels(labels: torch.Tensor, num_labels: int, ignore_index: int) -> None:
    """Raise LADError when `labels` holds values outside [0, num_labels) that are not `ignore_index`."""
    bad = (labels < 0) | (labels >= num_labels)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        values = torch.unique(labels[bad]).tolist()[:10]
        raise BadSampleError(
            f"labels contain values {values} outside [0, {num_labels}) that are not the ignore index {ignore_index}; "
            "fix num_labels/id2label, or pass --do_reduce_labels if 0 means 'ignore'"
        )
