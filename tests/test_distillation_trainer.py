"""LADDistillationTrainer: Eq. 8 recomputed directly, frozen teacher, fresh noise per step, KD mode, errors."""

import os

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_segformer
from lad_hf import LADDistillationConfig, LADDistillationTrainer, LabelNoiser, add_label_channel
from lad_hf.errors import LADError
from lad_hf.losses import ChannelWiseDivergence


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                per_device_eval_batch_size=4, use_cpu=True, report_to=[], save_strategy="no", learning_rate=1e-3,
                disable_tqdm=True)
    base.update(kw)
    return LADDistillationConfig(**base)


def _batch(ds, n=4):
    rows = [ds[i] for i in range(n)]
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]), "labels": torch.stack([r["labels"] for r in rows])}


def _teacher(seed=5):
    return add_label_channel(tiny_segformer(seed=seed), init="random", scale=1.0)


def test_loss_is_eq8_with_fresh_noise_each_step(tmp_path, tensor_dataset):
    student, teacher = tiny_segformer(seed=1), _teacher()
    tr = LADDistillationTrainer(model=student, teacher_model=teacher, args=_args(tmp_path), train_dataset=tensor_dataset)
    student.eval()
    batch = _batch(tensor_dataset)
    state = tr.noiser.get_state()
    loss = tr.compute_loss(student, batch)
    noiser = LabelNoiser(4, sigma=0.01, generator=torch.Generator().manual_seed(0), validate=False)
    noiser.set_state(state)
    with torch.no_grad():
        t = teacher(pixel_values=noiser.assist(batch["pixel_values"], batch["labels"])).logits
        t_again = teacher(pixel_values=noiser.assist(batch["pixel_values"], batch["labels"])).logits
    s = student(pixel_values=batch["pixel_values"]).logits
    ce = F.cross_entropy(F.interpolate(s, size=(32, 32), mode="bilinear", align_corners=False), batch["labels"], ignore_index=255)
    want = ce + 3.0 * ChannelWiseDivergence(tau=4.0)(s, t)
    assert torch.allclose(loss.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(t, t_again)  # the next step draws new noise


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
    batch = _batch(tensor_dataset)
    with torch.no_grad():
        want = teacher.eval()(pixel_values=batch["pixel_values"]).logits
    assert torch.allclose(tr.teacher_logits(batch["pixel_values"], batch["labels"]), want)


def test_fixed_class_encoding(tmp_path, tensor_dataset):
    tr = LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=_teacher(),
                                args=_args(tmp_path, fixed_class_encoding=True, pixel_noise=False),
                                train_dataset=tensor_dataset)
    labels = _batch(tensor_dataset)["labels"]
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
    assert "label_sigma" in caplog.text
