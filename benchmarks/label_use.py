#!/usr/bin/env python
"""Does a label-assisted (LAD) teacher read its label channel, and when does its student gain?

A self-contained CPU study on fashion-scenes (64 px canvases). The dataset is decoded once into uint8 arrays,
normalised with ImageNet mean/std and trained with a raw PyTorch loop (AdamW, 5 % warmup then linear decay,
batch 16, one thread). Library pieces used: ``load_or_build_fashion_scenes``, ``LabelNoiser`` (paper Eq. 5),
``build_loss("cwd", tau=4)`` and ``add_label_channel`` (HF models).

Run kinds (``kind``):

* ``baseline``   RGB only, CE.
* ``teacher``    RGB + noised label (σ=0.01), CE on two independent noise draws + λ·(CWD(a,b)+CWD(b,a)), λ=1, τ=4
                 (one forward over 2N, as ``LADTeacherTrainer``). Evaluated with a noised label (``miou``), with the
                 label channel set to 0 (``miou_zero``), ``label_gain = miou - miou_zero`` and ``mkl100`` (mean
                 pairwise KL over 3 noise draws, ×100).
* ``student``    RGB only, CE + μ·CWD(student, frozen LAD teacher(x, fresh ŷ)), μ=3, τ=4.
* ``kd_student`` RGB only, CE + μ·CWD(student, frozen plain RGB teacher 2-3× wider).
* ``plain_wide`` the plain RGB teacher of ``kd_student``.

Data regimes (``regime``): ``blur<σ>`` (Gaussian blur of σ px, train and eval images), ``lowc<c>`` (contrast × c
around each image's mean) or both (``blur1.5_lowc0.5``). For each regime the baseline's segment oracle is also
measured: the baseline prediction replaced by its majority vote inside each 4-connected ground-truth segment;
``oracle_gap = oracle mIoU - baseline mIoU`` (how much knowing the grouping alone could add).

Models (``arch``): ``cnn`` (5-layer dilated conv+BN, stride-2 stem, width 32; ``cnn48`` is width 48) and
``segformer`` (SegFormer-tiny from ``SegformerConfig``, ~0.2 M parameters).

Every finished run is appended to ``--json`` (one record per run, with validation and test metrics); a run whose
key is already there is skipped, so the study can be resumed. ``--report`` writes the markdown tables and the plot
from the JSON.

Usage::

    python benchmarks/label_use.py --quick                      # smoke test, < 60 s
    python benchmarks/label_use.py --plan speed                 # steps/s of each arch and kind
    python benchmarks/label_use.py --plan main --seeds 0 1 2    # the regime axis
    python benchmarks/label_use.py --report
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
IGNORE = 255


def _lib():
    """The library pieces (imported late so ``--help`` is instant)."""
    from lad_hf import LabelNoiser, add_label_channel, build_loss
    from lad_hf.fashion_scenes import FASHION_SCENES_ID2LABEL, load_or_build_fashion_scenes
    return LabelNoiser, build_loss, add_label_channel, FASHION_SCENES_ID2LABEL, load_or_build_fashion_scenes


# ------------------------------------------------------------------------------------------------------ data
def load_arrays(cache_dir, num_train, num_val, num_test, canvas=64):
    _, _, _, id2label, load = _lib()
    dsd = load(cache_dir, num_train=num_train, num_validation=num_val, num_test=num_test, canvas_size=canvas, seed=0)
    out = {}
    for split in ("train", "validation", "test"):
        ds = dsd[split]
        x = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in ds["image"]])
        y = np.stack([np.asarray(m, dtype=np.uint8) for m in ds["label"]])
        out[split] = (x, y)
    return out, id2label


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    r = int(math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def parse_regime(regime: str):
    blur, contrast = 0.0, 1.0
    for part in regime.split("_"):
        if part.startswith("blur"):
            blur = float(part[4:])
        elif part.startswith("lowc"):
            contrast = float(part[4:])
        else:
            raise ValueError(f"unknown regime part {part!r}")
    return blur, contrast


def make_regime(arrays, regime: str):
    """Float tensors per split: blurred / contrast-reduced images in [0,1], then ImageNet-normalised."""
    blur, contrast = parse_regime(regime)
    out = {}
    for split, (x, y) in arrays.items():
        xs = []
        for i in range(0, len(x), 500):
            t = torch.from_numpy(x[i:i + 500]).permute(0, 3, 1, 2).float() / 255.0
            t = gaussian_blur(t, blur)
            if contrast != 1.0:
                m = t.mean(dim=(1, 2, 3), keepdim=True)
                t = m + contrast * (t - m)
            xs.append((t - MEAN) / STD)
        out[split] = (torch.cat(xs).contiguous(), torch.from_numpy(y.astype(np.int64)))
    return out


# ---------------------------------------------------------------------------------------------------- models
class DilatedCNN(nn.Module):
    """Stride-2 stem + 4 dilated 3x3 conv+BN+ReLU layers (dilation 1, 2, 4, 8) + 1x1 classifier; logits at H/2."""

    def __init__(self, in_ch: int, num_labels: int, width: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, width, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        body = []
        for d in (1, 2, 4, 8):
            body += [nn.Conv2d(width, width, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        self.body = nn.Sequential(*body)
        self.head = nn.Conv2d(width, num_labels, 1)

    def forward(self, x):
        return self.head(self.body(F.relu(self.stem_bn(self.stem(x)))))


@torch.no_grad()
def widen_cnn(model: DilatedCNN, init: str, scale: float, seed: int) -> DilatedCNN:
    """Same semantics as ``lad_hf.add_label_channel`` for the CNN's stem: label weights 0 or scale·std(W_rgb)·N(0,1)."""
    conv = model.stem
    new = nn.Conv2d(conv.in_channels + 1, conv.out_channels, 3, stride=2, padding=1, bias=False)
    new.weight.zero_()
    new.weight[:, :3] = conv.weight
    if init == "random":
        g = torch.Generator().manual_seed(seed)
        new.weight[:, 3] = torch.randn(new.weight[:, 3].shape, generator=g) * conv.weight.std() * scale
    model.stem = new
    return model


