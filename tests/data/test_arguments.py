"""lad_hf.data.arguments: DataArguments parsing and checks."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses

import pytest
from transformers import HfArgumentParser

from lad_hf.data import (
    DataArguments,
)
from lad_hf.errors import LADError


def test_data_arguments_parse_and_help():
    for f in dataclasses.fields(DataArguments):
        assert f.metadata.get("help"), f"{f.name} lacks help"
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--dataset_name", "x", "--crop_size", "64", "--do_reduce_labels", "--image_mean", "0.5", "0.5", "0.5",
         "--train_val_split", "0.2", "--eval_resize", "32"]
    )
    assert args.crop_size == 64 and args.do_reduce_labels and args.image_mean == [0.5, 0.5, 0.5]
    assert args.train_val_split == 0.2 and args.eval_resize == 32 and args.ignore_index == 255
    assert args.train_split == "train" and args.eval_split == "validation" and args.dataset_revision == "main"
    with pytest.raises(LADError, match="min_scale"):
        DataArguments(min_scale=2.0, max_scale=1.0)
    with pytest.raises(LADError, match="train_val_split"):
        DataArguments(train_val_split=1.5)
