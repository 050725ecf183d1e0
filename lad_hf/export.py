"""Export a trained student as a stock transformers model (LoRA merged, safetensors, model card) and push it.

The model card is `lad_hf.card.model_card` (the one the trainers write too). It names Hub ids
only (`base_model`, `datasets`, the model-index dataset, the teacher): a local path means nothing on the Hub, and the
Hub refuses `base_model` / `datasets` values that are not repo ids. Which names are Hub ids is decided while training
(`write_training_info` records `hub_ids`, with the working directory the paths were given in).
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, Iterable, List, Optional, Tuple

from .errors import LADError

TRAINING_INFO = "lad_training_info.json"
# record keys that name a model, a config or a dataset: a Hub id, or a local path that must not be published
HUB_KEYS = ("model_name_or_path", "config_name", "dataset_name", "teacher_model_name_or_path")
LOCAL = "(local)"
_METRIC_FILES = ("eval_results.json", "all_results.json", TRAINING_INFO)
_TEACHER_METRICS = ("eval_mean_iou", "eval_label_gain", "eval_mean_iou_no_label")

# ------------------------------------------------------------------------------------------------ training record


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _finite(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _read_json(path: str) -> Dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _metrics_in(paths: Iterable[str]) -> Dict[str, float]:
    """The teacher's mIoU / label_gain / mIoU without the label from its eval_results.json, all_results.json or record."""
    out: Dict[str, float] = {}
    for path in paths:
        data = _read_json(path)
        for source in (data, data.get("eval_metrics") or {}):
            for key in _TEACHER_METRICS:
                if key not in out and _finite(source.get(key)) is not None:
                    out[key] = _finite(source[key])
    return out


def teacher_metrics(teacher: Optional[str], roots: Iterable[str] = ()) -> Dict[str, float]:
    """The teacher's own evaluation (`eval_label_gain` ...), read next to its weights: a local folder (as given, or
    under one of `roots`), else a Hub id's files already in the local Hub cache (no download)."""
    from .models.lora import hub_repo_id

    if not teacher:
        return {}
    folders = [teacher] + ([os.path.join(r, teacher) for r in roots if r] if not os.path.isabs(teacher) else [])
    for folder in folders:
        if os.path.isdir(folder):
            return _metrics_in(os.path.join(folder, name) for name in _METRIC_FILES)
    repo = hub_repo_id(teacher)
    if repo:
        from huggingface_hub import try_to_load_from_cache

        cached = [try_to_load_from_cache(repo, name) for name in _METRIC_FILES]
        return _metrics_in(p for p in cached if isinstance(p, str))
    return {}


def write_training_info(output_dir: str, info: Dict) -> None:
    """How a model was trained (teacher, noise, losses, weights, metrics); read by `export` for the model card.

    Called at the end of training, from the working directory the paths were given in, it also records which of the
    names are Hub ids (`hub_ids`) and, for a distilled student, the teacher's own evaluation (`teacher_eval`).
    """
    from .models.lora import hub_repo_id

    info = dict(info)
    info.pop("hub_token", None)
    if "hub_ids" not in info:
        info["hub_ids"] = {k: hub_repo_id(info.get(k)) for k in HUB_KEYS if hub_repo_id(info.get(k))}
    if info.get("teacher_model_name_or_path") and "teacher_eval" not in info:
        found = teacher_metrics(info["teacher_model_name_or_path"])
        if found:
            info["teacher_eval"] = found
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, TRAINING_INFO), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True, default=str)


def read_training_info(model_dir: str) -> Dict:
    path = os.path.join(model_dir, TRAINING_INFO)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def run_folder_of(model_path: str) -> Optional[str]:
    """The run folder a `checkpoint-<step>` folder belongs to (its parent), else None."""
    import re

    if re.match(r"^checkpoint-\d+$", os.path.basename(os.path.normpath(model_path))):
        return os.path.dirname(os.path.abspath(model_path))
    return None


