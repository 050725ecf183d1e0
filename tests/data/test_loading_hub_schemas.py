"""The Hub datasets the recipes name: parquet copies of their columns and mask encodings load with each recipe's
data keys (its `label_set` above all) and give the right train ids."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from fixtures import (
    H,
    W,
    ade_rule,
    cityscapes_rule,
    coco_stuff_rule,
    make_hub_chris1_cityscapes,
    make_hub_gate_coco_stuff,
    make_hub_nateraw_voc,
    make_hub_scene_parse_150,
    naive_map,
    voc_rule,
)
from lad_hf.data import LABEL_SETS, DataArguments, apply_transforms, load_segmentation_dataset, validate_dataset_sample
from lad_hf.errors import LADError

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "segformer-b0"

# recipe folder -> (Hub id the recipes must name, fixture builder, naive raw -> train id rule, mask column)
HUB = {
    "ade20k": ("merve/scene_parse_150", make_hub_scene_parse_150, ade_rule, "annotation"),
    "cityscapes": ("Chris1/cityscapes", make_hub_chris1_cityscapes, cityscapes_rule, "semantic_segmentation"),
    "voc": ("nateraw/pascal-voc-2012", make_hub_nateraw_voc, voc_rule, "mask"),
    "coco-stuff": ("GATE-engine/COCOStuff164K", make_hub_gate_coco_stuff, coco_stuff_rule, "mask"),
}
DATA_FIELDS = {f.name for f in dataclasses.fields(DataArguments)}


def _recipe_data_args(folder, dataset_dir, **override):
    recipe = yaml.safe_load((RECIPES / folder / "baseline.yaml").read_text())
    keys = {k: v for k, v in recipe.items() if k in DATA_FIELDS}
    keys.update(dataset_name=str(dataset_dir), crop_size=W, min_scale=1.0, max_scale=1.0, hflip_prob=0.0, **override)
    return recipe, DataArguments(**keys)


@pytest.mark.parametrize("folder", list(HUB))
def test_hub_schema_copy_loads_with_its_recipe(folder, tmp_path):
    hub_id, make, rule, mask_col = HUB[folder]
    # every recipe of that dataset names the verified Hub id and a label set
    for f in sorted((RECIPES / folder).glob("*.yaml")):
        recipe = yaml.safe_load(f.read_text())
        assert recipe["dataset_name"] == hub_id, f
        assert recipe["label_set"] == folder, f
        assert "do_reduce_labels" not in recipe, f  # the label set does any shift
        assert "Verified" in f.read_text(), f  # the comment says what was checked

    raws = make(tmp_path / "hub")
    recipe, data_args = _recipe_data_args(folder, tmp_path / "hub")
    dsd, id2label = load_segmentation_dataset(data_args, require_train=True, cache_dir=str(tmp_path / "cache"))
    assert set(dsd) == {"train", "validation"}
    assert mask_col in dsd["train"].column_names
    assert id2label == dict(LABEL_SETS[folder].id2label)

    ds = apply_transforms(dsd, data_args)
    for split in ("train", "validation"):
        assert len(ds[split]) == len(raws[split])
        for i, raw in enumerate(raws[split]):
            got = ds[split][i]["labels"].numpy()
            if split == "train":
                assert (got[H:] == 255).all()
                got = got[:H]
            np.testing.assert_array_equal(got, naive_map(raw, rule))
    validate_dataset_sample(dsd, len(id2label), 255, data_args=data_args)


def test_without_label_set_raw_ids_are_refused(tmp_path):
    # Cityscapes labelIds reach 33: without the label set the 19-class run would be fed wrong ids
    make_hub_chris1_cityscapes(tmp_path / "hub")
    _, data_args = _recipe_data_args("cityscapes", tmp_path / "hub", label_set=None)
    with pytest.raises(LADError, match="--label_set"):
        load_segmentation_dataset(data_args, require_train=True, cache_dir=str(tmp_path / "cache"))
    names = '["' + '", "'.join(LABEL_SETS["cityscapes"].id2label.values()) + '"]'
    _, data_args = _recipe_data_args("cityscapes", tmp_path / "hub", label_set=None, id2label=names)
    dsd, id2label = load_segmentation_dataset(data_args, require_train=True, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(LADError, match=r"outside 0\.\.18 .*--label_set"):
        validate_dataset_sample(dsd["validation"], len(id2label), 255, data_args=data_args, split="validation")


def test_dinov2_voc_recipes_name_the_label_set():
    for f in sorted(RECIPES.parent.glob("dinov2-*-lora/voc/*.yaml")):
        recipe = yaml.safe_load(f.read_text())
        assert recipe["dataset_name"] == "nateraw/pascal-voc-2012" and recipe["label_set"] == "voc", f
