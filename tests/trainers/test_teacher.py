"""LADTeacherTrainer: dual path as one forward, loss = Eq. 7 recomputed directly, eval mIoU + mKL, save/reload."""

import pytest
import torch

from conftest import (ForwardRecorder, assert_label_channel_encodes, ce64, check_label_channel_noise, first_batch,
                      float64_copy, label_assisted_segformer, naive_cwd64, sharpen_head, tiny_segformer, trainer_args)
from lad_hf import LADTeacherConfig, LADTeacherTrainer, LabelNoiser, add_label_channel
from lad_hf.errors import LADError
from lad_hf.noising import NOISE_DEFAULTS


def _args(tmp_path, **kw):
    return trainer_args(LADTeacherConfig, tmp_path, **kw)


def _sharp_teacher(batch, seed=0):
    """A label-assisted tiny SegFormer whose logits are O(1), so the consistency term is far above float noise."""
    model = label_assisted_segformer(seed=seed)
    noiser = LabelNoiser(4, generator=torch.Generator().manual_seed(123))
    return sharpen_head(model, noiser.assist(batch["pixel_values"], batch["labels"]))


TOL = dict(rtol=1e-5, atol=1e-6)


def _tol(value):
    return TOL["atol"] + TOL["rtol"] * abs(float(value))


@pytest.mark.parametrize("symmetric", [True, False])
def test_dual_path_is_one_forward_over_2n_and_matches_eq7(tmp_path, tensor_dataset, symmetric):
    batch = first_batch(tensor_dataset)
    x, y = batch["pixel_values"], batch["labels"]
    model = _sharp_teacher(batch)
    lam, tau = 0.37, 3.0  # not the defaults: the weights must come from the config
    args = _args(tmp_path, consistency_weight=lam, consistency_tau=tau, consistency_symmetric=symmetric)
    trainer = LADTeacherTrainer(model=model, args=args, train_dataset=tensor_dataset)
    model.eval()  # no dropout / drop-path, so the direct recomputation is exact
    rec = ForwardRecorder(model)
    loss = trainer.compute_loss(model, batch)
    assert rec.calls == 1 and rec.batch_sizes == [8]  # both paths in ONE forward over the 2N batch
    fed = rec.inputs[0]
    assert fed.shape == (8, 4, 32, 32)
    assert torch.equal(fed[:4, :3], x) and torch.equal(fed[4:, :3], x)

    # Eq. 7 recomputed independently in float64 from the inputs the model was given
    with torch.no_grad():
        logits = float64_copy(model)(pixel_values=fed.double()).logits
    l1, l2 = logits[:4], logits[4:]
    seg = ce64(l1, y) + ce64(l2, y)
    d12, d21 = naive_cwd64(l1, l2, tau), naive_cwd64(l2, l1, tau)
    cons = d12 + d21 if symmetric else d12
    want = seg + lam * cons
    # every term is visible: far above the comparison tolerance
    tol = _tol(want)
    assert d12 > 1e-3 and d21 > 1e-3
    assert lam * d12 > 100 * tol and lam * d21 > 100 * tol and (1 - lam) * cons > 100 * tol
    assert abs(loss.double().item() - want.item()) <= tol, (loss.item(), want.item(), seg.item(), cons.item())
    # the logged parts (under eval_ here: the model is in eval mode): mean CE of the paths, unweighted consistency
    parts = {k.removeprefix("eval_"): (v[0] / v[1]).item() for k, v in trainer._parts.items()}
    assert abs(parts["seg_loss"] - seg.item() / 2) <= _tol(seg)
    assert abs(parts["consistency_loss"] - cons.item()) <= _tol(cons)


def test_2n_batch_pairs_each_image_with_its_own_labels(tmp_path, tensor_dataset):
    """Rows i and N+i are x_i with two independent class encodings of y_i (class noise, no pixel noise)."""
    batch = first_batch(tensor_dataset)
    x, y = batch["pixel_values"], batch["labels"]
    model = label_assisted_segformer(seed=0).eval()
    trainer = LADTeacherTrainer(model=model, args=_args(tmp_path, pixel_noise=False), train_dataset=tensor_dataset)
    rec = ForwardRecorder(model)
    trainer.compute_loss(model, batch)
    fed = rec.inputs[0]
    n = x.shape[0]
    for i in range(n):
        for row in (i, n + i):
            assert torch.equal(fed[row, :3], x[i]), row
            codes = assert_label_channel_encodes(fed[row, 3], y[i])
            assert sorted(codes) == sorted(k for k in y[i].unique().tolist() if k != 255)
        assert not torch.equal(fed[i, 3], fed[n + i, 3])  # two independent draws


