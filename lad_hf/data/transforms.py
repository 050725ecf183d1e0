"""Lazy per-row transforms (`dataset.with_transform`): random scale/crop/flip for training, whole images for evaluation."""

from __future__ import annotations

import copy
import logging
import os
import random
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image as PILImage

from ..errors import LADError
from .arguments import DataArguments
from .columns import IMAGE_COLUMN_CANDIDATES, LABEL_COLUMN_CANDIDATES, ROW_INDEX_COLUMN, pick_column, resolve_columns, undecoded
from .decoding import decode_mask, image_size, load_image
from .label_sets import LabelLUT, label_decoding
from .labels import parse_label_colors
from .validation import BadSampleError

logger = logging.getLogger(__name__)

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------------


def _as_triplet(values, name: str) -> Tuple[float, float, float]:
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise LADError(f"{name} needs 3 values (R G B), got {vals}")
    return tuple(vals)  # type: ignore[return-value]


def _nearest_index(out_len: int, in_len: int) -> np.ndarray:
    """Source indices of nearest-neighbour resizing (pixel centres, as PIL's NEAREST)."""
    idx = np.floor((np.arange(out_len) + 0.5) * (in_len / out_len)).astype(np.int64)
    return np.minimum(idx, in_len - 1)


def _cell_path(cell) -> Optional[str]:
    """The file a cell came from, when it says (undecoded `Image` cells keep their path), for error messages."""
    if isinstance(cell, dict):
        cell = cell.get("path")
    if isinstance(cell, (str, os.PathLike)) and str(cell):
        return str(cell)
    return None


def _decode_cell(decode, cell, where: str, what: str):
    """`decode(cell)`; a failure -> `LADError` prefixed with `where`, naming the file that failed."""
    try:
        return decode(cell)
    except LADError as e:
        raise LADError(f"{where}: {e}") from None
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as e:  # PIL: truncated / unidentified files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        path = _cell_path(cell) if what == "mask" else None  # the image's file is already in `where`
        raise LADError(
            f"{where}: cannot decode the {what}{f' {path}' if path else ''} ({reason}); fix or remove the file, or "
            "pass --skip_bad_samples to skip such rows"
        ) from None


def _resize_label(label: np.ndarray, h: int, w: int) -> np.ndarray:
    if label.shape == (h, w):
        return label
    return label[_nearest_index(h, label.shape[0])][:, _nearest_index(w, label.shape[1])]


