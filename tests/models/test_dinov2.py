"""DINOv2 students as stock transformers classes: UperNet (default) / DPT, patch-14 padding, label channel, sdpa, GC."""

import time

import numpy as np
import pytest
import torch

from conftest import ID2LABEL, synthetic_scene
from lad_hf.models.dinov2 import (SquarePadCollator, default_out_indices, dinov2_state_to_dpt, enable_backbone_checkpointing,
                           fit_collator, fit_image_processor, segment)
from lad_hf.errors import LADError
from lad_hf.models import ModelArguments, add_label_channel, build_model

# hidden 128 / 4 layers: big enough for LoRA + a 16-channel head to stay < 10 % trainable, tiny enough for CPU
TINY = "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,mlp_ratio=4,image_size=28"
HEAD = "head.hidden_size=16,head.pool_scales=[1,2,3]"


def tiny(head="upernet", overrides=None, seed=0, **kw):
    torch.manual_seed(seed)
    ov = overrides or (f"{TINY},{HEAD}" if head == "upernet" else f"{TINY},head.fusion_hidden_size=16")
    return build_model(ModelArguments(config_name="dinov2", config_overrides=ov, dinov2_head=head, **kw), ID2LABEL)


def test_upernet_student_is_stock_and_takes_odd_sizes(tmp_path):
    from transformers import AutoModelForSemanticSegmentation, UperNetForSemanticSegmentation

    m = tiny().eval()
    assert type(m) is UperNetForSemanticSegmentation and m.config.backbone_config.model_type == "dinov2"
    bb = m.config.backbone_config
    assert bb.out_indices == [1, 2, 3, 4] and bb.reshape_hidden_states and bb.hidden_size == 128
    assert m.config.hidden_size == 16 and m.config.id2label[1] == "square" and m.auxiliary_head is None
    assert not m.backbone.embeddings.mask_token.requires_grad  # unused in segmentation (DDP would flag it)
    assert default_out_indices(12) == [3, 6, 9, 12] and default_out_indices(2) == [1, 2]
    for h, w in [(30, 30), (30, 44), (43, 17)]:
        x = torch.randn(2, 3, h, w)
        assert segment(m, x).shape == (2, 4, h, w)
        assert m(pixel_values=x).logits.shape == (2, 4, h, w)  # stock forward floors to the patch grid
    # padding + crop: equal to running the model on the zero-padded 42x56 input, cropped
    x = torch.randn(1, 3, 30, 44)
    padded = torch.nn.functional.pad(x, (0, 12, 0, 12))
    with torch.no_grad():
        ref = m(pixel_values=padded).logits[..., :30, :44]
    assert torch.allclose(segment(m, x), ref, atol=1e-5)
    m.save_pretrained(tmp_path / "s")
    again = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        # same weights, a fresh module: kernels may differ in the last bits across CPUs and call paths
        torch.testing.assert_close(again(pixel_values=padded).logits, m(pixel_values=padded).logits, rtol=1e-5, atol=1e-6)


def test_head_overrides_and_errors():
    with pytest.raises(LADError, match="head.nope"):
        tiny(overrides=f"{TINY},head.nope=3")
    with pytest.raises(LADError, match="backbone-only"):
        build_model(ModelArguments(config_name="segformer", config_overrides="head.hidden_size=8"), ID2LABEL)
    with pytest.raises(LADError, match="out_indices"):
        tiny(overrides=f"{TINY},out_indices=[2,9]")
    m = tiny(overrides=f"{TINY},{HEAD},out_indices=[2,4]")
    assert m.config.backbone_config.out_indices == [2, 4] and m.backbone.channels == [128, 128]


