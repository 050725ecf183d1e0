"""Fault and abuse tests (issue 7): bad input, NaN/inf, interruption, determinism, 2 CPU processes, security.

Everything runs offline on tiny SegFormers: in-process CLI runs (``lad_hf.cli.main``), one killed subprocess and one
``accelerate launch`` (recipes/accelerate_configs/multi_cpu.yaml) with 2 gloo processes.
"""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ID2LABEL, TINY_SEGFORMER_OVERRIDES, synthetic_scene, tiny_segformer, write_parquet_dataset
from lad_hf import LADDistillationConfig, LADTeacherConfig, SegmentationConfig, SegmentationTrainer, add_label_channel
from lad_hf.cli import main
from lad_hf.errors import LADError

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file is tests/trainers/test_checkpoints.py)
assert (ROOT / "lad_hf" / "__init__.py").is_file() and (ROOT / "tests" / "conftest.py").is_file(), ROOT
TINY = ["--config_name", "segformer", "--config_overrides", TINY_SEGFORMER_OVERRIDES]
FAST = ["--crop_size", "32", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
        "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--logging_steps", "1"]
SECRETS = ("SECRET123hubtoken", "SECRET456modeltoken")


def _env(**kw):
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT), **kw)


def _one_line_error(capsys, argv, *expect):
    """The CLI refuses with exit code 2 and exactly one readable stderr line holding every `expect` string."""
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1, err
    for e in expect:
        assert e in err[0], err[0]
    assert "Traceback" not in err[0]
    return err[0]


# ---------------------------------------------------------------------------------------------------- data makers


def _png(arr, mode=None):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _rgb(img):
    return np.clip((img.transpose(1, 2, 0) * 0.25 + 0.5) * 255, 0, 255).astype(np.uint8)


def _custom_parquet(root, rows, id2label=ID2LABEL, split="train"):
    """A parquet split from (image_bytes, mask_bytes) rows, with id2label.json next to it."""
    import datasets

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": i, "path": None} for i, _ in rows], "label": [{"bytes": m, "path": None} for _, m in rows]},
        features=feats,
    )
    ds.to_parquet(str(root / f"{split}.parquet"))
    (root / "id2label.json").write_text(json.dumps({str(k): v for k, v in id2label.items()}))
    return root


def _good_rows(n, seed=0, size=32):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        img, lab = synthetic_scene(rng, size)
        rows.append((_png(_rgb(img)), _png(lab.astype(np.uint8), "L")))
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 train rows, 5 validation rows: 5 is not a multiple of 2 processes x eval batch 2."""
    return write_parquet_dataset(tmp_path_factory.mktemp("rel") / "data", n_train=8, n_val=5)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A label-assisted tiny SegFormer teacher folder (4 classes of ID2LABEL), as `lad-hf teacher` writes it."""
    path = tmp_path_factory.mktemp("rel") / "teacher"
    add_label_channel(tiny_segformer(seed=3), init="random", scale=1.0).save_pretrained(path)
    return path


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------- 1. bad input


def test_label_values_out_of_range_are_listed(tmp_path, capsys):
    rows = _good_rows(3)
    lab = np.zeros((32, 32), np.uint8)
    lab[:4] = 1
    lab[5, 5], lab[6, 6], lab[7, 7] = 7, 9, 255  # 255 is the ignore index: not reported
    rows[1] = (rows[1][0], _png(lab, "L"))
    root = _custom_parquet(tmp_path / "d", rows)
    base = ["teacher", "--dataset_name", str(root), "--output_dir", str(tmp_path / "o"), *TINY, *FAST]
    line = _one_line_error(capsys, base, "train row 1", "label values [7, 9]", "outside 0..3", "--do_reduce_labels")
    assert "255" not in line.split("values")[1].split("are")[0]
    # an --id2label with fewer classes than the masks hold (id2label disagreeing with the labels found)
    _one_line_error(capsys, base + ["--id2label", '["background", "square"]'], "label values [2, 3]", "outside 0..1")


