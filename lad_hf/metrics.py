"""Segmentation metrics: a streaming mean IoU over one int64 confusion matrix, and the teacher's mKL.

Everything is computed from the confusion matrix `CM` (rows = ground truth, columns = prediction)::

    IoU_k = CM[k,k] / (sum_j CM[k,j] + sum_j CM[j,k] - CM[k,k])
    Acc_k = CM[k,k] / sum_j CM[k,j]
    overall_accuracy = trace(CM) / sum(CM)

The keys and NaN rules follow Hugging Face `evaluate`'s `mean_iou`: a class whose union (for IoU) or label
area (for accuracy) is 0 gets NaN, and the means skip NaN (`np.nanmean`).

Pixels whose label equals `ignore_index`, or whose label or prediction lies outside `[0, K)`, are not counted.
(`evaluate`'s `mean_iou` differs on one corner: it still counts a pixel whose label is out of range but not
`ignore_index` in the predicted area, and one whose prediction is out of range as a missed label pixel.)

Memory is O(K^2): predictions are never stored. `torch` and `numpy` only; `evaluate` is imported lazily by
`load_mean_iou_metric`, so this module also works where `evaluate` is not installed.
"""

from __future__ import annotations

import math

import os
import warnings
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import LADError

__all__ = [
    "mean_pairwise_kl",
    "teacher_stability",
    "confusion_matrix",
    "confusion_matrix_per_sample",
    "upsample_argmax",
    "mean_iou_from_confusion",
    "flatten_metrics",
    "StreamingMeanIoU",
    "load_mean_iou_metric",
    "MEAN_IOU_SCRIPT",
]

#: Path of the offline `evaluate` metric script shipped in the package.
MEAN_IOU_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics_module", "mean_iou.py")

# Default bound on the number of upsampled logit elements held at once by `upsample_argmax`
# (2**26 float32 values = 256 MiB).
DEFAULT_MAX_UPSAMPLE_ELEMENTS = 2**26


