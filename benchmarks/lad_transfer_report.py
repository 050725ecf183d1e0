"""`benchmarks/lad_transfer.py --report`: tables (mean ± std over seeds) and the transfer figure from the JSON rows."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

STUDENTS = ("lad_student", "self_student", "big_student")
NAMES = {"baseline": "baseline (= same-size plain teacher)", "lad_teacher": "LAD teacher", "lad_student": "LAD student",
         "self_student": "self-distillation student (CWD ← baseline)", "big_teacher": "bigger plain teacher",
         "big_student": "CWD student ← bigger teacher"}


def load(path: Path) -> list:
    """The cells of a JSON-lines log, their transfer ratios recomputed by the current rule."""
    from lad_hf.fashion_scenes.transfer import transfer_ratios

    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in records:
        r["transfer"] = {sp: transfer_ratios(r["rows"], sp) for sp in ("validation", "test")}
    return records


def setting_name(rec: dict) -> str:
    """`regime: what differs from the default`, e.g. `mosaic: label init random ×1, RGB dropout 0.3`."""
    key = json.loads(rec["key"])
    key.pop("seed")
    regime = key.pop("regime", rec["setting"]["regime"])
    parts = []
    if "label_channel_init" in key or "label_channel_scale" in key:
        s = rec["setting"]
        parts.append(f"label init {s['label_channel_init']} ×{s['label_channel_scale']:g}")
        key.pop("label_channel_init", None)
        key.pop("label_channel_scale", None)
    if "rgb_dropout" in key:
        parts.append(f"RGB dropout {key.pop('rgb_dropout'):g}")
    parts += [f"{k}={v}" for k, v in sorted(key.items())]
    return f"{regime}: " + (", ".join(parts) or "default")


def _fmt(vals, scale=100.0, sign=False) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    a = np.asarray(vals, dtype=float) * scale
    s = f"{a.mean():+.1f}" if sign else f"{a.mean():.1f}"
    return s + (f" ± {a.std(ddof=1):.1f}" if len(a) > 1 else "")


def _ratio(vals) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    a = np.asarray(vals, dtype=float)
    return f"{a.mean():.2f}" + (f" ± {a.std(ddof=1):.2f}" if len(a) > 1 else "")


def group(records: list) -> dict:
    out = defaultdict(list)
    for r in records:
        out[(r["plan"], setting_name(r))].append(r)
    return out


def setting_table(recs: list, split: str) -> str:
    """One setting: every model's mIoU, gain over the baseline, label gains, mKL, oracle, band accuracy, ratio."""
    lines = [f"| model ({split}) | mIoU | − baseline | label gain (ŷ=0 / shuffled) | mKL×100 | segment oracle | "
             "acc. boundary band / interior | transfer ratio |", "|---|---|---|---|---|---|---|---|"]
    models = [m for m in NAMES if all(m in r["rows"] for r in recs)]
    for m in models:
        rows = [r["rows"][m][split] for r in recs]
        base = [r["rows"]["baseline"][split]["mean_iou"] for r in recs]
        gain = "–" if m == "baseline" else _fmt([x["mean_iou"] - b for x, b in zip(rows, base)], sign=True)
        lg = "–"
        if "label_gain" in rows[0]:
            lg = f"{_fmt([x['label_gain'] for x in rows], sign=True)} / {_fmt([x.get('label_gain_shuffled') for x in rows], sign=True)}"
        mkl = _fmt([x.get("mkl_x100") for x in rows], scale=1.0) if "mkl_x100" in rows[0] else "–"
        ratio = _ratio([r["transfer"][split].get(m, {}).get("ratio") for r in recs]) if m in STUDENTS else "–"
        lines.append(f"| {NAMES[m]} | {_fmt([x['mean_iou'] for x in rows])} | {gain} | {lg} | {mkl} | "
                     f"{_fmt([x['oracle_mean_iou'] for x in rows])} | {_fmt([x['acc_band'] for x in rows])} / "
                     f"{_fmt([x['acc_interior'] for x in rows])} | {ratio} |")
    return "\n".join(lines)


