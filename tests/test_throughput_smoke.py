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


def test_cpu_proxy_mode_runs_and_writes_its_reports(throughput, tmp_path):
    """--cpu_proxy at a tiny size: interleaved Trainer/raw variants, breakdown, micro costs, profiler, mIoU with an
    earlier metrics module (here: the current file loaded as 'before'), reports and the summary table."""
    tp = throughput
    cfg = tp.parse_args(["--cpu_proxy", "--rounds", "1", "--steps", "2", "--warmup", "1", "--height", "32",
                         "--width", "32", "--batch_size", "2", "--num_labels", "5", "--breakdown_rounds", "1", "--micro_calls", "5",
                         "--no-teardown_demo", "--miou_masks", "2", "--miou_height", "16", "--miou_width", "16",
                         "--miou_reps", "1", "--miou_before", os.path.join(REPO, "lad_hf", "metrics.py"),
                         "--variants", "plain_raw_preloaded,lad,lad_raw,lad+default_flops",
                         "--output", str(tmp_path / "throughput_cpu_proxy.md")])
    assert cfg.proxy and cfg.device == "cpu" and cfg.clock == "cpu" and cfg.num_workers == 0 and cfg.threads == 1
    assert cfg.student == "tiny" and cfg.student in tp.MODEL_PRESETS  # the package's one preset table
    threads = torch.get_num_threads()
    result = tp.run_proxy(cfg, log=lambda *_: None)
    assert torch.get_num_threads() == threads

    rounds = result["proxy"]["rounds"]
    assert rounds["rounds_done"] == 1
    for name, v in rounds["variants"].items():
        assert _finite_positive(v["ms_step"]) and _finite_positive(v["ms_step_wall"]), name
    comps = {(c["a"], c["b"]): c for c in rounds["comparisons"]}
    assert _finite_positive(comps[("lad", "lad_raw")]["ratio"]) and ("lad", "plain") not in comps
    assert {c["b"] for c in rounds["ablations"]} == {"lad+default_flops"}
    phases = result["proxy"]["breakdown"]["lad"]["phases_ms"]
    for p in (tp.P_FORWARD, tp.P_TEACHER, tp.P_NOISER, tp.P_BACKWARD, tp.P_OPTIM, tp.P_GUARD, tp.P_OTHER):
        assert p in phases, p
    assert tp.P_TEACHER not in result["proxy"]["breakdown"]["plain_raw"]["phases_ms"]
    micro = {r["item"]: r for r in result["proxy"]["micro"]}
    assert all(r["us_per_call"] >= 0 for r in micro.values()) and len(micro) >= 8
    prof = result["proxy"]["profile"]
    assert prof["plain"]["n_ops"] > 100 and prof["lad"]["n_ops"] > prof["plain"]["n_ops"]
    assert tp.P_TEACHER in prof["lad"]["ranges"] and "lad_extra_ops" in prof
    assert result["miou"]["same_confusion"] is True and result["miou"]["before_streaming_s"] > 0

    md = (tmp_path / "throughput_cpu_proxy.md").read_text()
    assert "Trainer / raw loop, LAD path" in md and "before (" in md and "lscpu" in md
    assert "student forward" in (tmp_path / "profile_cpu_proxy.md").read_text()
    js = tmp_path / "throughput_cpu_proxy.json"
    assert json.loads(js.read_text())["mode"] == "proxy"
    summary = tp.summarize([str(js)])
    assert "throughput_cpu_proxy (interleaved)" in summary


def test_rows_selection_and_summary(throughput, tmp_path):
    tp = throughput
    cfg = tp.parse_args(["--device", "cpu", "--quick", "--rows", "plain,raw", "--miou_masks", "0", "--height", "32",
                         "--width", "32", "--steps", "2", "--warmup", "1", "--num_workers", "0", "--threads", "1", "--student", "tiny",
                         "--output", str(tmp_path / "t.md")])
    result = tp.run_benchmark(cfg, log=lambda *_: None)
    assert set(result["rows"]) == {"plain", "raw"}
    summary = tp.summarize([str(tmp_path / "t.json"), str(tmp_path / "missing.json")])
    assert "| t |" in summary and "unreadable" in summary
    with pytest.raises(SystemExit):
        tp.parse_args(["--device", "cpu", "--rows", "plain,nope"])
