"""LADDistillationTrainer: Eq. 8 recomputed directly, frozen teacher, fresh noise per step, KD mode, errors."""

import os

import pytest
import torch

from conftest import (ForwardRecorder, assert_label_channel_encodes, ce64, check_label_channel_noise, first_batch,
                      float64_copy, label_assisted_segformer, naive_cwd64, sharpen_head, tiny_segformer, trainer_args)
from lad_hf import LADDistillationConfig, LADDistillationTrainer, LabelNoiser, add_label_channel
from lad_hf.errors import LADError
from lad_hf.noising import NOISE_DEFAULTS


def _args(tmp_path, **kw):
    return trainer_args(LADDistillationConfig, tmp_path, **kw)


def _teacher(seed=5):
    return label_assisted_segformer(seed=seed)


def _sharp_pair(batch):
    """Student and label-assisted teacher with O(1) logits, so the distillation term is far above float noise."""
    noiser = LabelNoiser(4, generator=torch.Generator().manual_seed(123))
    teacher = sharpen_head(_teacher(), noiser.assist(batch["pixel_values"], batch["labels"]))
    student = sharpen_head(tiny_segformer(seed=1), batch["pixel_values"])
    return student, teacher


def test_loss_is_eq8(tmp_path, tensor_dataset):
    batch = first_batch(tensor_dataset)
    x, y = batch["pixel_values"], batch["labels"]
    student, teacher = _sharp_pair(batch)
    mu, tau = 2.3, 3.0  # not the defaults: the weights must come from the config
    tr = LADDistillationTrainer(model=student, teacher_model=teacher, train_dataset=tensor_dataset,
                                args=_args(tmp_path, distill_weight=mu, distill_tau=tau))
    student.eval()
    s_rec, t_rec = ForwardRecorder(student), ForwardRecorder(teacher)
    loss = tr.compute_loss(student, batch)
    assert s_rec.batch_sizes == [4] and t_rec.batch_sizes == [4]
    assert torch.equal(s_rec.inputs[0], x)
    fed = t_rec.inputs[0]
    assert fed.shape == (4, 4, 32, 32) and torch.equal(fed[:, :3], x)

    # Eq. 8 recomputed independently in float64 from the inputs the two models were given
    with torch.no_grad():
        s = float64_copy(student)(pixel_values=x.double()).logits
        t = float64_copy(teacher)(pixel_values=fed.double()).logits
    task, dist = ce64(s, y), naive_cwd64(s, t, tau)
    want = task + mu * dist
    tol = 1e-6 + 1e-5 * abs(want.item())
    assert dist > 1e-3 and (mu - 1) * dist > 100 * tol and (3.0 - mu) * dist > 100 * tol  # the term is visible
    assert abs(loss.double().item() - want.item()) <= tol, (loss.item(), want.item(), task.item(), dist.item())
    parts = {k.removeprefix("eval_"): (v[0] / v[1]).item() for k, v in tr._parts.items()}
    assert abs(parts["task_loss"] - task.item()) <= tol and abs(parts["distill_loss"] - dist.item()) <= tol


def test_teacher_sees_each_image_with_its_own_labels(tmp_path, tensor_dataset):
    batch = first_batch(tensor_dataset)
    x, y = batch["pixel_values"], batch["labels"]
    teacher = _teacher()
    tr = LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=teacher, train_dataset=tensor_dataset,
                                args=_args(tmp_path, pixel_noise=False))
    rec = ForwardRecorder(teacher)
    tr.compute_loss(tr.model, batch)
    fed = rec.inputs[0]
    for i in range(4):
        assert torch.equal(fed[i, :3], x[i])
        codes = assert_label_channel_encodes(fed[i, 3], y[i])
        assert sorted(codes) == sorted(k for k in y[i].unique().tolist() if k != 255)


def test_fresh_noise_each_step(tmp_path, tensor_dataset):
    batch = first_batch(tensor_dataset)
    teacher = _teacher()
    tr = LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=teacher, args=_args(tmp_path),
                                train_dataset=tensor_dataset)
    rec = ForwardRecorder(teacher)
    tr.compute_loss(tr.model, batch)
    tr.compute_loss(tr.model, batch)
    a, b = rec.inputs
    assert torch.equal(a[:, :3], b[:, :3])
    for row in range(4):  # every image gets new class codes at the next step
        assert not torch.equal(a[row, 3], b[row, 3]), row


@pytest.mark.parametrize("saved, noise, used", [
    (None, dict(class_noise=False, label_sigma=0.25), dict(class_noise=False, label_sigma=0.25)),
    (None, dict(class_noise=False, pixel_noise=False), dict(class_noise=False, pixel_noise=False)),
    # unset options: the teacher's training noise
    (dict(class_noise=False, label_sigma=0.2, ignore_mode="class"), {}, dict(class_noise=False, label_sigma=0.2,
                                                                              ignore_mode="class")),
    (dict(class_noise=False, label_sigma=0.2), dict(class_noise=True), dict(class_noise=True, label_sigma=0.2)),
])
def test_trainer_noiser_follows_the_config(tmp_path, tensor_dataset, saved, noise, used):
    batch = first_batch(tensor_dataset)
    teacher = _teacher()
    if saved is not None:
        teacher.config.lad_label_noise = dict(NOISE_DEFAULTS, **saved)
    tr = LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=teacher, args=_args(tmp_path, **noise),
                                train_dataset=tensor_dataset)
    want = dict(NOISE_DEFAULTS, **used)
    n = tr.noiser
    assert (n.class_noise, n.pixel_noise, n.sigma, n.ignore_mode) == (
        want["class_noise"], want["pixel_noise"], want["label_sigma"], want["ignore_mode"])
    rec = ForwardRecorder(teacher)
    tr.compute_loss(tr.model, batch)
    check_label_channel_noise(rec.inputs[0][:, 3], batch["labels"], **want)


