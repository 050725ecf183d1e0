"""Which columns hold the images and the masks: one resolver for every source."""

from __future__ import annotations

import logging
from typing import Iterable, List, Optional, Sequence, Tuple


from ..errors import LADError

logger = logging.getLogger(__name__)

#: Column added by `load_segmentation_dataset`: the row's index in its source split.
ROW_INDEX_COLUMN = "__lad_row__"

IMAGE_COLUMN_CANDIDATES = ("image", "pixel_values", "img", "images", "rgb")
LABEL_COLUMN_CANDIDATES = (
    "label",
    "labels",
    "annotation",
    "annotations",
    "mask",
    "masks",
    "semantic_map",
    "segmentation",
    "semantic_segmentation",
    "sem_seg",
    "gt",
)
# Metadata columns (image-folder layout) that hold the path of the mask, in order of preference.
MASK_PATH_COLUMN_CANDIDATES = tuple(f"{c}_file_name" for c in LABEL_COLUMN_CANDIDATES) + tuple(
    f"{c}_path" for c in LABEL_COLUMN_CANDIDATES
) + LABEL_COLUMN_CANDIDATES
IMAGE_PATH_COLUMN_CANDIDATES = ("file_name", "image_file_name", "image_path", "image", "img", "path")


# ---------------------------------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------------------------------


def _visible_columns(columns: Iterable[str]) -> List[str]:
    return [c for c in columns if c != ROW_INDEX_COLUMN]


def pick_column(
    columns: Sequence[str],
    explicit: Optional[str],
    candidates: Sequence[str],
    kind: str,
    flag: str,
    listed: Optional[Sequence[str]] = None,
) -> str:
    """`explicit` if it is a column, else the first candidate present; `listed` is what errors show."""
    columns = list(columns)
    shown = _visible_columns(listed if listed is not None else columns)
    if explicit:
        if explicit in columns:
            return explicit
        for suffix in ("_file_name", "_path"):  # metadata name of a mask/image column loaded as an image
            if explicit.endswith(suffix) and explicit[: -len(suffix)] in columns:
                return explicit[: -len(suffix)]
        if explicit == "file_name" and "image" in columns:
            return "image"
        raise LADError(f"{flag} {explicit!r} is not a column; columns are {shown}")
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    raise LADError(
        f"cannot find the {kind} column among {shown}; pass {flag} "
        f"(looked for {', '.join(candidates[:6])}, ...)"
    )


def resolve_columns(
    dataset, image_column: Optional[str] = None, label_column: Optional[str] = None, require_label: bool = True
) -> Tuple[str, Optional[str]]:
    """(image column, label column) of a `Dataset`/`DatasetDict` (first split), auto-detected when `None`.

    Raises `LADError` listing the existing columns when a given name is not a column or nothing matches.
    """
    columns = _column_names(dataset)
    image = pick_column(columns, image_column, IMAGE_COLUMN_CANDIDATES, "image", "--image_column")
    rest = [c for c in columns if c != image]
    try:
        label = pick_column(rest, label_column, LABEL_COLUMN_CANDIDATES, "label (mask)", "--label_column", columns)
    except LADError:
        if require_label or label_column:
            if label_column == image:
                raise LADError(f"--label_column and --image_column are both {image!r}; columns are {_visible_columns(columns)}") from None
            raise
        label = None
    return image, label


def _column_names(dataset) -> List[str]:
    names = dataset.column_names
    if isinstance(names, dict):  # DatasetDict
        if not names:
            raise LADError("the dataset has no splits")
        names = next(iter(names.values()))
    return list(names)


def undecoded(ds, columns: Sequence[str]):
    """Image columns switched to `decode=False`: the transforms decode (and catch bad files) themselves."""
    import datasets

    for col in columns:
        feat = ds.features.get(col)
        if isinstance(feat, datasets.Image) and feat.decode:
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds

