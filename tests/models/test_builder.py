"""lad_hf.models.builder: config overrides and model building from configs, offline."""

import time

import pytest
import torch
import transformers as T

from conftest import ID2LABEL, TINY_SEGFORMER_OVERRIDES
from lad_hf.errors import LADError
from lad_hf.inference import segmentation_logits
from lad_hf.models.builder import ModelArguments, apply_overrides, build_model, parse_overrides

STAGES4 = ["stage1", "stage2", "stage3", "stage4"]


def _logits(model, x):
    with torch.no_grad():
        return segmentation_logits(model, x)


def test_parse_overrides():
    got = parse_overrides("depths=[1,1,1,1],hidden_sizes=[16,32,64,128],backbone_config.hidden_size=32,flag=true")
    assert got == {"depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 64, 128], "backbone_config.hidden_size": 32,
                   "flag": True}
    assert isinstance(got["flag"], bool)
    got = parse_overrides(" act = gelu , rate=0.5, off=False, none=null, pair=(1,2), d={'a': [1,2]} ")
    assert got == {"act": "gelu", "rate": 0.5, "off": False, "none": None, "pair": (1, 2), "d": {"a": [1, 2]}}
    assert parse_overrides(None) == {} and parse_overrides("") == {}
    assert parse_overrides("a=1,") == {"a": 1}
    with pytest.raises(LADError, match="key=value"):
        parse_overrides("depths=[1,1],oops")


def test_apply_overrides_dotted_and_unknown():
    cfg = T.UperNetConfig(backbone_config=T.ConvNextConfig(out_features=STAGES4))
    out = apply_overrides(cfg, parse_overrides("hidden_size=16,backbone_config.depths=[1,1,1,1],backbone_config.hidden_sizes=[8,16,32,64]"))
    assert out is cfg
    assert cfg.hidden_size == 16
    assert list(cfg.backbone_config.depths) == [1, 1, 1, 1]
    assert list(cfg.backbone_config.hidden_sizes) == [8, 16, 32, 64]
    with pytest.raises(LADError, match="not_a_field"):
        apply_overrides(cfg, {"not_a_field": 1})
    with pytest.raises(LADError, match="backbone_config.not_a_field"):
        apply_overrides(cfg, {"backbone_config.not_a_field": 1})
    with pytest.raises(LADError, match="no_such_sub"):
        apply_overrides(cfg, {"no_such_sub.depths": [1]})
    assert not hasattr(cfg, "not_a_field")


TINY_SEGFORMER_OVERRIDES = (
    "num_encoder_blocks=2,depths=[1,1],sr_ratios=[2,1],hidden_sizes=[8,16],patch_sizes=[7,3],strides=[4,2],"
    "num_attention_heads=[1,2],mlp_ratios=[2,2],decoder_hidden_size=16"
)


def test_build_model_from_config_name_offline(id2label):
    model = build_model(ModelArguments(config_name="segformer", config_overrides=TINY_SEGFORMER_OVERRIDES), id2label)
    assert isinstance(model, T.SegformerForSemanticSegmentation)
    assert model.config.num_labels == len(ID2LABEL) == 4
    assert model.config.id2label == ID2LABEL
    assert model.config.label2id == {v: k for k, v in ID2LABEL.items()}
    assert list(model.config.hidden_sizes) == [8, 16] and model.config.decoder_hidden_size == 16
    assert sum(p.numel() for p in model.parameters()) < 50_000  # the overrides were applied before building
    logits = _logits(model.eval(), torch.zeros(1, 3, 32, 32))
    assert logits.shape == (1, 4, 8, 8)
    # string keys (as from a JSON file) are accepted
    model = build_model(ModelArguments(config_name="segformer", config_overrides=TINY_SEGFORMER_OVERRIDES),
                        {str(k): v for k, v in ID2LABEL.items()})
    assert model.config.id2label == ID2LABEL


def test_build_model_bad_override_raises():
    with pytest.raises(LADError, match="not_a_field"):
        build_model(ModelArguments(config_name="segformer", config_overrides="not_a_field=1"))


def test_build_model_without_a_name_raises():
    with pytest.raises(LADError, match="model_name_or_path"):
        build_model(ModelArguments())


def test_build_model_missing_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(LADError) as exc:
        build_model(ModelArguments(model_name_or_path="nonexistent/xyz"))
    assert time.monotonic() - start < 15
    msg = str(exc.value)
    assert "nonexistent/xyz" in msg and "\n" not in msg
    assert "offline" in msg.lower()
