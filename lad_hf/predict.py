"""`lad-hf predict`: one class-id mask per image (at the image's own size) and, with `--overlay true`, the image
blended with a per-class palette and a legend.

    mask(p) = argmax_k upsample(logits)(p)      logits of the whole image, or of sliding windows (averaged)

Images come from `--input` (an image file or a folder, searched recursively) or from `--dataset_name` /
`--eval_split` (any split, `test` included). A label-assisted teacher is refused: it needs the ground-truth label.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .errors import LADError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class PredictArguments:
    """Options of `lad-hf predict` (the model is `--model_name_or_path`; the data options select a dataset split)."""

    output_dir: str = field(metadata={"help": "Where to write <stem>.png (class ids) and <stem>_overlay.png."})
    input: Optional[str] = field(
        default=None, metadata={"help": "An image file or a folder of images (searched recursively); or use "
                                        "--dataset_name and --eval_split instead."})
    overlay: bool = field(default=False, metadata={"help": "Also write <stem>_overlay.png: image, class colours, legend."})
    overlay_alpha: float = field(default=0.5, metadata={"help": "Weight of the class colours in the overlay."})
    eval_window_size: Optional[int] = field(
        default=None, metadata={"help": "Sliding windows of this side in pixels (None: the whole image at once)."})
    eval_window_stride: Optional[int] = field(
        default=None, metadata={"help": "Sliding-window stride (default: 2/3 of the window)."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on the CPU even when a GPU is available."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})


def load_predictor(model_args):
    """The model to predict with (a training/export folder, LoRA merged, or a Hub id); a teacher is refused."""
    from .checks import check_model_channels
    from .export import load_for_export
    from .models import build_model, is_label_assisted

    path = model_args.model_name_or_path
    if not path:
        raise LADError("predict needs --model_name_or_path (a folder written by lad-hf, or a Hub id)")
    config = None
    if os.path.isdir(path):  # a final save killed after its commit is finished first (see lad_hf.run_folder)
        from .run_folder import roll_forward

        roll_forward(path)
    if os.path.isfile(os.path.join(path, "config.json")):  # refuse a teacher before loading its weights
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    model = None if config is not None and is_label_assisted(config) else \
        load_for_export(path) if os.path.isdir(path) else build_model(model_args)
    if model is None or is_label_assisted(model):
        raise LADError(f"{path!r} is a label-assisted teacher: it reads the ground-truth label as an extra input "
                       "channel, so it cannot segment images alone; predict with a student distilled from it")
    check_model_channels(model.config, f"the model {path!r}")
    return model.eval()


def _mean_std(path: str, data_args) -> Tuple[List[float], List[float]]:
    from .data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from .export import read_training_info

    proc, info = None, read_training_info(path) if os.path.isdir(path) else {}
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        pass
    mean = data_args.image_mean or info.get("image_mean") or getattr(proc, "image_mean", None) or IMAGENET_DEFAULT_MEAN
    std = data_args.image_std or info.get("image_std") or getattr(proc, "image_std", None) or IMAGENET_DEFAULT_STD
    return [float(v) for v in mean], [float(v) for v in std]


@torch.no_grad()
def predict_mask(model, image: np.ndarray, mean, std, window: Optional[int] = None, stride: Optional[int] = None,
                 resize: Optional[int] = None, device="cpu") -> np.ndarray:
    """Class ids [H, W] of one RGB uint8 image [H, W, 3], at its own size."""
    import torch.nn.functional as F

    from .inference import pad_to_multiple, segmentation_logits, sliding_window_logits
    from .models.dinov2 import needs_square_input, patch_size

    h, w = image.shape[:2]
    x = torch.tensor(image).permute(2, 0, 1).float().div(255)
    x = ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None].to(device)
    if resize:
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    p, square = patch_size(model.config), needs_square_input(model.config)

    def forward(crop):  # patch models: pad to a multiple of the patch, crop the logits back
        if not p:
            return segmentation_logits(model, crop)
        padded, (ch, cw) = pad_to_multiple(crop, p, square=square)
        logits = F.interpolate(segmentation_logits(model, padded).float(), size=padded.shape[-2:], mode="bilinear",
                               align_corners=False)
        return logits[..., :ch, :cw]

    if window:
        logits = sliding_window_logits(forward, x, window, stride or max(1, (2 * window) // 3), model.config.num_labels)
    else:
        logits = forward(x)
    logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    return logits[0].argmax(0).cpu().numpy()


def _folder_images(root: str) -> Iterator[Tuple[str, object]]:
    if os.path.isfile(root):
        yield Path(root).stem, root
        return
    files = sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise LADError(f"--input {root!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    for f in files:
        yield str(f.relative_to(root).with_suffix("")), str(f)


def _dataset_images(model_args, data_args, model) -> Tuple[int, Iterator[Tuple[str, object]]]:
    from .data import load_segmentation_dataset, resolve_columns
    from .data.columns import undecoded

    if not data_args.id2label:  # the model's classes name the data's: no label source is needed to read images
        data_args.id2label = json.dumps({str(k): v for k, v in model.config.id2label.items()})
    raw, _ = load_segmentation_dataset(data_args, all_splits=True, cache_dir=model_args.cache_dir,
                                       token=model_args.token, trust_remote_code=model_args.trust_remote_code)
    split = "validation" if "validation" in raw and data_args.eval_split not in raw else data_args.eval_split
    if split not in raw:
        raise LADError(f"--eval_split {data_args.eval_split!r} is not a split of {data_args.dataset_name}; "
                       f"splits are {list(raw)}")
    image_col, _ = resolve_columns(raw[split], data_args.image_column, None, require_label=False)
    ds = undecoded(raw[split], [image_col])

    def rows():
        for i in range(len(ds)):
            cell = ds[i][image_col]
            path = cell.get("path") if isinstance(cell, dict) else cell if isinstance(cell, str) else None
            yield (Path(path).stem if path else f"{data_args.eval_split}-{i:06d}"), cell
    return len(ds), rows()


def _save(out: Path, stem: str, image: np.ndarray, mask: np.ndarray, model, args) -> None:
    from PIL import Image

    from .overlay import overlay_image

    target = out / f"{stem}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    k = model.config.num_labels
    Image.fromarray(mask.astype(np.uint8 if k <= 256 else np.uint16)).save(target)
    if args.overlay:
        id2label = {int(i): v for i, v in (model.config.id2label or {}).items()}
        overlay_image(image, mask, k, id2label, alpha=args.overlay_alpha).save(out / f"{stem}_overlay.png")


def run_predict(model_args, data_args, args: PredictArguments) -> Dict[str, int]:
    """Write a mask (and an overlay) per image; returns the counts written."""
    import transformers
    from tqdm.auto import tqdm

    from .data import load_image

    if args.disable_tqdm:  # also the weight-loading bars of from_pretrained
        transformers.utils.logging.disable_progress_bar()

    if bool(args.input) == bool(data_args.dataset_name):
        raise LADError("predict needs exactly one of --input (an image or a folder) and --dataset_name")
    if args.input and not os.path.exists(args.input):
        raise LADError(f"--input {args.input!r} does not exist; pass an image file or a folder of images")
    if args.input and os.path.isdir(args.input) and os.path.abspath(args.input) == os.path.abspath(args.output_dir):
        raise LADError("--output_dir is the --input folder: the masks would overwrite the images; choose another")
    if args.overlay_alpha < 0 or args.overlay_alpha > 1:
        raise LADError(f"--overlay_alpha must be in [0, 1], got {args.overlay_alpha}")
    model = load_predictor(model_args)
    device = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
    model.to(device)
    mean, std = _mean_std(model_args.model_name_or_path, data_args)
    if args.input:
        items = list(_folder_images(args.input))
        total, items = len(items), iter(items)
    else:
        total, items = _dataset_images(model_args, data_args, model)
    out, seen = Path(args.output_dir), set()
    for stem, cell in tqdm(items, total=total, desc="predict", unit="image", disable=args.disable_tqdm, file=sys.stderr):
        stem = stem if stem not in seen else f"{stem}-{len(seen)}"
        seen.add(stem)
        image = np.array(load_image(cell), dtype=np.uint8)
        mask = predict_mask(model, image, mean, std, args.eval_window_size, args.eval_window_stride,
                            data_args.eval_resize, device)
        _save(out, stem, image, mask, model, args)
    return {"masks": len(seen), "overlays": len(seen) if args.overlay else 0}
