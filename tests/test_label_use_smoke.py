"""benchmarks/label_use.py --quick: the label-use study runs end to end and records label_gain for its teachers."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_label_use_quick_runs_and_records_label_gain():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "label_use.py"), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(Path("/tmp/lu_quick/label_use.json").read_text())
    teachers = [r for r in runs if r["spec"]["kind"] == "teacher"]
    assert teachers and all("label_gain" in r["validation"] for r in teachers)
    for r in teachers:  # label_gain is mIoU minus mIoU with the label channel set to 0
        v = r["validation"]
        assert abs(v["label_gain"] - (v["miou"] - v["miou_zero"])) < 1e-9