SEGFORMER_TINY = dict(num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[4, 2, 1, 1], hidden_sizes=[16, 32, 64, 128],
                      num_attention_heads=[1, 1, 2, 4], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=64)


class HFWrap(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def build_model(arch: str, num_labels: int, id2label, label: bool, init: str, scale: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if arch.startswith("cnn"):
        width = int(arch[3:] or 32)
        m = DilatedCNN(3, num_labels, width)
        return widen_cnn(m, init, scale, seed) if label else m
    if arch == "segformer":
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
        cfg = SegformerConfig(num_channels=3, num_labels=num_labels, id2label=dict(id2label),
                              label2id={v: k for k, v in id2label.items()}, **SEGFORMER_TINY)
        m = SegformerForSemanticSegmentation(cfg)
        if label:
            _, _, add_label_channel, _, _ = _lib()
            add_label_channel(m, init=init, scale=scale, seed=seed)
        return HFWrap(m)
    raise ValueError(f"unknown arch {arch!r}")


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------------- metrics
def confusion(pred: torch.Tensor, y: torch.Tensor, k: int) -> np.ndarray:
    valid = y != IGNORE
    return torch.bincount(y[valid] * k + pred[valid], minlength=k * k).view(k, k).numpy().astype(np.int64)


def miou(conf: np.ndarray) -> float:
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0  # classes present in the ground truth
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, inter / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou) * 100)