def run_record(model_path: str) -> Dict:
    """The training record of a model folder; a checkpoint takes its run's record (how it was trained and evaluated,
    without the final model's metrics, which are not the checkpoint's)."""
    info = read_training_info(model_path)
    parent = run_folder_of(model_path)
    if info or parent is None:
        return info
    info = read_training_info(parent)
    info.pop("eval_metrics", None)
    if info:
        info["checkpoint"] = os.path.basename(os.path.normpath(model_path))
    return info


def _roots(model_path: Optional[str]) -> Tuple[str, ...]:
    """Where relative paths of a record may resolve at export time: beside the run folder, and one level up."""
    if not model_path:
        return ()
    parent = os.path.dirname(os.path.abspath(model_path))
    return (parent, os.path.dirname(parent))


def hub_ids(info: Dict, model_path: Optional[str] = None) -> Dict[str, str]:
    """The record's Hub ids: as recorded while training, else (an old record) a cautious guess (`user/name` only,
    and nothing that exists on disk beside the run folder)."""
    from .models.lora import hub_repo_id

    if isinstance(info.get("hub_ids"), dict):
        return {k: v for k, v in info["hub_ids"].items() if isinstance(v, str) and v}
    roots = _roots(model_path)
    return {k: v for k in HUB_KEYS if (v := hub_repo_id(info.get(k), roots, allow_single=False))}


def card_inputs(info: Dict, model_path: Optional[str] = None) -> Dict:
    """What `lad_hf.card.model_card` needs from the record besides it: its Hub ids and the teacher's evaluation
    (recorded, else read beside a local teacher folder)."""
    ids = hub_ids(info, model_path)
    t_eval = info.get("teacher_eval") or {}
    if not t_eval and not ids.get("teacher_model_name_or_path"):
        t_eval = teacher_metrics(info.get("teacher_model_name_or_path"), _roots(model_path))
    return {"hub_ids": ids, "teacher_eval": t_eval}


def public_training_info(info: Dict, model_path: Optional[str] = None) -> Dict:
    """The record as published with the export: local paths replaced by `(local)`; no token."""
    ids = hub_ids(info, model_path)
    out = {k: v for k, v in info.items() if k != "hub_token"}
    for key in HUB_KEYS:
        if out.get(key) and key not in ids:
            out[key] = LOCAL
    if isinstance(out.get("run_name"), str) and ("/" in out["run_name"] or os.sep in out["run_name"]):
        out.pop("run_name")
    out["hub_ids"] = ids
    return out


def scrub_text(text: str, info: Dict, model_path: Optional[str] = None) -> str:
    """`text` (a card) with every local path the record names replaced by `(local)`, as `public_training_info` does
    for the record: both `export` and the trainers' `push_to_hub` publish through these two functions."""
    ids = hub_ids(info, model_path)
    named = {str(info[k]) for k in HUB_KEYS if info.get(k) and k not in ids}
    # a bare relative name ("data") is also an ordinary word: only what reads as a path is replaced
    paths = {p for p in named if os.sep in p or "/" in p} | {os.path.abspath(p) for p in named}
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, LOCAL)
    return text


def is_local_path(value) -> bool:
    """A string naming a file or folder on this machine (absolute, or existing here) that is not a Hub id."""
    from .models.lora import hub_repo_id

    return isinstance(value, str) and bool(value) and (os.path.isabs(value) or os.path.exists(value)) \
        and not hub_repo_id(value)


def public_files(folder: str) -> Dict[str, bytes]:
    """{file name: public content} for the files of `folder` that a push would leak local paths from (the record
    and the card); the local files keep their content. (`training_args.bin` never holds local paths: see
    `SegmentationConfig.__getstate__`.)"""
    out: Dict[str, bytes] = {}
    info = read_training_info(folder)
    if not info:
        return out
    out[TRAINING_INFO] = json.dumps(public_training_info(info, folder), indent=2, sort_keys=True, default=str).encode()
    card = os.path.join(folder, "README.md")
    if os.path.isfile(card):
        with open(card, encoding="utf-8") as f:
            out["README.md"] = scrub_text(f.read(), info, folder).encode("utf-8")
    return out


