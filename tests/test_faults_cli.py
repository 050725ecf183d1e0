"""CLI faults (issues 11 and 14): every bad invocation is one stderr line, `lad-hf <cmd>: error: ...`, exit code 2.

In-process `lad_hf.cli.main([...])` runs on tiny real SegFormers and a real parquet dataset. Where a check must
happen before anything loads, the dataset path does not exist: a check that ran later would report the dataset.
"""

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_SEGFORMER_OVERRIDES, tiny_segformer, write_parquet_dataset
from lad_hf.cli import main

TINY = ["--config_name", "segformer", "--config_overrides", TINY_SEGFORMER_OVERRIDES]
FAST = ["--crop_size", "32", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
        "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_parquet_dataset(tmp_path_factory.mktemp("faults_cli") / "data", n_train=4, n_val=2)


PROGRESS_BAR = re.compile(r"^[^:]+:\s+\d+%\|")  # tqdm bars of work done before a failure (e.g. "Loading weights")


def _one_line_error(capsys, argv, *expect):
    """Exit code 2 and exactly one stderr line, `lad-hf <cmd>: error: ...`, holding every `expect` string."""
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip() and not PROGRESS_BAR.match(line)]
    assert len(err) == 1, err
    assert err[0].startswith(f"lad-hf {argv[0]}: error: "), err[0]
    for e in expect:
        assert e in err[0], err[0]
    return err[0]


def _save_segformer(path, num_channels=3, label_assisted=False):
    """A real tiny SegFormer folder; `num_channels` builds the stem with that many input channels."""
    from transformers import SegformerForSemanticSegmentation

    from lad_hf.models import add_label_channel

    cfg = tiny_segformer().config
    cfg.num_channels = num_channels
    model = SegformerForSemanticSegmentation(cfg)
    if label_assisted:
        add_label_channel(model)
    model.save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------------------------------------------- A. user experience