def _as_tensor(x: Any, device: Optional[torch.device] = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if device is not None and x.device != device:
        x = x.to(device)
    return x


def _check_indices(preds: torch.Tensor, labels: torch.Tensor) -> None:
    if preds.is_floating_point() or preds.is_complex() or preds.dtype == torch.bool:
        raise LADError(
            f"preds must hold integer class indices, got dtype {preds.dtype}; "
            "pass logits [N,K,h,w] to StreamingMeanIoU.update or call upsample_argmax first."
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise LADError(f"labels must hold integer class ids, got dtype {labels.dtype}.")
    if preds.shape != labels.shape:
        raise LADError(f"preds shape {tuple(preds.shape)} does not match labels shape {tuple(labels.shape)}.")


#: Elements per pass of the confusion-matrix index computation: on CPU the int64 buffers stay cache-sized (2^18
#: elements = 2 MiB each; one pass over a whole batch of masks would allocate and page in several full-size
#: temporaries); on accelerators a chunk only bounds memory.
CPU_CONFUSION_CHUNK = 2**18
DEVICE_CONFUSION_CHUNK = 2**24


def _clamp_into(out: torch.Tensor, src: torch.Tensor, k: int) -> None:
    """`out = clamp(src, -1, k)` in int64 (exact for every integer dtype: no narrowing before the clamp)."""
    if src.dtype == torch.int64:
        torch.clamp(src, -1, k, out=out)
    else:
        out.copy_(src)
        out.clamp_(-1, k)


def _confusion_rows(preds: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int) -> torch.Tensor:
    """Confusion matrices `[N, K, K]` (int64) of `[N, M]` integer maps.

    Labels and predictions are clamped to `[-1, K]` (int64) and binned with `torch.bincount` in a
    `(K+2) x (K+2)` grid per sample; every out-of-range value lands in the border rows/columns, which are dropped,
    and the row of an `ignore_index` inside `[0, K)` is zeroed. The work goes in chunks of at most
    `CPU_CONFUSION_CHUNK` elements on CPU (`DEVICE_CONFUSION_CHUNK` elsewhere) through two reused int64
    buffers: whole samples per chunk when they fit (sample `n` offset by `n*(K+2)^2`), else slices of one
    sample's pixels. No boolean indexing, no per-pixel Python, no full-size temporaries.
    """
    k = int(num_labels)
    n, m = preds.shape
    side = k + 2
    block = side * side
    device = preds.device
    counts = torch.zeros((n, block), dtype=torch.int64, device=device)
    if n == 0 or m == 0:
        return counts.reshape(n, side, side)[:, 1 : k + 1, 1 : k + 1].contiguous()
    chunk = CPU_CONFUSION_CHUNK if device.type == "cpu" else DEVICE_CONFUSION_CHUNK
    rows = max(1, min(n, chunk // m))  # whole samples per chunk (1 when a sample is larger than a chunk)
    cols = m if rows > 1 else min(m, chunk)
    a = torch.empty(rows * cols, dtype=torch.int64, device=device)
    b = torch.empty(rows * cols, dtype=torch.int64, device=device)
    # bin(n, l, p) = n*(K+2)^2 + (l+1)*(K+2) + (p+1)
    offsets = torch.arange(rows, dtype=torch.int64, device=device).mul_(block).add_(side + 1).unsqueeze(1)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        g = r1 - r0
        for c0 in range(0, m, cols):
            c1 = min(m, c0 + cols)
            av = a[: g * (c1 - c0)].view(g, c1 - c0)
            bv = b[: g * (c1 - c0)].view(g, c1 - c0)
            _clamp_into(av, preds[r0:r1, c0:c1], k)
            _clamp_into(bv, labels[r0:r1, c0:c1], k)
            av.add_(bv, alpha=side)
            av.add_(offsets[:g] if g > 1 else side + 1)
            counts[r0:r1] += torch.bincount(av.reshape(-1), minlength=g * block).view(g, block)
    cm = counts.view(n, side, side)[:, 1 : k + 1, 1 : k + 1].contiguous()
    if 0 <= ignore_index < k:  # an ignore_index outside [0, K) already falls in the border
        cm[:, ignore_index, :] = 0
    return cm


def confusion_matrix(preds, labels, num_labels: int, ignore_index: int = 255) -> torch.Tensor:
    """Confusion matrix `CM[gt, pred]` (int64 `[K, K]`) of integer maps of any matching shape.

    `torch.bincount` on the inputs' device over cache-sized chunks of the flattened maps (see
    `_confusion_rows`), no boolean indexing. Pixels with label == `ignore_index`, or label or prediction
    outside `[0, K)`, are not counted.
    """
    preds = _as_tensor(preds)
    labels = _as_tensor(labels, preds.device)
    _check_indices(preds, labels)
    return _confusion_rows(preds.reshape(1, -1), labels.reshape(1, -1), num_labels, ignore_index)[0]


def confusion_matrix_per_sample(preds, labels, num_labels: int, ignore_index: int = 255) -> torch.Tensor:
    """Per-sample confusion matrices (int64 `[N, K, K]`) of `[N, ...]` integer maps (one bincount per chunk of
    whole samples).

    Trainers gather these with `gather_for_metrics` (which drops padded duplicate samples) and sum over `N`.
    """
    preds = _as_tensor(preds)
    labels = _as_tensor(labels, preds.device)
    _check_indices(preds, labels)
    if preds.dim() == 0:
        raise LADError("confusion_matrix_per_sample needs a leading batch dimension.")
    n = preds.shape[0]
    return _confusion_rows(preds.reshape(n, -1), labels.reshape(n, -1), num_labels, ignore_index)


def upsample_argmax(
    logits: torch.Tensor, size, max_elements: int = DEFAULT_MAX_UPSAMPLE_ELEMENTS
) -> torch.Tensor:
    """Class indices `[N, H, W]` from logits `[N, K, h, w]`: bilinear upsampling to `size` then argmax.

    Upsamples `max(1, max_elements // (K*H*W))` samples at a time to bound memory. Half-precision logits
    on CPU are upsampled in float32.
    """
    if logits.dim() != 4:
        raise LADError(f"logits must be [N, K, h, w], got shape {tuple(logits.shape)}.")
    n, k, h, w = logits.shape
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return logits.argmax(dim=1)
    out = torch.empty((n, *size), dtype=torch.int64, device=logits.device)
    step = max(1, int(max_elements) // max(1, k * size[0] * size[1]))
    for start in range(0, n, step):
        chunk = logits[start : start + step]
        if not chunk.is_floating_point() or (chunk.device.type == "cpu" and chunk.dtype == torch.float16):
            chunk = chunk.float()
        up = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False)
        out[start : start + step] = up.argmax(dim=1)
        del up
    return out


def mean_iou_from_confusion(confusion, nan_to_num: Optional[float] = None) -> dict:
    """`evaluate`-style mean IoU dict from a `[K, K]` confusion matrix (rows = ground truth).

    `IoU_k = CM[k,k] / (sum_j CM[k,j] + sum_j CM[j,k] - CM[k,k])`; `Acc_k = CM[k,k] / sum_j CM[k,j]`.
    Returns `mean_iou`, `mean_accuracy`, `overall_accuracy` (`np.float64`) and `per_category_iou`,
    `per_category_accuracy` (float64 arrays). Classes with a zero denominator are NaN and skipped by the means;
    `nan_to_num` replaces every NaN, as in `evaluate`.
    """
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise LADError(f"confusion must be a square [K, K] matrix, got shape {cm.shape}.")
    intersect = np.diag(cm)
    area_label = cm.sum(axis=1)
    area_pred = cm.sum(axis=0)
    area_union = area_label + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN slice
        iou = intersect / area_union
        acc = intersect / area_label
        metrics = {
            "mean_iou": np.float64(np.nanmean(iou)),
            "mean_accuracy": np.float64(np.nanmean(acc)),
            "overall_accuracy": np.float64(intersect.sum() / area_label.sum()),
            "per_category_iou": iou,
            "per_category_accuracy": acc,
        }
    if nan_to_num is not None:
        metrics = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in metrics.items()}
    return metrics


def json_safe(values: Mapping) -> dict:
    """Metrics for JSON: NaN/inf (an IoU of a class absent from the data) become null, never a bare `NaN`."""
    out = {}
    for k, v in values.items():
        if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
            out[k] = None
        elif isinstance(v, (np.integer, np.floating)):
            out[k] = v.item()
        else:
            out[k] = v
    return out


def _class_name(k: int, id2label: Optional[Mapping]) -> str:
    if id2label:
        name = id2label.get(k, id2label.get(str(k)))
        if name is not None:
            return "_".join(str(name).replace("/", " ").split())
    return str(k)


def flatten_metrics(result: Mapping, id2label: Optional[Mapping] = None, prefix: str = "") -> dict:
    """Flat `{name: float}` for Trainer logs: `mean_iou`, `mean_accuracy`, `overall_accuracy` and
    `iou_<class name>` per class (class id when `id2label` lacks it; spaces become `_`; a repeated name gets
    `_<id>`). NaN stays NaN."""
    flat = {f"{prefix}{key}": float(result[key]) for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
    for k, value in enumerate(np.asarray(result["per_category_iou"], dtype=np.float64).reshape(-1)):
        key = f"{prefix}iou_{_class_name(k, id2label)}"
        flat[key if key not in flat else f"{key}_{k}"] = float(value)  # two classes of one name keep both IoUs
    return flat


class StreamingMeanIoU:
    """Streaming mean IoU: accumulates one int64 `[K, K]` confusion matrix on the inputs' device.

    `IoU_k = CM[k,k] / (sum_j CM[k,j] + sum_j CM[j,k] - CM[k,k])`, with `evaluate`'s `mean_iou` keys
    and NaN rules (see `mean_iou_from_confusion`).

    Args:
        num_labels (`int`): number of classes K.
        ignore_index (`int`, defaults to 255): label value that is not counted.
        id2label (`Mapping`, *optional*): class names for `named_metrics`.
        max_upsample_elements (`int`, defaults to 2**26): bound on upsampled logit elements held at once.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int = 255,
        id2label: Optional[Mapping] = None,
        max_upsample_elements: int = DEFAULT_MAX_UPSAMPLE_ELEMENTS,
    ):
        if int(num_labels) < 1:
            raise LADError(f"num_labels must be >= 1, got {num_labels}.")
        self.num_labels = int(num_labels)
        self.ignore_index = int(ignore_index)
        self.id2label = dict(id2label) if id2label is not None else None
        self.max_upsample_elements = int(max_upsample_elements)
        self.confusion: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.confusion = None

    def add_confusion(self, cm) -> None:
        """Add a `[K, K]` confusion matrix, or `[N, K, K]` per-sample matrices (summed over N)."""
        cm = _as_tensor(cm, self.confusion.device if self.confusion is not None else None)
        k = self.num_labels
        if cm.dim() == 3:
            cm = cm.sum(dim=0)
        if tuple(cm.shape) != (k, k):
            raise LADError(f"confusion matrix must be [{k}, {k}] or [N, {k}, {k}], got {tuple(cm.shape)}.")
        cm = cm.long()
        if self.confusion is None:
            self.confusion = cm.clone()
        else:
            self.confusion += cm

    def update(self, preds, labels) -> None:
        """Add a batch. `preds`: class indices `[N, H, W]` or logits `[N, K, h, w]` (upsampled bilinearly
        to the label size, then argmax); `labels`: `[N, H, W]`. A single `[H, W]` map also works."""
        preds = _as_tensor(preds)
        labels = _as_tensor(labels, preds.device)
        if preds.dim() == labels.dim() + 1:  # logits with a class dimension
            if labels.dim() == 2:
                preds, labels = preds.unsqueeze(0), labels.unsqueeze(0)
            if labels.dim() != 3 or preds.shape[1] != self.num_labels or preds.shape[0] != labels.shape[0]:
                raise LADError(
                    f"logits must be [N, {self.num_labels}, h, w] with labels [N, H, W]; got logits "
                    f"{tuple(preds.shape)} and labels {tuple(labels.shape)}."
                )
            with torch.no_grad():
                preds = upsample_argmax(preds.detach(), labels.shape[-2:], self.max_upsample_elements)
        self.add_confusion(confusion_matrix(preds, labels, self.num_labels, self.ignore_index))

    def compute(self, sync: bool = False, nan_to_num: Optional[float] = None) -> dict:
        """Metrics of everything added so far (see `mean_iou_from_confusion`).

        With `sync=True` and `torch.distributed` initialised, the matrices of all processes are summed with
        `all_reduce` first (every process must call it). Trainers that gather per-sample matrices leave it off.
        """
        k = self.num_labels
        cm = self.confusion if self.confusion is not None else torch.zeros(k, k, dtype=torch.int64)
        if sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            cm = cm.clone()
            torch.distributed.all_reduce(cm, op=torch.distributed.ReduceOp.SUM)
        return mean_iou_from_confusion(cm, nan_to_num=nan_to_num)

    def named_metrics(self, prefix: str = "", sync: bool = False) -> dict:
        """`compute` flattened for Trainer logs (see `flatten_metrics`)."""
        return flatten_metrics(self.compute(sync=sync), self.id2label, prefix)


def load_mean_iou_metric(**kwargs):
    """The packaged `evaluate` mean IoU metric, loaded offline from `MEAN_IOU_SCRIPT`.

    Keyword arguments go to `evaluate.load` (e.g. `keep_in_memory=True`). Needs `evaluate` installed.
    """
    try:
        import evaluate
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise LADError(
            "load_mean_iou_metric needs the `evaluate` package; use StreamingMeanIoU where it is not installed."
        ) from err
    return evaluate.load(MEAN_IOU_SCRIPT, **kwargs)


# ------------------------------------------------------------------------------ teacher stability (mKL)
# Teacher stability under label noise: the paper's mKL (Tab. 8).
#
#     mKL = 1 / (D(D-1)) · Σ_{i≠j} mean_pixels KL(p_i ‖ p_j),   p_i = softmax_C(T(x, ŷ_i)) for D noise draws.
#
# Computed in O(D): Σ_{i≠j} KL(p_i‖p_j) = D·Σ_i Σ_c p_i log p_i − Σ_c (Σ_i p_i)(Σ_j log p_j).


def mean_pairwise_kl(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """logits [D, N, C, H, W] of D noise draws -> mean pairwise KL per image [N] (`"none"`) or its mean."""
    if logits.dim() != 5 or logits.shape[0] < 2:
        raise LADError(f"mean_pairwise_kl needs logits [D>=2, N, C, H, W], got {tuple(logits.shape)}")
    d = logits.shape[0]
    logp = F.log_softmax(logits.double(), dim=2)  # float64: equal draws give 0 up to 1e-15, not 1e-7
    p = logp.exp()
    total = d * (p * logp).sum(dim=(0, 2)) - (p.sum(0) * logp.sum(0)).sum(dim=1)  # [N, H, W]
    per_image = (total.flatten(1).mean(1) / (d * (d - 1))).clamp_min(0)  # ≥ 0; clamp float rounding
    return per_image if reduction == "none" else per_image.mean()


@torch.no_grad()
def teacher_stability(teacher, pixel_values: torch.Tensor, labels: torch.Tensor, noiser, draws: int = 5) -> torch.Tensor:
    """The teacher's mean pairwise KL over `draws` noised labels for the same images (paper's mKL; ×100 in Tab. 8)."""
    if draws < 2:
        raise LADError(f"teacher_stability needs draws >= 2, got {draws}")
    was_training = teacher.training
    teacher.eval()
    outs = []
    for _ in range(draws):
        out = teacher(pixel_values=noiser.assist(pixel_values, labels))
        outs.append(out.logits if hasattr(out, "logits") else out[0])
    teacher.train(was_training)
    return mean_pairwise_kl(torch.stack(outs))
