"""The training record (`lad_training_info.json`) and lad_hf's model card, shared by the trainers and `lad-hf export`.

The card is built with `huggingface_hub`'s `ModelCard` / `ModelCardData` / `EvalResult` from the record: what kind of
model it is (baseline, label-assisted teacher, distilled student, or unknown when there is no record), the settings
that applied, mean IoU first and then per-class IoU (both in %), and the paper's citation. It names Hub ids only
(`base_model`, `datasets`, the teacher): a local path means nothing on the Hub.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

PAPER_ARXIV = "2407.13254"
PAPER_TITLE = ("Make a Strong Teacher with Label Assistance: A Novel Knowledge Distillation Approach for Semantic "
               "Segmentation")
PAPER_BIBTEX = """@article{qiu2024lad,
  title   = {Make a Strong Teacher with Label Assistance: A Novel Knowledge Distillation Approach for Semantic Segmentation},
  author  = {Qiu, Shoumeng and Chen, Jie and Li, Xinrun and Wan, Ru and Xue, Xiangyang and Pu, Jian},
  journal = {arXiv preprint arXiv:2407.13254},
  year    = {2024}
}"""

# Licences of the base models the recipes start from, as their Hub cards state them (used when the base model's own
# card is not in the local Hub cache). nvidia/mit-b*: "license: other", the NVIDIA Source Code License for SegFormer
# (non-commercial); facebook/dinov2-small/-base: apache-2.0.
_SEGFORMER_LICENSE = ("other", "nvidia-source-code-license", "https://github.com/NVlabs/SegFormer/blob/master/LICENSE")
KNOWN_LICENSES: Dict[str, Tuple[str, Optional[str], Optional[str]]] = {
    "nvidia/mit-b0": _SEGFORMER_LICENSE,
    "nvidia/mit-b1": _SEGFORMER_LICENSE,
    "nvidia/mit-b2": _SEGFORMER_LICENSE,
    "facebook/dinov2-small": ("apache-2.0", None, None),
    "facebook/dinov2-base": ("apache-2.0", None, None),
}

# Config fields recorded by every trainer (those a Config has); the Hub options and paths are not
RECORD_FIELDS = (
    "max_steps", "num_train_epochs", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
    "seed", "bf16", "fp16", "ignore_index", "eval_window_size", "eval_window_stride",
    "label_sigma", "class_noise", "pixel_noise", "ignore_mode",
    "dual_path", "consistency_loss", "consistency_weight", "consistency_tau", "consistency_symmetric",
    "label_channel_init", "label_channel_scale", "rgb_dropout",
    "distill_loss", "distill_tau", "distill_weight", "fixed_class_encoding", "teacher_model_name_or_path",
)
# the teacher's evaluation kept with it (`config.lad_eval`) and copied into a student's record
TEACHER_EVAL_KEYS = ("eval_mean_iou", "eval_label_gain", "eval_mean_iou_no_label", "eval_label_gain_shuffled",
                     "eval_mean_iou_shuffled_label")
_SKIP_METRICS = ("_runtime", "_per_second", "epoch", "_model_preparation_time")


# ------------------------------------------------------------------------------------------------ training record


def _finite(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def training_record(args, model, teacher=None, extra: Optional[Dict] = None, metrics: Optional[Dict] = None,
                    state=None) -> Dict:
    """How a model was trained, from the trainer's Config, its model (and teacher), its last metrics and state.

    `extra` (e.g. the CLI's data and model options: `dataset_name`, `config_name`, `eval_split`...) is merged last.
    """
    from .models import is_label_assisted

    info = {k: getattr(args, k) for k in RECORD_FIELDS if getattr(args, k, None) is not None}
    if getattr(args, "max_steps", 0) and args.max_steps > 0:
        info.pop("num_train_epochs", None)  # max_steps overrides the epochs: they did not apply
    base = getattr(getattr(model, "config", None), "_name_or_path", None)
    if base:
        info["model_name_or_path"] = base
    info["label_assisted"] = is_label_assisted(model)
    info["lora"] = hasattr(model, "peft_config")
    run_name = getattr(args, "run_name", None)
    if isinstance(run_name, str) and run_name and "/" not in run_name and run_name != getattr(args, "output_dir", None):
        info["run_name"] = run_name
    if teacher is not None:
        info["teacher_label_assisted"] = is_label_assisted(teacher)
        if not info.get("teacher_model_name_or_path") and getattr(teacher.config, "_name_or_path", None):
            info["teacher_model_name_or_path"] = teacher.config._name_or_path
        t_eval = {k: v for k, v in (getattr(teacher.config, "lad_eval", None) or {}).items() if _finite(v) is not None}
        if t_eval:
            info["teacher_eval"] = t_eval
    if state is not None and getattr(state, "global_step", 0):
        info["trained_steps"] = int(state.global_step)
        if getattr(state, "epoch", None):
            info["trained_epochs"] = round(float(state.epoch), 4)
    if metrics:
        info["eval_metrics"] = {k: v for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, (int, float))}
    info.update(extra or {})
    return info


# ------------------------------------------------------------------------------------------------ model card


def base_model_license(repo_id: Optional[str], model_path: Optional[str] = None):
    """(license, license_name, license_link) of the base model: its card in the local Hub cache, else the card the
    Trainer wrote into the run folder (it copies the base model's licence), else `KNOWN_LICENSES`; None when unknown."""
    import os

    from huggingface_hub import ModelCard, try_to_load_from_cache

    if not repo_id:
        return None
    cards = [try_to_load_from_cache(repo_id, "README.md")]
    if model_path:
        cards.append(os.path.join(model_path, "README.md"))
    for path in cards:
        if isinstance(path, str) and os.path.isfile(path):
            try:
                data = ModelCard.load(path, ignore_metadata_errors=True).data
            except Exception:  # noqa: BLE001 - an unreadable card is no licence
                continue
            if data.get("license") and data.get("base_model") in (None, repo_id) and "lad_hf" not in (data.get("tags") or []):
                return data.get("license"), data.get("license_name"), data.get("license_link")
    return KNOWN_LICENSES.get(repo_id)


def model_kind(model, info: Dict) -> str:
    """"teacher", "distilled", "baseline" (a record without a teacher) or "unknown" (no record)."""
    from .models import is_label_assisted

    if is_label_assisted(model) or info.get("label_assisted"):
        return "teacher"
    if info.get("teacher_model_name_or_path") or info.get("teacher_label_assisted") is not None:
        return "distilled"
    return "baseline" if info else "unknown"


def _eval_key(k: str) -> str:
    return k if k.startswith("eval_") else f"eval_{k}"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# summary metrics, in this order after mean IoU: (key, name, unit); "%" and "points" are fractions shown x100
_SUMMARY = (
    ("eval_mean_iou", "mean IoU", "%"),
    ("eval_mean_iou_no_label", "mean IoU with the label channel 0", "%"),
    ("eval_label_gain", "label_gain (mean IoU with the label minus without)", "points"),
    ("eval_mean_iou_shuffled_label", "mean IoU with another image's noised label", "%"),
    ("eval_label_gain_shuffled", "label_gain_shuffled (mean IoU with its label minus with another's)", "points"),
    ("eval_mean_accuracy", "mean class accuracy", "%"),
    ("eval_overall_accuracy", "pixel accuracy", "%"),
    ("eval_mkl", "mKL (agreement across noise draws, x100)", ""),
    ("eval_loss", "cross-entropy loss", ""),
)


def _class_keys(metrics: Dict, num_labels: int, id2label) -> List[str]:
    """The per-class IoU keys in class-id order (as `lad_hf.metrics.flatten_metrics` names them), then any others."""
    from .metrics import _class_name

    ordered = [f"eval_iou_{_class_name(k, id2label)}" for k in range(num_labels)]
    ordered = [k for k in ordered if k in metrics]
    return ordered + sorted(k for k in metrics if k.startswith("eval_iou_") and k not in ordered)


def metric_rows(metrics: Dict, num_labels: int = 0, id2label=None) -> List[str]:
    """Markdown rows: mean IoU first (in %), the other summary metrics, then IoU per class in class-id order (in %),
    then the rest."""
    rows, done = [], set()
    for key, name, unit in _SUMMARY:
        v = _finite(metrics.get(key))
        if v is not None:
            rows.append(f"| {name} | {_pct(v) if unit else _fmt(v)}{' ' + unit if unit else ''} |")
            done.add(key)
    for key in _class_keys(metrics, num_labels, id2label):
        v = _finite(metrics[key])
        rows.append(f"| IoU {key[len('eval_iou_'):]} | {_pct(v) + ' %' if v is not None else 'n/a (class absent)'} |")
        done.add(key)
    for key in sorted(k for k in metrics if k not in done and not k.endswith(_SKIP_METRICS)):
        if _finite(metrics[key]) is not None:
            rows.append(f"| {key[len('eval_'):]} | {_fmt(_finite(metrics[key]))} |")
    return rows


def _names(info: Dict, ids: Dict[str, str]) -> Dict:
    return {"base": ids.get("model_name_or_path") if not info.get("config_name") else None,
            "dataset": ids.get("dataset_name"), "teacher": ids.get("teacher_model_name_or_path")}


def _metadata(model, info, metrics, kind, names, name, licence, tags, adapter):
    from huggingface_hub import EvalResult, ModelCardData

    miou, no_label = _finite(metrics.get("eval_mean_iou")), _finite(metrics.get("eval_mean_iou_no_label"))
    model_type = model.config.model_type
    all_tags = ["lad_hf", "semantic-segmentation", model_type, f"arxiv:{PAPER_ARXIV}"]
    all_tags += {"distilled": ["knowledge-distillation", "label-assisted-distillation"],
                 "teacher": ["label-assisted-teacher"]}.get(kind, [])
    if info.get("lora"):
        all_tags.append("lora" if adapter else "lora-merged")
    if adapter and names["base"]:
        all_tags.append(f"base_model:adapter:{names['base']}")
    all_tags += [t for t in tags or [] if t not in all_tags]
    results = []
    dataset = names["dataset"]
    if dataset and miou is not None:
        common = dict(task_type="image-segmentation", task_name="Semantic Segmentation", dataset_type=dataset,
                      dataset_name=dataset, dataset_split=info.get("eval_split"),
                      dataset_config=info.get("dataset_config_name"), metric_type="mean_iou")
        label_note = " (noised label as input)" if kind == "teacher" else ""
        results.append(EvalResult(metric_value=round(100 * miou, 2), metric_name=f"mIoU (%){label_note}", **common))
        if kind == "teacher" and no_label is not None:
            results.append(EvalResult(metric_value=round(100 * no_label, 2), metric_name="mIoU (%) (label channel 0)",
                                      **common))
    # a label-assisted teacher takes 4 channels: the image-segmentation pipeline (and the Hub widget) cannot run it
    pipeline_tag = "image-segmentation" if kind != "teacher" and not adapter else None
    return ModelCardData(
        library_name="peft" if adapter else "transformers", pipeline_tag=pipeline_tag, tags=all_tags,
        base_model=names["base"], datasets=[dataset] if dataset else None,
        metrics=["mean_iou"] if miou is not None else None,
        license=licence[0] if licence else None, license_name=licence[1] if licence else None,
        license_link=licence[2] if licence else None, model_name=name if results else None,
        eval_results=results or None,
    )


_INTRO = {
    "distilled": ("A {mt} semantic-segmentation model ({k} classes), distilled with lad_hf's Label Assisted "
                  "Distillation (LAD) from a {teacher_kind} teacher. It is a plain transformers model: it needs neither "
                  "lad_hf nor remote code."),
    "teacher": ("A label-assisted teacher for {mt} semantic segmentation ({k} classes), trained with lad_hf. Its input "
                "has one channel more than an image: a noised version of the ground-truth label map (see Usage). It "
                "is meant to teach students (`lad-hf distill --teacher_model_name_or_path ...`); the "
                "`image-segmentation` pipeline cannot feed it the label channel."),
    "baseline": ("A {mt} semantic-segmentation model ({k} classes), trained with lad_hf by supervised cross-entropy "
                 "alone (a baseline: no teacher). It is a plain transformers model: it needs neither lad_hf nor "
                 "remote code."),
    "unknown": ("A {mt} semantic-segmentation model ({k} classes). How it was trained is unknown: no lad_hf training "
                "record (`lad_training_info.json`) was found next to the weights."),
}


def _intro(model, info, kind, names, licence, adapter) -> List[str]:
    base = names["base"]
    teacher_kind = "label-assisted" if info.get("teacher_label_assisted") else "plain"
    lines = [_INTRO[kind].format(mt=model.config.model_type, k=model.config.num_labels, teacher_kind=teacher_kind)]
    facts: List[str] = []
    if base:
        facts.append(f"Initialised from [{base}](https://huggingface.co/{base}).")
    elif info.get("config_name"):
        facts.append("Built from a model configuration, without pretrained weights.")
    elif info.get("model_name_or_path"):
        facts.append("Initialised from local pretrained weights (not on the Hub).")
    if names["dataset"]:
        facts.append(f"Trained on [{names['dataset']}](https://huggingface.co/datasets/{names['dataset']}).")
    elif info.get("dataset_name"):
        facts.append("Trained on a local dataset (not on the Hub).")
    if licence:
        where = f" ({licence[2]})" if licence[2] else ""
        whose = f", that of the base model {base}" if base and licence == base_model_license(base) else ""
        facts.append(f"Licence: `{licence[1] or licence[0]}`{where}{whose}.")
    if adapter:
        facts.append("This folder holds LoRA adapters (PEFT) for a frozen base model; `lad-hf export --model_path "
                     "<this folder>` merges them into a plain transformers model.")
    elif info.get("lora"):
        facts.append("Trained with LoRA adapters on a frozen backbone; the adapters are merged into these weights.")
    return lines + ([""] + facts if facts else []) + [""]


def _usage(kind, repo, adapter) -> List[str]:
    if kind == "teacher":
        return ["## Usage", "", "The teacher reads the image and a noised label map, appended as a last channel. "
                "`lad_hf.LabelNoiser` draws the noise the teacher was trained with (saved in its config):", "",
                "```python", "from transformers import AutoModelForSemanticSegmentation", "from lad_hf import LabelNoiser",
                "", f'teacher = AutoModelForSemanticSegmentation.from_pretrained("{repo}")',
                "noise = teacher.config.lad_label_noise",
                "noiser = LabelNoiser(teacher.config.num_labels, sigma=noise[\"label_sigma\"], "
                "class_noise=noise[\"class_noise\"],",
                "                     pixel_noise=noise[\"pixel_noise\"], ignore_mode=noise[\"ignore_mode\"])",
                "# pixel_values [N, 3, H, W] normalised as the image processor does; labels [N, H, W] class ids",
                "logits = teacher(pixel_values=noiser.assist(pixel_values, labels)).logits", "```", "",
                f"To distil a student from it: `lad-hf distill --teacher_model_name_or_path {repo} ...`.", ""]
    if adapter:
        return ["## Usage", "", "```python", "from peft import PeftModel",
                "from transformers import AutoModelForSemanticSegmentation", "",
                "base = AutoModelForSemanticSegmentation.from_pretrained(\"<base model>\", id2label=..., label2id=...)",
                f'model = PeftModel.from_pretrained(base, "{repo}").merge_and_unload()', "```", ""]
    return ["## Usage", "", "```python", "from transformers import pipeline", "",
            f'seg = pipeline("image-segmentation", model="{repo}")', 'masks = seg("image.jpg")', "```", "",
            "Or with lad_hf, one class-id mask (and an overlay) per image: "
            f"`lad-hf predict --model_name_or_path {repo} --input images/ --output_dir masks --overlay true`.", ""]


def _evaluation(model, info, metrics, kind) -> List[str]:
    if not metrics:
        return []
    split = info.get("eval_split")
    where = f" on the `{split}` split" if split else ""
    lines = ["## Evaluation", "", f"Evaluated{where} with lad_hf's streaming mIoU (IoU in %).", ""]
    gain = _finite(metrics.get("eval_label_gain"))
    if kind == "teacher" and gain is not None:
        lines += [f"label_gain = {_pct(gain)} points: mIoU with the noised label as input minus mIoU with the label "
                  "channel set to 0 (label_gain_shuffled: minus mIoU with another image's noised label). A teacher "
                  "that ignores its label has label_gain 0.", ""]
    rows = metric_rows(metrics, model.config.num_labels, getattr(model.config, "id2label", None))
    return lines + ["| metric | value |", "|---|---|", *rows, ""]


# settings shown per kind: (record key, shown name)
_SETTINGS = {
    "distilled": [("teacher_label_assisted", "teacher is label-assisted"), ("distill_loss", "distillation loss D"),
                  ("distill_tau", "τ (distill_tau)"), ("distill_weight", "μ (distill_weight)"),
                  ("label_sigma", "σ (label_sigma)"), ("class_noise", "class_noise"), ("pixel_noise", "pixel_noise"),
                  ("fixed_class_encoding", "fixed_class_encoding")],
    "teacher": [("label_sigma", "σ (label_sigma)"), ("class_noise", "class_noise"), ("pixel_noise", "pixel_noise"),
                ("ignore_mode", "ignore_mode"), ("dual_path", "dual_path"), ("consistency_loss", "consistency_loss"),
                ("consistency_weight", "λ (consistency_weight)"), ("consistency_tau", "consistency_tau"),
                ("consistency_symmetric", "consistency_symmetric"), ("label_channel_init", "label_channel_init"),
                ("label_channel_scale", "label_channel_scale"), ("rgb_dropout", "rgb_dropout")],
}
_COMMON_SETTINGS = [("lora", "LoRA"), ("max_steps", "max_steps"), ("num_train_epochs", "num_train_epochs"),
                    ("trained_steps", "optimizer steps trained"), ("learning_rate", "learning_rate"),
                    ("per_device_train_batch_size", "per_device_train_batch_size"),
                    ("gradient_accumulation_steps", "gradient_accumulation_steps"), ("seed", "seed"),
                    ("config_overrides", "config_overrides")]


def _teacher_lines(info, names, t_eval) -> List[str]:
    teacher = names["teacher"]
    lines = [f"Teacher: [{teacher}](https://huggingface.co/{teacher})." if teacher
             else "Teacher: a local model (not on the Hub)."]
    if info.get("teacher_label_assisted"):
        t_gain, t_miou = _finite(t_eval.get("eval_label_gain")), _finite(t_eval.get("eval_mean_iou"))
        if t_gain is not None:
            lines.append(f"The teacher's label_gain (its mIoU with the noised label minus with the label channel at 0) "
                         f"was {_pct(t_gain)} points" + (f"; its mIoU {_pct(t_miou)} %" if t_miou is not None else "")
                         + ".")
        else:
            lines.append("The teacher's label_gain is not known (no evaluation of it was found).")
        lines += ["", "Loss: L = CE(S(x), y) + μ·D(S(x), T(x, ŷ)), ŷ = Σ_k α_k·Y_k + σ·β the noised label fed to the "
                  "teacher (τ the temperature of D)."]
    else:
        lines += ["", "Loss: L = CE(S(x), y) + μ·D(S(x), T(x)) (τ the temperature of D)."]
    return lines + [""]


def _how_trained(info, kind, names, t_eval) -> List[str]:
    if not info:
        return []
    lines = ["## How it was distilled" if kind == "distilled" else "## How it was trained", ""]
    if kind == "distilled":
        lines += _teacher_lines(info, names, t_eval)
    keys = _SETTINGS.get(kind, []) + _COMMON_SETTINGS
    rows = [f"| {shown} | {_fmt(info[key])} |" for key, shown in keys if info.get(key) is not None
            and not (key == "num_train_epochs" and (info.get("max_steps") or 0) > 0)]
    return lines + (["| setting | value |", "|---|---|", *rows, ""] if rows else [])


def _citation() -> List[str]:
    return ["## Citation", "", f"Label Assisted Distillation is the method of \"{PAPER_TITLE}\" "
            f"([arXiv:{PAPER_ARXIV}](https://arxiv.org/abs/{PAPER_ARXIV})):", "", "```bibtex", PAPER_BIBTEX, "```", ""]


def model_card(model, info: Dict, metrics: Optional[Dict] = None, repo_id: Optional[str] = None,
               preprocessing: Optional[str] = None, model_path: Optional[str] = None, license: Optional[str] = None,
               tags: Optional[List[str]] = None, model_name: Optional[str] = None, adapter: bool = False,
               hub_ids: Optional[Dict[str, str]] = None, teacher_eval: Optional[Dict] = None) -> str:
    """README.md for the Hub: metadata (library, task, base model, datasets, licence, model-index) and a text that
    says what kind of model this is, how to use it, how it was evaluated (mean IoU first) and trained, and the paper.

    `hub_ids`: the record's names that are Hub ids (`lad_hf.export.hub_ids`; nothing else is named); `teacher_eval`:
    the teacher's own evaluation (default: the record's). `license`, `tags`, `model_name` override or extend what the
    record gives; `adapter` is a LoRA (PEFT) folder.
    """
    from huggingface_hub import ModelCard

    metrics = {_eval_key(k): v for k, v in (metrics or info.get("eval_metrics") or {}).items()}
    kind = model_kind(model, info)
    names = _names(info, hub_ids or {})
    t_eval = teacher_eval if teacher_eval is not None else info.get("teacher_eval") or {}
    mt = model.config.model_type
    name = model_name or repo_id or {"teacher": f"{mt}-lad-teacher", "distilled": f"{mt}-lad-student",
                                     "baseline": f"{mt}-baseline", "unknown": f"{mt}-segmentation"}[kind]
    licence = (license, None, None) if license else base_model_license(names["base"], model_path)
    data = _metadata(model, info, metrics, kind, names, name, licence, tags, adapter)
    lines = [f"# {name}", ""] + _intro(model, info, kind, names, licence, adapter)
    lines += _usage(kind, repo_id or "path/to/this/folder", adapter)
    if preprocessing:
        lines += ["## Preprocessing", "", preprocessing, ""]
    lines += _evaluation(model, info, metrics, kind) + _how_trained(info, kind, names, t_eval) + _citation()
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))
