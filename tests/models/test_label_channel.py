"""lad_hf.models.label_channel: label-channel widening for every HF segmentation family."""

import copy

import pytest
import torch
import torch.nn as nn
import transformers as T

from conftest import tiny_segformer
from lad_hf.errors import LADError
from lad_hf.inference import segmentation_logits
from lad_hf.models.label_channel import (
    add_label_channel,
    image_channels,
    is_label_assisted,
)

STAGES4 = ["stage1", "stage2", "stage3", "stage4"]


def _upernet(backbone_config, **kw):
    return T.UperNetForSemanticSegmentation(
        T.UperNetConfig(
            backbone_config=backbone_config, hidden_size=16, auxiliary_in_channels=16, auxiliary_channels=8,
            num_labels=4, use_auxiliary_head=False, **kw,
        )
    )


_VIT_KW = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8)

# name -> (builder, input size). Every model is tiny; input sizes are square (DPT with a plain ViT needs that).
FAMILIES = {
    "segformer": (lambda: tiny_segformer(), 32),
    "upernet-convnext": (
        lambda: _upernet(T.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=STAGES4)), 32),
    "upernet-swin": (
        lambda: _upernet(T.SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=2,
                                      image_size=32, out_features=STAGES4)), 32),
    "upernet-dinov2": (
        lambda: _upernet(T.Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                        patch_size=4, image_size=32, out_features=["stage1", "stage2"]),
                         pool_scales=[1, 2]), 32),
    "upernet-resnet": (
        lambda: _upernet(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                        out_features=STAGES4)), 32),
    "dpt": (
        lambda: T.DPTForSemanticSegmentation(T.DPTConfig(
            **_VIT_KW, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16,
            num_labels=4, use_auxiliary_head=False)), 32),
    # transformers' DPTForSemanticSegmentation always runs its own ViT (DPTModel); a DINOv2 backbone_config only
    # sets the reassemble width. The widening must still find the stem and update both channel counts.
    "dpt-dinov2": (
        lambda: T.DPTForSemanticSegmentation(T.DPTConfig(
            backbone_config=T.Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=32, patch_size=4, image_size=32,
                                           out_features=["stage1", "stage2"]),
            **_VIT_KW, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16,
            num_labels=4, use_auxiliary_head=False)), 32),
    "beit": (
        lambda: T.BeitForSemanticSegmentation(T.BeitConfig(
            **_VIT_KW, out_indices=[0, 1, 2, 3], pool_scales=[1, 2], num_labels=4, use_auxiliary_head=False,
            auxiliary_channels=8)), 32),
    "data2vec-vision": (
        lambda: T.Data2VecVisionForSemanticSegmentation(T.Data2VecVisionConfig(
            **_VIT_KW, out_indices=[0, 1, 2, 3], pool_scales=[1, 2], num_labels=4, use_auxiliary_head=False,
            auxiliary_channels=8)), 32),
    "mobilenet_v2": (
        lambda: T.MobileNetV2ForSemanticSegmentation(T.MobileNetV2Config(depth_multiplier=0.25, image_size=32,
                                                                         num_labels=4)), 32),
    "mobilevit": (
        lambda: T.MobileViTForSemanticSegmentation(T.MobileViTConfig(
            image_size=32, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16], num_attention_heads=2,
            aspp_out_channels=16, num_labels=4)), 32),
}
# MobileViT built from a random config gives constant logits (DESIGN.md §4) even after re-initialisation.
CONSTANT_OUTPUT_FAMILIES = {"mobilevit"}


