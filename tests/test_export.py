"""`lad_hf.export`: the model card (huggingface_hub ModelCard), Hub ids only, the processor matching evaluation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ID2LABEL, tiny_segformer
from PIL import Image

from lad_hf.card import KNOWN_LICENSES
from lad_hf.errors import LADError
from lad_hf.export import (
    export_model,
    hub_ids,
    push_folder,
    read_training_info,
    write_training_info,
)

HUB_DATASET = "nateraw/pascal-voc-2012"


def _save_run(folder: Path, model=None, crop=32):
    """A training output_dir as `lad-hf train|distill` leaves it: weights and the square-crop processor it trained with."""
    from transformers import SegformerImageProcessor

    (model or tiny_segformer()).save_pretrained(folder)
    SegformerImageProcessor(size={"height": crop, "width": crop}, do_reduce_labels=False).save_pretrained(folder)
    return folder


def _card(folder: Path):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")


def _all_text(folder: Path) -> str:
    return "\n".join(p.read_text() for p in folder.rglob("*") if p.suffix in (".json", ".md"))


def _image(h=48, w=80, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


# ------------------------------------------------------------------------------------------------ model card


def test_distilled_card_names_hub_ids_only(tmp_path, monkeypatch):
    """Hub base model and dataset -> base_model, datasets, licence, model-index; local teacher -> named nowhere."""
    monkeypatch.chdir(tmp_path)  # the training run's working directory: relative paths are given from here
    teacher = tmp_path / "outputs" / "voc-teacher"  # "outputs/voc-teacher" looks like a Hub id but is a folder
    teacher.mkdir(parents=True)
    (teacher / "eval_results.json").write_text(json.dumps(
        {"eval_mean_iou": 0.61, "eval_mean_iou_no_label": 0.4866, "eval_label_gain": 0.1234}))
    student = _save_run(tmp_path / "outputs" / "voc-student")
    write_training_info("outputs/voc-student", {
        "model_name_or_path": "nvidia/mit-b0", "config_name": None, "dataset_name": HUB_DATASET,
        "teacher_model_name_or_path": "outputs/voc-teacher", "teacher_label_assisted": True, "distill_loss": "cwd",
        "distill_weight": 3.0, "label_sigma": 0.5, "eval_split": "validation", "run_name": str(student),
        "hub_token": "hf_secret", "eval_metrics": {"eval_mean_iou": 0.4321, "eval_loss": 0.9, "eval_runtime": 1.5},
    })
    record = read_training_info(student)
    assert record["hub_ids"] == {"model_name_or_path": "nvidia/mit-b0", "dataset_name": HUB_DATASET}
    assert record["teacher_eval"]["eval_label_gain"] == pytest.approx(0.1234) and "hub_token" not in record

    monkeypatch.chdir("/")  # export later, from elsewhere
    out = tmp_path / "export"
    export_model(str(student), str(out))
    card = _card(out)
    d = card.data
    assert d.library_name == "transformers" and d.pipeline_tag == "image-segmentation"
    assert d.base_model == "nvidia/mit-b0" and d.datasets == [HUB_DATASET]
    assert (d.license, d.license_name, d.license_link) == KNOWN_LICENSES["nvidia/mit-b0"]
    assert "knowledge-distillation" in d.tags and "lad_hf" in d.tags
    (res,) = d.eval_results
    assert (res.task_type, res.dataset_type, res.dataset_name, res.dataset_split) == (
        "image-segmentation", HUB_DATASET, HUB_DATASET, "validation")
    assert res.metric_type == "mean_iou" and res.metric_value == pytest.approx(43.21)
    assert "## How it was distilled" in card.text and "label-assisted teacher" in card.text
    assert "12.34 points" in card.text  # the teacher's label_gain
    assert '```python\nfrom transformers import pipeline' in card.text and card.text.count("```") % 2 == 0
    assert "eval_runtime" not in card.text and "hf_secret" not in _all_text(out)
    # no local path anywhere: not the run folders, not the relative teacher path, not run_name
    text = _all_text(out)
    assert str(tmp_path) not in text and "voc-teacher" not in text and "voc-student" not in text
    published = read_training_info(out)
    assert published["teacher_model_name_or_path"] == "(local)" and published["model_name_or_path"] == "nvidia/mit-b0"


def test_baseline_card_from_config_and_local_data(tmp_path, monkeypatch):
    """No teacher: never 'distilled'; config-built: no base_model, no licence; local data: no datasets, no model-index."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    run = _save_run(tmp_path / "baseline")
    write_training_info("baseline", {
        "model_name_or_path": None, "config_name": "segformer", "dataset_name": "data", "max_steps": 3, "lora": False,
        "eval_metrics": {"eval_mean_iou": 0.25, "eval_mean_accuracy": 0.5},
    })
    out = tmp_path / "export"
    export_model(str(run), str(out))
    card = _card(out)
    d = card.data
    assert d.base_model is None and d.datasets is None and d.license is None and not d.eval_results
    assert "distil" not in str(card).split("## Citation")[0].lower()
    assert "Built from a model configuration" in card.text and "a local dataset" in card.text
    assert "| mean IoU | 25.00 % |" in card.text  # still reported, in the text only
    assert str(tmp_path) not in _all_text(out)


