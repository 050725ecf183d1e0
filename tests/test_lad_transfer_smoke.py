"""benchmarks/lad_transfer.py --tiny: the transfer study runs end to end with its controls, and its report's numbers
are the JSON rows' (transfer ratio, label gains)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_lad_transfer_tiny_runs_the_controls_and_reports_them(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    log = tmp_path / "t.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "lad_transfer.py"), "--json", str(log),
           "--cache_dir", str(tmp_path / "cache")]
    done = subprocess.run(cmd + ["--tiny", "--plan", "main", "--only", "0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (rec,) = [json.loads(line) for line in log.read_text().splitlines()]
    rows = rec["rows"]
    assert set(rows) == {"baseline", "lad_teacher", "lad_student", "self_student", "big_teacher", "big_student"}
    assert rows["big_teacher"]["params"] > 2 * rows["baseline"]["params"]
    extra = rows["lad_teacher"]["params"] - rows["baseline"]["params"]
    assert 0 < extra < 1000  # the LAD teacher is the student's architecture plus one input channel of its stem
    t = rows["lad_teacher"]["validation"]
    assert t["label_gain"] == pytest.approx(t["mean_iou"] - t["mean_iou_no_label"], abs=1e-12)
    assert t["label_gain_shuffled"] == pytest.approx(t["mean_iou"] - t["mean_iou_shuffled_label"], abs=1e-12)
    for split in ("validation", "test"):  # the ratio is (student − baseline) / (teacher − baseline)
        base = rows["baseline"][split]["mean_iou"]
        for s, teacher in (("lad_student", "lad_teacher"), ("big_student", "big_teacher")):
            tr = rec["transfer"][split][s]
            assert tr["gain"] == pytest.approx(rows[s][split]["mean_iou"] - base)
            lead = rows[teacher][split]["mean_iou"] - base
            assert tr["ratio"] == (pytest.approx(tr["gain"] / lead) if lead > 0.005 else None)
        assert 0 <= rows["baseline"][split]["acc_band"] <= 1 and 0 <= rows["baseline"][split]["acc_interior"] <= 1
    again = subprocess.run(cmd + ["--tiny", "--plan", "main", "--only", "0"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert "skip" in again.stdout and len(log.read_text().splitlines()) == 1  # resumable: a done cell is skipped
    assert subprocess.run(cmd + ["--report"], cwd=ROOT, env=env, timeout=120).returncode == 0
    md = (tmp_path / "t.md").read_text()
    assert "self-distillation" in md and f"{100 * t['mean_iou']:.1f}" in md
    assert json.loads((tmp_path / "t.json").read_text())[0]["key"] == rec["key"]
    assert (tmp_path / "t.png").stat().st_size > 1000
