"""Every recipe parses: each key is a real argument of its command, each value valid for its type."""

from pathlib import Path

import pytest
import yaml

from lad_hf.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)


def _types(name):
    from lad_hf.data import DataArguments
    from lad_hf.trainers import LADDistillationConfig
    from lad_hf.models.lora import LoraArguments
    from lad_hf.models import ModelArguments
    from lad_hf.trainers import SegmentationConfig
    from lad_hf.trainers import LADTeacherConfig

    if name.startswith("teacher"):
        return [ModelArguments, DataArguments, LADTeacherConfig]
    if name.startswith("student"):
        return [ModelArguments, DataArguments, LoraArguments, LADDistillationConfig]
    return [ModelArguments, DataArguments, LoraArguments, SegmentationConfig]


def test_recipes_exist_for_each_dataset():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES}
    for ds in ("cityscapes", "ade20k", "voc", "fashion-scenes"):
        for f in ("baseline", "teacher", "student", "student_cwd"):
            assert f"segformer-b0/{ds}/{f}.yaml" in names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_recipe_parses(recipe, tmp_path):
    parsed = parse_args(_types(recipe.stem), ["--config", str(recipe), "--use_cpu", "true", "--bf16", "false",
                                              "--output_dir", str(tmp_path)])
    values = yaml.safe_load(recipe.read_text())
    flat = {k: getattr(obj, k) for obj in parsed for k in vars(obj)}
    for key, val in values.items():
        if key in ("bf16", "output_dir", "report_to"):
            continue
        got = flat[key]
        assert got == val or str(got) == str(val) or (isinstance(got, float) and abs(got - float(val)) < 1e-12), key
