"""The Trainer contract: `predict()` returns class maps, `compute_metrics` is honoured, TensorBoard gets overlays."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_scene, tiny_segformer, trainer_args
from lad_hf import SegmentationConfig, SegmentationTrainer


def _mixed_size_dataset():
    """Rows 0-1 are 32x32, rows 2-3 are 24x40: with batches of 2, two batches of different sizes."""
    from datasets import Dataset

    rng = np.random.default_rng(1)
    rows = [synthetic_scene(rng, 32) for _ in range(2)]
    for _ in range(2):
        img, lab = synthetic_scene(rng, 40)
        rows.append((img[:, :24], lab[:24]))
    return Dataset.from_dict({"pixel_values": [r[0] for r in rows], "labels": [r[1] for r in rows]}).with_format("torch")


@torch.no_grad()
def _argmax(model, x):
    model.eval()
    logits = model(pixel_values=x[None]).logits
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)[0].argmax(0).numpy()


def test_predict_returns_class_maps_of_every_image(tmp_path):
    ds = _mixed_size_dataset()
    model = tiny_segformer(seed=3)
    args = trainer_args(SegmentationConfig, tmp_path, per_device_eval_batch_size=2)
    out = SegmentationTrainer(model=model, args=args).predict(ds)
    preds, labels = out.predictions, out.label_ids
    assert preds.shape == labels.shape == (4, 32, 40) and preds.dtype == np.int16
    for i in range(4):
        x, y = ds[i]["pixel_values"], ds[i]["labels"].numpy()
        h, w = y.shape
        assert np.array_equal(preds[i, :h, :w], _argmax(model, x)), i
        assert np.array_equal(labels[i, :h, :w], y)
        assert (preds[i, h:] == -100).all() and (preds[i, :, w:] == -100).all()  # padding of the smaller images
    assert "test_mean_iou" in out.metrics
    # prediction_loss_only: no maps kept
    args = trainer_args(SegmentationConfig, tmp_path, per_device_eval_batch_size=2, prediction_loss_only=True)
    assert SegmentationTrainer(model=model, args=args).predict(ds).predictions is None


def test_compute_metrics_gets_class_maps_and_its_keys_reach_evaluate(tmp_path, tensor_dataset):
    seen = {}

    def pixel_accuracy(p):
        seen["shape"], seen["dtype"] = p.predictions.shape, p.predictions.dtype
        keep = p.label_ids != 255
        return {"pixel_acc": float((p.predictions == p.label_ids)[keep].mean())}

    model = tiny_segformer(seed=4)
    trainer = SegmentationTrainer(model=model, args=trainer_args(SegmentationConfig, tmp_path),
                                  eval_dataset=tensor_dataset, compute_metrics=pixel_accuracy)
    m = trainer.evaluate()
    assert seen["shape"] == (16, 32, 32) and np.issubdtype(seen["dtype"], np.integer)  # class maps, not logits
    preds = np.stack([_argmax(model, r["pixel_values"]) for r in tensor_dataset])
    labels = np.stack([r["labels"].numpy() for r in tensor_dataset])
    want = (preds == labels)[labels != 255].mean()
    assert m["eval_pixel_acc"] == pytest.approx(want, abs=1e-12)
    assert m["eval_overall_accuracy"] == pytest.approx(want, abs=1e-9)  # the streaming metric agrees

    def per_batch(p, compute_result):  # batch_eval_metrics: called per batch, nothing kept
        per_batch.calls += 1
        return {"batches": float(per_batch.calls)} if compute_result else {}
    per_batch.calls = 0
    args = trainer_args(SegmentationConfig, tmp_path, batch_eval_metrics=True)
    m = SegmentationTrainer(model=model, args=args, eval_dataset=tensor_dataset, compute_metrics=per_batch).evaluate()
    assert m["eval_batches"] == 4.0


def test_tensorboard_receives_evaluation_overlays(tmp_path, tensor_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = trainer_args(SegmentationConfig, tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2,
                        report_to=["tensorboard"], eval_num_images=3)
    SegmentationTrainer(model=tiny_segformer(), args=args, train_dataset=tensor_dataset,
                        eval_dataset=tensor_dataset).train()
    runs = list((tmp_path / "out" / "runs").iterdir())
    acc = EventAccumulator(str(runs[0]), size_guidance={"images": 0})
    acc.Reload()
    tags = sorted(acc.Tags()["images"])
    assert tags == ["eval/prediction_0", "eval/prediction_1", "eval/prediction_2"]
    (event,) = acc.Images("eval/prediction_0")
    assert event.step == 2 and (event.width, event.height) == (3 * 32 + 8, 32)  # image | ground truth | prediction
