"""LADTeacherTrainer: dual path as one forward, loss = Eq. 7 recomputed directly, eval mIoU + mKL, save/reload."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_segformer
from lad_hf import LADTeacherConfig, LADTeacherTrainer, LabelNoiser, add_label_channel
from lad_hf.errors import LADError
from lad_hf.losses import ChannelWiseDivergence


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                per_device_eval_batch_size=4, use_cpu=True, report_to=[], save_strategy="no", learning_rate=1e-3,
                disable_tqdm=True)
    base.update(kw)
    return LADTeacherConfig(**base)


def _batch(ds, n=4):
    rows = [ds[i] for i in range(n)]
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]), "labels": torch.stack([r["labels"] for r in rows])}


class CountingForward(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.calls, self.batch_sizes = 0, []
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls += 1
        self.batch_sizes.append(kwargs["pixel_values"].shape[0])


def test_dual_path_is_one_forward_over_2n_and_matches_eq7(tmp_path, tensor_dataset):
    model = add_label_channel(tiny_segformer(), init="random", scale=1.0)
    trainer = LADTeacherTrainer(model=model, args=_args(tmp_path), train_dataset=tensor_dataset)
    batch = _batch(tensor_dataset)
    model.eval()  # no dropout / drop-path, so the direct recomputation is exact
    counter = CountingForward(model)
    state = trainer.noiser.get_state()
    loss = trainer.compute_loss(model, batch)
    assert counter.calls == 1 and counter.batch_sizes == [8]

    # recompute Eq. 7 directly from the same noise draws
    noiser = LabelNoiser(4, sigma=0.01, generator=torch.Generator().manual_seed(0), validate=False)
    noiser.set_state(state)
    x2, y2 = torch.cat([batch["pixel_values"]] * 2), torch.cat([batch["labels"]] * 2)
    with torch.no_grad():
        logits = model(pixel_values=noiser.assist(x2, y2)).logits
    up = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    ce = lambda l, y: F.cross_entropy(l, y, ignore_index=255)
    cwd = ChannelWiseDivergence(tau=4.0)
    want = ce(up[:4], batch["labels"]) + ce(up[4:], batch["labels"]) + cwd(logits[:4], logits[4:]) + cwd(logits[4:], logits[:4])
    assert torch.allclose(loss.detach(), want, rtol=1e-5, atol=1e-6)
    # the two halves used different noise draws -> different logits
    assert not torch.allclose(logits[:4], logits[4:])


def test_single_path_and_symmetric_off(tmp_path, tensor_dataset):
    model = add_label_channel(tiny_segformer())
    trainer = LADTeacherTrainer(model=model, args=_args(tmp_path, dual_path=False), train_dataset=tensor_dataset)
    counter = CountingForward(model)
    trainer.compute_loss(model, _batch(tensor_dataset))
    assert counter.batch_sizes == [4]


def test_consistency_gradient_flows_both_paths_only_when_symmetric(tmp_path, tensor_dataset):
    torch.manual_seed(0)
    model = add_label_channel(tiny_segformer(), init="random", scale=1.0)
    for sym in (True, False):
        tr = LADTeacherTrainer(model=model, args=_args(tmp_path, consistency_symmetric=sym, consistency_weight=1.0),
                               train_dataset=tensor_dataset)
        logits = torch.randn(8, 4, 8, 8, requires_grad=True)
        a, b = logits[:4], logits[4:]
        cons = tr.consistency(a, b) + (tr.consistency(b, a) if sym else 0)
        cons.backward()
        assert logits.grad[:4].abs().sum() > 0
        assert (logits.grad[4:].abs().sum() > 0) == sym


def test_training_learns_and_eval_reports_miou_and_mkl(tmp_path, tensor_dataset, id2label):
    model = add_label_channel(tiny_segformer(), init="random", scale=1.0)
    args = _args(tmp_path, max_steps=30, eval_strategy="no", learning_rate=3e-3, eval_stability_draws=3)
    trainer = LADTeacherTrainer(model=model, args=args, train_dataset=tensor_dataset, eval_dataset=tensor_dataset)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"]
    for k in ("eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "eval_mkl", "eval_iou_background"):
        assert k in after
    assert after["eval_mkl"] >= 0
    logged = [h for h in trainer.state.log_history if "seg_loss" in h]
    assert logged and all("consistency_loss" in h for h in logged)
    # evaluation noise is seeded: two evaluations agree exactly
    assert trainer.evaluate()["eval_mean_iou"] == after["eval_mean_iou"]


def test_save_reload_roundtrip_keeps_label_assisted(tmp_path, tensor_dataset):
    from transformers import AutoModelForSemanticSegmentation

    model = add_label_channel(tiny_segformer())
    trainer = LADTeacherTrainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=tensor_dataset)
    trainer.train()
    trainer.save_model(str(tmp_path / "teacher"))
    re = AutoModelForSemanticSegmentation.from_pretrained(str(tmp_path / "teacher"))
    assert re.config.label_assisted and re.config.num_channels == 4
    x = torch.randn(2, 4, 32, 32)
    model.eval()
    assert torch.allclose(model(pixel_values=x).logits, re(pixel_values=x).logits, atol=1e-6)


def test_bad_inputs_get_clear_errors(tmp_path, tensor_dataset):
    with pytest.raises(LADError, match="label-assisted"):
        LADTeacherTrainer(model=tiny_segformer(), args=_args(tmp_path), train_dataset=tensor_dataset)
    model = add_label_channel(tiny_segformer())
    trainer = LADTeacherTrainer(model=model, args=_args(tmp_path), train_dataset=tensor_dataset)
    batch = _batch(tensor_dataset)
    bad = dict(batch, labels=batch["labels"].clone())
    bad["labels"][0, 5, 5] = 9
    with pytest.raises(LADError, match=r"\[9\]"):
        trainer.compute_loss(model, bad)
    with pytest.raises(LADError, match="differ in size"):
        trainer.compute_loss(model, dict(batch, labels=batch["labels"][:, :16]))
    with pytest.raises(LADError, match="input channels"):
        trainer.compute_loss(model, dict(batch, pixel_values=torch.randn(4, 2, 32, 32)))
    # an already 4-channel batch: the trainer adds the label channel itself
    with pytest.raises(LADError, match="adds the label channel itself"):
        trainer.compute_loss(model, dict(batch, pixel_values=torch.randn(4, 4, 32, 32)))
    with pytest.raises(LADError, match="consistency_loss"):
        _args(tmp_path, consistency_loss="nope")
