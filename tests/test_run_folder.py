"""One run per folder (issue 20): used folders refused, `--overwrite_output_dir`, the PID lock (a real second process),
honest resumption with a new learning rate, and the atomic final save (real subprocesses killed at chosen points)."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_SEGFORMER_OVERRIDES, write_parquet_dataset
from lad_hf.cli import main
from lad_hf.errors import LADError
from lad_hf.run_folder import LOCK, READY, acquire_lock, commit, release_locks, roll_forward, stage_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config_name", "segformer", "--config_overrides", TINY_SEGFORMER_OVERRIDES]
FAST = ["--crop_size", "32", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
        "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--logging_steps", "1",
        "--eval_strategy", "no"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_parquet_dataset(tmp_path_factory.mktemp("run_folder") / "data", n_train=4, n_val=2)


def _env(**kw):
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT), **kw)


def _err(capsys, argv, *expect):
    capsys.readouterr()
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lad-hf ")]
    assert len(err) == 1, err
    for e in expect:
        assert e in err[0], err[0]
    return err[0]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _holder(folder):
    """A real second process holding the lock of `folder` until killed."""
    code = ("import sys, time; from lad_hf.run_folder import acquire_lock; acquire_lock(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


# ---------------------------------------------------------------------------------------------------- the lock


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path, caplog, capsys, data):
    folder = tmp_path / "run"
    proc = _holder(folder)
    try:
        with pytest.raises(LADError, match=rf"in use by another run \(PID {proc.pid}, lock "):
            acquire_lock(str(folder))
        # a concurrent CLI run is refused before anything loads, naming the holder
        _err(capsys, ["train", "--dataset_name", str(data), *TINY, *FAST, "--max_steps", "1", "--output_dir",
                      str(folder)], f"is in use by another run (PID {proc.pid}")
        assert sorted(os.listdir(folder)) == [LOCK]
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup: the lock stays behind, stale
        proc.wait()
    assert (folder / LOCK).read_text().split()[0] == str(proc.pid)
    with caplog.at_level(logging.WARNING, logger="lad_hf"):
        acquire_lock(str(folder))
    assert f"taking over the stale lock {folder / LOCK} of PID {proc.pid}" in caplog.text
    assert (folder / LOCK).read_text().split()[0] == str(os.getpid())
    release_locks()
    assert not (folder / LOCK).exists()


# ---------------------------------------------------------------------------------------------------- used folders


def test_used_folder_is_refused_overwrite_replaces_it(tmp_path, capsys, data):
    out = tmp_path / "run"
    run = ["train", "--dataset_name", str(data), *TINY, *FAST, "--output_dir", str(out)]
    assert main(run + ["--max_steps", "2", "--save_steps", "1", "--seed", "1"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    first = _weights(out)
    # a second run into the folder: refused in one line, nothing touched
    _err(capsys, run + ["--max_steps", "1", "--seed", "2"], f"--output_dir {str(out)!r} holds another run",
         "checkpoint-1, checkpoint-2", "--overwrite_output_dir true")
    assert _same(_weights(out), first)
    _err(capsys, run + ["--max_steps", "3", "--resume_from_checkpoint", "last", "--overwrite_output_dir", "true"],
         "contradict")
    # --overwrite_output_dir removes the old run: its checkpoints cannot be resumed by mistake later
    assert main(run + ["--max_steps", "1", "--seed", "2", "--save_strategy", "no", "--overwrite_output_dir", "true"]) == 0
    assert not list(out.glob("checkpoint-*"))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
    assert json.loads((out / "lad_training_info.json").read_text())["seed"] == 2
    assert not _same(_weights(out), first)
    assert not (out / LOCK).exists()


def _lrs(folder):
    hist = json.loads((Path(folder) / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["learning_rate"] for h in hist if "learning_rate" in h}


def test_resume_with_a_new_learning_rate_applies_it_and_records_it(tmp_path, caplog, data):
    run = ["train", "--dataset_name", str(data), *TINY, *FAST, "--save_steps", "2", "--seed", "3"]
    out = tmp_path / "run"
    assert main(run + ["--output_dir", str(out), "--max_steps", "4", "--learning_rate", "1e-3"]) == 0
    with caplog.at_level(logging.WARNING):
        assert main(run + ["--output_dir", str(out), "--max_steps", "6", "--learning_rate", "5e-4",
                           "--resume_from_checkpoint", "last"]) == 0
    assert "resuming from" in caplog.text and "learning_rate 0.001 -> 0.0005" in caplog.text
    # the rates after the resume are those of a run trained with 5e-4 and 6 steps from the start
    straight = tmp_path / "straight"
    assert main(run + ["--output_dir", str(straight), "--max_steps", "6", "--learning_rate", "5e-4"]) == 0
    resumed, expected = _lrs(out), _lrs(straight)
    for step in (5, 6):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-9), (resumed, expected)
    assert resumed[5] == pytest.approx(5e-4 * 2 / 6, rel=1e-6) or resumed[5] == pytest.approx(5e-4 * 1 / 6, rel=1e-6)
    info = json.loads((out / "lad_training_info.json").read_text())
    assert info["learning_rate"] == 5e-4 and info["resumed_with_changes"]["learning_rate"] == [1e-3, 5e-4]


# ---------------------------------------------------------------------------------------------------- atomic save


def test_commit_and_roll_forward(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name, text in (("model.safetensors", "old"), ("lad_training_info.json", "old"), ("README.md", "old")):
        (out / name).write_text(text)
    stage = Path(stage_dir(str(out)))
    (stage / "model.safetensors").write_text("new")
    (stage / "lad_training_info.json").write_text("new")
    # the commit point: the stage is renamed; a kill right after leaves READY, which the next reader finishes
    (stage / ".complete").write_text("README.md")
    os.replace(stage, out / READY)
    assert (out / "model.safetensors").read_text() == "old"
    roll_forward(str(out))
    assert (out / "model.safetensors").read_text() == "new" and (out / "lad_training_info.json").read_text() == "new"
    assert not (out / "README.md").exists() and not (out / READY).exists()  # the old card never sits by new weights
    stage = Path(stage_dir(str(out)))
    (stage / "model.safetensors").write_text("newer")
    commit(str(out))
    assert (out / "model.safetensors").read_text() == "newer" and not (out / "lad_training_info.json").exists()


KILLER = """
import os, signal, sys
import lad_hf.run_folder as rf
where = os.environ["LAD_KILL_IN"]
if where == "before_commit":
    def commit(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    rf.commit = commit
else:  # after the commit, once the first file has moved into place
    real, moved = os.replace, []
    def replace(src, dst, *a, **k):
        real(src, dst, *a, **k)
        if rf.READY in str(src):
            moved.append(dst)
            if len(moved) == 1:
                os.kill(os.getpid(), signal.SIGKILL)
    rf.os.replace = replace
from lad_hf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_the_final_save_leaves_the_old_or_the_new_model(tmp_path, capsys, data):
    out = tmp_path / "run"
    run = ["train", "--dataset_name", str(data), *TINY, *FAST, "--save_steps", "2", "--output_dir", str(out)]
    assert main(run + ["--max_steps", "2"]) == 0
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    extend = [sys.executable, str(script), *run, "--max_steps", "4", "--resume_from_checkpoint", "last"]

    def state():
        info = json.loads((out / "lad_training_info.json").read_text())
        return json.loads((out / "trainer_state.json").read_text())["global_step"], info["max_steps"]

    res = subprocess.run(extend, env=_env(LAD_KILL_IN="before_commit"), capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert (out / "checkpoint-4").is_dir()
    assert state() == (2, 2) and _same(_weights(out), _weights(out / "checkpoint-2"))  # the old model, its record
    res = subprocess.run(extend, env=_env(LAD_KILL_IN="after_commit"), capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert (out / READY).is_dir()  # killed half-way through moving the committed files
    # any lad_hf reader finishes the move: the new model with its own record
    assert main(["export", "--model_path", str(out), "--output_dir", str(tmp_path / "exported")]) == 0
    assert not (out / READY).exists()
    assert state() == (4, 4) and _same(_weights(out), _weights(out / "checkpoint-4"))
    assert json.loads((tmp_path / "exported" / "lad_training_info.json").read_text())["max_steps"] == 4


EXPORT_KILLER = """
import os, signal, sys
import lad_hf.run_folder as rf
where, real = os.environ["LAD_KILL_IN"], rf.os.replace
if where == "before_replace":  # the new export is complete in its temporary folder
    def replace_folder(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    rf.replace_folder = replace_folder
else:  # the old export renamed aside, the new one not yet in place
    def replace(src, dst, *a, **k):
        real(src, dst, *a, **k)
        if str(dst).endswith("._lad_hf_old"):
            os.kill(os.getpid(), signal.SIGKILL)
    rf.os.replace = replace
from lad_hf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_re_export_leaves_the_old_export_whole(tmp_path, capsys, data):
    run = tmp_path / "run"
    assert main(["train", "--dataset_name", str(data), *TINY, *FAST, "--max_steps", "1", "--save_steps", "1",
                 "--output_dir", str(run)]) == 0
    out = tmp_path / "exported"
    assert main(["export", "--model_path", str(run), "--output_dir", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script = tmp_path / "killer.py"
    script.write_text(EXPORT_KILLER)
    again = [sys.executable, str(script), "export", "--model_path", str(run / "checkpoint-1"), "--output_dir", str(out),
             "--overwrite_output_dir", "true"]
    for where in ("before_replace", "between_renames"):
        res = subprocess.run(again, env=_env(LAD_KILL_IN=where), capture_output=True, text=True, timeout=300)
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        # the next export puts the old folder back (or finds it in place) and refuses to overwrite it silently
        _err(capsys, ["export", "--model_path", str(run), "--output_dir", str(out)], "is not empty")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, where