def test_teacher_frozen_eval_not_saved_and_student_learns(tmp_path, tensor_dataset):
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny_segformer(seed=1)
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    args = _args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, logging_steps=2)
    tr = LADDistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tensor_dataset,
                                eval_dataset=tensor_dataset)
    tr.train()
    assert not tr.teacher.training and not any(p.requires_grad for p in tr.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in tr.teacher.state_dict().items())
    assert any(not torch.equal(s_before[k], v) for k, v in student.state_dict().items())
    logs = [h for h in tr.state.log_history if "distill_loss" in h]
    assert logs and all("task_loss" in h for h in logs)
    ckpt = os.path.join(args.output_dir, "checkpoint-4")
    from safetensors.torch import load_file

    keys = load_file(os.path.join(ckpt, "model.safetensors")).keys()
    # the teacher is never written: exactly the student's tensors (saved under checkpoint naming)
    assert len(keys) == len(student.state_dict()) and not any("teacher" in k for k in keys)
    assert os.path.isfile(os.path.join(ckpt, "noiser_rng_state_0.safetensors"))
    metrics = tr.evaluate()
    assert 0 <= metrics["eval_mean_iou"] <= 1


def test_plain_teacher_is_conventional_kd(tmp_path, tensor_dataset):
    teacher = tiny_segformer(seed=9)
    tr = LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=teacher, args=_args(tmp_path),
                                train_dataset=tensor_dataset)
    assert tr.noiser is None and not tr.label_assisted
    batch = first_batch(tensor_dataset)
    with torch.no_grad():
        want = teacher.eval()(pixel_values=batch["pixel_values"]).logits
    assert torch.allclose(tr.teacher_logits(batch["pixel_values"], batch["labels"]), want)


def test_fixed_class_encoding(tmp_path, tensor_dataset):
    tr = LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=_teacher(),
                                args=_args(tmp_path, fixed_class_encoding=True, pixel_noise=False),
                                train_dataset=tensor_dataset)
    labels = first_batch(tensor_dataset)["labels"]
    a, b = tr.noiser(labels), tr.noiser(labels)
    assert torch.equal(a, b)


def test_mismatched_label_sets_and_bad_teacher(tmp_path, tensor_dataset):
    with pytest.raises(LADError, match="labels"):
        LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=add_label_channel(tiny_segformer(num_labels=5)),
                               args=_args(tmp_path), train_dataset=tensor_dataset)
    with pytest.raises(LADError, match="cannot load teacher"):
        LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=str(tmp_path / "missing"),
                               args=_args(tmp_path), train_dataset=tensor_dataset)
    with pytest.raises(LADError, match="plain images"):
        LADDistillationTrainer(model=_teacher(), teacher_model=_teacher(), args=_args(tmp_path), train_dataset=tensor_dataset)


def test_callers_teacher_keeps_its_precision_and_noise_mismatch_warns(tmp_path, tensor_dataset, caplog):
    teacher = _teacher()
    teacher.config.lad_label_noise = {"label_sigma": 0.03, "class_noise": True, "pixel_noise": True, "ignore_mode": "zero"}
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with caplog.at_level("WARNING"):
        tr = LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=teacher,
                                    args=_args(tmp_path, bf16=True), train_dataset=tensor_dataset)
    assert next(tr.teacher.parameters()).dtype == torch.bfloat16
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # caller's copy untouched
    # unset noise options take the teacher's: no warning
    assert tr.noiser.sigma == 0.03 and "label_sigma" not in caplog.text
    # a setting that differs from the teacher's is used, with a warning naming it
    with caplog.at_level("WARNING"):
        tr = LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=teacher,
                                    args=_args(tmp_path, label_sigma=0.05), train_dataset=tensor_dataset)
    assert tr.noiser.sigma == 0.05 and "label_sigma" in caplog.text and "0.03" in caplog.text


def test_lora_teacher_loads_its_saved_base_or_names_it(tmp_path):
    """A plain LoRA teacher (`lad-hf train --use_lora`) loads from its own folder's base_model, offline; without
    that base the error names the LoRA base model, not a Hub connection."""
    import shutil

    import numpy as np

    from conftest import TINY_SEGFORMER_OVERRIDES, write_parquet_dataset
    from lad_hf.cli import main
    from lad_hf.models.lora import BASE_MODEL_DIR
    from lad_hf.trainers import load_teacher

    data = write_parquet_dataset(tmp_path / "data", n_train=4, n_val=2)
    teacher = tmp_path / "teacher"
    assert main(["train", "--dataset_name", str(data), "--config_name", "segformer", "--config_overrides",
                 TINY_SEGFORMER_OVERRIDES, "--crop_size", "32", "--per_device_train_batch_size", "2", "--max_steps",
                 "1", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--eval_strategy", "no",
                 "--use_lora", "true", "--output_dir", str(teacher)]) == 0
    assert (teacher / "adapter_config.json").is_file() and (teacher / BASE_MODEL_DIR).is_dir()
    model = load_teacher(str(teacher))
    assert type(model).__name__ == "SegformerForSemanticSegmentation" and not hasattr(model, "peft_config")
    x = torch.zeros(1, 3, 32, 32)
    assert np.isfinite(model(pixel_values=x).logits.detach().numpy()).all()
    shutil.rmtree(teacher / BASE_MODEL_DIR)
    with pytest.raises(LADError, match=rf"^cannot load LoRA teacher {str(teacher)!r}: ") as e:
        load_teacher(str(teacher))
    assert "huggingface.co" not in str(e.value)
