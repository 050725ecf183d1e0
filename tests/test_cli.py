"""End to end: `lad-hf teacher | distill | evaluate | export` under `accelerate launch`, then stock transformers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_SEGFORMER_OVERRIDES, write_parquet_dataset
from lad_hf.cli import main

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "recipes/accelerate_configs/cpu.yaml"), "-m", "lad_hf"]
COMMON = ["--config_name", "segformer", "--config_overrides", TINY_SEGFORMER_OVERRIDES, "--crop_size", "32",
          "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm", "true"]


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))


def _run(cmd, cwd):
    out = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_teacher_distill_evaluate_export_pipeline(tmp_path):
    write_parquet_dataset(tmp_path / "data")
    data = ["--dataset_name", str(tmp_path / "data")]
    _run(ACCELERATE + ["teacher", *data, *COMMON, "--output_dir", "teacher", "--max_steps", "3"], tmp_path)
    assert json.loads((tmp_path / "teacher/config.json").read_text())["label_assisted"] is True
    _run(ACCELERATE + ["distill", *data, *COMMON, "--output_dir", "student", "--max_steps", "3",
                       "--teacher_model_name_or_path", "teacher"], tmp_path)
    info = json.loads((tmp_path / "student/lad_training_info.json").read_text())
    assert info["teacher_label_assisted"] is True and info["distill_weight"] == 3.0

    ev = _run([sys.executable, "-m", "lad_hf", "evaluate", "--model_name_or_path", "teacher", *data,
               "--output_dir", "ev", "--use_cpu", "true", "--report_to", "none"], tmp_path)
    metrics = json.loads(ev.stdout)  # stdout is the JSON line only (`| jq` works); the table went to stderr
    assert "eval_mean_iou" in ev.stderr and len(ev.stdout.strip().splitlines()) == 1
    assert "eval_mkl" in metrics and 0 <= metrics["eval_mean_iou"] <= 1 and "eval_iou_square" in metrics

    _run([sys.executable, "-m", "lad_hf", "export", "--model_path", "student", "--output_dir", "exported"], tmp_path)
    exported = tmp_path / "exported"
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md"):
        assert (exported / name).is_file(), name
    card = (exported / "README.md").read_text()
    assert "library_name: transformers" in card and "pipeline_tag: image-segmentation" in card
    assert "mean_iou" in card and "| distillation loss D | cwd |" in card

    # push offline: one clear line, non-zero, export intact
    push = subprocess.run([sys.executable, "-m", "lad_hf", "export", "--model_path", "student", "--output_dir",
                           "exported", "--overwrite_output_dir", "true", "--push_to_hub", "true", "--hub_model_id", "me/lad-student"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert push.returncode == 2 and "offline" in push.stderr.strip().splitlines()[-1]
    assert (exported / "model.safetensors").is_file()

    # a fresh interpreter that cannot import lad_hf loads it with stock transformers
    code = (
        "import sys; sys.modules['lad_hf'] = None\n"
        "import numpy as np; from PIL import Image\n"
        "from transformers import AutoModelForSemanticSegmentation, pipeline\n"
        f"m = AutoModelForSemanticSegmentation.from_pretrained({str(exported)!r})\n"
        "assert m.config.num_channels == 3 and m.config.id2label[1] == 'square'\n"
        f"seg = pipeline('image-segmentation', model={str(exported)!r})\n"
        "out = seg(Image.fromarray((np.random.rand(40, 48, 3) * 255).astype('uint8')))\n"
        "print(len(out), out[0]['mask'].size)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd="/",
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1].endswith("(48, 40)")


def _one_line_error(capsys, argv, expect):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err


def test_bad_invocations_exit_with_one_line(tmp_path, capsys):
    write_parquet_dataset(tmp_path / "data", n_train=4, n_val=2)
    capsys.readouterr()
    data = ["--dataset_name", str(tmp_path / "data"), "--output_dir", str(tmp_path / "o"), "--use_cpu", "true"]
    _one_line_error(capsys, ["teacher", *data, *COMMON, "--image_column", "photo"], "columns are ['image', 'label']")
    _one_line_error(capsys, ["teacher", "--dataset_name", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o")], "does not exist")
    _one_line_error(capsys, ["teacher", *data, "--consistncy_weight", "2"], "did you mean --consistency_weight")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset_name: x\nlearning_rat: 0.1\n")
    _one_line_error(capsys, ["teacher", "--config", str(recipe)], "unknown key 'learning_rat'; did you mean learning_rate")
    _one_line_error(capsys, ["distill", *data, *COMMON], "--teacher_model_name_or_path")
    _one_line_error(capsys, ["export", "--model_path", str(tmp_path / "nope"), "--output_dir", "x"], "not a folder")
    assert main(["frobnicate"]) == 2


def test_invalid_choice_exits_nonzero_in_subprocess(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lad_hf", "teacher", "--consistency_loss", "l7"], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "invalid choice: 'l7'" in out.stderr and "cwd" in out.stderr
    # one line, no usage dump and no transformers notices (e.g. the torchvision fallback)
    assert out.stderr.strip().splitlines() == [
        "lad-hf teacher: error: argument --consistency_loss/--consistency-loss: invalid choice: 'l7' "
        "(choose from 'cwd', 'kl', 'mse')"], out.stderr


def test_version_and_no_op_flags(tmp_path, capsys):
    from lad_hf import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"lad-hf {__version__}"
    _one_line_error(capsys, ["train", "--do_train", "--output_dir", str(tmp_path / "o")], "--do_train is not used")
    _one_line_error(capsys, ["evaluate", "--do-eval", "true"], "--do_eval is not used")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("do_eval: true\n")
    _one_line_error(capsys, ["teacher", "--config", str(recipe)], "do_eval is not used by lad-hf")


def test_log_lines_are_printed_once(tmp_path):
    """lad_hf's handler sits on the `lad_hf` logger: huggingface_hub's warnings (its own handler) are not repeated
    by a root handler, and lad_hf's own lines appear once."""
    code = (
        "from lad_hf.cli import _setup_logging\n"
        "from lad_hf.trainers import SegmentationConfig\n"
        "import logging\n"
        f"_setup_logging(SegmentationConfig(output_dir={str(tmp_path / 'o')!r}, report_to=[]))\n"
        "from huggingface_hub.utils import logging as hub_logging\n"
        "hub_logging.get_logger('huggingface_hub.utils._http').warning('hub-retry-line')\n"
        "logging.getLogger('lad_hf.data').warning('lad-line')\n"
        "assert not logging.getLogger().handlers\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("hub-retry-line") == 1 and out.stderr.count("lad-line") == 1, out.stderr