def test_baseline_card_licence_of_a_hub_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _save_run(tmp_path / "run")
    write_training_info("run", {"model_name_or_path": "facebook/dinov2-small", "config_name": None,
                                "dataset_name": HUB_DATASET, "eval_metrics": {"eval_mean_iou": 0.3}})
    export_model(str(run), str(tmp_path / "export"), repo_id="me/dinov2-small-voc")
    card = _card(tmp_path / "export")
    assert card.data.base_model == "facebook/dinov2-small" and card.data.license == "apache-2.0"
    assert card.data.model_name == "me/dinov2-small-voc" and 'model="me/dinov2-small-voc"' in card.text
    assert "distil" not in str(card).split("## Citation")[0].lower()


def test_teacher_card_reports_label_gain(tmp_path, monkeypatch):
    from lad_hf.models import add_label_channel

    monkeypatch.chdir(tmp_path)
    run = _save_run(tmp_path / "teacher", add_label_channel(tiny_segformer(), init="random", scale=1.0))
    write_training_info("teacher", {
        "model_name_or_path": "nvidia/mit-b0", "config_name": None, "dataset_name": HUB_DATASET, "label_assisted": True,
        "label_sigma": 0.5, "eval_split": "validation",
        "eval_metrics": {"eval_mean_iou": 0.8, "eval_mean_iou_no_label": 0.55, "eval_label_gain": 0.25},
    })
    with pytest.raises(LADError, match="allow_label_assisted"):
        export_model(str(run), str(tmp_path / "no"))
    out = tmp_path / "export"
    export_model(str(run), str(out), allow_label_assisted=True)
    card = _card(out)
    assert "label_gain = 25.00 points" in card.text and "label-assisted-teacher" in card.data.tags
    assert "distilled" not in str(card).lower() and "## How it was trained" in card.text
    assert sorted(r.metric_value for r in card.data.eval_results) == [55.0, 80.0]
    assert str(tmp_path) not in _all_text(out)


def test_old_record_guesses_hub_ids_cautiously(tmp_path):
    (tmp_path / "outputs" / "teacher").mkdir(parents=True)
    run = tmp_path / "outputs" / "student"
    info = {"model_name_or_path": "nvidia/mit-b0", "dataset_name": "outputs/cache/fashion", "config_name": "segformer",
            "teacher_model_name_or_path": "outputs/teacher"}
    # outputs/teacher exists beside the run folder's parent; a bare name may be a folder; a 2-slash path is one
    assert hub_ids(info, str(run)) == {"model_name_or_path": "nvidia/mit-b0"}
    assert hub_ids({"dataset_name": "scene_parse_150"}, str(run)) == {}


# ------------------------------------------------------------------------------------------------ processor


