#!/usr/bin/env python
"""Does a LAD student gain more than ordinary distillation gives? Transfer, with its controls, on fashion-scenes.

Every model is trained with the library's trainers (`lad_hf.fashion_scenes.experiments`). One *cell* is one seed of
one setting and trains:

* `baseline`     the student architecture, plain CE. It is also the **same-size plain teacher** of the
                 self-distillation control (a born-again network: same architecture, plain training).
* `lad_teacher`  the student architecture + the noised label channel (Eq. 7), with the cell's teacher options.
* `lad_student`  CE + μ·D(S(x), T(x, ŷ)) from the LAD teacher (Eq. 8).
* `self_student` CE + μ·D from the baseline: the **self-distillation control**.
* `big_teacher`  a plain teacher 2-4× the student's parameters, and `big_student` distilled from it (CWD).

Reported per model, on validation (for every choice) and test: mIoU; for teachers both label gains
(`label_gain`: label channel set to 0; `label_gain_shuffled`: another image's noised label) and mKL×100; the segment
oracle (the prediction replaced by its majority vote inside each ground-truth segment) and the pixel accuracy in a
2-px band around true boundaries and away from them (where a teacher's lead lives); for students the transfer
ratio (student − baseline) / (teacher − baseline).

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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lad_hf.fashion_scenes import experiments as E  # noqa: E402
from lad_hf.fashion_scenes.dataset import FASHION_SCENES_ID2LABEL, load_or_build_fashion_scenes  # noqa: E402
from lad_hf.metrics import StreamingMeanIoU  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# data regimes: fashion-scenes build options
REGIMES = {
    "mosaic": dict(layout="mosaic", blur_sigma=0.0),
    "blurred": dict(layout="objects", blur_sigma=2.5),
}

# one setting = the options that differ from DEFAULT (teacher options re-train the teacher; student options do not)
DEFAULT = dict(regime="mosaic", student="cnn-tiny", big_teacher="cnn-small", steps=1600, lr=3e-3, batch_size=16,
               label_sigma=0.01, rgb_dropout=0.0, label_channel_init="zeros", label_channel_scale=0.1,
               consistency_weight=1.0, distill_weight=3.0, distill_tau=4.0, distill_loss="cwd",
               fixed_class_encoding=False)
TEACHER_KEYS = ("regime", "student", "steps", "lr", "batch_size", "label_sigma", "rgb_dropout", "label_channel_init",
                "label_channel_scale", "consistency_weight")

PLANS = {
    # the regime's acceptance numbers and σ's direction (teachers only; the student rows come with "main")
    "accept": [dict(), dict(label_sigma=0.1), dict(label_sigma=1.0)],
    # the controls at the default setting, and the RGB-dropout teacher
    "main": [dict(), dict(rgb_dropout=0.3)],
    # the discriminating experiments (one seed first; the best on the student's validation gain gets 3)
    "sweep": [dict(label_sigma=0.03), dict(label_sigma=0.1), dict(fixed_class_encoding=True),
              dict(distill_weight=1.0), dict(distill_weight=10.0), dict(distill_tau=1.0),
              dict(distill_loss="kl", distill_tau=1.0)],
    "blurred": [dict(regime="blurred"), dict(regime="blurred", rgb_dropout=0.3)],
}


def cell_key(setting: dict, seed: int) -> str:
    diff = {k: v for k, v in sorted(setting.items()) if DEFAULT.get(k) != v}
    return json.dumps({"seed": seed, **diff}, sort_keys=True)


def _band(label: torch.Tensor, width: int = 2, ignore: int = 255) -> torch.Tensor:
    """Pixels within `width` px (Chebyshev) of a pixel of another class: the boundary band."""
    lab = label.long()
    out = torch.zeros_like(lab, dtype=torch.bool)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            shifted = torch.roll(lab, shifts=(dy, dx), dims=(-2, -1))
            out |= shifted != lab
    return out & (lab != ignore)


def where_it_lives(model, data, split: str, noiser=None, batch_size: int = 64) -> dict:
    """mIoU, segment-oracle mIoU, and pixel accuracy in the 2-px boundary band and away from it."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    plain, oracle = StreamingMeanIoU(data.num_labels, data.ignore_index), StreamingMeanIoU(data.num_labels, data.ignore_index)
    hits = {"band": [0, 0], "interior": [0, 0]}
    for batch in E._loader(getattr(data, split), data.collator, batch_size):
        pred = E._predict(model, batch, device, noiser).cpu()
        lab = batch["labels"]
        fixed = np.stack([E.segment_oracle(p, l, data.num_labels, data.ignore_index) for p, l in zip(pred.numpy(), lab.numpy())])
        plain.update(pred, lab)
        oracle.update(torch.from_numpy(fixed), lab)
        band = _band(lab)
        valid = lab != data.ignore_index
        for name, m in (("band", band), ("interior", valid & ~band)):
            hits[name][0] += int(((pred == lab) & m).sum())
            hits[name][1] += int(m.sum())
    model.train(was)
    return {"mean_iou": float(plain.compute()["mean_iou"]), "oracle_mean_iou": float(oracle.compute()["mean_iou"]),
            **{f"acc_{k}": v[0] / max(v[1], 1) for k, v in hits.items()}}


def _evaluate(trainer, model, data, noiser=None) -> dict:
    ev = E.evaluate_plain(trainer, data)
    out = {}
    for split in ("validation", "test"):
        row = {k: v for k, v in ev[split].items() if k != "per_class_iou"}
        row.update({k: v for k, v in where_it_lives(model, data, split, noiser).items() if k != "mean_iou"})
        out[split] = row
    return out