@pytest.mark.parametrize("noise", [dict(class_noise=False, label_sigma=0.25), dict(class_noise=False, pixel_noise=False),
                                   dict(label_sigma=0.2, ignore_mode="class")])
def test_trainer_noiser_follows_the_config(tmp_path, tensor_dataset, noise):
    batch = first_batch(tensor_dataset)
    y = batch["labels"]
    model = label_assisted_segformer(seed=0).eval()
    trainer = LADTeacherTrainer(model=model, args=_args(tmp_path, **noise), train_dataset=tensor_dataset)
    want = dict(NOISE_DEFAULTS, **noise)
    n = trainer.noiser
    assert (n.class_noise, n.pixel_noise, n.sigma, n.ignore_mode) == (
        want["class_noise"], want["pixel_noise"], want["label_sigma"], want["ignore_mode"])
    assert model.config.lad_label_noise == want  # saved with the teacher
    rec = ForwardRecorder(model)
    trainer.compute_loss(model, batch)
    channel = rec.inputs[0][:, 3]
    check_label_channel_noise(channel, torch.cat([y, y]), **want)


def test_fresh_noise_every_step(tmp_path, tensor_dataset):
    batch = first_batch(tensor_dataset)
    model = label_assisted_segformer(seed=0).eval()
    trainer = LADTeacherTrainer(model=model, args=_args(tmp_path), train_dataset=tensor_dataset)
    rec = ForwardRecorder(model)
    trainer.compute_loss(model, batch)
    trainer.compute_loss(model, batch)
    a, b = rec.inputs
    assert torch.equal(a[:, :3], b[:, :3])
    for row in range(8):  # every image gets new class codes at the next step
        assert not torch.equal(a[row, 3], b[row, 3]), row


def test_single_path_and_symmetric_off(tmp_path, tensor_dataset):
    model = add_label_channel(tiny_segformer())
    trainer = LADTeacherTrainer(model=model, args=_args(tmp_path, dual_path=False), train_dataset=tensor_dataset)
    counter = ForwardRecorder(model)
    trainer.compute_loss(model, first_batch(tensor_dataset))
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
    batch = first_batch(tensor_dataset)
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


def test_sliding_window_evaluation(tmp_path, tensor_dataset):
    """--eval_window_size: the teacher (with its label channel) is evaluated window by window."""
    model = label_assisted_segformer(seed=0)
    small = tensor_dataset.select(range(4))
    whole = LADTeacherTrainer(model=model, args=_args(tmp_path, eval_stability_draws=0), eval_dataset=small).evaluate()
    tiled = LADTeacherTrainer(model=model, args=_args(tmp_path, eval_stability_draws=0, eval_window_size=16,
                                                      eval_window_stride=8), eval_dataset=small).evaluate()
    for m in (whole, tiled):
        assert 0 <= m["eval_mean_iou"] <= 1 and "eval_label_gain" in m
    assert tiled["eval_loss"] != whole["eval_loss"]  # the windows see less context: not the whole-image logits


def test_rgb_dropout_zeroes_whole_images_in_training_only(tmp_path, tensor_dataset):
    """--rgb_dropout p: each sample's image channels are 0 with probability p, in both paths; the label stays."""
    batch = first_batch(tensor_dataset, n=8)
    model = label_assisted_segformer()
    tr = LADTeacherTrainer(model=model, args=_args(tmp_path, rgb_dropout=0.5), train_dataset=tensor_dataset)
    rec = ForwardRecorder(model)
    dropped = []
    for _ in range(6):
        tr.compute_loss(model, batch)
        fed = rec.inputs[-1]
        rgb_zero = fed[:, :3].flatten(1).abs().sum(1) == 0
        assert torch.equal(rgb_zero[:8], rgb_zero[8:])  # the two paths see the same image
        assert bool((fed[:, 3].flatten(1).abs().sum(1) > 0).all())  # the label channel is always there
        kept = ~rgb_zero[:8]
        assert torch.equal(fed[:8, :3][kept], batch["pixel_values"][kept])
        dropped.append(rgb_zero[:8].float().mean().item())
    assert 0.2 < sum(dropped) / len(dropped) < 0.8  # about half of 48 samples
    model.eval()
    rec.inputs.clear()
    tr.compute_loss(model, batch)
    assert not bool((rec.inputs[-1][:, :3].flatten(1).abs().sum(1) == 0).any())  # never at evaluation
    with pytest.raises(LADError, match="rgb_dropout"):
        _args(tmp_path, rgb_dropout=1.0)