def test_abbreviated_flag_is_an_error_not_the_full_option(capsys, tmp_path):
    # argparse used to expand --max_step to --max_steps silently (the run then failed on the missing dataset)
    missing = ["--dataset_name", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o")]
    _one_line_error(capsys, ["teacher", *missing, "--max_step", "7"],
                    "unknown argument --max_step; did you mean --max_steps?")
    _one_line_error(capsys, ["train", *missing, "--learn", "0.1"], "unknown argument --learn; did you mean --learning_rate")


def test_command_help_lists_config_then_own_options_then_training_arguments(capsys):
    capsys.readouterr()
    assert main(["teacher", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lad-hf teacher [--config recipe.yaml]"), out[:200]
    pos = {k: out.index(k) for k in ("--config ", "--label_sigma", "--consistency_weight", "--crop_size",
                                     "--model_name_or_path", "--learning_rate", "--per_device_train_batch_size")}
    assert pos["--config "] < pos["--model_name_or_path"] < pos["--crop_size"] < pos["--label_sigma"]
    assert max(pos["--label_sigma"], pos["--consistency_weight"]) < pos["--per_device_train_batch_size"]
    assert pos["--label_sigma"] < pos["--learning_rate"]
    assert pos["--consistency_weight"] < out.index("\nTrainingArguments:\n") < pos["--learning_rate"]
    capsys.readouterr()
    assert main(["distill", "-h"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lad-hf distill") and out.index("--distill_loss") < out.index("--learning_rate")
    assert out.index("--lora_r") < out.index("--learning_rate")


def test_evaluate_without_output_dir_writes_nothing(tmp_path, monkeypatch, capsys, data):
    model = _save_segformer(tmp_path / "model")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    run = ["evaluate", "--model_name_or_path", model, "--dataset_name", str(data), "--use_cpu", "true",
           "--report_to", "none", "--disable_tqdm", "true", "--per_device_eval_batch_size", "2"]
    capsys.readouterr()
    assert main(run) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= metrics["eval_mean_iou"] <= 1
    assert os.listdir(cwd) == []  # no trainer_output/ in the working directory
    assert not [p for p in set(os.listdir(tempfile.gettempdir())) - tmp_before if p.startswith("lad-hf-evaluate-")]
    # with --output_dir the metrics are saved there
    assert main(run + ["--output_dir", str(tmp_path / "ev")]) == 0
    assert "eval_mean_iou" in json.loads((tmp_path / "ev" / "eval_results.json").read_text())


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_torchvision_fallback_notice_is_not_printed(tmp_path, monkeypatch, capsys, data):
    import transformers
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision is installed: transformers has no PIL fallback to announce")
    # a fresh process: the processor class not yet resolved by transformers' lazy module, its warn-once cache empty
    monkeypatch.delattr(transformers, "SegformerImageProcessor", raising=False)
    logging.Logger.warning_once.cache_clear()
    records = _Records()
    logging.getLogger("transformers").addHandler(records)
    try:
        model = _save_segformer(tmp_path / "model")  # no preprocessor_config.json: export builds a SegFormer one
        assert main(["export", "--model_path", model, "--output_dir", str(tmp_path / "exported")]) == 0
        assert main(["train", "--dataset_name", str(data), *TINY, *FAST, "--max_steps", "1", "--eval_strategy", "no",
                     "--output_dir", str(tmp_path / "o")]) == 0
    finally:
        logging.getLogger("transformers").removeHandler(records)
    assert (tmp_path / "exported" / "preprocessor_config.json").is_file()
    assert not [m for m in records.messages if "torchvision" in m], records.messages


# ---------------------------------------------------------------------------------------------------- B4. recipe value types


@pytest.mark.parametrize("line, expect", [
    ("learning_rate: true", "learning_rate: true is not a number"),  # a bool must not become lr 1.0
    ("max_steps: 2.5", "max_steps: 2.5 is not an integer"),
    ("learning_rate: null", "learning_rate: null is not a number; delete the line"),
    ("crop_size: 64.7", "crop_size: 64.7 is not an integer"),
    ("learning_rate: fast", 'learning_rate: "fast" is not a number'),  # was a 139-line usage dump
    ("eval_strategy: no", 'eval_strategy: false is not one of "no", "steps", "epoch"; YAML reads yes/no'),  # quote it
    ("image_mean: 0.5", "image_mean: 0.5 is not a list of numbers"),
    ("consistency_loss: l7", 'consistency_loss: "l7" is not one of "cwd", "kl", "mse"'),
])
def test_recipe_value_of_the_wrong_type_is_refused_before_anything_loads(tmp_path, capsys, line, expect):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"dataset_name: {tmp_path / 'no_such_data'}\n{line}\n")
    _one_line_error(capsys, ["teacher", "--config", str(recipe), *TINY, "--output_dir", str(tmp_path / "o")],
                    f"recipe {str(recipe)!r}: {expect}")


def test_recipe_values_are_read_as_the_command_line_reads_them(tmp_path):
    from lad_hf.cli import parse_args
    from lad_hf.data import DataArguments
    from lad_hf.models import ModelArguments
    from lad_hf.trainers import LADTeacherConfig

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 1e-4\nnum_train_epochs: 2\ndataset_config_name: 2017\nclass_noise: null\n"
                      "pixel_noise: 'no'\nimage_mean: [0, 0.5, 1]\nmax_steps: '7'\nlabel_names: [labels]\n")
    _, data_args, args = parse_args([ModelArguments, DataArguments, LADTeacherConfig],
                                    ["--config", str(recipe), "--output_dir", str(tmp_path / "o"), "--use_cpu", "true"])
    assert args.learning_rate == 1e-4 and args.num_train_epochs == 2.0 and isinstance(args.num_train_epochs, float)
    assert data_args.dataset_config_name == "2017"  # a str field: the number is read as the CLI reads "2017"
    assert args.class_noise is None and args.pixel_noise is False and args.max_steps == 7
    assert data_args.image_mean == [0.0, 0.5, 1.0] and args.label_names == ["labels"]


# ---------------------------------------------------------------------------------------------------- B8. input channels


def test_distill_refuses_a_teacher_that_does_not_take_rgb_before_loading(tmp_path, capsys, data):
    missing = ["--dataset_name", str(tmp_path / "no_such_data"), *TINY, *FAST, "--output_dir", str(tmp_path / "o")]
    one = _save_segformer(tmp_path / "gray_teacher", num_channels=1)
    _one_line_error(capsys, ["distill", *missing, "--teacher_model_name_or_path", one],
                    f"teacher {one!r} takes 1 input channel", "RGB")
    four = _save_segformer(tmp_path / "rgba_teacher", num_channels=4)
    _one_line_error(capsys, ["distill", *missing, "--teacher_model_name_or_path", four],
                    f"teacher {four!r} takes 4 input channels", "label_assisted: true", "lad-hf teacher")
    # a real label-assisted teacher (3 + 1 channels) passes the check and distils
    lad = _save_segformer(tmp_path / "lad_teacher", label_assisted=True)
    assert main(["distill", "--dataset_name", str(data), *TINY, *FAST, "--max_steps", "1", "--eval_strategy", "no",
                 "--output_dir", str(tmp_path / "student"), "--teacher_model_name_or_path", lad]) == 0
    assert json.loads((tmp_path / "student" / "lad_training_info.json").read_text())["teacher_label_assisted"] is True


def test_teacher_and_train_refuse_a_model_whose_stem_is_not_rgb(tmp_path, capsys, data):
    gray = ["--config_name", "segformer", "--config_overrides", TINY_SEGFORMER_OVERRIDES + ",num_channels=1"]
    run = ["--dataset_name", str(data), *gray, *FAST, "--max_steps", "1", "--output_dir", str(tmp_path / "o")]
    _one_line_error(capsys, ["teacher", *run], "takes 1 input channel (config num_channels=1)", "RGB")
    _one_line_error(capsys, ["train", *run], "takes 1 input channel (config num_channels=1)", "RGB")
    assert not (tmp_path / "o" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------- B9. I/O errors


def test_output_dir_under_a_file_is_one_line_naming_the_path(tmp_path, capsys, data):
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    out = str(blocker / "out")
    run = ["--dataset_name", str(data), *TINY, *FAST, "--max_steps", "1", "--output_dir", out]
    for cmd in ("train", "teacher"):
        _one_line_error(capsys, [cmd, *run], f"--output_dir {out!r} cannot be created: {str(blocker)!r} is a file")
    model = _save_segformer(tmp_path / "model")
    _one_line_error(capsys, ["evaluate", "--model_name_or_path", model, "--dataset_name", str(data), "--use_cpu", "true",
                             "--output_dir", out], f"{str(blocker)!r} is a file")
    # export checks its --output_dir before loading the model, as training does
    _one_line_error(capsys, ["export", "--model_path", model, "--output_dir", out],
                    f"--output_dir {out!r} cannot be created: {str(blocker)!r} is a file")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux /dev/full (every write fails with ENOSPC)")
def test_full_disk_is_one_line_naming_the_output_dir(tmp_path, capsys, data):
    # a file of the output folder that is /dev/full: the kernel answers its write with "No space left on device".
    # export and training write their final folder whole into a fresh staging folder (atomic save): evaluate writes
    # its eval_results.json in place, so the full disk is met there
    out = tmp_path / "ev"
    out.mkdir()
    (out / "eval_results.json").symlink_to("/dev/full")
    model = _save_segformer(tmp_path / "model")
    _one_line_error(capsys, ["evaluate", "--model_name_or_path", model, "--dataset_name", str(data), "--use_cpu", "true",
                             "--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(out)],
                    f"I/O error while writing {str(out)!r}: No space left on device", "the disk is full")


def test_teacher_path_errors_name_the_path(tmp_path, capsys):
    missing = ["--dataset_name", str(tmp_path / "no_such_data"), *TINY, *FAST, "--output_dir", str(tmp_path / "o")]
    empty = tmp_path / "empty_teacher"
    empty.mkdir()
    _one_line_error(capsys, ["distill", *missing, "--teacher_model_name_or_path", str(empty)],
                    f"--teacher_model_name_or_path {str(empty)!r} has no config.json", "lad-hf teacher")
    nowhere = str(tmp_path / "no" / "such" / "teacher")
    _one_line_error(capsys, ["distill", *missing, "--teacher_model_name_or_path", nowhere],
                    f"--teacher_model_name_or_path {nowhere!r} does not exist")
    _one_line_error(capsys, ["distill", *missing, "--teacher_model_name_or_path", "someone/teacher"],
                    "cannot read the config of teacher 'someone/teacher': no such folder here, and as a Hub id")


# ---------------------------------------------------------------------------------------------------- issue 20


def test_export_refuses_its_model_folder_and_a_used_folder_and_replaces_whole(tmp_path, capsys, data):
    run = tmp_path / "run"
    assert main(["train", "--dataset_name", str(data), *TINY, *FAST, "--max_steps", "1", "--output_dir", str(run)]) == 0
    record = (run / "lad_training_info.json").read_text()
    assert str(data) in record
    _one_line_error(capsys, ["export", "--model_path", str(run), "--output_dir", str(run)],
                    "is (inside) --model_path", "choose another --output_dir")
    assert (run / "lad_training_info.json").read_text() == record  # the run's own paths are kept
    out = tmp_path / "exported"
    out.mkdir()
    (out / "README.md").write_text("an old card")
    (out / "lad_training_info.json").write_text('{"teacher_model_name_or_path": "someone/old"}')
    _one_line_error(capsys, ["export", "--model_path", str(run), "--output_dir", str(out)],
                    f"--output_dir {str(out)!r} is not empty (README.md, lad_training_info.json)",
                    "--overwrite_output_dir true")
    # a model without a record, exported over the old export: nothing of the old export stays beside it
    bare = tmp_path / "bare"
    _save_segformer(bare)
    assert main(["export", "--model_path", str(bare), "--output_dir", str(out), "--overwrite_output_dir", "true"]) == 0
    assert not (out / "lad_training_info.json").exists() and "an old card" not in (out / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if "_lad_hf" in p.name]  # no staging folder left


def test_export_of_a_checkpoint_takes_its_runs_record_and_processor(tmp_path, data):
    from transformers import AutoImageProcessor

    teacher = tmp_path / "teacher"
    _save_segformer(teacher, label_assisted=True)
    run = tmp_path / "student"
    assert main(["distill", "--dataset_name", str(data), *TINY, *FAST, "--max_steps", "2", "--save_strategy", "steps",
                 "--save_steps", "2", "--eval_resize", "48", "--teacher_model_name_or_path", str(teacher),
                 "--output_dir", str(run)]) == 0
    for name, src in (("final", run), ("ckpt", run / "checkpoint-2")):
        assert main(["export", "--model_path", str(src), "--output_dir", str(tmp_path / name)]) == 0
    ckpt, final = tmp_path / "ckpt", tmp_path / "final"
    card = (ckpt / "README.md").read_text()
    assert "distilled with lad_hf" in card and "a baseline: no teacher" not in card
    proc = AutoImageProcessor.from_pretrained(str(ckpt))
    assert proc.do_resize and proc.size["height"] == proc.size["width"] == 48
    assert proc.to_dict() == AutoImageProcessor.from_pretrained(str(final)).to_dict()
    info = json.loads((ckpt / "lad_training_info.json").read_text())
    assert info["checkpoint"] == "checkpoint-2" and "eval_metrics" not in info  # the final model's metrics stay out


def _nan_model(path):
    model = tiny_segformer()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.save_pretrained(path)


def test_evaluate_refuses_nan_logits_and_writes_no_bare_nan(tmp_path, capsys, data):
    run = ["evaluate", "--dataset_name", str(data), "--use_cpu", "true", "--report_to", "none", "--disable_tqdm",
           "true", "--per_device_eval_batch_size", "2"]
    _nan_model(tmp_path / "nan")
    _one_line_error(capsys, run + ["--model_name_or_path", str(tmp_path / "nan")],
                    "the model's logits are NaN or infinite", "weights are damaged")
    # a healthy model: strict JSON (an undefined class IoU is null, see tests/test_metrics.py), on stdout and on disk
    model = _save_segformer(tmp_path / "ok")
    capsys.readouterr()
    assert main(run + ["--model_name_or_path", model, "--output_dir", str(tmp_path / "ev")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]

    def refuse(constant):
        raise AssertionError(f"bare {constant} in the JSON")

    for text in (line, (tmp_path / "ev" / "eval_results.json").read_text()):
        metrics = json.loads(text, parse_constant=refuse)
        assert 0 <= metrics["eval_mean_iou"] <= 1


@pytest.mark.parametrize("flag, value, expect", [
    ("--per_device_train_batch_size", "0", "--per_device_train_batch_size must be >= 1, got 0"),
    ("--learning_rate", "-1", "--learning_rate must be a finite number > 0, got -1.0"),
    ("--seed", "-1", "--seed must be in [0, 2**32), got -1"),
    ("--max_steps", "0", "--max_steps must be > 0 (or -1 to train --num_train_epochs), got 0"),
    ("--label_sigma", "nan", "--label_sigma must be a finite number >= 0, got nan"),
])
def test_bad_ranges_are_refused_before_the_data_loads(tmp_path, capsys, flag, value, expect):
    # the dataset does not exist: a check that ran after loading would report the dataset instead
    _one_line_error(capsys, ["teacher", "--dataset_name", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o"),
                             flag, value], expect)


def test_missing_validation_split_and_ignore_index_of_a_class_are_one_line(tmp_path, capsys, data):
    train_only = tmp_path / "train_only"
    train_only.mkdir()
    for name in ("train.parquet", "id2label.json"):
        (train_only / name).write_bytes((data / name).read_bytes())
    run = ["train", *TINY, *FAST, "--max_steps", "1", "--output_dir", str(tmp_path / "o")]
    _one_line_error(capsys, run + ["--dataset_name", str(train_only), "--eval_strategy", "steps", "--eval_steps", "1"],
                    "--eval_strategy steps needs a validation split", "--train_val_split 0.1")
    _one_line_error(capsys, run + ["--dataset_name", str(data), "--ignore_index", "0"],
                    "--ignore_index 0 is also class 0 ('background')")
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


def test_truncated_final_weights_are_one_line_in_evaluate_export_and_distill(tmp_path, capsys, data):
    model = Path(_save_segformer(tmp_path / "model"))
    teacher = Path(_save_segformer(tmp_path / "teacher", label_assisted=True))
    for folder in (model, teacher):
        blob = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    _one_line_error(capsys, ["evaluate", "--model_name_or_path", str(model), "--dataset_name", str(data),
                             "--use_cpu", "true"], f"model {str(model)!r} is incomplete (model.safetensors is truncated")
    _one_line_error(capsys, ["export", "--model_path", str(model), "--output_dir", str(tmp_path / "e")],
                    "model.safetensors is truncated")
    _one_line_error(capsys, ["distill", "--dataset_name", str(data), *TINY, *FAST, "--max_steps", "1", "--output_dir",
                             str(tmp_path / "s"), "--teacher_model_name_or_path", str(teacher)],
                    f"teacher {str(teacher)!r} is incomplete (model.safetensors is truncated")


def test_config_that_is_not_a_recipe_is_refused_without_its_content(tmp_path, capsys):
    secret = tmp_path / "shadow"
    secret.write_text("SECRETUSER: $6$SECRETHASH\ndaemon: '*'\n")
    line = _one_line_error(capsys, ["train", "--config", str(secret), "--output_dir", str(tmp_path / "o")],
                           "is not a lad_hf recipe", "none of its 2 key(s) is an argument")
    assert "SECRETUSER" not in line and "SECRETHASH" not in line and "daemon" not in line
    secret.write_text("SECRETUSER:x:0:0:SECRETNAME:/root:/bin/bash\n")
    line = _one_line_error(capsys, ["train", "--config", str(secret)], "is not a lad_hf recipe")
    assert "SECRETNAME" not in line
    twice = tmp_path / "twice.yaml"
    twice.write_text("max_steps: 5\nlearning_rate: 0.1\nmax_steps: 7\n")
    _one_line_error(capsys, ["train", "--config", str(twice)], "key 'max_steps' is given twice (line 3)")


def test_one_by_one_images_are_refused_before_training(tmp_path, capsys, data):
    import datasets as hf_datasets
    from PIL import Image

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for name in ("train.parquet", "id2label.json"):
        (tiny / name).write_bytes((data / name).read_bytes())
    rows = {"image": [Image.new("RGB", (8, 8), (9, 9, 9)), Image.new("RGB", (1, 1), (9, 9, 9))],
            "label": [Image.fromarray(np.eye(8, dtype=np.uint8)), Image.fromarray(np.ones((1, 1), np.uint8))]}
    hf_datasets.Dataset.from_dict(rows).cast_column("image", hf_datasets.Image()).cast_column(
        "label", hf_datasets.Image()).to_parquet(str(tiny / "validation.parquet"))
    out = tmp_path / "o"
    _one_line_error(capsys, ["train", "--dataset_name", str(tiny), *TINY, *FAST, "--max_steps", "2", "--output_dir",
                             str(out)], "validation row 1: its 1x1 image is too small for the model", "--eval_resize")
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()


def _validation_with_a_bad_row(src, dst, n=20, bad=18):
    """`src`'s train split and a validation split of `n` rows whose row `bad` holds a truncated PNG."""
    import datasets as hf_datasets

    dst.mkdir()
    for name in ("train.parquet", "id2label.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    val = hf_datasets.load_dataset("parquet", data_files=str(src / "validation.parquet"))["train"]
    val = val.cast_column("image", hf_datasets.Image(decode=False)).cast_column("label", hf_datasets.Image(decode=False))
    rows = [val[i % len(val)] for i in range(n)]
    rows[bad] = dict(rows[bad], image={"bytes": rows[bad]["image"]["bytes"][:40], "path": None})
    out = hf_datasets.Dataset.from_list(rows).cast_column("image", hf_datasets.Image()).cast_column("label", hf_datasets.Image())
    out.to_parquet(str(dst / "validation.parquet"))
    return dst


def test_bad_validation_row_costs_no_training(tmp_path, capsys, monkeypatch, data):
    bad = _validation_with_a_bad_row(data, tmp_path / "bad")
    out = tmp_path / "o"
    run = ["train", "--dataset_name", str(bad), *TINY, *FAST, "--max_steps", "8", "--eval_strategy", "steps",
           "--eval_steps", "4", "--save_strategy", "steps", "--save_steps", "4", "--output_dir", str(out)]
    # a small validation split is checked whole before training: nothing is trained for nothing
    _one_line_error(capsys, run, "validation row 18: cannot decode the image or mask")
    assert not list(out.glob("checkpoint-*"))
    # a larger one (here: above a lowered limit) is checked as it is evaluated: the step's checkpoint is kept first
    import lad_hf.cli

    monkeypatch.setattr(lad_hf.cli, "EVAL_PRECHECK_ROWS", 4)
    _one_line_error(capsys, run, "validation row 18", f"the training up to step 4 is saved in {out}/checkpoint-4",
                    f"--resume_from_checkpoint {out}/checkpoint-4")
    from lad_hf.trainers.checkpoints import checkpoint_problem

    assert checkpoint_problem(str(out / "checkpoint-4")) is None