def test_mask_size_rgb_mask_empty_and_one_class_datasets(tmp_path, capsys):
    import datasets

    out = ["--output_dir", str(tmp_path / "o"), *TINY, *FAST]
    rows = _good_rows(3)
    rows[2] = (rows[2][0], _png(np.zeros((16, 32), np.uint8), "L"))
    root = _custom_parquet(tmp_path / "size", rows)
    _one_line_error(capsys, ["train", "--dataset_name", str(root), *out], "train row 2",
                    "image is 32x32 (HxW) but its mask is 16x32", "--skip_bad_samples")

    rows = _good_rows(2)
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[:10] = (128, 64, 128)
    rows[0] = (rows[0][0], _png(colour))
    root = _custom_parquet(tmp_path / "rgb", rows)
    _one_line_error(capsys, ["train", "--dataset_name", str(root), *out], "train row 0", "RGB", "--label_colors")
    # with a colour table row 0 is accepted; validation goes on to row 1 (an L mask holding 2 and 3: not in 0..1)
    table = json.dumps({"0,0,0": 0, "128,64,128": 1})
    _one_line_error(capsys, ["train", "--dataset_name", str(root), "--label_colors", table, "--id2label", '["a","b"]',
                             *out], "train row 1", "label values [2, 3]")

    empty = tmp_path / "empty"
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    datasets.Dataset.from_dict({"image": [], "label": []}, features=feats).to_parquet(str(tmp_path / "e.parquet"))
    empty.mkdir()
    shutil.copy(tmp_path / "e.parquet", empty / "train.parquet")
    (empty / "id2label.json").write_text(json.dumps(["a", "b"]))
    _one_line_error(capsys, ["train", "--dataset_name", str(empty), *out], "train is empty")

    one = [(img, _png(np.ones((32, 32), np.uint8), "L")) for img, _ in _good_rows(3)]
    root = _custom_parquet(tmp_path / "one", one)
    _one_line_error(capsys, ["train", "--dataset_name", str(root), *out], "only class(es) [1]", ">= 2 classes")


def test_corrupt_and_truncated_images_name_the_row_or_are_skipped_with_a_count(tmp_path, capsys, caplog):
    rows = _good_rows(6)
    rows[2] = (b"this is not an image at all", rows[2][1])
    rows[4] = (rows[4][0][: len(rows[4][0]) // 2], rows[4][1])  # truncated PNG: the header still reads
    root = _custom_parquet(tmp_path / "d", rows)
    args = ["train", "--dataset_name", str(root), "--output_dir", str(tmp_path / "o"), *TINY, *FAST]
    _one_line_error(capsys, args, "train row 2: cannot decode the image", "--skip_bad_samples")
    rows[2] = _good_rows(1, seed=9)[0]
    root = _custom_parquet(tmp_path / "d2", rows)
    args[2] = str(root)
    # the header of a truncated file reads fine: validation decodes the whole image, so it fails before training
    _one_line_error(capsys, args, "train row 4: cannot decode the image", "truncated")

    rows[2] = (b"garbage", rows[2][1])
    root = _custom_parquet(tmp_path / "d3", rows)
    args[2] = str(root)
    caplog.clear()
    assert main(args + ["--skip_bad_samples", "true", "--max_steps", "2", "--save_strategy", "no"]) == 0
    info = json.loads((tmp_path / "o" / "lad_training_info.json").read_text())
    assert info["skipped_bad_samples"] == {"train": 2}
    summary = [r.getMessage() for r in caplog.records if "skipped 2 bad sample(s) in train (rows 2, 4)" in r.getMessage()]
    assert summary, [r.getMessage() for r in caplog.records][-5:]


def test_teacher_student_label_sets_and_label_assisted_teacher_given_rgb(tmp_path, capsys, data, teacher_dir):
    base = ["--dataset_name", str(data), "--output_dir", str(tmp_path / "o"), *TINY, *FAST]
    _one_line_error(capsys, ["distill", *base, "--teacher_model_name_or_path", str(teacher_dir),
                             "--id2label", '["background", "square", "disc", "bar", "ring"]'],
                    "teacher has 4 labels, student 5")
    _one_line_error(capsys, ["distill", *base, "--teacher_model_name_or_path", str(teacher_dir),
                             "--id2label", '["sky", "road", "car", "tree"]'], "id2label differ")
    # a label-assisted teacher used as a plain (RGB) model
    _one_line_error(capsys, ["train", "--dataset_name", str(data), "--output_dir", str(tmp_path / "o"),
                             "--model_name_or_path", str(teacher_dir), *FAST], "label-assisted", "LADTeacherTrainer")
    _one_line_error(capsys, ["export", "--model_path", str(teacher_dir), "--output_dir", str(tmp_path / "x")],
                    "label-assisted teacher")


def test_evaluate_refuses_a_model_whose_id2label_differs_from_the_data(tmp_path, capsys, data):
    model = tiny_segformer()
    model.config.id2label = {0: "sky", 1: "road", 2: "car", 3: "tree"}
    model.save_pretrained(tmp_path / "m")
    _one_line_error(capsys, ["evaluate", "--model_name_or_path", str(tmp_path / "m"), "--dataset_name", str(data),
                             "--output_dir", str(tmp_path / "ev"), *FAST], "id2label differs", "0: model 'sky'")


def test_nan_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, data, monkeypatch):
    from transformers import AutoModelForSemanticSegmentation

    orig = SegmentationTrainer.compute_loss

    def nan_from_step_5(self, model, inputs, *a, **kw):
        loss = orig(self, model, inputs, *a, **kw)
        return loss * float("nan") if self.state.global_step >= 4 else loss

    monkeypatch.setattr(SegmentationTrainer, "compute_loss", nan_from_step_5)
    out = tmp_path / "o"
    line = _one_line_error(capsys, ["train", "--dataset_name", str(data), "--output_dir", str(out), *TINY, *FAST,
                                    "--max_steps", "8", "--save_steps", "2"],
                           "training loss is not finite (nan/inf) at step 5", f"last good checkpoint is {out}/checkpoint-4")
    assert "--resume_from_checkpoint" in line
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "model.safetensors").exists()  # no final save of a broken model
    good = AutoModelForSemanticSegmentation.from_pretrained(out / "checkpoint-4")
    assert all(torch.isfinite(p).all() for p in good.parameters())


