"""Shared trainer evaluation: label use (`label_gain`, `label_gain_shuffled`) and the teacher's own noise at evaluation time."""

import json

import numpy as np

import pytest
import torch

from conftest import tiny_segformer, trainer_args, write_parquet_dataset
from lad_hf import LADTeacherConfig, LADTeacherTrainer, add_label_channel
from lad_hf.cli import main


def test_label_gain_is_exactly_zero_for_a_teacher_that_ignores_the_label(tmp_path, tensor_dataset):
    """Zero-init label weights: the output does not depend on the label channel, so mIoU with it set to 0 is equal."""
    teacher = add_label_channel(tiny_segformer(seed=2), init="zeros")
    tr = LADTeacherTrainer(model=teacher, args=trainer_args(LADTeacherConfig, tmp_path), eval_dataset=tensor_dataset)
    m = tr.evaluate()
    assert m["eval_label_gain"] == 0.0
    assert m["eval_mean_iou_no_label"] == m["eval_mean_iou"]


def _naive_miou(model, ds, num_labels=4, ignore=255):
    """mIoU with the label channel set to 0, by explicit loops over pixels and classes (float64)."""
    inter, union = [0.0] * num_labels, [0.0] * num_labels
    model.eval()
    for row in ds:
        x = row["pixel_values"][None]
        with torch.no_grad():
            logits = model(pixel_values=torch.cat([x, torch.zeros_like(x[:, :1])], 1)).logits
        up = torch.nn.functional.interpolate(logits.double(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        pred, lab = up[0].argmax(0).flatten().tolist(), row["labels"].flatten().tolist()
        for p, y in zip(pred, lab):
            if y == ignore:
                continue
            for k in range(num_labels):
                inter[k] += (p == k) and (y == k)
                union[k] += (p == k) or (y == k)
    ious = [i / u for i, u in zip(inter, union) if u > 0]
    return sum(ious) / len(ious)


def test_label_gain_of_a_teacher_that_reads_the_label_matches_a_direct_computation(tmp_path, tensor_dataset):
    """A teacher that reads a clean label (its output depends on the label channel): label_gain != 0, and the
    no-label mIoU equals a naive evaluation of the same images with the label channel set to 0."""
    from conftest import first_batch, label_assisted_segformer, sharpen_head
    from lad_hf import LabelNoiser

    batch = first_batch(tensor_dataset, n=8)
    teacher = label_assisted_segformer(seed=7, scale=30.0)
    sharpen_head(teacher, LabelNoiser(4, generator=torch.Generator().manual_seed(0)).assist(batch["pixel_values"], batch["labels"]))
    clean = dict(class_noise=False, pixel_noise=False)  # the teacher is fed the clean label
    tr = LADTeacherTrainer(model=teacher, args=trainer_args(LADTeacherConfig, tmp_path, **clean), eval_dataset=tensor_dataset)
    m = tr.evaluate()
    assert m["eval_mean_iou_no_label"] == pytest.approx(_naive_miou(teacher, tensor_dataset), abs=1e-9)
    assert m["eval_label_gain"] == pytest.approx(m["eval_mean_iou"] - m["eval_mean_iou_no_label"], abs=1e-12)
    assert abs(m["eval_label_gain"]) > 1e-3, m
    off = LADTeacherTrainer(model=teacher, args=trainer_args(LADTeacherConfig, tmp_path, eval_label_gain=False, **clean),
                            eval_dataset=tensor_dataset).evaluate()
    assert "eval_label_gain" not in off and off["eval_mean_iou"] == m["eval_mean_iou"]


def test_evaluate_cli_uses_the_noise_the_teacher_was_trained_with(tmp_path, capsys):
    """`lad-hf evaluate` of a clean-label teacher feeds the clean label: mKL is 0 (it was 31-125 with the defaults)."""
    data = write_parquet_dataset(tmp_path / "data", n_train=4, n_val=4)
    common = ["--dataset_name", str(data), "--crop_size", "32", "--per_device_eval_batch_size", "2",
              "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true"]
    # a clean-label teacher as `lad-hf teacher --class_noise false --pixel_noise false` saves it, with O(1) logits
    from conftest import label_assisted_segformer, sharpen_head
    from lad_hf import LabelNoiser

    rows = [torch.randn(3, 32, 32) for _ in range(4)]
    model = label_assisted_segformer(seed=7, scale=30.0)
    sharpen_head(model, LabelNoiser(4, generator=torch.Generator().manual_seed(0)).assist(
        torch.stack(rows), torch.randint(0, 4, (4, 32, 32))))
    model.config.lad_label_noise = {"label_sigma": 0.01, "class_noise": False, "pixel_noise": False, "ignore_mode": "zero"}
    teacher = tmp_path / "teacher"
    model.save_pretrained(teacher)
    capsys.readouterr()
    assert main(["evaluate", *common, "--model_name_or_path", str(teacher), "--output_dir", str(tmp_path / "ev")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["eval_mkl"] < 1e-9  # every draw is the same clean input
    assert "eval_label_gain" in metrics and "eval_mean_iou_no_label" in metrics
    assert "eval_label_gain_shuffled" in metrics and "eval_mean_iou_shuffled_label" in metrics
    # an explicit flag still overrides the saved setting
    assert main(["evaluate", *common, "--model_name_or_path", str(teacher), "--output_dir", str(tmp_path / "ev2"),
                 "--class_noise", "true"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval_mkl"] > 1e-3


def test_shuffled_label_gain_is_exactly_zero_for_a_teacher_that_ignores_the_label(tmp_path, tensor_dataset):
    """Zero-init label weights: another image's label changes nothing, so both label-use measures are 0."""
    teacher = add_label_channel(tiny_segformer(seed=2), init="zeros")
    m = LADTeacherTrainer(model=teacher, args=trainer_args(LADTeacherConfig, tmp_path), eval_dataset=tensor_dataset).evaluate()
    assert m["eval_label_gain_shuffled"] == 0.0
    assert m["eval_mean_iou_shuffled_label"] == m["eval_mean_iou"]


def _naive_miou_fed(model, ds, feed, batch_size, num_labels=4, ignore=255):
    """mIoU (float64, explicit counts) of `model` on `ds` in batches, the label channel built by `feed(x, y)`."""
    inter, union = np.zeros(num_labels), np.zeros(num_labels)
    model.eval()
    for start in range(0, len(ds), batch_size):
        rows = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
        x, y = torch.stack([r["pixel_values"] for r in rows]), torch.stack([r["labels"] for r in rows])
        with torch.no_grad():
            logits = model(pixel_values=torch.cat([x, feed(x, y)], 1)).logits
        pred = torch.nn.functional.interpolate(logits.double(), size=y.shape[-2:], mode="bilinear").argmax(1)
        valid = y != ignore
        for k in range(num_labels):
            p, t = (pred == k) & valid, (y == k) & valid
            inter[k] += (p & t).sum().item()
            union[k] += (p | t).sum().item()
    return float(np.mean([i / u for i, u in zip(inter, union) if u > 0]))


def test_a_teacher_that_reads_its_label_loses_miou_with_another_images_label(tmp_path, tensor_dataset):
    """A teacher trained on the clean label with its image mostly dropped reads the label: with another image's label
    (`other_labels`: the batch rolled by one) its mIoU falls, and that mIoU matches a direct float64 evaluation."""
    from lad_hf.noising import clean_codes
    from lad_hf.trainers.teacher import other_labels

    clean = dict(class_noise=False, pixel_noise=False, eval_stability_draws=0)
    teacher = add_label_channel(tiny_segformer(seed=3), init="random", scale=1.0)
    args = trainer_args(LADTeacherConfig, tmp_path, max_steps=400, learning_rate=2e-2, rgb_dropout=0.9, **clean)
    tr = LADTeacherTrainer(model=teacher, args=args, train_dataset=tensor_dataset, eval_dataset=tensor_dataset)
    tr.train()
    m = tr.evaluate()
    codes = clean_codes(4)
    code_of = lambda y: codes[torch.where(y == 255, torch.full_like(y, 4), y).long()][:, None]  # noqa: E731
    direct = _naive_miou_fed(teacher, tensor_dataset, lambda x, y: code_of(other_labels(y)), batch_size=4)
    assert m["eval_mean_iou_shuffled_label"] == pytest.approx(direct, abs=2e-3)  # float64 vs float32 near-ties
    assert m["eval_label_gain_shuffled"] == pytest.approx(m["eval_mean_iou"] - m["eval_mean_iou_shuffled_label"], abs=1e-12)
    assert m["eval_label_gain_shuffled"] > 0.05, m
    assert m["eval_label_gain"] > 0.05, m


def test_other_labels_gives_every_image_another_layout():
    y = torch.arange(3 * 2 * 2).view(3, 2, 2)
    assert torch.equal(other_labels_of(y)[1], y[0]) and torch.equal(other_labels_of(y)[0], y[2])
    one = torch.tensor([[[0, 1], [2, 3]]])
    assert torch.equal(other_labels_of(one), torch.tensor([[[3, 2], [1, 0]]]))  # a single image: rotated 180°


def other_labels_of(y):
    from lad_hf.trainers.teacher import other_labels

    return other_labels(y)


def test_tensorboard_receives_both_label_gains(tmp_path, tensor_dataset):
    """A teacher's evaluation logged with report_to=tensorboard carries both label-use measures as scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    teacher = add_label_channel(tiny_segformer(seed=2), init="random")
    args = trainer_args(LADTeacherConfig, tmp_path, report_to=["tensorboard"],
                        eval_stability_draws=0)
    tr = LADTeacherTrainer(model=teacher, args=args, train_dataset=tensor_dataset, eval_dataset=tensor_dataset)
    tr.train()
    m = tr.evaluate()
    tr.callback_handler.call_event("on_train_end", tr.args, tr.state, tr.control)  # flush the writer
    (run,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(run))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for key in ("label_gain", "label_gain_shuffled", "mean_iou_shuffled_label"):
        assert f"eval/{key}" in tags, tags
    assert acc.Scalars("eval/label_gain_shuffled")[-1].value == pytest.approx(m["eval_label_gain_shuffled"], abs=1e-6)