def _spec(setting: dict, seed: int, **kw) -> "E.RunSpec":
    s = {**DEFAULT, **setting}
    return E.RunSpec(model=s["student"], steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                     eval_batch_size=64, label_sigma=s["label_sigma"], rgb_dropout=s["rgb_dropout"],
                     label_channel_init=s["label_channel_init"], label_channel_scale=s["label_channel_scale"],
                     consistency_weight=s["consistency_weight"], distill_weight=s["distill_weight"],
                     distill_tau=s["distill_tau"], distill_loss=s["distill_loss"],
                     fixed_class_encoding=s["fixed_class_encoding"]).replace(**kw)


class Cache:
    """Trained models of this process, keyed by what determines them (a sweep re-uses its teacher and baseline)."""

    def __init__(self):
        self.models = {}

    def get(self, key, train):
        if key not in self.models:
            self.models[key] = train()
        return self.models[key]


def run_cell(data, setting: dict, seed: int, cache: Cache, teachers_only: bool = False, log=print) -> dict:
    s = {**DEFAULT, **setting}
    spec = _spec(setting, seed)
    rows = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        log(f"  {name}: {time.perf_counter() - t:.0f} s")
        return out

    base_key = ("baseline", s["regime"], s["student"], s["steps"], s["lr"], s["batch_size"], seed)
    bm, btr, bs = cache.get(base_key, lambda: timed("baseline", lambda: E.train_plain(data, spec)))
    rows["baseline"] = {**_evaluate(btr, bm, data), "train_s": bs, "params": E.count_parameters(bm)}
    tkey = ("lad_teacher",) + tuple(s[k] for k in TEACHER_KEYS) + (seed,)
    tm, ttr, ts = cache.get(tkey, lambda: timed("lad_teacher", lambda: E.train_lad_teacher(data, spec)))
    noiser = E.make_noiser(data.num_labels, spec, seed=seed + 1)
    rows["lad_teacher"] = {**_evaluate(ttr, tm, data, noiser), "train_s": ts, "params": E.count_parameters(tm)}
    if teachers_only:
        big_key = ("big", s["regime"], s["big_teacher"], s["steps"], s["lr"], s["batch_size"], seed)
        gm, gtr, gs = cache.get(big_key, lambda: timed("big_teacher", lambda: E.train_plain(data, spec.replace(model=s["big_teacher"]))))
        rows["big_teacher"] = {**_evaluate(gtr, gm, data), "train_s": gs, "params": E.count_parameters(gm)}
        return rows
    sm, s_tr, ss = timed("lad_student", lambda: E.train_student(data, spec, tm))
    rows["lad_student"] = {**_evaluate(s_tr, sm, data), "train_s": ss, "teacher": "lad_teacher"}
    student_keys = ("distill_weight", "distill_tau", "distill_loss", "fixed_class_encoding")
    self_key = ("self",) + base_key + tuple(s[k] for k in student_keys)
    xm, xtr, xs = cache.get(self_key, lambda: timed("self_student", lambda: E.train_student(data, spec, bm)))
    rows["self_student"] = {**_evaluate(xtr, xm, data), "train_s": xs, "teacher": "baseline"}
    big_key = ("big", s["regime"], s["big_teacher"], s["steps"], s["lr"], s["batch_size"], seed)
    gm, gtr, gs = cache.get(big_key, lambda: timed("big_teacher", lambda: E.train_plain(data, spec.replace(model=s["big_teacher"]))))
    rows["big_teacher"] = {**_evaluate(gtr, gm, data), "train_s": gs, "params": E.count_parameters(gm)}
    big_student_key = ("big_student",) + big_key + tuple(s[k] for k in student_keys)
    hm, htr, hs = cache.get(big_student_key, lambda: timed("big_student", lambda: E.train_student(data, spec, gm)))
    rows["big_student"] = {**_evaluate(htr, hm, data), "train_s": hs, "teacher": "big_teacher"}
    return rows


def transfer_ratios(rows: dict, split: str) -> dict:
    """(student − baseline) / (teacher − baseline) for each student row, in mIoU."""
    base = rows["baseline"][split]["mean_iou"]
    out = {}
    for name, r in rows.items():
        if "teacher" in r and r["teacher"] in rows:
            lead = rows[r["teacher"]][split]["mean_iou"] - base
            gain = r[split]["mean_iou"] - base
            out[name] = {"gain": gain, "teacher_lead": lead, "ratio": gain / lead if abs(lead) > 1e-9 else None}
    return out


def load_data(regime: str, args):
    opts = REGIMES[regime]
    dsd = load_or_build_fashion_scenes(args.cache_dir, num_train=args.num_train, num_validation=args.num_validation,
                                       num_test=args.num_test, canvas_size=args.canvas_size, seed=0, **opts)
    return E.prepare_data(dsd, args.canvas_size, id2label=FASHION_SCENES_ID2LABEL)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="accept", choices=sorted(PLANS))
    p.add_argument("--only", type=int, nargs="*", default=None, help="indices of the plan's settings to run")
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
    settings = [s for i, s in enumerate(PLANS[args.plan]) if args.only is None or i in args.only]
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
            rows = run_cell(loaded[regime], setting, seed, cache, teachers_only=args.plan == "accept",
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