def summary_table(groups: dict, split: str) -> str:
    """One line per setting: teacher lead, label gains, and each student's gain over the baseline."""
    lines = [f"| plan | regime: setting | seeds | LAD teacher − baseline | label gain (ŷ=0 / shuffled) | LAD student | "
             f"self-distillation | bigger-teacher CWD | LAD − self ({split}) | transfer ratio LAD / bigger |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (plan, name), recs in sorted(groups.items()):
        def gains(m):
            return [r["rows"][m][split]["mean_iou"] - r["rows"]["baseline"][split]["mean_iou"] for r in recs if m in r["rows"]]

        t = [r["rows"]["lad_teacher"][split] for r in recs]
        diff = [r["rows"]["lad_student"][split]["mean_iou"] - r["rows"]["self_student"][split]["mean_iou"]
                for r in recs if "self_student" in r["rows"]]
        lines.append(f"| {plan} | {name} | {len(recs)} | {_fmt(gains('lad_teacher'), sign=True)} | "
                     f"{_fmt([x['label_gain'] for x in t], sign=True)} / {_fmt([x.get('label_gain_shuffled') for x in t], sign=True)} | "
                     f"{_fmt(gains('lad_student'), sign=True)} | {_fmt(gains('self_student'), sign=True)} | "
                     f"{_fmt(gains('big_student'), sign=True)} | {_fmt(diff, sign=True)} | "
                     f"{_ratio([r['transfer'][split]['lad_student']['ratio'] for r in recs])} / "
                     f"{_ratio([r['transfer'][split]['big_student']['ratio'] for r in recs])} |")
    return "\n".join(lines)


def acceptance(records: list, regime: str = "mosaic") -> str:
    """The regime's acceptance criteria on validation, each with its measured value and whether it holds."""
    recs = [r for r in records if r["setting"]["regime"] == regime]
    if not recs:
        return f"(no {regime} cells yet)"

    def val(r, m, key="mean_iou"):
        return r["rows"][m]["validation"][key]

    per_seed = {r["seed"]: r for r in recs}  # one baseline per seed (cells of one seed share it)
    gap = [val(r, "baseline", "oracle_mean_iou") - val(r, "baseline") for r in per_seed.values()]
    lines = ["| criterion (validation) | measured | holds |", "|---|---|---|",
             f"| baseline's segment-oracle gap ≥ +5 | {_fmt(gap, sign=True)} ({len(gap)} seeds) | "
             f"{'yes' if np.mean(gap) >= 0.05 else 'no'} |"]
    for preset in sorted({r["setting"]["big_teacher"] for r in recs}):
        rr = [r for r in recs if r["setting"]["big_teacher"] == preset]
        ratio = rr[0]["rows"]["big_teacher"]["params"] / rr[0]["rows"]["baseline"]["params"]
        lead = [val(r, "big_teacher") - val(r, "baseline") for r in rr]
        need = "≥ +4 (4-8× teacher)" if ratio >= 4 else "(2-4× teacher; the +4 criterion is for 4-8×)"
        lines.append(f"| plain teacher {preset} ({ratio:.1f}× params) − baseline {need} | {_fmt(lead, sign=True)} | "
                     f"{('yes' if np.mean(lead) >= 0.04 else 'no') if ratio >= 4 else '–'} |")
    by_sigma = defaultdict(list)
    for r in recs:
        s = r["setting"]
        teacher = (s["label_channel_init"], s["label_channel_scale"], s["rgb_dropout"])
        by_sigma[teacher].append(r)
    for (init, scale, drop), rr in sorted(by_sigma.items()):
        name = f"LAD teacher (label init {init} ×{scale:g}, RGB dropout {drop:g})"
        main = [r for r in rr if r["setting"]["label_sigma"] == 0.01]
        if main:
            g0 = [val(r, "lad_teacher", "label_gain") for r in main]
            gs = [val(r, "lad_teacher", "label_gain_shuffled") for r in main]
            ok = np.mean(g0) >= 0.05 and np.mean(gs) >= 0.05
            lines.append(f"| {name}: label gain ≥ +5 by both measures (σ 0.01) | {_fmt(g0, sign=True)} / "
                         f"{_fmt(gs, sign=True)} | {'yes' if ok else 'no'} |")
        sig = sorted({r["setting"]["label_sigma"] for r in rr})
        if len(sig) > 1:
            means = [np.mean([val(r, "lad_teacher") for r in rr if r["setting"]["label_sigma"] == x]) for x in sig]
            falls = all(a >= b for a, b in zip(means, means[1:]))
            lines.append(f"| {name}: mIoU falls as σ grows ({', '.join(f'{x:g}' for x in sig)}) | "
                         f"{' → '.join(f'{100 * m:.1f}' for m in means)} | {'yes' if falls else 'no'} |")
    return "\n".join(lines)


def figure(records: list, path: Path) -> None:
    """Student gain against teacher gain (validation), one point per student run, coloured by teacher kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"lad_student": ("tab:red", "LAD teacher"), "self_student": ("tab:grey", "same-size plain (self)"),
               "big_student": ("tab:blue", "bigger plain teacher")}
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for m, (c, label) in colours.items():
        pts = [(r["transfer"]["validation"][m]["teacher_lead"], r["transfer"]["validation"][m]["gain"])
               for r in records if m in r["transfer"]["validation"]]
        if pts:
            x, y = zip(*pts)
            ax.scatter(100 * np.asarray(x), 100 * np.asarray(y), c=c, label=label, s=22, alpha=0.8)
    lim = ax.get_xlim()
    ax.plot(lim, lim, "k:", lw=0.8, label="ratio 1")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="teacher − baseline (val mIoU points)", ylabel="student − baseline (val mIoU points)",
           title="Transfer on fashion-scenes (one point per run)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def setup_lines(records: list) -> list:
    """What every cell shares: data sizes, machines, dates, the models and the schedule."""
    data = {json.dumps(r["data"], sort_keys=True) for r in records}
    machines = sorted({f"{r['machine']['device']}, torch {r['machine']['torch']}, transformers "
                       f"{r['machine']['transformers']}" for r in records})
    s = records[0]["setting"]
    return [f"- data: fashion-scenes, {'; '.join(sorted(data))} (train/validation/test scenes)",
            f"- models: student {s['student']}; LAD teacher = the student's architecture + the label channel; "
            f"bigger plain teacher {s['big_teacher']} (unless a row's setting says otherwise); random init",
            f"- schedule: {s['steps']} steps × batch {s['batch_size']}, AdamW {s['lr']:g}, linear decay, 5 % warmup; "
            f"σ {s['label_sigma']:g}, λ {s['consistency_weight']:g}, μ {s['distill_weight']:g}, τ {s['distill_tau']:g} "
            "(unless a row's setting says otherwise)",
            f"- machines: {'; '.join(machines)}; 1 torch thread per cell, several cells side by side on 2 shared cores",
            f"- dates: {', '.join(sorted({r['date'] for r in records}))}",
            "- mIoU in %, mean ± std over seeds (std only with ≥ 2 seeds). Transfer ratio = (student − baseline) / "
            "(teacher − baseline); the self-distillation student's teacher is the baseline itself, so it has no ratio."]


def write_report(json_path: Path) -> None:
    records = load(json_path)
    groups = group(records)
    students = [r for r in records if "lad_student" in r["rows"]]
    parts = ["# LAD transfer on fashion-scenes: the student's gain against its controls", "",
             f"Generated by `python benchmarks/lad_transfer.py --report` from `{json_path.name}` "
             f"({len(records)} cells). Each cell's command, machine and date are in its JSON row.", "",
             *setup_lines(records), "",
             "## Acceptance of the mosaic regime", "", acceptance(records), "",
             "## Summary (validation: every choice is made here)", "", summary_table(
                 {k: v for k, v in groups.items() if any("lad_student" in r["rows"] for r in v)}, "validation"), "",
             "## Summary (test: reported, never used to choose)", "", summary_table(
                 {k: v for k, v in groups.items() if any("lad_student" in r["rows"] for r in v)}, "test"), ""]
    for (plan, name), recs in sorted(groups.items()):
        parts += [f"## {plan}: {name} ({len(recs)} seed{'s' if len(recs) > 1 else ''})", "",
                  setting_table(recs, "validation"), "", setting_table(recs, "test"), ""]
    json_path.with_suffix(".md").write_text("\n".join(parts))
    json_path.with_suffix(".json").write_text(json.dumps(records, indent=1, default=float) + "\n")
    if students:
        figure(students, json_path.with_suffix(".png"))