class _BaseTransform:
    """Shared plumbing: column lookup, decoding, size check, bad-sample handling.

    A bad row raises `lad_hf.data.validation.BadSampleError` naming the split (`split`, set per split by
    `apply_transforms`), the row (the `__lad_row__` column) and its files, and the fix; it reaches the main
    process of a multi-worker DataLoader as the same one line.
    """

    split: Optional[str] = None  # named in errors; apply_transforms gives each split its own copy

    def for_split(self, split: str) -> "_BaseTransform":
        """A shallow copy of this transform whose errors name `split`."""
        fn = copy.copy(self)
        fn.split = split
        return fn

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        ignore_index: int = 255,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        label_colors: Optional[Union[str, Mapping]] = None,
        do_reduce_labels: bool = False,
        skip_bad_samples: bool = False,
        label_map: Optional[Union[LabelLUT, Mapping]] = None,
    ):
        self.mean = _as_triplet(mean, "image_mean")
        self.std = _as_triplet(std, "image_std")
        if any(s <= 0 for s in self.std):
            raise LADError(f"image_std values must be > 0, got {list(self.std)}")
        self.ignore_index = int(ignore_index)
        self.image_column = image_column
        self.label_column = label_column
        self.label_colors = parse_label_colors(label_colors) if isinstance(label_colors, str) else label_colors
        self.do_reduce_labels = do_reduce_labels
        if label_map is not None and not isinstance(label_map, LabelLUT):
            label_map = LabelLUT.from_mapping(label_map, ignore_index=self.ignore_index)
        self.label_map = label_map
        self.skip_bad_samples = skip_bad_samples
        self._mean_np = np.asarray(self.mean, dtype=np.float32) * 255.0
        self._scale_np = 1.0 / (np.asarray(self.std, dtype=np.float32) * 255.0)
        self._columns: Optional[Tuple[str, Optional[str]]] = None

    def _resolve(self, keys: Sequence[str]) -> Tuple[str, Optional[str]]:
        if self._columns is None or self._columns[0] not in keys:
            image = pick_column(keys, self.image_column, IMAGE_COLUMN_CANDIDATES, "image", "--image_column")
            rest = [k for k in keys if k != image]
            try:
                label = pick_column(rest, self.label_column, LABEL_COLUMN_CANDIDATES, "label (mask)", "--label_column", keys)
            except LADError:
                if self.label_column:
                    raise
                label = None  # images only (prediction)
            self._columns = (image, label)
        return self._columns

    def normalize(self, image_hwc_uint8: np.ndarray) -> np.ndarray:
        """uint8 [H,W,3] -> float32 [3,H,W] of (x/255 - mean) / std."""
        x = (image_hwc_uint8.astype(np.float32) - self._mean_np) * self._scale_np
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def _decode(self, image_cell, label_cell, where: str) -> Tuple[PILImage.Image, Optional[np.ndarray]]:
        image = _decode_cell(load_image, image_cell, where, "image")
        label = None
        if label_cell is not None or self._columns[1] is not None:
            label = _decode_cell(
                lambda cell: decode_mask(cell, self.label_colors, self.do_reduce_labels, self.ignore_index,
                                         label_map=self.label_map),
                label_cell, where, "mask",
            )
        if label is not None and label.shape != (image.size[1], image.size[0]):
            raise LADError(
                f"{where}: image is {image.size[1]}x{image.size[0]} (HxW) but its mask is "
                f"{label.shape[0]}x{label.shape[1]}; fix the data or pass --skip_bad_samples"
            )
        return image, label

    def _blank(self, size: Tuple[int, int], with_label: bool) -> Dict[str, torch.Tensor]:
        out = {"pixel_values": torch.zeros(3, *size, dtype=torch.float32)}
        if with_label:
            out["labels"] = torch.full(size, self.ignore_index, dtype=torch.int64)
        return out

    def _sample(self, image: PILImage.Image, label: Optional[np.ndarray]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def _fallback_size(self, image_cell) -> Tuple[int, int]:
        raise NotImplementedError

    def __call__(self, batch: Dict[str, list]) -> Dict[str, list]:
        image_col, label_col = self._resolve(list(batch.keys()))
        images = batch[image_col]
        labels = batch[label_col] if label_col is not None else [None] * len(images)
        rows = batch.get(ROW_INDEX_COLUMN)
        pixel_values, out_labels = [], []
        split = self.split or "dataset"
        for i, (image_cell, label_cell) in enumerate(zip(images, labels)):
            where = f"{split} row {rows[i]}" if rows is not None else f"{split} sample {i} of a batch"
            path = _cell_path(image_cell)
            if path:
                where += f" ({path})"
            try:
                image, label = self._decode(image_cell, label_cell, where)
                sample = self._sample(image, label)
            except LADError as e:
                if not self.skip_bad_samples:
                    msg = str(e)
                    if "--skip_bad_samples" not in msg:
                        msg += "; or pass --skip_bad_samples to skip such rows"
                    raise BadSampleError(msg) from None
                logger.warning("skipping bad sample (all-ignore substitute): %s", e)
                sample = self._blank(self._fallback_size(image_cell), label_col is not None)
            pixel_values.append(sample["pixel_values"])
            if "labels" in sample:
                out_labels.append(sample["labels"])
        out = {"pixel_values": pixel_values}
        if label_col is not None:
            out["labels"] = out_labels
        return out


class TrainTransform(_BaseTransform):
    """Random resize, pad, random crop, horizontal flip and normalisation of a batch of rows.

    For each row: convert the image to RGB and decode the mask (`decode_mask`); resize both by a ratio
    drawn uniformly from `[min_scale, max_scale]` (image bilinear, mask nearest); pad to at least
    `crop_size` on the bottom/right (image with 0 *in normalised space*, mask with `ignore_index`); take a
    random `crop_size` crop; flip horizontally with probability `hflip_prob`; normalise with
    `(x / 255 - mean) / std`. Returns `{"pixel_values": [float32 [3,h,w]], "labels": [int64 [h,w]]}`.

    Randomness uses Python's `random` module, which the `Trainer` seeds per dataloader worker.
    """

    def __init__(
        self,
        crop_size: Union[int, Tuple[int, int]] = 512,
        min_scale: float = 0.5,
        max_scale: float = 2.0,
        hflip_prob: float = 0.5,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        ignore_index: int = 255,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        label_colors: Optional[Union[str, Mapping]] = None,
        do_reduce_labels: bool = False,
        skip_bad_samples: bool = False,
        label_map: Optional[Union[LabelLUT, Mapping]] = None,
    ):
        super().__init__(mean, std, ignore_index, image_column, label_column, label_colors, do_reduce_labels, skip_bad_samples,
                         label_map=label_map)
        ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if ch < 1 or cw < 1:
            raise LADError(f"crop_size must be positive, got {crop_size}")
        if not (0 < min_scale <= max_scale):
            raise LADError(f"need 0 < min_scale <= max_scale, got {min_scale} and {max_scale}")
        if not (0.0 <= hflip_prob <= 1.0):
            raise LADError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.crop_size = (int(ch), int(cw))
        self.min_scale, self.max_scale, self.hflip_prob = float(min_scale), float(max_scale), float(hflip_prob)

    def _fallback_size(self, image_cell) -> Tuple[int, int]:
        return self.crop_size

    def _sample(self, image: PILImage.Image, label: Optional[np.ndarray]) -> Dict[str, torch.Tensor]:
        ch, cw = self.crop_size
        w0, h0 = image.size
        scale = random.uniform(self.min_scale, self.max_scale)
        h, w = max(1, int(round(h0 * scale))), max(1, int(round(w0 * scale)))
        if (w, h) != (w0, h0):
            image = image.resize((w, h), PILImage.BILINEAR)
        # Crop window in the padded (bottom/right) canvas of size max(h, ch) x max(w, cw).
        top = random.randint(0, max(h, ch) - ch)
        left = random.randint(0, max(w, cw) - cw)
        vh, vw = max(0, min(h, top + ch) - top), max(0, min(w, left + cw) - left)  # valid (unpadded) part
        region = np.asarray(image.crop((left, top, left + vw, top + vh)), dtype=np.uint8)
        pixel_values = np.zeros((3, ch, cw), dtype=np.float32)
        pixel_values[:, :vh, :vw] = self.normalize(region.reshape(vh, vw, 3))
        labels = None
        if label is not None:
            labels = np.full((ch, cw), self.ignore_index, dtype=np.int64)
            rows = _nearest_index(h, h0)[top : top + vh]
            cols = _nearest_index(w, w0)[left : left + vw]
            labels[:vh, :vw] = label[rows][:, cols]
        if random.random() < self.hflip_prob:
            pixel_values = pixel_values[:, :, ::-1]
            if labels is not None:
                labels = labels[:, ::-1]
        out = {"pixel_values": torch.from_numpy(np.ascontiguousarray(pixel_values))}
        if labels is not None:
            out["labels"] = torch.from_numpy(np.ascontiguousarray(labels))
        return out


class EvalTransform(_BaseTransform):
    """Whole-image evaluation transform: RGB, optional square resize, normalisation.

    `resize=None` keeps the full image (the collator pads a batch to its largest size); an int resizes the
    image (bilinear) and the mask (nearest) to `resize x resize`. Output as `TrainTransform`; rows
    without a label column give only `pixel_values`.
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        resize: Optional[int] = None,
        ignore_index: int = 255,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        label_colors: Optional[Union[str, Mapping]] = None,
        do_reduce_labels: bool = False,
        skip_bad_samples: bool = False,
        label_map: Optional[Union[LabelLUT, Mapping]] = None,
    ):
        super().__init__(mean, std, ignore_index, image_column, label_column, label_colors, do_reduce_labels, skip_bad_samples,
                         label_map=label_map)
        if resize is not None and int(resize) < 1:
            raise LADError(f"eval resize must be a positive int or None, got {resize}")
        self.resize = None if resize is None else int(resize)

    def _fallback_size(self, image_cell) -> Tuple[int, int]:
        if self.resize:
            return self.resize, self.resize
        try:
            return image_size(image_cell)
        except Exception:  # noqa: BLE001
            return 32, 32

    def _sample(self, image: PILImage.Image, label: Optional[np.ndarray]) -> Dict[str, torch.Tensor]:
        if self.resize is not None:
            r = self.resize
            if image.size != (r, r):
                image = image.resize((r, r), PILImage.BILINEAR)
            if label is not None:
                label = _resize_label(label, r, r)
        out = {"pixel_values": torch.from_numpy(self.normalize(np.asarray(image, dtype=np.uint8)))}
        if label is not None:
            out["labels"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return out


def _mean_std(data_args: DataArguments, image_processor=None) -> Tuple[Sequence[float], Sequence[float]]:
    mean = data_args.image_mean or getattr(image_processor, "image_mean", None) or IMAGENET_DEFAULT_MEAN
    std = data_args.image_std or getattr(image_processor, "image_std", None) or IMAGENET_DEFAULT_STD
    return list(mean), list(std)


def build_transforms(data_args: DataArguments, image_processor=None) -> Tuple[TrainTransform, EvalTransform]:
    """`(train_fn, eval_fn)` from `data_args`; mean/std from the args, else the image processor's
    `image_mean`/`image_std`, else ImageNet's. Columns are auto-detected per batch when not given."""
    mean, std = _mean_std(data_args, image_processor)
    label_map, do_reduce_labels = label_decoding(data_args)  # --label_set/--label_map -> one lookup table
    common = dict(
        mean=mean,
        std=std,
        ignore_index=data_args.ignore_index,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        label_colors=parse_label_colors(data_args.label_colors),
        do_reduce_labels=do_reduce_labels,
        skip_bad_samples=data_args.skip_bad_samples,
        label_map=label_map,
    )
    train_fn = TrainTransform(
        crop_size=data_args.crop_size,
        min_scale=data_args.min_scale,
        max_scale=data_args.max_scale,
        hflip_prob=data_args.hflip_prob,
        **common,
    )
    eval_fn = EvalTransform(resize=data_args.eval_resize, **common)
    train_fn.split, eval_fn.split = "train", "validation"
    return train_fn, eval_fn



def apply_transforms(dataset_dict, data_args: DataArguments, image_processor=None):
    """Attach the lazy transforms: `train` gets the training transform, every other split the eval one.

    Columns are resolved now (so a wrong `--image_column` fails before training starts) and image columns
    are read undecoded so the transforms can name and, with `--skip_bad_samples`, skip unreadable rows.
    """
    import datasets

    train_fn, eval_fn = build_transforms(data_args, image_processor)
    image_col, label_col = resolve_columns(dataset_dict, data_args.image_column, data_args.label_column)
    for fn in (train_fn, eval_fn):
        fn.image_column, fn.label_column = image_col, label_col
    out = {}
    for split, ds in dataset_dict.items():
        ds = undecoded(ds, [image_col, label_col])
        out[split] = ds.with_transform((train_fn if split == "train" else eval_fn).for_split(split))
    return datasets.DatasetDict(out)