@pytest.mark.parametrize("eval_resize", [None, 40])
def test_exported_processor_matches_evaluation_and_pipeline_runs(tmp_path, monkeypatch, eval_resize):
    """Training saved a 32x32 square-resize processor; evaluation used whole images (or --eval_resize N squares)."""
    from transformers import AutoImageProcessor, pipeline

    from lad_hf.data.transforms import EvalTransform

    monkeypatch.chdir(tmp_path)
    run = _save_run(tmp_path / "run", crop=32)
    write_training_info("run", {"config_name": "segformer", "eval_resize": eval_resize})
    out = tmp_path / "export"
    export_model(str(run), str(out))

    img = _image(48, 80)
    proc = AutoImageProcessor.from_pretrained(out)
    pv = proc(images=img, return_tensors="pt")["pixel_values"]
    evaluated = EvalTransform(resize=eval_resize)({"image": [img], "label": [np.zeros((48, 80), np.uint8)]})
    ev = evaluated["pixel_values"][0]
    assert tuple(pv.shape[-2:]) == tuple(ev.shape[-2:]) == ((48, 80) if eval_resize is None else (40, 40))
    if eval_resize is None:  # identical input: no resampling on either side
        assert torch.allclose(pv[0], ev, atol=1e-4)
    card = _card(out).text
    assert ("keeps every image at its own size" in card) == (eval_resize is None)
    assert ("resizes every image to 40×40" in card) == (eval_resize == 40)

    seg = pipeline("image-segmentation", model=str(out))
    masks = seg(img)
    assert masks and all(m["mask"].size == (80, 48) for m in masks)


def test_dinov2_student_processor_keeps_aspect_and_pipeline_runs(tmp_path, monkeypatch):
    """A patch-14 student: whole images, no resize; the card says the evaluation also padded to a multiple of 14."""
    from transformers import AutoImageProcessor, pipeline

    from lad_hf.models import ModelArguments, build_model
    from lad_hf.models.dinov2 import fit_image_processor

    monkeypatch.chdir(tmp_path)
    tiny = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,mlp_ratio=2,image_size=28,head.hidden_size=16,head.pool_scales=[1,2]"
    model = build_model(ModelArguments(config_name="dinov2", config_overrides=tiny), ID2LABEL)
    model.save_pretrained(tmp_path / "run")
    fit_image_processor(model, None, 30).save_pretrained(tmp_path / "run")  # what training saves: 42x42 squares
    write_training_info("run", {"config_name": "dinov2"})
    export_model(str(tmp_path / "run"), str(tmp_path / "export"))
    img = _image(48, 80, seed=1)
    pv = AutoImageProcessor.from_pretrained(tmp_path / "export")(images=img, return_tensors="pt")["pixel_values"]
    assert tuple(pv.shape) == (1, 3, 48, 80)
    assert "multiple of the 14-pixel patch" in _card(tmp_path / "export").text
    masks = pipeline("image-segmentation", model=str(tmp_path / "export"))(img)
    assert masks and masks[0]["mask"].size == (80, 48)


# ------------------------------------------------------------------------------------------------ push


def test_push_offline_is_one_line_and_keeps_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "f").mkdir()
    with pytest.raises(LADError) as e:
        push_folder(str(tmp_path / "f"), "me/model")
    assert "offline" in str(e.value) and "\n" not in str(e.value) and (tmp_path / "f").is_dir()


def test_export_cli_license_tags_model_name(tmp_path, monkeypatch):
    """`--license`, `--tags`, `--model_name` reach the card; the metric table lists mean IoU first, in %."""
    from lad_hf.cli import main

    monkeypatch.chdir(tmp_path)
    run = _save_run(tmp_path / "run")
    write_training_info("run", {"model_name_or_path": "nvidia/mit-b0", "config_name": None, "dataset_name": HUB_DATASET,
                                "eval_metrics": {"eval_iou_background": 0.9, "eval_mean_iou": 0.5, "eval_loss": 1.2,
                                                 "eval_mean_accuracy": 0.6, "eval_iou_square": float("nan")}})
    assert main(["export", "--model_path", str(run), "--output_dir", "out", "--license", "mit", "--tags", "cats",
                 "dogs", "--model_name", "my-seg"]) == 0
    card = _card(tmp_path / "out")
    assert card.data.license == "mit" and {"cats", "dogs", "lad_hf"} <= set(card.data.tags)
    assert card.data.model_name == "my-seg" and "\n# my-seg\n" in card.text
    rows = [r for r in card.text.splitlines() if r.startswith("| ") and not r.startswith("| metric")][:5]
    assert rows[0] == "| mean IoU | 50.00 % |" and rows[1] == "| mean class accuracy | 60.00 % |"
    assert "| IoU background | 90.00 % |" in rows and "| IoU square | n/a (class absent) |" in rows