# ------------------------------------------------------------------------------------------------ model and processor


def load_for_export(model_path: str):
    """The trained model as a plain `PreTrainedModel`: a PEFT adapter folder is merged into its base."""
    from transformers import AutoModelForSemanticSegmentation

    if not os.path.isdir(model_path):
        raise LADError(f"--model_path {model_path!r} is not a folder; pass the output_dir of a training run")
    if os.path.isfile(os.path.join(model_path, "adapter_config.json")):
        from .models.lora import load_merged

        check_weights(model_path)
        return load_merged(model_path)
    if not os.path.isfile(os.path.join(model_path, "config.json")):
        raise LADError(f"{model_path!r} has no config.json (nor adapter_config.json); is it a training output_dir?")
    check_weights(model_path)
    return AutoModelForSemanticSegmentation.from_pretrained(model_path)


def check_weights(model_path: str, what: str = "") -> None:
    """Finish an interrupted final save, then refuse missing or truncated weights in one line."""
    from .run_folder import roll_forward
    from .trainers.checkpoints import weights_problem

    roll_forward(model_path)
    problem = weights_problem(model_path)
    if problem:
        raise LADError(f"{what or 'model'} {model_path!r} is incomplete ({problem}): the save was interrupted or the "
                       "copy cut short; use a complete folder (or a complete checkpoint-* of its run)")


def _size_hw(size) -> Tuple[Optional[int], Optional[int]]:
    if size is None:
        return None, None
    if isinstance(size, dict):
        return size.get("height"), size.get("width")
    return getattr(size, "height", None), getattr(size, "width", None)


