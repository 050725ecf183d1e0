"""Smoke test of benchmarks/throughput.py: every row runs in-process at a tiny size and the report is written."""

import importlib.util
import json
import math
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "throughput.py")


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("lad_throughput_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _finite_positive(x):
    return x is not None and math.isfinite(x) and x > 0


def test_every_row_is_timed_and_the_report_is_written(throughput, tmp_path):
    tp = throughput
    cfg = tp.BenchConfig(
        device="cpu", quick=True, height=64, width=64, batch_size=2, num_labels=5, steps=3, warmup=1,
        eval_images=2, num_workers=1, unique_images=2, student="tiny", lad_teacher="tiny", cwd_teacher="small",
        compile=False, miou_masks=3, miou_height=64, miou_width=64, miou_reps=1,
        output=str(tmp_path / "throughput_smoke.md"), command="pytest smoke",
    )
    threads = torch.get_num_threads()
    result = tp.run_benchmark(cfg, log=lambda *_: None)
    assert torch.get_num_threads() == threads  # the run restores the thread count

    rows = result["rows"]
    assert list(rows) == list(tp.ROW_ORDER)
    for key in tp.ROW_ORDER:
        row = rows[key]
        if key.startswith("compile"):
            assert row["skipped"], "torch.compile rows are CUDA-only unless forced"
            continue
        assert row["skipped"] is None
        for col in ("ms_step", "ms_wall", "images_s", "peak_mem_mib"):
            assert _finite_positive(row[col]), (key, col, row[col])
        assert row["ms_wall"] >= row["ms_step"]
        assert row["steps_timed"] >= 1
    assert rows["plain"]["steps_timed"] == cfg.steps  # warm-up steps are dropped
    assert all(_finite_positive(s) for s in rows["plain"]["step_ms"])

    # the printed table has every row, the checks have a status, the metric micro-benchmark agreed with numpy
    table = result["table"]
    for key in tp.ROW_ORDER:
        assert rows[key]["name"] in table
    statuses = {t["check"]: t["status"] for t in result["targets"]}
    assert statuses["LAD / plain student"] in ("PASS", "FAIL")
    assert statuses["Trainer plain / raw loop"] in ("PASS", "FAIL")
    assert statuses["teacher dual / single path"] in ("PASS", "FAIL")
    assert statuses["CWD-SMALL / LAD"] == "N/A"  # a GPU target with a B5 teacher
    assert result["miou"]["same_confusion"] is True
    assert _finite_positive(result["miou"]["streaming_s"]) and _finite_positive(result["miou"]["numpy_bincount_s"])

    md, js = tmp_path / "throughput_smoke.md", tmp_path / "throughput_smoke.json"
    assert md.is_file() and js.is_file()
    text = md.read_text()
    assert "pytest smoke" in text and "date (UTC)" in text and "CPU count" in text
    assert "NOT measured here" in text  # the evaluate mean_iou reference time is a quoted constant
    data = json.loads(js.read_text())
    assert set(data["rows"]) == set(tp.ROW_ORDER)
    assert data["machine"]["torch"] == torch.__version__
    assert data["miou"]["evaluate_mean_iou_reference_s"] == 6.25


def test_cli_defaults(throughput):
    cfg = throughput.parse_args(["--device", "cpu", "--quick"])
    assert (cfg.height, cfg.width, cfg.batch_size, cfg.cwd_teacher) == (128, 128, 2, "b2")
    assert cfg.num_workers == 1 and not cfg.compile and not cfg.use_bf16
    assert cfg.output is None and throughput.default_output(cfg).endswith("throughput_cpu_quick.md")
    full = throughput.parse_args(["--device", "cpu", "--compile", "--steps", "7"])
    assert (full.height, full.width, full.batch_size, full.num_labels, full.steps, full.warmup) == (512, 1024, 8, 19, 7, 5)
    assert full.compile and full.cwd_teacher == "b5"
