"""Hub pushes of the trainers (issue 20): nothing local is uploaded, and Hub failures are one line naming the Hub.

The Hub cannot run here: a closed local port stands in for an unreachable Hub (a real connection refusal), and an
in-process recorder replaces `upload_folder` to see exactly which bytes a push would send.
"""

import io
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from conftest import TINY_SEGFORMER_OVERRIDES, tiny_segformer, write_parquet_dataset
from lad_hf import SegmentationConfig, SegmentationTrainer
from lad_hf.cli import main
from lad_hf.errors import LADError

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--config_name", "segformer", "--config_overrides", TINY_SEGFORMER_OVERRIDES]
FAST = ["--crop_size", "32", "--per_device_train_batch_size", "2", "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", "true", "--eval_strategy", "no"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run whose record names the dataset and the base model by absolute local paths."""
    root = tmp_path_factory.mktemp("hub")
    data = write_parquet_dataset(root / "data", n_train=4, n_val=2)
    out = root / "run"
    assert main(["train", "--dataset_name", str(data), *TINY, *FAST, "--max_steps", "2", "--save_steps", "2",
                 "--output_dir", str(out)]) == 0
    (out / "README.md").write_text(f"# card\n\nTrained on {data}.\n")  # a card naming the local path
    return out, data


class _Recorder:
    """`upload_folder` of a Hub: keeps the bytes of the record and the card as they are at upload time."""

    def __init__(self, fail=None):
        self.uploads, self.fail = [], fail

    def upload_folder(self, folder_path, run_as_future=False, **kw):
        if self.fail is not None:
            raise self.fail
        names = [n for n in os.listdir(folder_path) if not n.startswith("_") and not n.startswith("checkpoint-")]
        self.uploads.append({n: Path(folder_path, n).read_bytes() for n in names if Path(folder_path, n).is_file()})
        if run_as_future:
            done = Future()
            done.set_result("ok")
            return done
        return "ok"


def _trainer(out, monkeypatch, recorder):
    import transformers.trainer

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: recorder)
    args = SegmentationConfig(output_dir=str(out), use_cpu=True, report_to=[], max_steps=2, save_steps=2,
                              hub_model_id="me/lad-run", disable_tqdm=True)
    trainer = SegmentationTrainer(model=tiny_segformer(), args=args)
    trainer.hub_model_id, trainer.push_in_progress = "me/lad-run", None  # as init_hf_repo leaves them
    monkeypatch.setattr(trainer, "create_model_card", lambda **kw: None)  # the card in the folder is pushed as is
    return trainer


def test_pushes_upload_the_public_record_and_card_and_keep_the_local_ones(run, monkeypatch):
    out, data = run
    local = {n: (out / n).read_bytes() for n in ("lad_training_info.json", "README.md")}
    assert str(data).encode() in local["lad_training_info.json"]
    recorder = _Recorder()
    trainer = _trainer(out, monkeypatch, recorder)
    trainer.push_to_hub()  # the end-of-training push
    trainer.args.hub_strategy = "every_save"
    trainer._push_from_checkpoint(str(out / "checkpoint-2"))  # a push at a save step
    assert len(recorder.uploads) == 2
    for files in recorder.uploads:
        for name, blob in files.items():
            assert str(data).encode() not in blob and str(out).encode() not in blob, name
        args = torch.load(io.BytesIO(files["training_args.bin"]), weights_only=False)  # bytes this test wrote
        assert args.output_dir == "(local)" and args.max_steps == 2
        record = json.loads(files["lad_training_info.json"])
        assert record["dataset_name"] == "(local)" and record["max_steps"] == 2
        assert "Trained on (local)." in files["README.md"].decode()
    assert {n: (out / n).read_bytes() for n in local} == local  # the local record and card keep their paths


def test_hub_failure_during_a_push_names_the_hub(run, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    http = pytest.importorskip("httpx2")  # huggingface_hub's HTTP client
    out, _ = run
    response = http.Response(500, request=http.Request("POST", "https://huggingface.co/api/models/me/lad-run/commit"))
    failure = HfHubHTTPError("500 Server Error: Internal Server Error", response=response)
    trainer = _trainer(out, monkeypatch, _Recorder(fail=failure))
    with pytest.raises(LADError, match=r"^the Hub failed for me/lad-run \(HfHubHTTPError: 500 Server Error") as e:
        trainer.push_to_hub()
    assert "I/O error" not in str(e.value) and f"the run in {str(out)!r} is intact" in str(e.value)


def test_unreachable_hub_at_repo_creation_is_one_line_before_training(run, tmp_path):
    _, data = run
    with socket.socket() as sock:  # a port nothing listens on: connections are refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN="hf_notarealtoken",
               PYTHONPATH=str(ROOT))
    out = tmp_path / "o"
    res = subprocess.run([sys.executable, "-m", "lad_hf", "train", "--dataset_name", str(data), *TINY, *FAST,
                          "--max_steps", "2", "--output_dir", str(out), "--push_to_hub", "true", "--hub_model_id",
                          "me/lad-run"], env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("lad-hf ") or "Traceback" in ln]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("lad-hf train: error: the Hub failed for me/lad-run (") and "Connect" in lines[0]
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