def _reinit(model: nn.Module, seed: int = 0) -> nn.Module:
    """Unit-scale weights (std 1/sqrt(fan_in)) so logits depend visibly on the input; HF's 0.02 init can give ~1e-9."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model.eval()


def _build(name: str, seed: int = 0):
    builder, size = FAMILIES[name]
    torch.manual_seed(seed)
    return _reinit(builder(), seed), size


def _first_conv(model):
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _logits(model, x):
    with torch.no_grad():
        return segmentation_logits(model, x)


def _assert_same(a, b):
    if not torch.equal(a, b):
        scale = max(a.abs().max().item(), 1.0)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_add_label_channel_zeros_is_function_preserving(name):
    model, size = _build(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, size, size, generator=g)
    x_other = torch.randn(2, 3, size, size, generator=g)
    before = _logits(model, x)
    if name not in CONSTANT_OUTPUT_FAMILIES:
        # the comparison below is only meaningful when the logits actually depend on the input
        assert (before - _logits(model, x_other)).abs().max() > 1e-3
    reference = copy.deepcopy(model)

    assert add_label_channel(model, init="zeros") is model
    assert is_label_assisted(model) and model.config.label_assisted is True
    assert image_channels(model.config) == 4
    assert model.config.label_assisted_image_channels == 3
    bb = getattr(model.config, "backbone_config", None)
    if bb is not None and hasattr(bb, "num_channels"):
        assert bb.num_channels == 4
    if hasattr(model.config, "num_channels"):
        assert model.config.num_channels == 4

    label = torch.randn(2, 1, size, size, generator=g) * 10
    _assert_same(before, _logits(model, torch.cat([x, label], 1)))

    # the new input column is wired into the forward pass: a non-zero label weight changes the logits, and only
    # through the *last* channel (the image channels keep their weights: a zero label channel reproduces `before`)
    wired = add_label_channel(reference, init="random", scale=10.0, seed=3)
    both = _logits(wired, torch.cat([torch.cat([x, label], 1), torch.cat([x, torch.zeros_like(label)], 1)]))
    if name not in CONSTANT_OUTPUT_FAMILIES:
        assert not torch.allclose(both[:2], before, atol=1e-4)
    _assert_same(before, both[2:])


@pytest.mark.parametrize("name", ["segformer", "upernet-convnext", "dpt-dinov2"])
def test_label_assisted_save_load_round_trip(name, tmp_path):
    model, size = _build(name)
    add_label_channel(model, init="random", scale=1.0)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert is_label_assisted(loaded)
    assert loaded.config.label_assisted_image_channels == 3
    assert image_channels(loaded.config) == 4
    if getattr(loaded.config, "backbone_config", None) is not None:
        assert loaded.config.backbone_config.num_channels == 4
    x = torch.randn(2, 4, size, size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(loaded, x), _logits(model, x), rtol=0, atol=1e-6)
    # a label-assisted checkpoint cannot be widened a second time
    with pytest.raises(LADError, match="already label-assisted"):
        add_label_channel(loaded)


def test_random_init_label_channel_changes_outputs_and_is_seeded():
    base = _reinit(tiny_segformer(), 0)
    a = add_label_channel(copy.deepcopy(base), init="random", scale=1.0, seed=5)
    b = add_label_channel(copy.deepcopy(base), init="random", scale=1.0, seed=5)
    c = add_label_channel(copy.deepcopy(base), init="random", scale=1.0, seed=6)
    wa = _first_conv(a).weight
    w0 = _first_conv(base).weight
    assert wa.shape[1] == 4
    assert torch.equal(wa[:, :3], w0)  # image weights copied unchanged, label last
    assert wa[:, 3].abs().sum() > 0
    # std of the new column is about scale * std(original weights)
    assert wa[:, 3].std().item() == pytest.approx(w0.std().item(), rel=0.3)
    assert torch.equal(wa, _first_conv(b).weight)
    assert not torch.equal(wa, _first_conv(c).weight)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    l1, l2 = torch.randn(2, 2, 1, 32, 32, generator=g)
    out1 = _logits(a, torch.cat([x, l1], 1))
    out2 = _logits(a, torch.cat([x, l2], 1))
    assert (out1 - out2).abs().max() > 1e-3


def test_bad_init_name_and_double_widening_raise():
    model = tiny_segformer()
    with pytest.raises(LADError, match="init"):
        add_label_channel(model, init="ones")
    add_label_channel(model)
    with pytest.raises(LADError, match="already label-assisted"):
        add_label_channel(model)
    assert _first_conv(model).in_channels == 4  # not widened to 5


class _FooConfig:
    model_type = "foo"
    num_channels = 3


class _FooModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = _FooConfig()
        self.conv = nn.Conv2d(3, 4, 3)


def test_unknown_model_type_raises_naming_it():
    with pytest.raises(LADError, match="'foo'") as exc:
        add_label_channel(_FooModel())
    assert "supported" in str(exc.value) and "segformer" in str(exc.value)


def test_unregistered_real_backbone_raises_naming_it():
    model = _upernet(T.FocalNetConfig(embed_dim=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=STAGES4))
    with pytest.raises(LADError, match="focalnet"):
        add_label_channel(model)
    assert not is_label_assisted(model)


def test_registered_type_without_stem_attribute_raises():
    # ResNet's registry entry points at `.backbone`, which an image classifier does not have
    model = T.ResNetForImageClassification(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1]))
    with pytest.raises(LADError, match="resnet"):
        add_label_channel(model)
    assert not is_label_assisted(model)



# ------------------------------------------------------------------------------------------ overrides & building


@pytest.mark.parametrize("name", ["segformer", "upernet-resnet"])
def test_a_shared_config_is_left_unchanged(name):
    """Teacher and student built with `from_config` from one config object: widening the teacher leaves the student
    (and the shared config) plain, and every submodule of the teacher sees the teacher's own config."""
    base, size = _build(name)
    cfg = base.config
    cfg._name_or_path = "nvidia/mit-b0"  # as if loaded from the Hub
    teacher, student = type(base)(cfg).eval(), type(base)(cfg).eval()
    assert teacher.config is cfg and student.config is cfg
    add_label_channel(teacher, init="random")
    assert is_label_assisted(teacher) and not is_label_assisted(student) and not is_label_assisted(cfg)
    assert image_channels(cfg) == 3 and image_channels(teacher.config) == 4
    assert teacher.config.name_or_path == "" and cfg.name_or_path == "nvidia/mit-b0"  # no longer that checkpoint
    holders = [m for m in teacher.modules() if getattr(m, "config", None) is not None]
    assert all(m.config is teacher.config or m.config is teacher.config.backbone_config for m in holders)
    x = torch.randn(1, 3, size, size)
    assert _logits(student, x).shape[1] == 4  # the student still takes plain images
    assert _logits(teacher, torch.cat([x, torch.zeros_like(x[:, :1])], 1)).shape[1] == 4