def export_processor(model_path: str, model, info: Optional[Dict] = None):
    """(image processor, what it does in words): the processor matches how the reported mIoU was measured.

    Evaluation runs on whole images (`--eval_resize` unset, the default): the processor then keeps each image's size
    and aspect ratio (`do_resize=False`). With `--eval_resize N` it resizes to N x N, as evaluation did. Stock DPT
    heads need square inputs: their processor keeps its square resize, and the text says so.
    """
    from transformers import AutoImageProcessor

    from .models.builder import segformer_processor_class

    from .data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from .models.dinov2 import needs_square_input, patch_size

    info = info or {}
    try:
        proc = AutoImageProcessor.from_pretrained(model_path)
    except (OSError, ValueError):
        proc = None
    mean = info.get("image_mean") or getattr(proc, "image_mean", None) or IMAGENET_DEFAULT_MEAN
    std = info.get("image_std") or getattr(proc, "image_std", None) or IMAGENET_DEFAULT_STD
    if proc is None or not hasattr(proc, "post_process_semantic_segmentation") or getattr(proc, "do_center_crop", False):
        h, w = _size_hw(getattr(proc, "size", None))
        side = getattr(model.config, "image_size", 512)
        size = {"height": h, "width": w} if isinstance(h, int) and isinstance(w, int) else \
            {"height": side if isinstance(side, int) else 512, "width": side if isinstance(side, int) else 512}
        proc = segformer_processor_class()(size=size, do_reduce_labels=False)
    proc.image_mean, proc.image_std = [float(v) for v in mean], [float(v) for v in std]
    norm = (f"rescales to [0, 1] and normalises with mean {[round(v, 3) for v in proc.image_mean]} and std "
            f"{[round(v, 3) for v in proc.image_std]}")
    p = patch_size(model.config)
    resize = info.get("eval_resize")
    if isinstance(resize, int) and resize > 0:
        proc.do_resize, proc.size = True, {"height": resize, "width": resize}
        note = (f"The bundled image processor resizes every image to {resize}×{resize} pixels (the aspect ratio is not "
                f"kept) and {norm}, as the evaluation did (`--eval_resize {resize}`).")
        if p:
            note += f" The evaluation then padded the {resize}×{resize} input (bottom/right) to a multiple of the {p}-pixel patch."
    elif needs_square_input(model.config):
        h, w = _size_hw(getattr(proc, "size", None))
        side = max(v for v in (h, w, 1) if isinstance(v, int))
        side = int(math.ceil(side / p) * p) if p else side
        proc.do_resize, proc.size = True, {"height": side, "width": side}
        note = (f"The bundled image processor resizes every image to {side}×{side} pixels (the aspect ratio is NOT kept: "
                f"stock DPT segmentation heads need square inputs) and {norm}. The reported mIoU was measured "
                f"differently: on whole images, each padded (bottom/right) to a square multiple of {p} pixels. To "
                f"reproduce it, pad instead of resizing and crop the logits back.")
    else:
        proc.do_resize = False
        note = (f"The bundled image processor keeps every image at its own size and aspect ratio (no resize) and "
                f"{norm}: the reported mIoU was measured the same way, on whole images.")
        if p:
            note += (f" The evaluation also padded each image (bottom/right, 0 after normalisation) to a multiple of "
                     f"the {p}-pixel patch; the processor does not pad, so the backbone then sees only the complete "
                     f"patches. Pad to a multiple of {p} to reproduce the evaluation exactly.")
    window = info.get("eval_window_size")
    if isinstance(window, int) and window > 0:
        stride = info.get("eval_window_stride") or max(1, (2 * window) // 3)
        note += (f" The evaluation ran sliding {window}×{window} windows (stride {stride}) over each image; the "
                 "`image-segmentation` pipeline runs the whole image at once.")
    return proc, note


# ------------------------------------------------------------------------------------------------ export and push


def export_model(model_path: str, output_dir: str, metrics: Optional[Dict] = None, repo_id: Optional[str] = None,
                 allow_label_assisted: bool = False, license: Optional[str] = None,
                 tags: Optional[List[str]] = None, model_name: Optional[str] = None) -> str:
    """Write a stock transformers model folder: safetensors weights, config.json, preprocessor_config.json, README.md
    (lad_hf's card, see `lad_hf.card`; `license`, `tags`, `model_name` go into it)."""
    from .card import model_card
    from .models import image_channels, is_label_assisted

    model = load_for_export(model_path)
    if is_label_assisted(model) and not allow_label_assisted:
        raise LADError(
            f"{model_path!r} is a label-assisted teacher ({image_channels(model.config)} input channels); export the "
            "distilled student, or pass --allow_label_assisted to export the teacher as is"
        )
    from .run_folder import replace_folder

    info = run_record(model_path)
    info.pop("hub_token", None)
    stage = f"{os.path.normpath(output_dir)}._lad_hf_tmp"  # written whole, then renamed into place
    import shutil

    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    model.save_pretrained(stage, safe_serialization=True)
    processor, note = export_processor(model_path, model, info)
    processor.save_pretrained(stage)
    card = model_card(model, info, metrics, repo_id, preprocessing=note, model_path=model_path, license=license,
                      tags=tags, model_name=model_name, **card_inputs(info, model_path))
    with open(os.path.join(stage, "README.md"), "w", encoding="utf-8") as f:
        f.write(scrub_text(card, info, model_path))
    if info:
        write_training_info(stage, public_training_info(info, model_path))
    replace_folder(stage, output_dir)
    return output_dir


def push_folder(folder: str, repo_id: str, token: Optional[str] = None, private: bool = False,
                commit_message: str = "Upload a model exported by lad_hf") -> str:
    """`HfApi.create_repo` + `upload_folder`; offline or unreachable Hub -> one clear LADError, folder intact."""
    from huggingface_hub import HfApi

    if not repo_id:
        raise LADError("--push_to_hub needs --hub_model_id user/name")
    if _offline():
        raise LADError(f"cannot push to {repo_id}: the Hub is offline (HF_HUB_OFFLINE=1); the export in {folder} is intact")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=commit_message)
    except Exception as e:  # noqa: BLE001 - any network/auth failure becomes one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LADError(f"cannot push to {repo_id}: {msg}; the export in {folder} is intact") from None
    return str(getattr(info, "commit_url", info))
