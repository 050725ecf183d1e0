#!/usr/bin/env python
"""Does a LAD student gain more than ordinary distillation gives? Transfer, with its controls, on fashion-scenes.

Every model is trained with the library's trainers; what one cell trains and measures (baseline = same-size plain
teacher, LAD teacher and student, the self-distillation student, a bigger plain teacher and its CWD student; label
gains, mKL, segment oracle, boundary-band accuracy, transfer ratios) is `lad_hf.fashion_scenes.transfer`.

Each finished cell is appended to `--json` (JSON lines; resumable: a cell whose key is there is skipped). `--report`
writes `lad_transfer.json` (the rows as one JSON list), `lad_transfer.md` and `lad_transfer.png` from it.

    python benchmarks/lad_transfer.py --tiny                              # smoke test, < 1 min
    python benchmarks/lad_transfer.py --plan accept --seeds 0             # the regime's acceptance numbers
    python benchmarks/lad_transfer.py --plan main --seeds 0 1 2           # controls, 3 seeds
    python benchmarks/lad_transfer.py --plan sweep --seeds 0              # the discriminating experiments
    python benchmarks/lad_transfer.py --report
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lad_hf.fashion_scenes import experiments as E  # noqa: E402
from lad_hf.fashion_scenes.dataset import FASHION_SCENES_ID2LABEL, load_or_build_fashion_scenes  # noqa: E402
from lad_hf.fashion_scenes.transfer import DEFAULT, PLANS, REGIMES, Cache, cell_key, run_cell, transfer_ratios  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

def load_data(regime: str, args):
    opts = REGIMES[regime]
    dsd = load_or_build_fashion_scenes(args.cache_dir, num_train=args.num_train, num_validation=args.num_validation,
                                       num_test=args.num_test, canvas_size=args.canvas_size, seed=0, **opts)
    return E.prepare_data(dsd, args.canvas_size, id2label=FASHION_SCENES_ID2LABEL)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="accept", choices=sorted(PLANS))
    p.add_argument("--only", type=int, nargs="*", default=None, help="indices of the plan's settings to run, in this order")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--json", default=str(RESULTS / "lad_transfer.jsonl"), help="the run log, one JSON row per cell")
    p.add_argument("--cache_dir", default="outputs/cache")
    p.add_argument("--canvas_size", type=int, default=64)
    p.add_argument("--num_train", type=int, default=6000)
    p.add_argument("--num_validation", type=int, default=300)
    p.add_argument("--num_test", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", default="{}", help="JSON object of setting overrides applied to every cell of the plan")
    p.add_argument("--tiny", action="store_true", help="a smoke test: few scenes and steps")
    p.add_argument("--report", action="store_true", help="write lad_transfer.md and .png from --json, run nothing")
    args = p.parse_args(argv)
    if args.report:
        from lad_transfer_report import write_report

        write_report(Path(args.json))
        return 0
    torch.set_num_threads(args.threads)
    extra = json.loads(args.set)
    if args.tiny:
        args.num_train, args.num_validation, args.num_test = 16, 8, 8
        extra = {"steps": 2, "batch_size": 4, **extra}
    out = Path(args.json)
    done = set()
    if out.exists():
        done = {json.loads(line)["key"] for line in out.read_text().splitlines() if line.strip()}
    settings = PLANS[args.plan] if args.only is None else [PLANS[args.plan][i] for i in args.only]
    cache, loaded = Cache(), {}
    for seed in args.seeds:
        for setting in settings:
            setting = {**setting, **extra}
            key = cell_key(setting, seed)
            if key in done:
                print(f"skip {key} (done)")
                continue
            regime = setting.get("regime", DEFAULT["regime"])
            if regime not in loaded:
                loaded[regime] = load_data(regime, args)
            print(f"[{datetime.datetime.now():%H:%M:%S}] cell {key}", flush=True)
            start = time.perf_counter()
            rows, _ = run_cell(loaded[regime], setting, seed, cache, teachers_only=args.plan == "accept",
                            log=lambda m: print(m, flush=True))
            rec = {"key": key, "plan": args.plan, "seed": seed, "setting": {**DEFAULT, **setting}, "rows": rows,
                   "transfer": {sp: transfer_ratios(rows, sp) for sp in ("validation", "test")},
                   "seconds": time.perf_counter() - start, "date": datetime.date.today().isoformat(),
                   "command": "python benchmarks/lad_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "machine": E.machine_info(), "data": {"canvas_size": args.canvas_size, "num_train": args.num_train,
                                                          "num_validation": args.num_validation, "num_test": args.num_test}}
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(rec, default=float) + "\n")
            v = rows
            summary = " ".join(f"{n} {100 * r['validation']['mean_iou']:.1f}" for n, r in v.items())
            t = v["lad_teacher"]["validation"]
            print(f"  val: {summary}; teacher gains {100 * t.get('label_gain', 0):+.1f} / "
                  f"{100 * t.get('label_gain_shuffled', 0):+.1f} (shuffled)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
