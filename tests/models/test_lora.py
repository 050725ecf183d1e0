"""LoRA (PEFT) DINOv2 students: target detection, frozen backbone, adapter-only checkpoints, resume, CLI distill -> export."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import ID2LABEL, synthetic_scene, write_parquet_dataset
from lad_hf.errors import LADError
from lad_hf.models.lora import (ATTENTION_NAME_SETS, BASE_MODEL_DIR, LoraArguments, apply_lora, head_modules, linear_module_names,
                         maybe_apply_lora, resolve_target_modules)
from lad_hf.models import ModelArguments, add_label_channel, build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,mlp_ratio=4,image_size=28,head.hidden_size=16,head.pool_scales=[1,2,3]"


def tiny(seed=0, head="upernet"):
    torch.manual_seed(seed)
    ov = TINY if head == "upernet" else TINY.split(",head.")[0] + ",head.fusion_hidden_size=16"
    return build_model(ModelArguments(config_name="dinov2", config_overrides=ov, dinov2_head=head), ID2LABEL)


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


# ------------------------------------------------------------------------------------------------ targets


def test_auto_targets_are_detected_not_hard_coded():
    m = tiny()
    names = linear_module_names(m)
    auto = resolve_target_modules(m, "auto")
    assert tuple(auto) in ATTENTION_NAME_SETS and set(auto) <= set(names)  # q_proj/v_proj on transformers 5.24
    dpt = tiny(head="dpt")  # DPT's ViT still names them query/value
    assert resolve_target_modules(dpt, "auto") == [n for n in ("query", "value")]

    class OldAttention(nn.Module):  # what older transformers releases call them
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value, self.dense = (nn.Linear(4, 4) for _ in range(4))

    class Old(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.ModuleDict({"attention": OldAttention()})
            self.decode_head = nn.Conv2d(4, 2, 1)

    assert resolve_target_modules(Old(), "auto") == ["query", "value"]
    others = [n for n in names if n not in auto][:2]  # explicit names are checked against what exists
    assert resolve_target_modules(m, " , ".join(others)) == others
    with pytest.raises(LADError) as e:
        resolve_target_modules(m, "qkv_nope")
    msg = str(e.value)
    assert "\n" not in msg and "qkv_nope" in msg and all(n in msg for n in names)


def test_wrong_target_module_is_one_cli_line_listing_names(tmp_path, capsys):
    from lad_hf.cli import main

    write_parquet_dataset(tmp_path / "data", n_train=4, n_val=2, size=30)
    capsys.readouterr()
    rc = main(["train", "--dataset_name", str(tmp_path / "data"), "--config_name", "dinov2", "--config_overrides", TINY,
               "--crop_size", "30", "--output_dir", str(tmp_path / "o"), "--use_cpu", "true", "--report_to", "none",
               "--use_lora", "true", "--lora_target_modules", "query_nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "query_nope" in err[0] and all(n in err[0] for n in linear_module_names(tiny()))
    assert not (tmp_path / "o" / BASE_MODEL_DIR).exists()  # failed before writing anything


def test_trainable_parts_and_frozen_backbone():
    peft = apply_lora(tiny(), LoraArguments(use_lora=True))
    base = peft.get_base_model()
    assert head_modules(base) == ["decode_head"]  # the auxiliary head is off (None) for DINOv2 students
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n and ".backbone." in n) or ".decode_head." in n for n in trainable)
    targets = set(resolve_target_modules(tiny(), "auto"))
    assert {re.search(r"\.(\w+)\.lora_", n).group(1) for n in trainable if "lora_" in n} == targets
    frac = sum(p.numel() for p in peft.parameters() if p.requires_grad) / sum(p.numel() for p in peft.parameters())
    assert frac < 0.10


def test_maybe_apply_lora_prints_peft_trainable_summary(tmp_path, capsys):
    """PEFT's `print_trainable_parameters` line, with the counts of the wrapped model."""
    from lad_hf.trainers import SegmentationConfig

    args = SegmentationConfig(output_dir=str(tmp_path / "o"), use_cpu=True, report_to=[])
    peft = maybe_apply_lora(tiny(), LoraArguments(use_lora=True), args, base_model_id="")
    line = [s for s in capsys.readouterr().out.splitlines() if "trainable%" in s][-1]
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft.parameters())
    assert line == f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def test_dpt_lora_student_saves_and_merges(tmp_path):
    """DPT's head holds a module named head.head: modules_to_save must not wrap both (PEFT matches by suffix)."""
    from lad_hf.models.lora import load_merged
    from lad_hf.trainers import SegmentationConfig

    args = SegmentationConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    peft = maybe_apply_lora(tiny(head="dpt"), LoraArguments(use_lora=True, lora_r=4), args)
    assert any(".value.lora_A" in n for n, _ in peft.named_parameters())
    with torch.no_grad():  # a trained-looking adapter: non-zero LoRA B, changed neck/head copies
        for n, p in peft.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    peft.save_pretrained(tmp_path)
    merged = load_merged(str(tmp_path)).eval()
    assert type(merged).__name__ == "DPTForSemanticSegmentation" and not hasattr(merged, "peft_config")
    x = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        assert (merged(pixel_values=x).logits - peft.eval()(pixel_values=x).logits).abs().max() < 1e-4
    # built from a config: no Hub base to name; merge used the saved base_model/, and no local path is written
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None and not any(t.startswith("base_model:") for t in card.data.tags or [])
    text = (tmp_path / "README.md").read_text()
    assert "base_model" not in text and str(tmp_path) not in text  # an empty base_model makes the Hub refuse the upload


