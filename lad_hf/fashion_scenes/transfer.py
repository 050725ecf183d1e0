"""The transfer study's cell: a LAD student against its controls, trained with the library's trainers.

One *cell* is one seed of one setting and trains:

* `baseline`     the student architecture, plain CE; also the **same-size plain teacher** of the self-distillation
                 control (a born-again network: same architecture, plain training).
* `lad_teacher`  the student architecture + the noised label channel (Eq. 7), with the cell's teacher options.
* `lad_student`  CE + μ·D(S(x), T(x, ŷ)) from the LAD teacher (Eq. 8).
* `self_student` CE + μ·D from the baseline: the **self-distillation control**.
* `big_teacher`  a plain teacher 2-4× the student's parameters, and `big_student` distilled from it (CWD).

Each model is evaluated on validation (for every choice) and test: mIoU; for teachers both label gains and mKL×100;
the segment oracle and the pixel accuracy in a 2-px band around true boundaries and away from them; for students
the transfer ratio (student − baseline) / (teacher − baseline). `make demo` and `benchmarks/lad_transfer.py` run it.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from ..metrics import StreamingMeanIoU
from . import experiments as E

# data regimes: fashion-scenes build options
REGIMES = {
    "mosaic": dict(layout="mosaic", blur_sigma=0.0),
    "blurred": dict(layout="objects", blur_sigma=2.5),
}

# one setting = the options that differ from DEFAULT (teacher options re-train the teacher; student options do not)
DEFAULT = dict(regime="mosaic", student="cnn-tiny", lad_teacher="", teacher_lr=0.0, big_teacher="cnn-small",
               steps=1600, lr=3e-3, batch_size=16, label_sigma=0.01, rgb_dropout=0.0, label_channel_init="zeros", label_channel_scale=0.1,
               consistency_weight=1.0, distill_weight=3.0, distill_tau=4.0, distill_loss="cwd",
               fixed_class_encoding=False)
TEACHER_KEYS = ("regime", "student", "lad_teacher", "teacher_lr", "steps", "lr", "batch_size", "label_sigma",
                "rgb_dropout", "label_channel_init", "label_channel_scale", "consistency_weight")

PLANS = {
    # the regime's acceptance numbers and σ's direction (teachers only; the student rows come with "main"): the
    # chosen teacher at σ 0.1 and 1, and a plain teacher of 4.1× the student's parameters
    "accept": [dict(label_sigma=1.0, label_channel_init="random", label_channel_scale=1.0, big_teacher="cnn-medium"),
               dict(label_sigma=0.1, label_channel_init="random", label_channel_scale=1.0, big_teacher="cnn-medium")],
    # the controls at the default setting, and the teacher made to read its label (RGB dropout, random label weights)
    "main": [dict(), dict(rgb_dropout=0.3, label_channel_init="random", label_channel_scale=1.0),
             dict(label_channel_init="random", label_channel_scale=1.0)],
    # the discriminating experiments (one seed first; the best on the student's validation gain gets 3)
    "sweep": [dict(label_sigma=0.03), dict(label_sigma=0.1), dict(fixed_class_encoding=True),
              dict(distill_weight=1.0), dict(distill_weight=10.0), dict(distill_tau=1.0),
              dict(distill_loss="kl", distill_tau=1.0)],
    # the GPU scale-up (`bash benchmarks/gpu_run.sh transfer`: 128 px, one seed per process): SegFormer-B0 student
    # and LAD teacher, SegFormer-B1 (3.7×) bigger teacher; conv + BN presets stay the CPU's
    "gpu": [dict(student="b0", big_teacher="b1", steps=2000, lr=6e-4, batch_size=16, label_channel_init="random",
                 label_channel_scale=1.0)],
    # the previous `make demo` default: blurred regime, RGB dropout 0.3, random label weights ×1
    "blurred": [dict(regime="blurred", rgb_dropout=0.3, label_channel_init="random", label_channel_scale=1.0)],
}


def cell_key(setting: dict, seed: int) -> str:
    diff = {k: v for k, v in sorted(setting.items()) if DEFAULT.get(k) != v}
    return json.dumps({"seed": seed, **diff}, sort_keys=True)


def _band(label: torch.Tensor, width: int = 2, ignore: int = 255) -> torch.Tensor:
    """Pixels within `width` px (Chebyshev, inside the image) of a pixel of another class: the boundary band."""
    lab = label.long()
    h, w = lab.shape[-2:]
    padded = torch.nn.functional.pad(lab[:, None].float(), (width,) * 4, mode="replicate")[:, 0].long()
    out = torch.zeros_like(lab, dtype=torch.bool)
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            out |= padded[:, dy : dy + h, dx : dx + w] != lab
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


STUDENT_KEYS = ("distill_weight", "distill_tau", "distill_loss", "fixed_class_encoding")  # the last: LAD only


def run_cell(data, setting: dict, seed: int, cache: Cache, teachers_only: bool = False, log=print):
    """Train and evaluate one cell; returns `(rows, models)`, both keyed by model name (module docstring)."""
    s = {**DEFAULT, **setting}
    spec = _spec(setting, seed)
    run = (s["regime"], s["steps"], s["lr"], s["batch_size"], seed)
    teacher = tuple(s[k] for k in TEACHER_KEYS) + (seed,)
    student = tuple(s[k] for k in STUDENT_KEYS)
    plain_student = student[:3]  # the class encoding only matters with a label-assisted teacher
    big = spec.replace(model=s["big_teacher"])
    # the LAD teacher: the student's preset and lr unless `lad_teacher` / `teacher_lr` name others
    lad = spec.replace(model=s["lad_teacher"] or s["student"], lr=s["teacher_lr"] or s["lr"])
    plan = [  # (name, what determines the model, how to train it from the models before it, its teacher)
        ("baseline", ("plain", s["student"]) + run, lambda m: E.train_plain(data, spec), None),
        ("lad_teacher", ("lad",) + teacher, lambda m: E.train_lad_teacher(data, lad), None),
        ("big_teacher", ("plain", s["big_teacher"]) + run, lambda m: E.train_plain(data, big), None),
        ("lad_student", ("lad_student",) + teacher + student, lambda m: E.train_student(data, spec, m["lad_teacher"]),
         "lad_teacher"),
        ("self_student", ("self_student", s["student"]) + run + plain_student,
         lambda m: E.train_student(data, spec, m["baseline"]), "baseline"),
        ("big_student", ("big_student", s["big_teacher"]) + run + plain_student,
         lambda m: E.train_student(data, spec, m["big_teacher"]), "big_teacher"),
    ]
    rows, models = {}, {}
    for name, key, train, teacher_name in plan:
        if teachers_only and teacher_name:
            continue
        start = time.perf_counter()
        model, trainer, seconds = cache.get(key, lambda: train(models))
        log(f"  {name}: {time.perf_counter() - start:.0f} s")
        models[name] = model
        noiser = E.make_noiser(data.num_labels, spec, seed=seed + 1) if name == "lad_teacher" else None
        rows[name] = {**_evaluate(trainer, model, data, noiser), "train_s": seconds, "params": E.count_parameters(model)}
        if teacher_name:
            rows[name]["teacher"] = teacher_name
    return rows, models


MIN_LEAD = 0.005  # a ratio is reported only when the teacher leads the baseline by more than 0.5 mIoU points


def transfer_ratios(rows: dict, split: str) -> dict:
    """(student − baseline) / (teacher − baseline) for each student row, in mIoU; `ratio` is None unless the teacher
    leads by more than `MIN_LEAD` (a ratio over a lead near 0 or below says nothing)."""
    base = rows["baseline"][split]["mean_iou"]
    out = {}
    for name, r in rows.items():
        if "teacher" in r and r["teacher"] in rows:
            lead = rows[r["teacher"]][split]["mean_iou"] - base
            gain = r[split]["mean_iou"] - base
            out[name] = {"gain": gain, "teacher_lead": lead, "ratio": gain / lead if lead > MIN_LEAD else None}
    return out