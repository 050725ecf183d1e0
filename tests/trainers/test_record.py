"""Every trainer writes `lad_training_info.json` and lad_hf's model card itself (Python path, LoRA, push's card)."""

import textwrap

import pytest
import torch
from huggingface_hub import ModelCard

from conftest import label_assisted_segformer, tiny_segformer, trainer_args
from lad_hf import (LADDistillationConfig, LADDistillationTrainer, LADTeacherConfig, LADTeacherTrainer,
                    SegmentationConfig, SegmentationTrainer)
from lad_hf.export import export_model, read_training_info


def _all_text(folder):
    return "\n".join(p.read_text() for p in folder.rglob("*") if p.suffix in (".json", ".md"))


def test_python_distillation_then_export_has_lad_card(tmp_path, tensor_dataset):
    """The README quickstart path: teacher and student trained in Python, no CLI; the export says how it was
    distilled (teacher label_gain, μ, τ), mean IoU first in %, cites the paper and names no local path."""
    teacher = label_assisted_segformer(seed=3)
    t_args = trainer_args(LADTeacherConfig, tmp_path, output_dir=str(tmp_path / "teacher"), max_steps=1)
    t_trainer = LADTeacherTrainer(model=teacher, args=t_args, train_dataset=tensor_dataset, eval_dataset=tensor_dataset)
    t_trainer.train()
    t_metrics = t_trainer.evaluate()
    assert teacher.config.lad_eval["eval_label_gain"] == t_metrics["eval_label_gain"]

    s_args = trainer_args(LADDistillationConfig, tmp_path, output_dir=str(tmp_path / "student"), max_steps=2,
                          num_train_epochs=7, distill_tau=2.5, distill_weight=1.5)
    trainer = LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=teacher, args=s_args,
                                     train_dataset=tensor_dataset, eval_dataset=tensor_dataset)
    trainer.train()
    trainer.save_model()
    record = read_training_info(tmp_path / "student")
    assert record["distill_tau"] == 2.5 and record["distill_weight"] == 1.5 and record["teacher_label_assisted"]
    assert "num_train_epochs" not in record and record["trained_steps"] == 2  # max_steps overrode the epochs
    assert "eval_metrics" not in record  # not evaluated yet
    metrics = trainer.evaluate()  # after the final save: the record and card get the metrics
    record = read_training_info(tmp_path / "student")
    assert record["eval_metrics"]["eval_mean_iou"] == pytest.approx(metrics["eval_mean_iou"])
    assert "## How it was distilled" in (tmp_path / "student" / "README.md").read_text()

    out = tmp_path / "export"
    export_model(str(tmp_path / "student"), str(out))
    card = ModelCard.load(out / "README.md")
    text = card.text
    assert card.data.pipeline_tag == "image-segmentation" and "knowledge-distillation" in card.data.tags
    assert "baseline" not in text and "## How it was distilled" in text
    gain = 100 * t_metrics["eval_label_gain"]
    assert f"label_gain (its mIoU with the noised label minus with the label channel at 0) was {gain:.2f} points" in text
    assert "| μ (distill_weight) | 1.5 |" in text and "| τ (distill_tau) | 2.5 |" in text
    assert "num_train_epochs" not in text and "| max_steps | 2 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and " %" in line]
    assert rows[0] == f"| mean IoU | {100 * metrics['eval_mean_iou']:.2f} % |"
    assert [r.split(" |")[0] for r in rows if r.startswith("| IoU ")] == [  # class-id order
        "| IoU background", "| IoU square", "| IoU disc", "| IoU bar"]
    assert "arXiv:2407.13254" in text and "@article{qiu2024lad" in text
    assert str(tmp_path) not in _all_text(out)


def test_lora_folder_gets_lad_card_and_push_card_is_lad(tmp_path, tensor_dataset):
    """A LoRA run folder's README is lad_hf's card (library peft), not PEFT's template; so is `create_model_card`'s
    (what `push_to_hub` uploads)."""
    from lad_hf.models.lora import LoraArguments, maybe_apply_lora

    args = trainer_args(SegmentationConfig, tmp_path, max_steps=1)
    peft = maybe_apply_lora(tiny_segformer(), LoraArguments(use_lora=True, lora_r=2), args, base_model_id="")
    trainer = SegmentationTrainer(model=peft, args=args, train_dataset=tensor_dataset, eval_dataset=tensor_dataset)
    trainer.train()
    trainer.save_model()
    folder = tmp_path / "out"
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "peft" and "lad_hf" in card.data.tags and card.data.pipeline_tag is None
    assert "LoRA adapters" in card.text and "PeftModel.from_pretrained" in card.text
    assert read_training_info(folder)["lora"] is True
    (folder / "README.md").unlink()
    trainer.create_model_card(model_name="my-lora", tags=["extra-tag"])
    card = ModelCard.load(folder / "README.md")
    assert "\n# my-lora\n" in card.text
    assert "extra-tag" in card.data.tags and "baseline" in card.text


def test_teacher_card_has_no_pipeline_tag_and_its_usage_runs(tmp_path, tensor_dataset):
    """A label-assisted teacher: no pipeline_tag (the widget cannot feed the label); the usage code runs as written."""
    teacher = label_assisted_segformer(seed=4)
    args = trainer_args(LADTeacherConfig, tmp_path, max_steps=1)
    trainer = LADTeacherTrainer(model=teacher, args=args, train_dataset=tensor_dataset, eval_dataset=tensor_dataset)
    trainer.train()
    trainer.save_model()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.pipeline_tag is None and "label-assisted-teacher" in card.data.tags
    code = card.text.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("path/to/this/folder", str(tmp_path / "out"))
    scope = {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.randint(0, 4, (2, 32, 32))}
    exec(textwrap.dedent(code), scope)  # noqa: S102 - the card's own snippet
    assert scope["logits"].shape[:2] == (2, 4)


def test_no_record_says_unknown_not_baseline(tmp_path):
    tiny_segformer().save_pretrained(tmp_path / "run")
    export_model(str(tmp_path / "run"), str(tmp_path / "export"))
    text = (tmp_path / "export" / "README.md").read_text()
    assert "How it was trained is unknown" in text and "baseline" not in text
    assert not (tmp_path / "export" / "lad_training_info.json").exists()


def test_checkpoints_get_no_record(tmp_path, tensor_dataset):
    """Only the final folder gets the record and card: checkpoint-* folders are the Trainer's."""
    args = trainer_args(SegmentationConfig, tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    SegmentationTrainer(model=tiny_segformer(), args=args, train_dataset=tensor_dataset).train()
    out = tmp_path / "out"
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-1" / "lad_training_info.json").exists()
    assert not (out / "lad_training_info.json").exists() and read_training_info(out) == {}  # no save_model() yet
