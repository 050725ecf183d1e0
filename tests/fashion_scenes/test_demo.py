"""lad_hf.fashion_scenes.demo --tiny: the whole demo in-process, in seconds, with its controls and ratios."""

import json
import time

import pytest


def test_demo_tiny(tmp_path):
    from lad_hf.fashion_scenes import demo  # Fashion-MNIST: the committed test subset (conftest)

    start = time.perf_counter()
    out = tmp_path / "demo"
    assert demo.main(["--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--tiny", "--threads", "1"]) == 0
    assert time.perf_counter() - start < 90
    for name in ("results.md", "results.json", "figure.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert list(rows) == ["baseline", "lad_teacher", "big_teacher", "lad_student", "self_student", "big_student"]
    for r in rows.values():
        assert 0.0 <= r["test"]["mean_iou"] <= 1.0 and 0.0 <= r["validation"]["mean_iou"] <= 1.0
    t = rows["lad_teacher"]["test"]
    assert {"label_gain", "label_gain_shuffled", "mean_iou_shuffled_label", "mkl_x100"} <= set(t)
    base = rows["baseline"]["test"]["mean_iou"]
    for s in ("lad_student", "self_student", "big_student"):  # every student has its transfer entry
        assert res["transfer"]["test"][s]["gain"] == pytest.approx(rows[s]["test"]["mean_iou"] - base)
    assert res["transfer"]["test"]["self_student"]["ratio"] is None  # its teacher is the baseline
    md = (out / "results.md").read_text()
    assert "| self-distillation student (CWD ← baseline) |" in md and "transfer ratio" in md
    assert "LAD student − self-distillation student" in md
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_unknown_setting_keys(tmp_path):
    from lad_hf.fashion_scenes import demo

    with pytest.raises(SystemExit, match="not settings"):
        demo.main(["--output_dir", str(tmp_path), "--tiny", "--set", '{"stepz": 3}'])