def test_pretrained_backbone_loaded_and_offline_hub_fails_fast(tmp_path, capsys):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(3)
    src = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=28))
    src.save_pretrained(tmp_path / "dinov2")
    m = build_model(ModelArguments(model_name_or_path=str(tmp_path / "dinov2"), config_overrides=HEAD), ID2LABEL)
    want = src.state_dict()
    got = m.backbone.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert m.lad_new_modules == [] and m.config.num_labels == 4 and m.config.backbone_config.out_indices == [1, 2, 3, 4]
    # the Hub id offline: one LADError line, at once
    t = time.time()
    with pytest.raises(LADError) as e:
        build_model(ModelArguments(model_name_or_path="facebook/dinov2-small"), ID2LABEL)
    assert time.time() - t < 10 and "\n" not in str(e.value) and "facebook/dinov2-small" in str(e.value)
    from lad_hf.cli import main

    capsys.readouterr()
    assert main(["train", "--model_name_or_path", "facebook/dinov2-small", "--dataset_name", str(tmp_path / "none"),
                 "--output_dir", str(tmp_path / "o"), "--use_cpu", "true"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_dpt_option_converts_dinov2_weights_exactly_and_pads_square(tmp_path):
    from transformers import Dinov2Config, Dinov2Model, DPTForSemanticSegmentation

    torch.manual_seed(4)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=28, layerscale_value=0.5)
    src = Dinov2Model(cfg).eval()
    with torch.no_grad():  # non-trivial LayerScale so folding it is tested
        for layer in src.encoder.layer:
            layer.layer_scale1.lambda1.uniform_(0.1, 2.0)
            layer.layer_scale2.lambda1.uniform_(0.1, 2.0)
    src.save_pretrained(tmp_path / "dinov2")
    m = build_model(ModelArguments(model_name_or_path=str(tmp_path / "dinov2"), dinov2_head="dpt",
                                   config_overrides="head.fusion_hidden_size=16"), ID2LABEL).eval()
    assert type(m) is DPTForSemanticSegmentation and m.config.patch_size == 14
    x = torch.randn(2, 3, 28, 28)  # the native grid: DPT and DINOv2 position embeddings agree exactly
    with torch.no_grad():
        want = src(pixel_values=x, output_hidden_states=True).hidden_states
        got = m.dpt(x, output_hidden_states=True).hidden_states
    assert len(got) == len(want) and max((a - b).abs().max().item() for a, b in zip(got, want)) < 1e-5
    assert set(dinov2_state_to_dpt(src.state_dict())) <= set(m.state_dict())
    # non-square batches: padded to a square multiple of 14 by the collator; segment() crops back
    assert segment(m, torch.randn(1, 3, 30, 44)).shape == (1, 4, 30, 44)
    with pytest.raises(RuntimeError):
        m(pixel_values=torch.randn(1, 3, 28, 42))  # what the square padding avoids
    from lad_hf.data import SegmentationCollator

    col = fit_collator(m, SegmentationCollator(ignore_index=255))
    assert isinstance(col, SquarePadCollator) and col.collator.pad_to_multiple_of == 14
    batch = col([{"pixel_values": torch.ones(3, 30, 44), "labels": torch.zeros(30, 44, dtype=torch.long)}])
    assert batch["pixel_values"].shape == (1, 3, 56, 56) and batch["labels"].shape == (1, 56, 56)
    assert (batch["labels"][0, 30:] == 255).all() and (batch["labels"][0, :, 44:] == 255).all()
    assert m(pixel_values=batch["pixel_values"]).logits.shape[1] == 4
    with pytest.raises(LADError, match="at least 4 layers"):
        build_model(ModelArguments(config_name="dinov2", config_overrides="num_hidden_layers=2,hidden_size=32,num_attention_heads=2",
                                   dinov2_head="dpt"), ID2LABEL)


def test_collator_and_processor_fit_patch14():
    from transformers import BitImageProcessor, SegformerImageProcessor

    from lad_hf.data import SegmentationCollator

    m = tiny()
    col = fit_collator(m, SegmentationCollator(ignore_index=255))
    assert col.pad_to_multiple_of == 14 and not isinstance(col, SquarePadCollator)
    batch = col([{"pixel_values": torch.ones(3, 30, 30), "labels": torch.ones(30, 30, dtype=torch.long)},
                 {"pixel_values": torch.ones(3, 17, 44), "labels": torch.ones(17, 44, dtype=torch.long)}])
    assert batch["pixel_values"].shape == (2, 3, 42, 56) and (batch["labels"][0, 30:] == 255).all()
    kept = SegmentationCollator(ignore_index=255, pad_to_multiple_of=28)
    assert fit_collator(m, kept).pad_to_multiple_of == 28
    proc = fit_image_processor(m, BitImageProcessor(), crop_size=30)  # DINOv2's own: centre crop 224
    assert hasattr(proc, "post_process_semantic_segmentation") and (proc.size["height"], proc.size["width"]) == (42, 42)
    seg = SegformerImageProcessor(size={"height": 28, "width": 56})
    assert fit_image_processor(m, seg, 30) is seg
    odd = fit_image_processor(m, SegformerImageProcessor(size={"height": 30, "width": 30}), 30)
    assert (odd.size["height"], odd.size["width"]) == (42, 42)
    segformer = build_model(ModelArguments(config_name="segformer"), ID2LABEL)
    plain = SegmentationCollator()
    assert fit_collator(segformer, plain) is plain and plain.pad_to_multiple_of is None


def test_label_assisted_dinov2_teacher_is_function_preserving(tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    for head in ("upernet", "dpt"):
        m = tiny(head).eval()
        x = torch.randn(2, 3, 42, 42)
        with torch.no_grad():
            ref = m(pixel_values=x).logits
            add_label_channel(m, init="zeros")
            x4 = torch.cat([x, torch.randn(2, 1, 42, 42)], 1)
            out = m(pixel_values=x4).logits
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)  # a 4-channel conv: last bits may differ
        emb = m.backbone.embeddings.patch_embeddings if head == "upernet" else m.dpt.embeddings.patch_embeddings
        assert emb.projection.weight.shape[1:] == (4, 14, 14)
        m.save_pretrained(tmp_path / head)
        again = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / head).eval()
        assert again.config.label_assisted
        with torch.no_grad():
            torch.testing.assert_close(again(pixel_values=x4).logits, out, rtol=1e-5, atol=1e-6)


