"""Export a trained student as a stock transformers model (LoRA merged, safetensors, model card) and push it."""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional

from .errors import LADError

TRAINING_INFO = "lad_training_info.json"


def write_training_info(output_dir: str, info: Dict) -> None:
    """How a model was trained (teacher, noise, losses, weights, metrics); read by ``export`` for the model card."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, TRAINING_INFO), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True, default=str)


def read_training_info(model_dir: str) -> Dict:
    path = os.path.join(model_dir, TRAINING_INFO)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def load_for_export(model_path: str):
    """The trained model as a plain ``PreTrainedModel``: a PEFT adapter folder is merged into its base."""
    from transformers import AutoModelForSemanticSegmentation

    if not os.path.isdir(model_path):
        raise LADError(f"--model_path {model_path!r} is not a folder; pass the output_dir of a training run")
    if os.path.isfile(os.path.join(model_path, "adapter_config.json")):
        from .lora import load_merged

        return load_merged(model_path)
    if not os.path.isfile(os.path.join(model_path, "config.json")):
        raise LADError(f"{model_path!r} has no config.json (nor adapter_config.json); is it a training output_dir?")
    return AutoModelForSemanticSegmentation.from_pretrained(model_path)


def _image_processor(model_path: str, model):
    from transformers import AutoImageProcessor, SegformerImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model_path)
    except (OSError, ValueError):
        size = getattr(model.config, "image_size", 512)
        size = size if isinstance(size, int) else 512
        return SegformerImageProcessor(size={"height": size, "width": size}, do_reduce_labels=False)


def model_card(model, info: Dict, metrics: Optional[Dict] = None, repo_id: Optional[str] = None) -> str:
    """README.md with YAML metadata for the Hub (library transformers, image-segmentation, datasets, metrics)."""
    metrics = metrics or info.get("eval_metrics") or {}
    dataset = info.get("dataset_name") or "unknown"
    name = repo_id or info.get("run_name") or "lad-student"
    miou = metrics.get("eval_mean_iou", metrics.get("mean_iou"))
    if miou is not None and miou != miou:  # NaN is not a number the Hub accepts
        miou = None
    lines = ["---", "library_name: transformers", "pipeline_tag: image-segmentation", "tags:", "- lad_hf",
             "- knowledge-distillation", "- semantic-segmentation"]
    if dataset != "unknown" and not os.path.exists(dataset):  # Hub ids only; a local path means nothing there
        lines += ["datasets:", f"- {dataset}"]
    if miou is not None:
        lines += ["model-index:", f"- name: {name}", "  results:", "  - task:", "      type: image-segmentation",
                  "    dataset:", f"      name: {dataset}", f"      type: {dataset}", "    metrics:",
                  "    - type: mean_iou", f"      value: {float(miou):.4f}", "      name: mIoU"]
    lines += ["---", "", f"# {name}", "",
              f"A {model.config.model_type} semantic-segmentation model ({model.config.num_labels} classes), "
              "trained with lad_hf's Label Assisted Distillation (LAD). It is a plain "
              "transformers model: it needs neither lad_hf nor remote code.", "",
              "```python", "from transformers import pipeline", "",
              f'seg = pipeline("image-segmentation", model="{repo_id or "path/to/this/folder"}")',
              'masks = seg("image.jpg")', "```", "", "## How it was distilled", ""]
    keys = ["teacher_model_name_or_path", "teacher_label_assisted", "distill_loss", "distill_tau", "distill_weight",
            "label_sigma", "class_noise", "pixel_noise", "fixed_class_encoding", "lora", "max_steps", "learning_rate",
            "per_device_train_batch_size", "seed"]
    rows = [f"| {k} | {info[k]} |" for k in keys if k in info]
    if rows:
        lines += ["| setting | value |", "|---|---|", *rows, ""]
    else:
        lines += ["No lad_hf training record was found next to the weights.", ""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()) if isinstance(v, (int, float))]
        lines += [""]
    lines += ["Loss: L = CE(S(x), y) + μ·D(S(x), T(x, ŷ)), ŷ = Σ_k α_k·Y_k + σ·β the noised label fed to the teacher.", ""]
    return "\n".join(lines)


def export_model(model_path: str, output_dir: str, metrics: Optional[Dict] = None, repo_id: Optional[str] = None,
                 allow_label_assisted: bool = False) -> str:
    """Write a stock transformers model folder: safetensors weights, config.json, preprocessor_config.json, README.md."""
    from .modeling import image_channels, is_label_assisted

    model = load_for_export(model_path)
    if is_label_assisted(model) and not allow_label_assisted:
        raise LADError(
            f"{model_path!r} is a label-assisted teacher ({image_channels(model.config)} input channels); export the "
            "distilled student, or pass --allow_label_assisted to export the teacher as is"
        )
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    _image_processor(model_path, model).save_pretrained(output_dir)
    info = read_training_info(model_path)
    info.pop("hub_token", None)
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write(model_card(model, info, metrics, repo_id))
    if info:
        write_training_info(output_dir, info)
    return output_dir


def push_folder(folder: str, repo_id: str, token: Optional[str] = None, private: bool = False,
                commit_message: str = "Upload LAD-distilled model") -> str:
    """``HfApi.create_repo`` + ``upload_folder``; offline or unreachable Hub -> one clear LADError, folder intact."""
    from huggingface_hub import HfApi

    if not repo_id:
        raise LADError("--push_to_hub needs --hub_model_id user/name")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise LADError(f"cannot push to {repo_id}: the Hub is offline (HF_HUB_OFFLINE=1); the export in {folder} is intact")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=commit_message)
    except Exception as e:  # noqa: BLE001 - any network/auth failure becomes one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LADError(f"cannot push to {repo_id}: {msg}; the export in {folder} is intact") from None
    return str(getattr(info, "commit_url", info))
