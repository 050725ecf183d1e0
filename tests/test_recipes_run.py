"""Every dataset's recipes run end to end for a few steps, on the official folder layout and on a fixture with the
Hub dataset's schema, with the recipe's own label set and no extra data flags.

Only the model (a tiny SegFormer from a config: the Hub is offline), the size of the run and the output folder are
overridden; everything about the data comes from the recipe.
"""

import json
from pathlib import Path

import pytest

from conftest import TINY_SEGFORMER_OVERRIDES
from data.fixtures import (make_ade_layout, make_cityscapes_layout, make_coco_stuff_layout, make_hub_chris1_cityscapes,
                      make_hub_gate_coco_stuff, make_hub_nateraw_voc, make_hub_scene_parse_150, make_voc_layout)
from lad_hf.cli import main
from lad_hf.data.label_sets import LABEL_SETS

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "segformer-b0"
DATASETS = {  # recipe folder -> (official layout, Hub-schema fixture, number of classes of its label set)
    "ade20k": (make_ade_layout, make_hub_scene_parse_150, 150),
    "cityscapes": (make_cityscapes_layout, make_hub_chris1_cityscapes, 19),
    "voc": (make_voc_layout, make_hub_nateraw_voc, 21),
    "coco-stuff": (make_coco_stuff_layout, make_hub_gate_coco_stuff, 171),
}
SMALL = ["--config_name", "segformer", "--config_overrides", TINY_SEGFORMER_OVERRIDES, "--max_steps", "2",
         "--crop_size", "32", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "1",
         "--bf16", "false", "--use_cpu", "true", "--dataloader_num_workers", "0",
         "--dataloader_persistent_workers", "false", "--report_to", "none", "--save_strategy", "no",
         "--eval_strategy", "no", "--disable_tqdm", "true"]


def _run(recipe, data, out, *extra):
    kind = recipe.stem.split("_")[0]
    assert main([{"baseline": "train", "teacher": "teacher", "student": "distill"}[kind],
                 "--config", str(recipe), "--dataset_name", str(data), "--output_dir", str(out), *SMALL, *extra]) == 0
    cfg = json.loads((Path(out) / "config.json").read_text())
    return cfg


@pytest.mark.parametrize("name", list(DATASETS))
def test_recipes_run_on_the_official_layout(tmp_path, name):
    make_layout, _, k = DATASETS[name]
    make_layout(tmp_path / "data")
    folder = RECIPES / name
    base = _run(folder / "baseline.yaml", tmp_path / "data", tmp_path / "baseline")
    assert len(base["id2label"]) == k
    names = LABEL_SETS[name].id2label
    assert {int(i): v for i, v in base["id2label"].items()} == {int(i): v for i, v in names.items()}
    teacher = _run(folder / "teacher.yaml", tmp_path / "data", tmp_path / "teacher")
    assert teacher["label_assisted"] and len(teacher["id2label"]) == k
    student = _run(folder / "student.yaml", tmp_path / "data", tmp_path / "student",
                   "--teacher_model_name_or_path", str(tmp_path / "teacher"))
    assert not student.get("label_assisted") and student["id2label"] == base["id2label"]
    cwd = _run(folder / "student_cwd.yaml", tmp_path / "data", tmp_path / "student_cwd",
               "--teacher_model_name_or_path", str(tmp_path / "baseline"))
    assert len(cwd["id2label"]) == k
    info = json.loads((tmp_path / "student" / "lad_training_info.json").read_text())
    assert info["teacher_label_assisted"] is True


@pytest.mark.parametrize("name", list(DATASETS))
def test_baseline_recipe_runs_on_the_hub_schema(tmp_path, name):
    _, make_hub, k = DATASETS[name]
    make_hub(tmp_path / "hub")
    cfg = _run(RECIPES / name / "baseline.yaml", tmp_path / "hub", tmp_path / "baseline")
    assert len(cfg["id2label"]) == k
