"""The paper's experiments as analogues on fashion-scenes, each row mean ± std over seeds.

    HF_HUB_OFFLINE=1 python benchmarks/reproduce.py --quick     # CPU, CI-sized (reduced grid, see QUICK_NOTE)
    HF_HUB_OFFLINE=1 python benchmarks/reproduce.py --full      # one GPU (default when CUDA is available)

Every model is trained by the library's trainers through ``lad_hf.fashion_scenes.experiments``. The validation split is used for
any choice (here: nothing is tuned; the "best σ" line is picked on validation student mIoU); the test split only
for the reported numbers. Results (partial ones included, written after every row) go to
``benchmarks/results/reproduce_<quick|full>.{md,json}`` with the command, the machine and the UTC date.

Rows run in priority order; with ``--time_budget_s`` no new row starts once the budget is spent, and the rows not
run are listed as such.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lad_hf.fashion_scenes import experiments as E  # noqa: E402

# paper numbers (DESIGN.md §2 and the paper's Tab. 6); Cityscapes val mIoU
PAPER = {
    "baseline": "74.2 (DeepLabV3-R18)",
    "plain_teacher": "78.1 (DeepLabV3-R101)",
    "cwd_student": "75.6 (+1.4)",
    "lad_teacher": "79.8 (R18*, noised label)",
    "lad_student": "77.7 (+3.5)",
    "strong_teacher": "79.8 / 80.7 (PSP-R101 / OCR-W48)",
    "strong_student": "75.9 / 75.0 (PSP-R18 student, base 72.6)",
    "tab8_mkl_nocons": "6.8", "tab8_mkl_cons": "3.4",
    "tab8_student_nocons": "76.7", "tab8_student_cons": "77.7",
    "clean_teacher": "90.0 (σ=0, no class noise)",
    "clean_student": "69.4 (below the 73.8 baseline-ish row)",
    "s2c": "+1.4 (STDC1 teacher → STDC2 student)",
    "fig4": "clean label: prediction almost only from the label channel",
}
TAB9_TEACHER = {True: {0.0: 80.5, 1e-3: 80.5, 1e-2: 80.0, 1e-1: 74.1, 1.0: 71.7},
                False: {0.0: 90.0, 1e-3: 84.3, 1e-2: 86.5, 1e-1: 83.2, 1.0: 76.3}}
TAB9_STUDENT = {True: {0.0: 73.8, 1e-3: 74.5, 1e-2: 74.8, 1e-1: 72.3, 1.0: 70.5},
                False: {0.0: 69.4, 1e-3: 70.1, 1e-2: 72.3, 1e-1: 73.0, 1.0: 68.8}}

SIZES = {
    # CPU, CI-sized: the grid is reduced (QUICK_NOTE)
    "quick": dict(canvas=64, num_train=1500, num_validation=200, num_test=300, student="tiny", teacher="small",
                  strong="medium", big_student="small", steps=100, batch_size=16, lr=5e-3, seeds=3, grid_seeds=1,
                  sigmas=(0.0, 1e-2, 1.0), budget=660),
    # one H100, bf16, <= 8 minutes (not yet run on a GPU by its author; conservative)
    "full": dict(canvas=96, num_train=8000, num_validation=500, num_test=1000, student="b0", teacher="b0-wide",
                 strong="b1", big_student="b0-wide", steps=600, batch_size=32, lr=6e-4, seeds=3, grid_seeds=3,
                 sigmas=(0.0, 1e-3, 1e-2, 1e-1, 1.0), budget=380),
}
QUICK_NOTE = (
    "Quick mode (CPU) reductions: 64 px canvases, 1500 train scenes, {steps} steps of batch {batch_size} per model "
    "(far from convergence), tiny SegFormer students; 3 seeds on the Tab. 1 rows; 1 seed (std n/a) on every other "
    "row; Tab. 9 σ ∈ {{0, 1e-2, 1}} only; Tab. 6 with one stronger plain teacher; rows after the time budget are "
    "skipped and listed."
)


def mean_std(values: List[float], digits: int = 1) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "n/a"
    m = float(np.mean(vals))
    if len(vals) == 1:
        return f"{m:.{digits}f} (n=1)"
    return f"{m:.{digits}f} ± {float(np.std(vals, ddof=1)):.{digits}f} (n={len(vals)})"


class Lab:
    """Trains (and memoises) models by role and options; returns per-run metric dicts (mIoU in %)."""

    def __init__(self, data: E.Prepared, base: E.RunSpec, sizes: dict, log: Callable[[str], None]):
        self.data, self.base, self.sizes, self.log = data, base, sizes, log
        self.cache: Dict[Any, Any] = {}

    def _spec(self, seed: int, **kw) -> E.RunSpec:
        return self.base.replace(seed=seed, **kw)

    def _student_metrics(self, model, trainer) -> dict:
        ev = E.evaluate_plain(trainer, self.data)
        orc = E.oracle_and_predictions(model, self.data, "test")
        return {"test_miou": 100 * ev["test"]["mean_iou"], "val_miou": 100 * ev["validation"]["mean_iou"],
                "oracle_test_miou": 100 * orc["oracle_mean_iou"],
                "per_class_test_iou": {k: 100 * v for k, v in ev["test"]["per_class_iou"].items()}}

    def baseline(self, seed: int, model: Optional[str] = None) -> dict:
        key = ("baseline", seed, model)
        if key not in self.cache:
            t = time.perf_counter()
            m, tr, _ = E.train_plain(self.data, self._spec(seed, model=model or self.sizes["student"]))
            out = self._student_metrics(m, tr)
            out["seconds"] = time.perf_counter() - t
            self.cache[key] = (m, out)
            self.log(f"  baseline[{model or self.sizes['student']}] seed {seed}: test {out['test_miou']:.1f}")
        return self.cache[key][1]

    def plain_teacher(self, seed: int, model: str):
        key = ("plain", seed, model)
        if key not in self.cache:
            t = time.perf_counter()
            m, tr, _ = E.train_plain(self.data, self._spec(seed, model=model))
            ev = E.evaluate_plain(tr, self.data)
            out = {"test_miou": 100 * ev["test"]["mean_iou"], "val_miou": 100 * ev["validation"]["mean_iou"],
                   "params_m": E.count_parameters(m) / 1e6, "seconds": time.perf_counter() - t}
            self.cache[key] = (m, out)
            self.log(f"  plain teacher[{model}] seed {seed}: test {out['test_miou']:.1f}")
        return self.cache[key]

    def lad_teacher(self, seed: int, model: Optional[str] = None, **opts):
        model = model or self.sizes["student"]
        spec = self._spec(seed, model=model, **opts)
        key = ("lad", seed) + spec.key(*TEACHER_FIELDS)  # equal specs share one teacher, however they were written
        if key not in self.cache:
            t = time.perf_counter()
            m, tr, _ = E.train_lad_teacher(self.data, spec)
            ev = E.evaluate_plain(tr, self.data)
            out = {"test_miou": 100 * ev["test"]["mean_iou"], "val_miou": 100 * ev["validation"]["mean_iou"],
                   "test_mkl_x100": ev["test"].get("mkl_x100"), "seconds": time.perf_counter() - t}
            if "label_gain" in ev["test"]:  # label use: mIoU minus mIoU with the label channel set to 0
                out["test_label_gain"] = 100 * ev["test"]["label_gain"]
                out["val_label_gain"] = 100 * ev["validation"]["label_gain"]
            self.cache[key] = (m, out, spec)
            self.log(f"  LAD teacher[{model} {opts}] seed {seed}: test {out['test_miou']:.1f} "
                     f"label gain {out.get('test_label_gain', float('nan')):+.1f} mKL {out['test_mkl_x100']}")
        return self.cache[key]

    def student(self, seed: int, teacher, teacher_opts: dict, model: Optional[str] = None, tag: str = "") -> dict:
        model = model or self.sizes["student"]
        key = ("student", seed, model, tag)
        if key not in self.cache:
            t = time.perf_counter()
            m, tr, _ = E.train_student(self.data, self._spec(seed, model=model, **teacher_opts), teacher)
            out = self._student_metrics(m, tr)
            out["seconds"] = time.perf_counter() - t
            self.cache[key] = (None, out)
            self.log(f"  student[{model} {tag}] seed {seed}: test {out['test_miou']:.1f}")
        return self.cache[key][1]


TEACHER_FIELDS = ("model", "label_sigma", "class_noise", "pixel_noise", "dual_path", "consistency_weight",
                  "consistency_tau", "label_channel_init", "label_channel_scale")


def _noise_opts(spec: E.RunSpec) -> dict:
    return spec.noise_settings()


def build_rows(lab: Lab, sz: dict) -> List[dict]:
    """Rows in priority order: each has a table, a name, metrics (name -> paper) and a per-seed function."""
    S, T, STRONG, BIG = sz["student"], sz["teacher"], sz["strong"], sz["big_student"]
    main_seeds = list(range(sz["seeds"]))
    grid_seeds = list(range(sz["grid_seeds"]))
    rows: List[dict] = []

    def row(table, name, paper, seeds, fn):
        rows.append(dict(table=table, name=name, paper=paper, seeds=seeds, fn=fn))

    # ---- Tab. 1
    row("Tab. 1", f"baseline student ({S})", {"test_miou": PAPER["baseline"], "oracle_test_miou": "-"}, main_seeds,
        lambda s: lab.baseline(s))
    row("Tab. 1", f"plain teacher ({T}, 3-ch)", {"test_miou": PAPER["plain_teacher"]}, main_seeds,
        lambda s: lab.plain_teacher(s, T)[1])

    def cwd_student(s):
        teacher = lab.plain_teacher(s, T)[0]
        out = dict(lab.student(s, teacher, {}, tag=f"cwd<-{T}"))
        out["gain_vs_baseline"] = out["test_miou"] - lab.baseline(s)["test_miou"]
        return out

    row("Tab. 1", f"CWD student ({S} <- plain {T})", {"test_miou": PAPER["cwd_student"], "gain_vs_baseline": "+1.4",
                                                     "oracle_test_miou": "-"}, main_seeds, cwd_student)
    row("Tab. 1", f"LAD teacher ({S}+label, σ=0.01)", {"test_miou": PAPER["lad_teacher"], "test_label_gain": "-",
                                                       "test_mkl_x100": "3.4"},
        main_seeds, lambda s: lab.lad_teacher(s)[1])

    def lad_student(s, **topts):
        m, _, spec = lab.lad_teacher(s, **topts)
        out = dict(lab.student(s, m, _noise_opts(spec), tag=f"lad{spec.key(*TEACHER_FIELDS)}"))
        out["gain_vs_baseline"] = out["test_miou"] - lab.baseline(s)["test_miou"]
        return out

    row("Tab. 1", f"LAD student ({S} <- LAD {S})", {"test_miou": PAPER["lad_student"], "gain_vs_baseline": "+3.5",
                                                 "oracle_test_miou": "-"}, main_seeds, lad_student)

    # ---- Fig. 4 attribution and clean-label shortcut
    def attribution(s):
        noised_m, _, spec = lab.lad_teacher(s)
        clean_m, clean_out, _ = lab.lad_teacher(s, class_noise=False, label_sigma=0.0)
        noised = E.input_attribution(noised_m, lab.data, E.make_noiser(lab.data.num_labels, spec, seed=s))
        clean = E.input_attribution(clean_m, lab.data, E.make_noiser(lab.data.num_labels, spec, seed=s, clean=True))
        return {"label_share_clean_teacher": 100 * clean["label"], "label_share_noised_teacher": 100 * noised["label"],
                "clean_teacher_test_miou": clean_out["test_miou"]}

    row("Fig. 4", "input attribution (|grad×input| share of the label channel, %)",
        {"label_share_clean_teacher": "≈100 (shortcut)", "label_share_noised_teacher": "lower (uses RGB)",
         "clean_teacher_test_miou": PAPER["clean_teacher"]}, grid_seeds, attribution)
    row("shortcut", "student of the clean-label teacher (σ=0, no class noise)",
        {"test_miou": PAPER["clean_student"], "gain_vs_baseline": "-"}, grid_seeds,
        lambda s: lad_student(s, class_noise=False, label_sigma=0.0))

    # ---- Tab. 8 consistency
    row("Tab. 8", "LAD teacher without consistency (λ=0)", {"test_miou": "-", "test_label_gain": "-", "test_mkl_x100": PAPER["tab8_mkl_nocons"]},
        grid_seeds, lambda s: lab.lad_teacher(s, consistency_weight=0.0)[1])
    row("Tab. 8", "LAD student, teacher without consistency", {"test_miou": PAPER["tab8_student_nocons"],
                                                               "gain_vs_baseline": "-"},
        grid_seeds, lambda s: lad_student(s, consistency_weight=0.0))

    # ---- simple -> complex
    def s2c(s):
        m, _, spec = lab.lad_teacher(s)
        out = dict(lab.student(s, m, _noise_opts(spec), model=BIG, tag="s2c"))
        out["gain_vs_baseline"] = out["test_miou"] - lab.baseline(s, model=BIG)["test_miou"]
        out["big_baseline_test_miou"] = lab.baseline(s, model=BIG)["test_miou"]
        return out

    row("simple→complex", f"{BIG} student <- LAD {S} teacher", {"test_miou": "-", "big_baseline_test_miou": "-",
                                                               "gain_vs_baseline": PAPER["s2c"]}, grid_seeds, s2c)

    # ---- Tab. 9 σ sweep × class noise
    for class_noise in (True, False):
        for sigma in sz["sigmas"]:
            opts = {"class_noise": class_noise, "label_sigma": sigma}
            cn = "on" if class_noise else "off"
            row("Tab. 9", f"teacher σ={sigma:g}, class noise {cn}",
                {"test_miou": str(TAB9_TEACHER[class_noise][sigma]), "test_label_gain": "-", "test_mkl_x100": "-"}, grid_seeds,
                lambda s, o=opts: lab.lad_teacher(s, **o)[1])
            row("Tab. 9", f"student σ={sigma:g}, class noise {cn}",
                {"test_miou": str(TAB9_STUDENT[class_noise][sigma]), "val_miou": "-", "gain_vs_baseline": "-"},
                grid_seeds, lambda s, o=opts: lad_student(s, **o))

    # ---- Tab. 6 stronger plain teacher
    row("Tab. 6", f"stronger plain teacher ({STRONG})", {"test_miou": PAPER["strong_teacher"]}, grid_seeds,
        lambda s: lab.plain_teacher(s, STRONG)[1])

    def strong_student(s):
        teacher = lab.plain_teacher(s, STRONG)[0]
        out = dict(lab.student(s, teacher, {}, tag=f"cwd<-{STRONG}"))
        out["gain_vs_baseline"] = out["test_miou"] - lab.baseline(s)["test_miou"]
        return out

    row("Tab. 6", f"CWD student ({S} <- plain {STRONG})", {"test_miou": PAPER["strong_student"],
                                                          "gain_vs_baseline": "+2.4 to +3.3"}, grid_seeds, strong_student)
    return rows


def summarise(rows: List[dict]) -> List[dict]:
    out = []
    for r in rows:
        runs = r.get("runs", [])
        metrics = {}
        for name, paper in r["paper"].items():
            vals = [run[name] for run in runs if name in run]
            metrics[name] = {"values": vals, "mean_std": mean_std(vals, 2 if "mkl" in name else 1), "paper": paper}
        out.append({"table": r["table"], "name": r["name"], "status": r.get("status", "not run"), "seeds": r["seeds"],
                    "metrics": metrics, "runs": runs})
    return out


def best_sigma_on_validation(summary: List[dict]) -> Optional[str]:
    best = None
    for r in summary:
        if r["table"] == "Tab. 9" and r["name"].startswith("student") and r["runs"]:
            v = float(np.mean([run["val_miou"] for run in r["runs"]]))
            if best is None or v > best[0]:
                best = (v, r["name"], float(np.mean([run["test_miou"] for run in r["runs"]])))
    if best is None:
        return None
    return f"best Tab. 9 student on validation: {best[1]} (val {best[0]:.1f}, its test {best[2]:.1f})"


def write_results(path_stem: Path, header: dict, summary: List[dict], note: str) -> None:
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    Path(str(path_stem) + ".json").write_text(json.dumps({**header, "note": note, "rows": summary}, indent=1, default=float))
    lines = [f"# reproduce ({header['mode']})", "",
             f"- command: `{header['command']}`",
             f"- machine: {header['machine']['device']}; torch {header['machine']['torch']}, transformers "
             f"{header['machine']['transformers']}, {header['machine']['torch_threads']} torch threads",
             f"- date (UTC): {header['date_utc']}; wall time so far: {header['elapsed_s']:.0f} s"
             f"{' (finished)' if header.get('finished') else ' (partial)'}",
             f"- data: fashion-scenes {header['data']}", f"- schedule: {header['schedule']}", "",
             note, "",
             "mIoU in % on the **test** split (validation only for choices); paper numbers are Cityscapes val "
             "(DESIGN.md §2) and are a different dataset and scale - compare directions, not values. "
             "`oracle_test_miou` = the student's prediction with a majority vote inside each ground-truth segment "
             "(the most that grouping information alone could add).", "",
             "| table | row | metric | ours (mean ± std over seeds) | paper |", "|---|---|---|---|---|"]
    for r in summary:
        if r["status"] != "done":
            lines.append(f"| {r['table']} | {r['name']} | - | {r['status']} | - |")
            continue
        for name, m in r["metrics"].items():
            lines.append(f"| {r['table']} | {r['name']} | {name} | {m['mean_std']} | {m['paper']} |")
    best = best_sigma_on_validation(summary)
    if best:
        lines += ["", best]
    Path(str(path_stem) + ".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU, CI-sized (reduced grid)")
    g.add_argument("--full", action="store_true", help="one GPU (default when CUDA is available)")
    p.add_argument("--time_budget_s", type=float, default=None, help="no new row starts after this (default per mode)")
    p.add_argument("--steps", type=int, default=None, help="override the steps per model")
    p.add_argument("--cache_dir", default=str(ROOT / "outputs" / "cache"))
    p.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: auto from load)")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds to run in this process (e.g. 0); results go to reproduce_<mode>_seeds<...>. "
                        "Run one process per seed side by side on one GPU (small models are launch-bound), then --merge")
    p.add_argument("--merge", nargs="+", default=None, help="merge per-seed JSON results into reproduce_<mode>.{md,json}")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.results_dir), argv)
    mode = "full" if (args.full or (not args.quick and torch.cuda.is_available())) else "quick"
    sz = dict(SIZES[mode])
    if args.steps:
        sz["steps"] = args.steps
    budget = args.time_budget_s if args.time_budget_s is not None else sz["budget"]
    threads = E.set_threads(args.threads)
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    from lad_hf.fashion_scenes import load_or_build_fashion_scenes

    dsd = load_or_build_fashion_scenes(args.cache_dir, num_train=sz["num_train"], num_validation=sz["num_validation"],
                                       num_test=sz["num_test"], canvas_size=sz["canvas"], seed=0)
    data = E.prepare_data(dsd, sz["canvas"])
    log(f"data ready ({mode}; {threads} threads)")
    base = E.RunSpec(model=sz["student"], steps=sz["steps"], batch_size=sz["batch_size"], lr=sz["lr"])
    lab = Lab(data, base, sz, log)
    rows = build_rows(lab, sz)
    if args.seeds is not None:
        only = [int(x) for x in args.seeds.split(",")]
        for r in rows:
            r["seeds"] = [x for x in r["seeds"] if x in only] or []
    header = {
        "mode": mode, "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit('/', 1)[-1], "benchmarks/reproduce.py"] + list(sys.argv[1:] if argv is None else argv)),
        "machine": E.machine_info(), "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "data": f"{sz['canvas']} px, train {sz['num_train']} / validation {sz['num_validation']} / test {sz['num_test']}",
        "schedule": f"{sz['steps']} steps, batch {sz['batch_size']}, AdamW lr {sz['lr']} (linear decay, 5% warmup), "
                    f"bf16={E._use_bf16(base)}; student {sz['student']}, plain teacher {sz['teacher']}, "
                    f"stronger teacher {sz['strong']}; σ=0.01, λ=1, μ=3, τ=4 (CWD both)",
        "time_budget_s": budget,
    }
    note = QUICK_NOTE.format(**sz) if mode == "quick" else (
        "Full mode: GPU-sized grid (3 seeds everywhere, all five σ). Written by its author without GPU access; "
        "rows past the time budget are listed as skipped.")
    stem = Path(args.results_dir) / (f"reproduce_{mode}" + (f"_seeds{args.seeds.replace(',', '-')}" if args.seeds else ""))
    for r in rows:
        if time.perf_counter() - start > budget:
            r["status"] = f"skipped (time budget {budget:.0f}s spent)"
            continue
        if not r["seeds"]:
            r["status"] = "not run (no seed in this shard)"
            continue
        log(f"{r['table']}: {r['name']}")
        r["runs"] = []
        for s in r["seeds"]:
            if time.perf_counter() - start > budget and r["runs"]:
                break
            out = r["fn"](s)
            r["runs"].append({k: v for k, v in out.items() if k != "per_class_test_iou"} | {"seed": s})
        r["status"] = "done"
        header["elapsed_s"] = time.perf_counter() - start
        write_results(stem, header, summarise(rows), note)
    header["elapsed_s"] = time.perf_counter() - start
    header["finished"] = True
    write_results(stem, header, summarise(rows), note)
    print(Path(str(stem) + ".md").read_text())
    return 0


def merge(paths: List[str], results_dir: Path, argv) -> int:
    """Combine per-seed shards (same rows, different seeds) into one table of mean ± std."""
    shards = [json.loads(Path(p).read_text()) for p in paths]
    base = shards[0]
    rows = []
    for r in base["rows"]:
        runs = []
        for sh in shards:
            match = next((x for x in sh["rows"] if x["table"] == r["table"] and x["name"] == r["name"]), None)
            if match and match["status"] == "done":
                runs += match["runs"]
        paper = {k: m["paper"] for k, m in r["metrics"].items()}
        rows.append(dict(table=r["table"], name=r["name"], paper=paper, seeds=sorted({x["seed"] for x in runs}),
                         runs=runs, status="done" if runs else "skipped (time budget spent in every shard)"))
    header = dict(base)
    header.pop("rows", None)
    note = header.pop("note", "")
    header["command"] = " ; ".join(sh["command"] for sh in shards) + " ; python benchmarks/reproduce.py --merge " + " ".join(
        Path(p).name for p in paths)
    header["elapsed_s"] = max(sh.get("elapsed_s", 0) for sh in shards)
    header["finished"] = all(sh.get("finished") for sh in shards)
    note += (f" Seeds ran as {len(shards)} processes side by side on one device (one seed each); wall time is the "
             "slowest shard's.")
    stem = results_dir / f"reproduce_{header['mode']}"
    write_results(stem, header, summarise(rows), note)
    print(Path(str(stem) + ".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