def test_nan_gradient_with_finite_loss_is_caught_before_the_update(tmp_path, tensor_dataset):
    """A finite loss whose gradient is NaN (0 * d sqrt(x)/dx at x = 0) must not reach the optimizer."""

    class SqrtAtZero(SegmentationTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            p = next(model.parameters())
            return loss + 0.0 * torch.sqrt((p - p.detach()).sum()) if self.state.global_step == 1 else loss

    model = tiny_segformer()
    args = SegmentationConfig(output_dir=str(tmp_path / "o"), max_steps=3, per_device_train_batch_size=4, use_cpu=True,
                              report_to=[], save_strategy="no", disable_tqdm=True)
    trainer = SqrtAtZero(model=model, args=args, train_dataset=tensor_dataset)
    with pytest.raises(LADError, match=r"gradient norm is not finite \(nan/inf\) at step 2; stopped before updating the weights"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------- 2. interruption


KILLER = """
import os, signal, sys
from lad_hf.trainers.base import LADTrainerBase
step = LADTrainerBase.training_step
def training_step(self, *a, **k):
    if self.state.global_step == int(os.environ["LAD_KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final save: as an OOM killer or a preempted node
    return step(self, *a, **k)
LADTrainerBase.training_step = training_step
from lad_hf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_resume_and_partial_checkpoint(tmp_path, capsys, data):
    # crops are deterministic here (32 px crops of 32 px images, no scaling or flips): with random crops the batches
    # prefetched right after resuming draw from the Python RNG before transformers restores it, so the weights would
    # match only approximately; the order of the data, dropout and the label noise are restored exactly
    run = ["teacher", "--dataset_name", str(data), *TINY, *FAST, "--max_steps", "6", "--save_steps", "2", "--seed", "3",
           "--label_channel_init", "random", "--eval_strategy", "no", "--min_scale", "1", "--max_scale", "1",
           "--hflip_prob", "0"]
    killed = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    res = subprocess.run([sys.executable, str(script), *run, "--output_dir", str(killed)], cwd=tmp_path,
                         env=_env(LAD_KILL_AT_STEP="3"), capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (killed / "checkpoint-2" / "noiser_rng_state_0.safetensors").is_file()

    # killed while saving checkpoint-4: a folder newer than the last good one, weights half written, no trainer state
    partial = killed / "checkpoint-4"
    partial.mkdir()
    shutil.copy(killed / "checkpoint-2" / "config.json", partial)
    blob = (killed / "checkpoint-2" / "model.safetensors").read_bytes()
    (partial / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    _one_line_error(capsys, run + ["--output_dir", str(killed), "--resume_from_checkpoint", str(partial)],
                    "checkpoint-4 is incomplete", "no trainer_state.json", f"resume from {killed}/checkpoint-2")
    (partial / "trainer_state.json").write_text((killed / "checkpoint-2" / "trainer_state.json").read_text())
    _one_line_error(capsys, run + ["--output_dir", str(killed), "--resume_from_checkpoint", str(partial)],
                    "model.safetensors is truncated")

    # `last` skips the partial folder and resumes from checkpoint-2 up to the same global step
    assert main(run + ["--output_dir", str(killed), "--resume_from_checkpoint", "last"]) == 0
    state = json.loads((killed / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["max_steps"] == 6
    # ... with the same weights as an uninterrupted run (RNG, data order and label-noise state all restored)
    assert main(run + ["--output_dir", str(tmp_path / "straight")]) == 0
    assert _same(_weights(killed), _weights(tmp_path / "straight"))


def test_same_seed_gives_bit_identical_weights(tmp_path, data):
    run = ["teacher", "--dataset_name", str(data), *TINY, *FAST, "--max_steps", "2", "--save_strategy", "no",
           "--eval_strategy", "no", "--label_channel_init", "random"]
    for name, seed in (("a", "11"), ("b", "11"), ("c", "12")):
        assert main(run + ["--output_dir", str(tmp_path / name), "--seed", seed]) == 0
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert _same(a, b)  # two runs in one process: --seed also fixes the initial weights
    assert not _same(a, c)


# ---------------------------------------------------------------------------------------------------- resuming


RESUME_RUN = ["train", *TINY, *FAST, "--max_steps", "6", "--save_steps", "3", "--lr_scheduler_type", "constant",
              "--eval_strategy", "no", "--min_scale", "1", "--max_scale", "1", "--hflip_prob", "0"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished 6-step run (8 rows, batch 2) with checkpoint-3 and checkpoint-6; tests work on copies of it."""
    out = tmp_path_factory.mktemp("resume") / "run"
    assert main(RESUME_RUN + ["--dataset_name", str(data), "--output_dir", str(out)]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    return out


def _copy_run(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _global_step(folder):
    return json.loads((Path(folder) / "trainer_state.json").read_text())["global_step"]


def test_resume_from_the_final_checkpoint_is_a_no_op(tmp_path, capsys, caplog, data, finished):
    out = _copy_run(finished, tmp_path)
    final = _weights(out)
    assert _same(final, _weights(out / "checkpoint-6"))
    run = RESUME_RUN + ["--dataset_name", str(data), "--output_dir", str(out), "--resume_from_checkpoint"]
    for how in ("last", str(out / "checkpoint-6")):
        caplog.clear()
        assert main(run + [how]) == 0
        said = [r.getMessage() for r in caplog.records if "nothing to train" in r.getMessage()]
        assert said and "checkpoint-6 is at step 6, the last step" in said[0], [r.getMessage() for r in caplog.records][-5:]
        assert _same(_weights(out), final)  # the finished model, bit for bit
        assert _global_step(out) == 6 and not (out / "checkpoint-7").exists()
    # past the last step (a shorter --max_steps): a no-op too, never a step 7
    caplog.clear()
    assert main(RESUME_RUN + ["--max_steps", "4", "--dataset_name", str(data), "--output_dir", str(out),
                              "--resume_from_checkpoint", "last"]) == 0  # the last --max_steps counts
    assert any("past the last step 4" in r.getMessage() for r in caplog.records)
    assert _same(_weights(out), final) and _global_step(out) == 6
    # more steps asked for: training goes on from step 6 (the no-op is for finished runs only)
    assert main(RESUME_RUN + ["--max_steps", "8", "--dataset_name", str(data), "--output_dir", str(out),
                              "--resume_from_checkpoint", "last"]) == 0
    assert _global_step(out) == 8 and not _same(_weights(out), final)


def test_resume_of_a_finished_epoch_based_run_is_a_no_op(tmp_path, caplog, tensor_dataset):
    def trainer(model):
        args = SegmentationConfig(output_dir=str(tmp_path / "o"), num_train_epochs=1, per_device_train_batch_size=4,
                                  use_cpu=True, report_to=[], save_steps=2, disable_tqdm=True)
        return SegmentationTrainer(model=model, args=args, train_dataset=tensor_dataset)  # 16 rows: 4 steps

    trained = trainer(tiny_segformer(seed=2))
    assert trained.train().global_step == 4
    fresh = tiny_segformer(seed=7)
    with caplog.at_level("WARNING"):
        result = trainer(fresh).train(resume_from_checkpoint="last")
    assert result.global_step == 4 and "nothing to train" in caplog.text
    # the model holds the checkpoint's weights (what a following save_model writes), not its own initial ones
    assert _same(fresh.state_dict(), trained.model.state_dict())


def _truncate(path):
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_last_skips_a_checkpoint_with_a_truncated_training_state_file(tmp_path, capsys, caplog, data, finished, name):
    from lad_hf.trainers.checkpoints import checkpoint_problem, last_complete_checkpoint

    out = _copy_run(finished, tmp_path)
    assert checkpoint_problem(str(out / "checkpoint-6")) is None
    _truncate(out / "checkpoint-6" / name)
    assert checkpoint_problem(str(out / "checkpoint-6")) == f"{name} is truncated (not a complete torch.save archive)"
    caplog.clear()
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-3")
    assert any(f"skipping incomplete checkpoint {out}/checkpoint-6 ({name} is truncated" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    run = RESUME_RUN + ["--dataset_name", str(data), "--output_dir", str(out), "--resume_from_checkpoint"]
    # named explicitly: one line naming the file and the checkpoint to use instead
    _one_line_error(capsys, run + [str(out / "checkpoint-6")], "checkpoint-6 is incomplete", f"{name} is truncated",
                    f"resume from {out}/checkpoint-3")
    if name == "optimizer.pt":  # `last`: resumes from checkpoint-3 (no traceback) up to step 6
        assert main(run + ["last"]) == 0
        assert _global_step(out) == 6


class _Payload:
    """An object whose unpickling would run a command: what a tampered checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_last_skips_a_checkpoint_with_an_unsafe_pickle(tmp_path, capsys, caplog, data, finished, name):
    from lad_hf.trainers.checkpoints import last_complete_checkpoint

    out = _copy_run(finished, tmp_path)
    state = torch.load(out / "checkpoint-6" / name, weights_only=False)  # our own file: a trusted test fixture
    torch.save({"state": state, "payload": _Payload()}, out / "checkpoint-6" / name)
    caplog.clear()
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-3")
    assert any("checkpoint-6 (" in r.getMessage() and "holds objects a safe load refuses (posix.system)"
               in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    run = RESUME_RUN + ["--dataset_name", str(data), "--output_dir", str(out), "--resume_from_checkpoint"]
    line = _one_line_error(capsys, run + [str(out / "checkpoint-6")], "checkpoint-6 is incomplete",
                           f"{name} holds objects a safe load refuses", f"resume from {out}/checkpoint-3")
    assert "weights_only=False unless you trust" in line


def test_checkpoint_problem_checks_every_file_a_resume_reads(tmp_path, finished):
    from lad_hf.trainers.checkpoints import checkpoint_problem

    src = finished / "checkpoint-6"

    def damaged(how, name):
        folder = tmp_path / f"{how}-{name}"
        shutil.copytree(src, folder)
        path = folder / name
        if how == "missing":
            path.unlink()
        elif how == "flipped":  # same size, one byte changed: the zip CRC catches it
            blob = bytearray(path.read_bytes())
            blob[len(blob) // 2] ^= 0xFF
            path.write_bytes(bytes(blob))
        elif how == "truncated":
            _truncate(path)
        elif how == "garbage":
            path.write_bytes(b"not a torch file")
        return checkpoint_problem(str(folder))

    assert damaged("missing", "scheduler.pt").startswith("no scheduler.pt: saved with --save_only_model")
    assert damaged("missing", "optimizer.pt").startswith("no optimizer.pt")
    assert damaged("missing", "rng_state.pth").startswith("no rng_state.pth")
    assert "fails its CRC check" in damaged("flipped", "optimizer.pt")
    assert damaged("garbage", "rng_state.pth") == "rng_state.pth is truncated (not a complete torch.save archive)"
    assert damaged("truncated", "model.safetensors").startswith("model.safetensors is truncated")
    # the noiser's RNG state (LAD runs) is checked as well
    shutil.copy(src / "model.safetensors", tmp_path / "noise.safetensors")
    folder = tmp_path / "noiser"
    shutil.copytree(src, folder)
    (folder / "noiser_rng_state_0.safetensors").write_bytes((tmp_path / "noise.safetensors").read_bytes()[:100])
    assert checkpoint_problem(str(folder)).startswith("noiser_rng_state_0.safetensors is truncated")


# ---------------------------------------------------------------------------------------------------- 3. distributed


DIST_SCRIPT = r"""
import json, os, sys
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, os.environ["LAD_TESTS"])
from conftest import synthetic_scene, tiny_segformer
from datasets import Dataset
from lad_hf import LADDistillationConfig, LADDistillationTrainer, LabelNoiser
from lad_hf.cli import cmd_evaluate
from lad_hf.trainers import load_teacher

data, model_dir, teacher_dir, out = sys.argv[1:5]
timeout = os.environ["LAD_DDP_TIMEOUT"]  # seconds a collective may wait for the other rank
metrics = cmd_evaluate(["--model_name_or_path", model_dir, "--dataset_name", data, "--output_dir", out + "/ev",
                        "--per_device_eval_batch_size", "2", "--use_cpu", "true", "--report_to", "none",
                        "--disable_tqdm", "true", "--ddp_timeout", timeout])
rng = np.random.default_rng(0)
imgs, labs = zip(*(synthetic_scene(rng) for _ in range(8)))
ds = Dataset.from_dict({"pixel_values": list(imgs), "labels": list(labs)}).with_format("torch")
args = LADDistillationConfig(output_dir=out + "/st", max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                             report_to=[], save_strategy="no", disable_tqdm=True, seed=5, ddp_timeout=int(timeout))
teacher = load_teacher(teacher_dir)
before = {k: v.clone() for k, v in teacher.state_dict().items()}
trainer = LADDistillationTrainer(model=tiny_segformer(seed=1), teacher_model=teacher, args=args, train_dataset=ds)
rank = args.process_index
expected = torch.Generator().manual_seed(5 * 1_000_003 + rank)
fresh = LabelNoiser(4, generator=expected, validate=False)
labels = torch.as_tensor(np.stack(labs[:2]))
same_as_formula = torch.equal(trainer.noiser(labels), fresh(labels))
trainer.train()
draw = trainer.noiser(labels)
draws = [torch.zeros_like(draw) for _ in range(args.world_size)]
dist.all_gather(draws, draw)
result = dict(
    rank=rank, world_size=args.world_size, metrics=metrics, num_processes=trainer.accelerator.num_processes,
    distributed_type=str(trainer.accelerator.distributed_type).split(".")[-1],
    teacher_type=type(trainer.teacher).__name__, wrapped_type=type(trainer.model_wrapped).__name__,
    teacher_is_prepared=any(m is trainer.teacher for m in trainer.accelerator._models),
    teacher_unchanged=all(torch.equal(before[k], v) for k, v in trainer.teacher.state_dict().items()),
    noise_seed_formula=same_as_formula, noise_differs_across_ranks=not torch.equal(draws[0], draws[1]),
)
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(result, f, default=float)
# the CLI in the same 2-process group: one lock, one atomic final save (it leaves the group when done)
from lad_hf.cli import main
code = main(["train", "--dataset_name", data, "--config_name", "segformer", "--config_overrides", os.environ["LAD_TINY"],
             "--crop_size", "32", "--per_device_train_batch_size", "2", "--max_steps", "2", "--save_steps", "2",
             "--report_to", "none", "--disable_tqdm", "true", "--eval_strategy", "no", "--ddp_timeout", timeout,
             "--output_dir", out + "/cli"])
assert code == 0 and not dist.is_initialized(), code
"""


# Under load (2 shared cores) the launch may be slow: only timeouts bound it, never a timing assumption. The
# rendezvous picks its own free port (--standalone: no port chosen here and raced for), the collectives give up after
# DIST_COLLECTIVE_TIMEOUT_S (--ddp_timeout) so a crashed rank cannot leave the other blocked for transformers' 30
# minutes, and the whole launch (torchrun and its workers, one process group) is killed at DIST_WALL_TIMEOUT_S.
DIST_COLLECTIVE_TIMEOUT_S = 300
DIST_WALL_TIMEOUT_S = 900


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_process_group(cmd, timeout, **kw):
    """subprocess.run in a new session; on timeout kill the whole group (torchrun's workers too) and fail clearly."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[2:5]} still running after {timeout} s; killed. stderr tail:\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _evaluate(capsys, model_dir, data, out):
    capsys.readouterr()
    assert main(["evaluate", "--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--output_dir",
                 str(out), "--per_device_eval_batch_size", "2", "--use_cpu", "true", "--report_to", "none",
                 "--disable_tqdm", "true"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_two_gloo_processes_exact_miou_independent_noise_unwrapped_teacher(tmp_path, capsys, data, teacher_dir):
    import datasets

    model_dir = tmp_path / "model"
    tiny_segformer(seed=4).save_pretrained(model_dir)
    (tmp_path / "dist.py").write_text(DIST_SCRIPT)
    # the README's launch: accelerate with the project's multi_cpu.yaml (a free port, so parallel test runs never meet)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate_configs" / "multi_cpu.yaml"), "--main_process_port", str(_free_port()),
           str(tmp_path / "dist.py"), str(data), str(model_dir), str(teacher_dir), str(tmp_path)]
    env = _env(LAD_TESTS=str(ROOT / "tests"), OMP_NUM_THREADS="1", LAD_DDP_TIMEOUT=str(DIST_COLLECTIVE_TIMEOUT_S),
               LAD_TINY=TINY_SEGFORMER_OVERRIDES)
    env.pop("ACCELERATE_USE_CPU", None)
    res = _run_process_group(cmd, DIST_WALL_TIMEOUT_S, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    missing = [r for r in (0, 1) if not (tmp_path / f"rank{r}.json").is_file()]
    assert not missing, f"ranks {missing} wrote no result; stderr tail:\n{res.stderr[-4000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    cli = tmp_path / "cli"  # 8 rows, 2 processes x batch 2: 2 steps are one epoch (half an epoch on one process)
    assert json.loads((cli / "trainer_state.json").read_text())["epoch"] == pytest.approx(1.0)
    assert (cli / "model.safetensors").is_file() and (cli / "checkpoint-2").is_dir()
    assert not [p.name for p in cli.iterdir() if p.name.startswith("_lad_hf")]  # no lock, no staging folder left

    single = _evaluate(capsys, model_dir, data, tmp_path / "ev1")
    keys = [k for k in single if k.startswith(("eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "eval_iou_"))]
    assert len(keys) == 3 + len(ID2LABEL)
    for r in ranks:
        assert r["world_size"] == 2 and r["num_processes"] == 2 and r["distributed_type"] == "MULTI_CPU"
        for k in keys:  # exactly equal: confusion matrices are summed, the 5th sample is not counted twice
            assert r["metrics"][k] == single[k] or (np.isnan(r["metrics"][k]) and np.isnan(single[k])), k
        assert r["teacher_type"] == "SegformerForSemanticSegmentation" and not r["teacher_is_prepared"]
        assert r["wrapped_type"] == "DistributedDataParallel" and r["teacher_unchanged"]
        assert r["noise_seed_formula"] and r["noise_differs_across_ranks"]

    # the check is sensitive: counting the padded duplicate (sample 0 twice) would change the numbers
    raw = datasets.load_dataset("parquet", data_files={"validation": str(data / "validation.parquet")})["validation"]
    dup = tmp_path / "dup"
    dup.mkdir()
    datasets.concatenate_datasets([raw, raw.select([0])]).to_parquet(str(dup / "validation.parquet"))
    shutil.copy(data / "id2label.json", dup)
    doubled = _evaluate(capsys, model_dir, dup, tmp_path / "ev2")
    assert doubled["eval_mean_iou"] != single["eval_mean_iou"]


# ---------------------------------------------------------------------------------------------------- 4. security


def test_no_unsafe_deserialisation_and_no_remote_code_by_default():
    from lad_hf.data import load_segmentation_dataset
    from lad_hf.cli import parse_args
    from lad_hf.trainers import load_teacher
    from lad_hf.models.builder import ModelArguments
    import inspect

    for path in sorted((ROOT / "lad_hf").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start(): text.find(")", m.start()) + 1]
            assert "weights_only=True" in call, f"{path.name}: {call}"
        assert not re.search(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load\(", text), path.name
        assert not re.search(r"trust_remote_code\s*=\s*True|trust_remote_code: bool = (field\(default=)?True", text), path.name
    assert ModelArguments().trust_remote_code is False
    cfg = LADDistillationConfig(output_dir="/tmp/x", use_cpu=True, report_to=[])
    assert cfg.trust_remote_code is False
    assert inspect.signature(load_teacher).parameters["trust_remote_code"].default is False
    assert inspect.signature(load_segmentation_dataset).parameters["trust_remote_code"].default is False
    from lad_hf.data import DataArguments as DA
    from lad_hf.models.lora import LoraArguments

    _, _, _, args = parse_args([ModelArguments, DA, LoraArguments, LADDistillationConfig], ["--output_dir", "/tmp/x"])
    assert args.trust_remote_code is False


def test_tokens_never_written_and_weights_only_safetensors(tmp_path, capsys, caplog, data):
    out = tmp_path / "o"
    assert main(["teacher", "--dataset_name", str(data), "--output_dir", str(out), *TINY, *FAST, "--max_steps", "2",
                 "--save_steps", "2", "--hub_token", SECRETS[0], "--token", SECRETS[1], "--log_level", "info"]) == 0
    assert main(["export", "--model_path", str(out), "--output_dir", str(tmp_path / "exported"),
                 "--allow_label_assisted", "true", "--hub_token", SECRETS[0]]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(p.name == "lad_training_info.json" for p in files)
    for secret in SECRETS:
        assert secret not in text
        for p in files:
            assert secret.encode() not in p.read_bytes(), p.relative_to(tmp_path)
    # weights: safetensors only, in the run folder, its checkpoints and the export
    for folder in (out, out / "checkpoint-2", tmp_path / "exported"):
        assert (folder / "model.safetensors").is_file()
        assert not list(folder.glob("pytorch_model*")) and not list(folder.glob("*.ckpt")), folder
    assert not list((tmp_path / "exported").glob("*.bin"))
    # the scrubbed arguments still load (our own file) and still say everything else
    saved = _load_args_weights_only(out / "training_args.bin")
    assert isinstance(saved, LADTeacherConfig) and saved.hub_token is None and saved.max_steps == 2


def _load_args_weights_only(path):
    """torch.load(weights_only=True), allow-listing only the transformers/accelerate/lad_hf classes it names."""
    import importlib
    import re

    allowed = []
    for _ in range(40):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, weights_only=True)
        except Exception as e:  # noqa: BLE001 - the unpickler names the next global it needs
            m = re.search(r"Unsupported global: GLOBAL ([\w\.]+)", str(e))
            if not m or not m.group(1).startswith(("transformers.", "accelerate.", "lad_hf.")):
                raise
            mod, name = m.group(1).rsplit(".", 1)
            allowed.append(getattr(importlib.import_module(mod), name))
    raise AssertionError("too many globals in training_args.bin")
