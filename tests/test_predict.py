"""`lad-hf predict`: a mask per image at its own size, overlays, sliding windows, dataset splits, teachers refused."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import ID2LABEL, label_assisted_segformer, tiny_segformer
from lad_hf.cli import main
from lad_hf.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from lad_hf.predict import predict_mask

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"a.jpg": (40, 60), "nested/b.png": (33, 21), "c.png": (64, 64)}


def _images(folder: Path, seed=0):
    rng = np.random.default_rng(seed)
    for name, (h, w) in SIZES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(folder / name)
    return folder


def _model(folder: Path, seed=0):
    from conftest import sharpen_head

    model = tiny_segformer(seed=seed)
    sharpen_head(model, torch.randn(2, 3, 32, 32))  # O(1) logits: every class appears somewhere
    model.save_pretrained(folder)
    return model


@torch.no_grad()
def _direct(model, path):
    """Whole-image argmax written out: normalise, logits, bilinear upsample to the image size."""
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    x = (img - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    x = torch.from_numpy(x.transpose(2, 0, 1)).float()[None]
    logits = model.eval()(pixel_values=x).logits
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)[0].argmax(0).numpy()


def test_predict_cli_writes_a_mask_and_an_overlay_per_image(tmp_path):
    model = _model(tmp_path / "model")
    _images(tmp_path / "imgs")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "lad_hf", "predict", "--model_name_or_path", "model", "--input", "imgs",
                          "--output_dir", "out", "--overlay", "true"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "wrote 3 masks and 3 overlays to out"
    assert "predict: 100%" in res.stderr  # the progress bar, on stderr
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "a.png", "a_overlay.png", "c.png", "c_overlay.png", "nested/b.png", "nested/b_overlay.png"]
    for name, (h, w) in SIZES.items():
        stem = str(Path(name).with_suffix(""))
        mask = np.asarray(Image.open(out / f"{stem}.png"))
        assert mask.shape == (h, w) and mask.max() < len(ID2LABEL)
        assert np.array_equal(mask, _direct(model, tmp_path / "imgs" / name)), name
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.width > w and overlay.height >= h  # image plus legend
    assert len(np.unique(np.asarray(Image.open(out / "c.png")))) > 1


def test_sliding_windows_are_honoured(tmp_path):
    model = _model(tmp_path / "model", seed=1).eval()
    img = np.asarray(Image.fromarray((np.random.default_rng(1).random((50, 70, 3)) * 255).astype("uint8")))
    mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    whole = predict_mask(model, img, mean, std)
    assert np.array_equal(predict_mask(model, img, mean, std, window=80), whole)  # one window covers the image
    windowed = predict_mask(model, img, mean, std, window=32, stride=16)
    assert windowed.shape == (50, 70) and not np.array_equal(windowed, whole)
    Image.fromarray(img).save(tmp_path / "x.png")
    assert main(["predict", "--model_name_or_path", str(tmp_path / "model"), "--input", str(tmp_path / "x.png"),
                 "--output_dir", str(tmp_path / "out"), "--eval_window_size", "32", "--eval_window_stride", "16",
                 "--disable_tqdm", "true"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "x.png")), windowed)


def test_predict_a_dataset_test_split(tmp_path):
    """The test split (labels withheld: blank masks) through --dataset_name/--eval_split test."""
    from datasets import Dataset, Image as ImageFeature

    from conftest import write_parquet_dataset

    data = write_parquet_dataset(tmp_path / "data", n_train=2, n_val=2)
    rng = np.random.default_rng(2)
    images = [Image.fromarray((rng.random((24 + 8 * i, 40, 3)) * 255).astype("uint8")) for i in range(3)]
    blank = [Image.fromarray(np.full(im.size[::-1], 255, np.uint8), mode="L") for im in images]
    test = Dataset.from_dict({"image": images, "label": blank})
    test.cast_column("image", ImageFeature()).cast_column("label", ImageFeature()).to_parquet(str(data / "test.parquet"))
    _model(tmp_path / "model")
    assert main(["predict", "--model_name_or_path", str(tmp_path / "model"), "--dataset_name", str(data),
                 "--eval_split", "test", "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true"]) == 0
    masks = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in masks] == ["test-000000.png", "test-000001.png", "test-000002.png"]
    assert [np.asarray(Image.open(p)).shape for p in masks] == [(24, 40), (32, 40), (40, 40)]


def test_teacher_and_bad_inputs_are_one_line(tmp_path, capsys):
    label_assisted_segformer().save_pretrained(tmp_path / "teacher")
    _images(tmp_path / "imgs")
    capsys.readouterr()
    cases = [
        (["--model_name_or_path", str(tmp_path / "teacher"), "--input", str(tmp_path / "imgs")],
         "is a label-assisted teacher: it reads the ground-truth label"),
        (["--model_name_or_path", str(tmp_path / "teacher"), "--input", str(tmp_path / "none")], "does not exist"),
        (["--model_name_or_path", str(tmp_path / "teacher")], "exactly one of --input"),
    ]
    for argv, expect in cases:
        assert main(["predict", *argv, "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "out").exists()
    assert main(["predict", "--model_name_or_path", str(tmp_path / "teacher"), "--input", str(tmp_path / "imgs"),
                 "--output_dir", str(tmp_path / "imgs")]) == 2
    assert "overwrite the images" in capsys.readouterr().err


@pytest.mark.parametrize("k", [3, 300])
def test_mask_png_holds_every_class_id(tmp_path, k):
    from lad_hf.predict import PredictArguments, _save

    model = tiny_segformer(num_labels=k)
    mask = (np.arange(20 * 30).reshape(20, 30) % k).astype(np.int64)
    _save(tmp_path, "m", np.zeros((20, 30, 3), np.uint8), mask, model, PredictArguments(output_dir=str(tmp_path)))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.png")).astype(np.int64), mask)