def _fake_hub_model(cache: Path, repo_id: str, model) -> None:
    """A Hub repo as huggingface_hub's cache holds it (refs/main -> snapshots/<commit>/): loads offline by its id."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    model.save_pretrained(folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)


def test_pushed_lora_folder_names_the_hub_base_and_loads_elsewhere(tmp_path):
    """What Trainer.push_to_hub uploads (output_dir minus _* and checkpoint-*) loads with PeftModel on the Hub base."""
    import shutil

    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForSemanticSegmentation, SegformerForImageClassification

    from conftest import tiny_segformer
    from lad_hf.export import write_training_info
    from lad_hf.models.lora import load_merged
    from lad_hf.trainers import SegmentationConfig, SegmentationTrainer

    hub, repo_id = tmp_path / "hub", "lad-hf-test/tiny-mit"
    torch.manual_seed(0)  # an encoder published for classification, like nvidia/mit-b0: the decode head is new
    _fake_hub_model(hub, repo_id, SegformerForImageClassification(tiny_segformer().config))
    model = build_model(ModelArguments(model_name_or_path=repo_id, cache_dir=str(hub)), ID2LABEL)
    assert model.name_or_path == repo_id

    run = tmp_path / "run"
    args = SegmentationConfig(output_dir=str(run), use_cpu=True, report_to=[], max_steps=2, learning_rate=1e-2,
                              per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True, seed=0)
    peft = maybe_apply_lora(model, LoraArguments(use_lora=True, lora_r=4), args, base_model_id=repo_id)
    rng = np.random.default_rng(0)
    from datasets import Dataset

    train = Dataset.from_dict(dict(zip(("pixel_values", "labels"), zip(*(synthetic_scene(rng) for _ in range(8))))))
    trainer = SegmentationTrainer(model=peft, args=args, train_dataset=train.with_format("torch"))
    trainer.train()
    trainer.save_model()
    write_training_info(str(run), {"model_name_or_path": repo_id, "config_name": None, "lora": True})
    trainer.create_model_card(model_name="tiny-mit-lora")  # what push_to_hub writes before uploading

    repo = tmp_path / "elsewhere" / "repo"  # the upload: upload_folder(ignore_patterns=["_*", "checkpoint-*"])
    shutil.copytree(run, repo, ignore=shutil.ignore_patterns("_*", "checkpoint-*"))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        want = trainer.model.eval()(pixel_values=x).logits
    shutil.rmtree(run)

    files = [p for p in repo.rglob("*") if p.suffix in (".json", ".md")]
    assert {"adapter_config.json", "README.md", "lad_training_info.json"} <= {p.name for p in files}
    for p in files:
        text = p.read_text()
        assert str(tmp_path) not in text, p
        if p.suffix == ".json":
            def walk(v):
                if isinstance(v, dict):
                    return [s for x in v.values() for s in walk(x)]
                if isinstance(v, list):
                    return [s for x in v for s in walk(x)]
                return [v] if isinstance(v, str) and os.path.isabs(v) else []
            assert not walk(json.loads(text)), p
    adapter = json.loads((repo / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == repo_id
    card = ModelCard.load(repo / "README.md")
    assert card.data.base_model == repo_id and card.data.library_name == "peft" and "lad_hf" in card.data.tags
    assert [t for t in card.data.tags if t.startswith("base_model:")] == [f"base_model:adapter:{repo_id}"]

    # elsewhere: the Hub base (with this model's labels) + the uploaded adapter
    base = AutoModelForSemanticSegmentation.from_pretrained(adapter["base_model_name_or_path"], cache_dir=str(hub),
                                                            id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
    loaded = PeftModel.from_pretrained(base, repo).eval()
    merged = load_merged(str(repo)).eval()  # lad-hf export: the uploaded base_model/ copy
    with torch.no_grad():
        assert (loaded(pixel_values=x).logits - want).abs().max() < 1e-5
        assert (merged(pixel_values=x).logits - want).abs().max() < 1e-4


# ------------------------------------------------------------------------------------------------ trainer


def _datasets():
    from datasets import Dataset

    rng = np.random.default_rng(0)
    train = Dataset.from_dict(dict(zip(("pixel_values", "labels"), zip(*(synthetic_scene(rng, 30) for _ in range(16))))))
    ev = [synthetic_scene(rng, 44) for _ in range(3)]
    ev = [(img[:, :30, :], lab[:30, :]) for img, lab in ev]  # 30 x 44: neither a multiple of 14 nor square
    evds = Dataset.from_dict(dict(zip(("pixel_values", "labels"), zip(*ev))))
    return train.with_format("torch"), evds.with_format("torch")


def _trainer(tmp_path, out, teacher, max_steps=4, **kw):
    from lad_hf import LADDistillationConfig, LADDistillationTrainer
    from lad_hf.data import SegmentationCollator
    from lad_hf.models.dinov2 import fit_collator

    student = apply_lora(tiny(seed=1), LoraArguments(use_lora=True, lora_r=4))
    args = LADDistillationConfig(output_dir=str(tmp_path / out), max_steps=max_steps, per_device_train_batch_size=4,
                                 per_device_eval_batch_size=2, use_cpu=True, report_to=[], save_strategy="steps",
                                 save_steps=2, learning_rate=5e-3, disable_tqdm=True, logging_steps=1, seed=0, **kw)
    train, ev = _datasets()
    return LADDistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train, eval_dataset=ev,
                                  data_collator=fit_collator(student, SegmentationCollator(ignore_index=255)))


def test_peft_student_distills_frozen_backbone_adapter_checkpoints_and_resume(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(7)
    teacher = add_label_channel(tiny(seed=7), init="random", scale=1.0)  # label-assisted DINOv2 teacher
    tr = _trainer(tmp_path, "a", teacher)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    # compute_loss / evaluation with a PeftModel on odd sizes (30 px crops padded to 42, 30x44 eval images)
    tr.train()
    after = tr.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k or "decode_head" in k for k in changed)
    assert any("lora_B" in k for k in changed) and any("decode_head.modules_to_save" in k for k in changed)
    frozen = [k for k in before if ".backbone." in k and "lora_" not in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # bit-identical
    metrics = tr.evaluate()
    assert 0 <= metrics["eval_mean_iou"] <= 1 and np.isfinite(metrics["eval_loss"])
    # checkpoints hold the adapter (LoRA + head), not the whole model
    ckpt = tmp_path / "a" / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "adapter_config.json").is_file()
    assert not (ckpt / "model.safetensors").exists()
    saved = load_file(ckpt / "adapter_model.safetensors")
    assert all("lora_" in k or "decode_head" in k for k in saved)
    assert not any("k_proj" in k or "fc1" in k or "embeddings" in k for k in saved)
    # resume from step 2 reproduces the uninterrupted run
    tr2 = _trainer(tmp_path, "b", teacher)
    tr2.train(resume_from_checkpoint=str(ckpt))
    assert tr2.state.global_step == 4
    final = tr2.model.state_dict()
    assert all(torch.allclose(final[k], after[k], atol=1e-6) for k in changed)


def test_resume_reloads_the_saved_base(tmp_path):
    from lad_hf.trainers import SegmentationConfig

    args = SegmentationConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    first = maybe_apply_lora(tiny(seed=1), LoraArguments(use_lora=True), args)
    base = {k: v.clone() for k, v in first.get_base_model().state_dict().items() if "lora_" not in k and "modules_to_save" not in k}
    args.resume_from_checkpoint = str(tmp_path / "checkpoint-2")
    again = maybe_apply_lora(tiny(seed=2), LoraArguments(use_lora=True), args)  # a different random backbone...
    now = again.get_base_model().state_dict()
    assert all(torch.equal(now[k], v) for k, v in base.items())  # ...replaced by the base the adapter was trained on


# ------------------------------------------------------------------------------------------------ CLI end to end


def test_cli_lora_distill_export_merge_and_stock_load(tmp_path):
    """`lad-hf distill --use_lora` (subprocess, 30 px images) from a label-assisted DINOv2 teacher, then export."""
    from peft import PeftModel
    from transformers import AutoModelForSemanticSegmentation

    from lad_hf.cli import main

    write_parquet_dataset(tmp_path / "data", n_train=8, n_val=4, size=30)
    torch.manual_seed(5)
    add_label_channel(tiny(seed=5), init="random", scale=1.0).save_pretrained(tmp_path / "teacher")
    cmd = [sys.executable, "-m", "lad_hf", "distill", "--dataset_name", str(tmp_path / "data"), "--config_name", "dinov2",
           "--config_overrides", TINY, "--crop_size", "30", "--per_device_train_batch_size", "4",
           "--per_device_eval_batch_size", "2", "--max_steps", "3", "--learning_rate", "5e-3", "--report_to", "none",
           "--disable_tqdm", "true", "--use_cpu", "true", "--output_dir", "student", "--teacher_model_name_or_path",
           "teacher", "--use_lora", "true", "--lora_r", "4", "--attn_implementation", "sdpa", "--save_strategy", "no"]
    out = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(s for s in (out.stdout + out.stderr).splitlines() if "trainable%" in s)
    frac = float(line.rsplit(":", 1)[1])
    assert 0 < frac < 10, line
    print(line)
    student = tmp_path / "student"
    info = json.loads((student / "lad_training_info.json").read_text())
    assert info["lora"] is True and info["teacher_label_assisted"] is True
    assert (student / "adapter_model.safetensors").is_file() and not (student / "model.safetensors").exists()
    proc = json.loads((student / "preprocessor_config.json").read_text())
    assert proc["size"] == {"height": 42, "width": 42}  # 30 rounded up to the patch multiple

    assert main(["export", "--model_path", str(student), "--output_dir", str(tmp_path / "exported")]) == 0
    exported = tmp_path / "exported"
    merged = AutoModelForSemanticSegmentation.from_pretrained(exported).eval()
    base = AutoModelForSemanticSegmentation.from_pretrained(student / BASE_MODEL_DIR)
    w_base = {k: v.clone() for k, v in base.state_dict().items()}
    lora = PeftModel.from_pretrained(base, student).eval()
    x = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        diff = (merged(pixel_values=x).logits - lora(pixel_values=x).logits).abs().max().item()
    assert diff < 1e-4, diff
    # only LoRA-targeted projections and the head differ from the frozen base; everything else is bit-identical
    w_exp = merged.state_dict()
    assert set(w_base) == set(w_exp)
    targets = tuple(f".{t}." for t in resolve_target_modules(tiny(), "auto"))
    differ = {k for k in w_base if not torch.equal(w_base[k], w_exp[k])}
    assert differ and all(k.startswith("decode_head.") or any(t in k for t in targets) for k in differ)
    assert any(k.startswith("backbone.") for k in differ)  # LoRA merged into the q/v weights

    code = (
        "import sys; sys.modules['lad_hf'] = None\n"
        "import torch\n"
        "from transformers import AutoModelForSemanticSegmentation, UperNetForSemanticSegmentation\n"
        f"m = AutoModelForSemanticSegmentation.from_pretrained({str(exported)!r}).eval()\n"
        "assert type(m) is UperNetForSemanticSegmentation and m.config.backbone_config.model_type == 'dinov2'\n"
        "assert m.config.id2label[1] == 'square'\n"
        "print(tuple(m(pixel_values=torch.randn(1, 3, 30, 44)).logits.shape))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"), cwd="/",
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "(1, 4, 30, 44)"