def test_sdpa_matches_eager():
    eager = tiny(attn_implementation="eager").eval()
    sdpa = tiny(attn_implementation="sdpa").eval()
    assert eager.backbone.config._attn_implementation == "eager" and sdpa.backbone.config._attn_implementation == "sdpa"
    sdpa.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 42, 28)
    with torch.no_grad():
        assert torch.allclose(eager(pixel_values=x).logits, sdpa(pixel_values=x).logits, atol=1e-5)


def test_gradient_checkpointing_on_the_backbone_of_a_lora_student(tmp_path):
    from lad_hf.models.lora import LoraArguments, apply_lora
    from lad_hf.trainers import SegmentationConfig

    grads = []
    for gc in (False, True):
        m = apply_lora(tiny(seed=1), LoraArguments(use_lora=True, lora_r=4))
        with torch.no_grad():  # non-zero LoRA B so A gets gradient too
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.fill_(0.01)
        flag = "activation_checkpointing" if "activation_checkpointing" in SegmentationConfig.__dataclass_fields__ \
            else "gradient_checkpointing"  # the new name in transformers >= 5.2x, the old one before
        args = SegmentationConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **{flag: gc})
        assert enable_backbone_checkpointing(m, args) is gc
        if gc:
            assert all(layer.gradient_checkpointing for layer in m.base_model.model.backbone.encoder.layer)
            assert not getattr(args, flag)  # the Trainer must not call UperNet's (unsupported) hook
        m.train()
        torch.manual_seed(0)
        m(pixel_values=torch.randn(2, 3, 42, 42)).logits.sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-5) for k in grads[0])
    assert any("lora_A" in k and grads[1][k].abs().sum() > 0 for k in grads[1])


def test_odd_sizes_train_and_evaluate(tmp_path):
    """30 px (not a multiple of 14) square crops for training, 30x44 and 17x30 whole images for evaluation."""
    from datasets import Dataset

    from lad_hf.data import SegmentationCollator
    from lad_hf.trainers import SegmentationConfig, SegmentationTrainer

    rng = np.random.default_rng(0)
    train = Dataset.from_dict(dict(zip(("pixel_values", "labels"), zip(*(synthetic_scene(rng, 30) for _ in range(8))))))
    ev = []
    for h, w in [(30, 44), (17, 30), (30, 30)]:
        img, lab = synthetic_scene(rng, 44)
        ev.append((img[:, :h, :w], lab[:h, :w]))
    evds = Dataset.from_dict(dict(zip(("pixel_values", "labels"), zip(*ev))))
    for head in ("upernet", "dpt"):
        m = tiny(head)
        args = SegmentationConfig(output_dir=str(tmp_path / head), use_cpu=True, report_to=[], max_steps=2,
                                  per_device_train_batch_size=4, per_device_eval_batch_size=2, save_strategy="no",
                                  disable_tqdm=True, learning_rate=1e-3)
        col = fit_collator(m, SegmentationCollator(ignore_index=255))
        tr = SegmentationTrainer(model=m, args=args, train_dataset=train.with_format("torch"),
                                 eval_dataset=evds.with_format("torch"), data_collator=col)
        tr.train()
        metrics = tr.evaluate()
        assert 0 <= metrics["eval_mean_iou"] <= 1 and np.isfinite(metrics["eval_loss"]), head