def segment_oracle(pred: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
    """Majority vote of `pred` inside each 4-connected ground-truth segment (the library's segment oracle)."""
    from lad_hf.fashion_scenes.experiments import segment_oracle as oracle

    return oracle(pred, label, k, IGNORE)

def mean_pairwise_kl(logits: torch.Tensor) -> float:
    """logits [D,N,C,H,W] -> the mean pairwise KL between draws (`lad_hf.metrics.mean_pairwise_kl`)."""
    from lad_hf.metrics import mean_pairwise_kl as mkl

    return float(mkl(logits))

@torch.no_grad()
def predict_logits(model, x, y=None, mode="rgb", noiser=None, bs=100):
    """Logits at label size. mode: rgb | noised | zero (label channel set to 0)."""
    model.eval()
    outs = []
    for i in range(0, len(x), bs):
        xb = x[i:i + bs]
        if mode == "noised":
            xb = noiser.assist(xb, y[i:i + bs])
        elif mode == "zero":
            xb = torch.cat([xb, torch.zeros_like(xb[:, :1])], 1)
        lo = model(xb)
        outs.append(F.interpolate(lo, size=x.shape[-2:], mode="bilinear", align_corners=False))
    return torch.cat(outs)


def evaluate(model, kind, data, split, k, seed=0, oracle=False, mkl=True):
    x, y = data[split]
    res = {}
    if kind == "teacher":
        LabelNoiser = _lib()[0]
        noiser = LabelNoiser(k, sigma=0.01, generator=torch.Generator().manual_seed(10_000 + seed))
        draws = [predict_logits(model, x, y, "noised", noiser) for _ in range(3 if mkl else 1)]
        res["miou"] = miou(confusion(draws[0].argmax(1), y, k))
        res["miou_zero"] = miou(confusion(predict_logits(model, x, mode="zero").argmax(1), y, k))
        res["label_gain"] = res["miou"] - res["miou_zero"]
        if mkl:
            res["mkl100"] = 100 * mean_pairwise_kl(torch.stack(draws))
    else:
        pred = predict_logits(model, x).argmax(1)
        res["miou"] = miou(confusion(pred, y, k))
        if oracle:
            p, lab = pred.numpy(), y.numpy()
            conf = np.zeros((k, k), np.int64)
            for i in range(len(p)):
                o = segment_oracle(p[i], lab[i], k)
                conf += confusion(torch.from_numpy(o), y[i], k)
            res["oracle_miou"] = miou(conf)
            res["oracle_gap"] = res["oracle_miou"] - res["miou"]
    return res


# ---------------------------------------------------------------------------------------------------- training
def upsample(lo, size):
    return F.interpolate(lo, size=size, mode="bilinear", align_corners=False)


def train(model, kind, data, k, steps, lr, bs, seed, teacher=None, curve_every=0, curve_fn=None, wd=0.01):
    LabelNoiser, build_loss = _lib()[:2]
    x, y = data["train"]
    g = torch.Generator().manual_seed(seed)
    noiser = LabelNoiser(k, sigma=0.01, generator=torch.Generator().manual_seed(seed + 1))
    cwd = build_loss("cwd", tau=4.0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    warm = max(1, int(0.05 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    if teacher is not None:
        teacher.eval()
    curve = []
    t0 = time.perf_counter()
    for step in range(steps):
        model.train()
        idx = torch.randint(len(x), (bs,), generator=g)
        xb, yb = x[idx], y[idx]
        flip = torch.rand(bs, generator=g) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
        yb = torch.where(flip.view(-1, 1, 1), yb.flip(-1), yb)
        size = yb.shape[-2:]
        if kind == "teacher":
            inp = torch.cat([noiser.assist(xb, yb), noiser.assist(xb, yb)])
            l1, l2 = model(inp).chunk(2)
            loss = (F.cross_entropy(upsample(l1, size), yb, ignore_index=IGNORE)
                    + F.cross_entropy(upsample(l2, size), yb, ignore_index=IGNORE)
                    + 1.0 * (cwd(l1, l2) + cwd(l2, l1)))
        else:
            lo = model(xb)
            loss = F.cross_entropy(upsample(lo, size), yb, ignore_index=IGNORE)
            if kind in ("student", "kd_student"):
                with torch.no_grad():
                    t_in = noiser.assist(xb, yb) if kind == "student" else xb
                    t_lo = teacher(t_in)
                loss = loss + 3.0 * cwd(lo, t_lo)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if curve_every and ((step + 1) % curve_every == 0 or step + 1 == steps):
            curve.append(dict(step=step + 1, **curve_fn(model)))
    return time.perf_counter() - t0, curve


# ---------------------------------------------------------------------------------------------------- runs
class Study:
    def __init__(self, args):
        self.args = args
        self.json_path = Path(args.json)
        self.records = json.loads(self.json_path.read_text()) if self.json_path.exists() else []
        self.arrays, self.id2label = load_arrays(args.cache_dir, args.num_train, args.num_val, args.num_test)
        self.k = len(self.id2label)
        self._data = {}
        self._models = {}

    def data(self, regime):
        if regime not in self._data:
            self._data = {regime: make_regime(self.arrays, regime)}  # keep one regime in memory
        return self._data[regime]

    @staticmethod
    def key(spec):
        return json.dumps({k: spec[k] for k in sorted(spec)}, sort_keys=True)

    def find(self, spec):
        kk = self.key(spec)
        for r in reversed(self.records):  # latest first
            if r["key"] == kk:
                return r
        return None

    def save(self, rec):
        self.records.append(rec)
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.records, indent=1) + "\n")
        os.replace(tmp, self.json_path)

    def spec(self, kind, regime, arch="cnn", steps=None, seed=0, lr=None, init="random", scale=1.0, teacher=None):
        s = dict(kind=kind, regime=regime, arch=arch, steps=steps or self.args.steps, seed=seed,
                 lr=lr or self.args.lr, bs=self.args.bs, ntrain=self.args.num_train)
        if kind == "teacher":
            s.update(init=init, scale=scale)
        if teacher is not None:
            s["teacher"] = teacher
        return s

    def run(self, spec, need_model=False, splits=("validation", "test")):
        """Train (or skip if recorded) and return (record, model or None). Teachers record a validation curve."""
        curve_every = self.args.curve_every if spec["kind"] == "teacher" else 0
        rec = self.find(spec)
        mk = self.key(spec)
        if rec is not None and not all(sp in rec for sp in splits):
            rec = None  # recorded without a split we need now (e.g. an lr-sweep run): train again
        if rec is not None and (not need_model or mk in self._models):
            return rec, self._models.get(mk)
        kind, data = spec["kind"], self.data(spec["regime"])
        teacher = None
        if "teacher" in spec:
            _, teacher = self.run(spec["teacher"], need_model=True)
        label = kind == "teacher"
        model = build_model(spec["arch"], self.k, self.id2label, label, spec.get("init", "random"),
                            spec.get("scale", 1.0), spec["seed"])
        curve_fn = (lambda m: evaluate(m, kind, data, "validation", self.k, spec["seed"], mkl=False)) if curve_every else None
        secs, curve = train(model, "kd_student" if kind == "kd_student" else kind, data, self.k, spec["steps"],
                            spec["lr"], spec["bs"], spec["seed"], teacher, curve_every, curve_fn)
        out = dict(key=mk, spec=spec, params=n_params(model), train_s=round(secs, 1),
                   steps_per_s=round(spec["steps"] / secs, 2), time=datetime.datetime.now().isoformat(timespec="seconds"))
        for split in splits:
            out[split] = evaluate(model, kind, data, split, self.k, spec["seed"], oracle=(kind == "baseline"))
        if curve:
            out["curve"] = curve
        if rec is None:
            self.save(out)
            rec = out
        short = {s: {m: round(v, 2) for m, v in out[s].items()} for s in splits}
        print(f"[{out['time']}] {kind:10s} {spec['regime']:16s} {spec['arch']:9s} steps={spec['steps']} seed={spec['seed']} "
              f"lr={spec['lr']} {spec.get('init', '')}{spec.get('scale', '')} {secs:.0f}s  {short}", flush=True)
        if need_model:
            self._models[mk] = model
        return rec, model

    # the three run kinds of one regime/seed
    def trio(self, regime, seed, arch="cnn", steps=None, lr=None, init="random", scale=1.0, kd=False):
        base = self.spec("baseline", regime, arch, steps, seed, lr)
        self.run(base)
        tspec = self.spec("teacher", regime, arch, steps, seed, lr, init, scale)
        self.run(tspec, need_model=True)
        self.run(self.spec("student", regime, arch, steps, seed, lr, teacher=tspec))
        if kd:
            wide = self.spec("plain_wide", regime, "cnn48" if arch == "cnn" else arch, steps, seed, lr)
            self.run(wide, need_model=True)
            self.run(self.spec("kd_student", regime, arch, steps, seed, lr, teacher=wide))
        self._models.clear()


# ---------------------------------------------------------------------------------------------------- plans
def plan_speed(st: Study):
    data = st.data("blur0")
    out = {}
    for arch in ("cnn", "cnn48", "segformer"):
        for kind in ("baseline", "teacher"):
            m = build_model(arch, st.k, st.id2label, kind == "teacher", "random", 1.0, 0)
            secs, _ = train(m, kind, data, st.k, 20, 1e-3, st.args.bs, 0)
            out[f"{arch}/{kind}"] = round(20 / secs, 2)
            print(arch, kind, f"{20 / secs:.2f} steps/s, {n_params(m)} params", flush=True)
    return out


def plan_quick(st: Study):
    for regime in ("blur0", "blur1.5"):
        st.trio(regime, 0, steps=st.args.steps, kd=True)
    st.trio("blur0", 0, arch="segformer", steps=st.args.steps)


# ---------------------------------------------------------------------------------------------------- report
def fmt(vals, digits=1):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def collect(records, split, **match):
    out = {}
    for r in records:
        s = r["spec"]
        if split not in r or any(s.get(k) != v for k, v in match.items()):
            continue
        out[s["seed"]] = r[split]  # latest record of a seed wins
    return [out[k] for k in sorted(out)]


def row_for(records, split, regime, arch, steps, lr, init="random", scale=1.0):
    b = collect(records, split, kind="baseline", regime=regime, arch=arch, steps=steps, lr=lr)
    t = collect(records, split, kind="teacher", regime=regime, arch=arch, steps=steps, lr=lr, init=init, scale=scale)
    s = [r for r in records if r["spec"]["kind"] == "student" and r["spec"]["regime"] == regime
         and r["spec"]["arch"] == arch and r["spec"]["steps"] == steps and r["spec"]["lr"] == lr
         and r["spec"]["teacher"].get("init") == init and r["spec"]["teacher"].get("scale") == scale]
    kd = collect(records, split, kind="kd_student", regime=regime, arch=arch, steps=steps, lr=lr)
    wide = collect(records, split, kind="plain_wide", regime=regime, steps=steps, lr=lr,
                   arch="cnn48" if arch == "cnn" else arch)
    if not (b or t):
        return None
    s = [r for r in s if split in r]
    bm = {r["spec"]["seed"]: r[split]["miou"] for r in records if split in r and r["spec"]["kind"] == "baseline"
          and r["spec"]["regime"] == regime and r["spec"]["arch"] == arch and r["spec"]["steps"] == steps
          and r["spec"]["lr"] == lr}
    sm = {r["spec"]["seed"]: r[split]["miou"] for r in s}
    sg = [sm[k] - bm[k] for k in sm if k in bm]
    return dict(
        n=max(len(b), len(t)),
        base=fmt([x["miou"] for x in b]), oracle_gap=fmt([x.get("oracle_gap") for x in b]),
        teacher=fmt([x["miou"] for x in t]), zero=fmt([x["miou_zero"] for x in t]),
        gain=fmt([x["label_gain"] for x in t]), mkl=fmt([x.get("mkl100") for x in t], 2),
        t_vs_b=fmt([tt["miou"] - bb["miou"] for tt, bb in zip(t, b)]),
        student=fmt([sm[k] for k in sorted(sm)]), s_gain=fmt(sg),
        wide=fmt([x["miou"] for x in wide]), kd=fmt([x["miou"] for x in kd]),
    )


HEADER = ("| regime | arch | steps | lr | label init | seeds | baseline | oracle gap | teacher (noised ŷ) | teacher (ŷ=0) "
          "| label_gain | mKL×100 | teacher − baseline | LAD student | student − baseline | plain wide | CWD student |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def table(records, split, rows):
    lines = [HEADER]
    for (regime, arch, steps, lr, init, scale) in rows:
        r = row_for(records, split, regime, arch, steps, lr, init, scale)
        if r is None:
            continue
        lab = "zeros" if init == "zeros" else f"rand×{scale:g}"
        lines.append(f"| {regime} | {arch} | {steps} | {lr:g} | {lab} | {r['n']} | {r['base']} | {r['oracle_gap']} | {r['teacher']} "
                     f"| {r['zero']} | {r['gain']} | {r['mkl']} | {r['t_vs_b']} | {r['student']} | {r['s_gain']} "
                     f"| {r['wide']} | {r['kd']} |")
    return "\n".join(lines)


def all_rows(records):
    seen = []
    for r in records:
        s = r["spec"]
        if s["kind"] in ("baseline", "teacher"):
            key = (s["regime"], s["arch"], s["steps"], s["lr"], s.get("init", "random"), s.get("scale", 1.0))
            if s["kind"] == "baseline":
                key = key[:4] + ("random", 1.0)
            if key not in seen:
                seen.append(key)
    return seen


def plot_curves(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = [r for r in records if r.get("curve") and r["spec"]["seed"] == 0 and r["spec"].get("scale") == 1.0
              and r["spec"].get("init") == "random" and r["spec"]["lr"] == 3e-3]
    if not curves:
        curves = [r for r in records if r.get("curve")]
    if not curves:
        return False
    longest = max(r["spec"]["steps"] for r in curves)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for r in curves:
        s = r["spec"]
        lab = f"{s['arch']} {s['regime']} {s['steps']} steps seed {s['seed']}"
        st = [c["step"] for c in r["curve"]]
        ax[0].plot(st, [c["label_gain"] for c in r["curve"]], marker="o", ms=3, label=lab)
        if s["steps"] == longest:
            line, = ax[1].plot(st, [c["miou"] for c in r["curve"]], marker="o", ms=3, label=lab + " (noised ŷ)")
            ax[1].plot(st, [c["miou_zero"] for c in r["curve"]], ls="--", color=line.get_color(), label=lab + " (ŷ=0)")
    ax[0].axhline(0, color="k", lw=0.5)
    ax[0].set(xlabel="training step", ylabel="validation label_gain (mIoU points)", title="LAD teacher: label_gain")
    ax[1].set(xlabel="training step", ylabel="validation mIoU", title="teacher mIoU with / without label")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(args):
    records = json.loads(Path(args.json).read_text())
    rows = all_rows(records)
    out = [f"<!-- generated by benchmarks/label_use.py --report from {Path(args.json).name} -->"]
    for split in ("validation", "test"):
        out.append(f"\n### {split} (mIoU %, mean ± std over seeds)\n")
        out.append(table(records, split, rows))
    plotted = plot_curves(records, Path(args.png))
    text = "\n".join(out) + "\n"
    Path(args.tables).write_text(text)
    print(text)
    print("plot:", plotted)


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (< 60 s), writes to /tmp")
    p.add_argument("--plan", default="main",
                   choices=["speed", "main", "lr", "stem", "long", "init", "kd", "bt", "quick"])
    p.add_argument("--regimes", nargs="+", default=["blur0", "blur1", "blur1.5", "blur2.5"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--arch", default="cnn")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3, 1e-2])
    p.add_argument("--bs", type=int, default=16)
    p.add_argument("--curve_every", type=int, default=200)
    p.add_argument("--num_train", type=int, default=3000)
    p.add_argument("--num_val", type=int, default=300)
    p.add_argument("--num_test", type=int, default=500)
    p.add_argument("--cache_dir", default="/tmp/lu/data")
    p.add_argument("--json", default=str(RESULTS / "label_use.json"))
    p.add_argument("--png", default=str(RESULTS / "label_use.png"))
    p.add_argument("--tables", default="/tmp/lu/tables.md")
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.num_train, args.num_val, args.num_test, args.steps, args.bs = 64, 32, 32, 8, 8
        args.plan, args.curve_every = "quick", 4
        args.cache_dir = "/tmp/lu_quick/data"
        args.json, args.png, args.tables = "/tmp/lu_quick/label_use.json", "/tmp/lu_quick/label_use.png", "/tmp/lu_quick/tables.md"
        Path(args.json).unlink(missing_ok=True)
    if args.report:
        return report(args)
    t0 = time.perf_counter()
    st = Study(args)
    print(f"data ready in {time.perf_counter() - t0:.1f}s; {st.k} classes", flush=True)
    if args.plan == "speed":
        print(json.dumps(plan_speed(st)))
    elif args.plan == "quick":
        plan_quick(st)
        report(args)
    elif args.plan == "main":  # the regime axis: baseline, LAD teacher, LAD student per regime and seed
        for seed in args.seeds:
            for regime in args.regimes:
                st.trio(regime, seed, args.arch)
    elif args.plan == "kd":
        for seed in args.seeds:
            for regime in args.regimes:
                st.trio(regime, seed, args.arch, kd=True)
    elif args.plan == "lr":  # choose lr on validation (baseline and teacher)
        for lr in args.lrs:
            for regime in args.regimes:
                st.run(st.spec("baseline", regime, args.arch, lr=lr, seed=args.seeds[0]), splits=("validation",))
                st.run(st.spec("teacher", regime, args.arch, lr=lr, seed=args.seeds[0]), splits=("validation",))
    elif args.plan == "bt":  # baseline + LAD teacher only
        for seed in args.seeds:
            for regime in args.regimes:
                st.run(st.spec("baseline", regime, args.arch, seed=seed))
                st.run(st.spec("teacher", regime, args.arch, seed=seed))
    elif args.plan == "stem":
        for seed in args.seeds:
            for regime in args.regimes:
                st.trio(regime, seed, args.arch)
    elif args.plan == "long":
        for seed in args.seeds:
            for regime in args.regimes:
                st.trio(regime, seed, args.arch, steps=args.steps)
    elif args.plan == "init":
        for seed in args.seeds:
            for regime in args.regimes:
                for init, scale in (("zeros", 1.0), ("random", 0.1), ("random", 1.0)):
                    st.run(st.spec("teacher", regime, args.arch, seed=seed, init=init, scale=scale))
    print(f"done in {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
