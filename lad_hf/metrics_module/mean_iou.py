# Mean IoU as an `evaluate` metric, shipped inside lad_hf so it loads offline:
#     evaluate.load("/path/to/lad_hf/metrics_module/mean_iou.py")   or   lad_hf.metrics.load_mean_iou_metric()
# `evaluate` copies this script into its modules cache, so it must not import lad_hf: numpy only.
"""Mean Intersection-over-Union from one confusion matrix, with the inputs, keys and NaN rules of the Hub's `mean_iou`."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Mean IoU of semantic segmentation maps, computed from one int64 confusion matrix CM (rows = ground truth):
IoU_k = CM[k,k] / (sum_j CM[k,j] + sum_j CM[j,k] - CM[k,k]) and Acc_k = CM[k,k] / sum_j CM[k,j].
A class with a zero denominator is NaN and skipped by the means. Pixels whose (mapped) label equals
ignore_index, or whose label or prediction lies outside [0, num_labels), are not counted.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted maps, each [height, width] of class indices.
    references (`List[ndarray]`): ground-truth maps, each [height, width], same sizes as the predictions.
    num_labels (`int`): number of classes.
    ignore_index (`int`): label value that is not counted (e.g. 255).
    nan_to_num (`float`, *optional*): replaces every NaN in the result.
    label_map (`dict`, *optional*): old label id -> new label id, applied to the references (all at once).
    reduce_labels (`bool`, defaults to False): label 0 becomes ignore (255) and the others shift down by 1.
Returns:
    `dict` with mean_iou, mean_accuracy, overall_accuracy (float) and per_category_iou,
    per_category_accuracy (float64 arrays of length num_labels).
Examples:
    >>> metric = evaluate.load("lad_hf/metrics_module/mean_iou.py")
    >>> out = metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]],
    ...                      num_labels=2, ignore_index=255)
    >>> round(float(out["mean_iou"]), 4)
    0.5
"""

_CITATION = """
@software{lad_hf, title = {lad_hf: Label Assisted Distillation on the Hugging Face stack}}
"""


def _map_labels(label, label_map=None, reduce_labels=False):
    label = np.asarray(label).astype(np.int64)
    if label_map:
        mapped = label.copy()
        for old_id, new_id in label_map.items():
            mapped[label == int(old_id)] = int(new_id)
        label = mapped
    if reduce_labels:
        label = np.where(label == 0, 255, label) - 1
        label[label == 254] = 255
    return label


def confusion_matrix(prediction, label, num_labels, ignore_index):
    """CM[gt, pred] of one map pair (int64 [K, K]); invalid pixels go to a dropped extra bin."""
    k = int(num_labels)
    pred = np.asarray(prediction).astype(np.int64, copy=False).reshape(-1)
    label = np.asarray(label).astype(np.int64, copy=False).reshape(-1)
    if pred.shape != label.shape:
        raise ValueError(f"prediction has {pred.size} pixels but its reference has {label.size}.")
    valid = (label >= 0) & (label < k) & (pred >= 0) & (pred < k) & (label != ignore_index)
    index = np.where(valid, label * k + pred, k * k)
    return np.bincount(index, minlength=k * k + 1)[: k * k].reshape(k, k).astype(np.int64)


def metrics_from_confusion(confusion, nan_to_num=None):
    """IoU_k = CM[k,k] / (sum_j CM[k,j] + sum_j CM[j,k] - CM[k,k]); NaN where the denominator is 0."""
    cm = np.asarray(confusion, dtype=np.float64)
    intersect = np.diag(cm)
    area_label = cm.sum(axis=1)
    area_union = area_label + cm.sum(axis=0) - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / area_union
        acc = intersect / area_label
        overall = np.float64(intersect.sum() / area_label.sum())
    mean_iou = np.float64(np.nanmean(iou)) if not np.isnan(iou).all() else np.float64("nan")
    mean_acc = np.float64(np.nanmean(acc)) if not np.isnan(acc).all() else np.float64("nan")
    metrics = {
        "mean_iou": mean_iou,
        "mean_accuracy": mean_acc,
        "overall_accuracy": overall,
        "per_category_iou": iou,
        "per_category_accuracy": acc,
    }
    if nan_to_num is not None:
        metrics = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in metrics.items()}
    return metrics


def mean_iou(predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None, reduce_labels=False):
    """The metric as a plain function, returning the same dict as `MeanIoU.compute`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    total = np.zeros((int(num_labels), int(num_labels)), dtype=np.int64)
    for prediction, reference in zip(predictions, references):
        label = _map_labels(reference, label_map, reduce_labels)
        total += confusion_matrix(prediction, label, num_labels, ignore_index)
    return metrics_from_confusion(total, nan_to_num)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # 1st sequence: height, 2nd: width. int32 (the Hub's script uses uint16) also admits ignore_index -100.
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                }
            ),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/mean_iou"],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels,
        ignore_index,
        nan_to_num=None,
        label_map=None,
        reduce_labels=False,
    ):
        return mean_iou(
            predictions,
            references,
            num_labels=num_labels,
            ignore_index=ignore_index,
            nan_to_num=nan_to_num,
            label_map=label_map,
            reduce_labels=reduce_labels,
        )
