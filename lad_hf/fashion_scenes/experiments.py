"""A small in-process experiment runner on fashion-scenes, shared by `lad_hf.fashion_scenes.demo` and `benchmarks/reproduce.py`.

Every model is trained with the library's real trainers on the real data pipeline::

    DatasetDict(train/validation/test)  ->  apply_transforms + build_collator  ->
        SegmentationTrainer        (baseline student, plain KD teacher)
        LADTeacherTrainer          (label-assisted teacher, after add_label_channel)
        LADDistillationTrainer     (LAD student from a label-assisted teacher, CWD student from a plain teacher)

and evaluated with the trainers' own `evaluate` on the validation split (for any choice) and the test split (for
reported numbers). Two measurements go beyond the trainers:

* `segment_oracle` - the student's per-pixel prediction replaced by its majority vote inside each connected
  ground-truth segment: the most that knowing the grouping of pixels (and nothing about classes) could add.
* `input_attribution` - the share of `|gradient x input|` that a label-assisted teacher's prediction takes
  from the RGB channels and from the label channel (the paper's Fig. 4, measured).

Models are SegFormers built from `SegformerConfig(...)` presets (`MODEL_PRESETS`), random init, seeded.
Only APIs present in transformers 5.17 / torch 2.11 are used.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DataArguments, apply_transforms, build_collator
from ..errors import LADError
from ..inference import segmentation_logits
from ..metrics import StreamingMeanIoU
from ..models import add_label_channel, image_channels
from ..noising import NOISE_DEFAULTS, LabelNoiseArguments, LabelNoiser
from .dataset import FASHION_SCENES_ID2LABEL

__all__ = [
    "MODEL_PRESETS",
    "RunSpec",
    "Prepared",
    "prepare_data",
    "build_segformer",
    "count_parameters",
    "train_plain",
    "train_lad_teacher",
    "train_student",
    "evaluate_plain",
    "segment_oracle",
    "oracle_and_predictions",
    "input_attribution",
    "machine_info",
    "set_threads",
]

# SegFormer presets (random init). Parameter counts at 11 classes are in the comments.
MODEL_PRESETS: Dict[str, Dict[str, Any]] = {
    # ~0.2M: the CPU student
    "tiny": dict(num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[4, 2, 1, 1], hidden_sizes=[16, 32, 64, 128],
                 num_attention_heads=[1, 1, 2, 4], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=64),
    # ~0.55M: the CPU "2-3x bigger" plain teacher
    "small": dict(num_encoder_blocks=4, depths=[1, 2, 2, 1], sr_ratios=[4, 2, 1, 1], hidden_sizes=[24, 48, 96, 160],
                  num_attention_heads=[1, 2, 2, 4], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=96),
    # ~1.2M: a stronger plain teacher on CPU (Tab. 6)
    "medium": dict(num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[4, 2, 1, 1], hidden_sizes=[32, 64, 128, 224],
                   num_attention_heads=[1, 2, 4, 8], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=128),
    # SegFormer-B0 shape (~3.7M): the GPU student
    "b0": dict(num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1], hidden_sizes=[32, 64, 160, 256],
               num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=256),
    # B0 widened (~9M, 2-3x B0): the GPU "bigger" plain teacher
    "b0-wide": dict(num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1], hidden_sizes=[48, 96, 256, 384],
                    num_attention_heads=[1, 2, 4, 8], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=384),
    # SegFormer-B1 shape (~13.7M): a stronger GPU teacher (Tab. 6)
    "b1": dict(num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1], hidden_sizes=[64, 128, 320, 512],
               num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=256),
}


@dataclass
class RunSpec(LabelNoiseArguments):
    """One training run. Fields not used by a run's kind are ignored (e.g. the noise options for a baseline).

    The label-noise options are those of `LabelNoiseArguments` (unset: the paper's defaults).
    """

    model: str = "tiny"
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    seed: int = 0
    eval_batch_size: int = 64
    bf16: Optional[bool] = None  # None: on when CUDA is available and supports it
    # label-assisted teacher (paper Eq. 7)
    dual_path: bool = True
    consistency_weight: float = 1.0
    consistency_tau: float = 4.0
    label_channel_init: str = "random"
    label_channel_scale: float = 1.0
    rgb_dropout: float = 0.0  # an extension beyond the paper: zero the image of this fraction of teacher samples
    eval_stability_draws: int = 3
    # distillation (paper Eq. 8)
    distill_loss: str = "cwd"
    distill_tau: float = 4.0
    distill_weight: float = 3.0
    fixed_class_encoding: bool = False

    def __post_init__(self):
        self.resolve_noise()  # unset noise options -> the paper's, so equal runs have equal keys

    def replace(self, **kw) -> "RunSpec":
        return dataclasses.replace(self, **kw)

    def key(self, *names: str) -> Tuple:
        return tuple(getattr(self, n) for n in names)


@dataclass
class Prepared:
    """The transformed splits, the collator and the label names of one fashion-scenes DatasetDict."""

    train: Any
    validation: Any
    test: Any
    collator: Any
    id2label: Dict[int, str]
    canvas_size: int
    ignore_index: int = 255

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


def set_threads(n: Optional[int] = None) -> int:
    """Use `n` CPU threads for intra-op work; returns the number set.

    Default: the cores not already busy (`cores - round(1-min load)`, at least 1, at most 8). On a shared 2-core
    machine oversubscription is costly: measured here, a tiny SegFormer step took 0.09 s with 1 thread and 0.6 s
    with 2 threads while another process kept one core busy.
    """
    if not n:
        cores = os.cpu_count() or 1
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):
            load = 0.0
        n = max(1, min(8, cores - int(round(load))))
    torch.set_num_threads(int(n))
    return int(n)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (else platform's guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> Dict[str, str]:
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "cpu_count": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    else:
        info["device"] = f"CPU ({cpu_name()})"
    return info



def prepare_data(dsd, canvas_size: Optional[int] = None, min_scale: float = 1.0, max_scale: float = 1.0,
                 hflip_prob: float = 0.5, id2label: Optional[Mapping[int, str]] = None) -> Prepared:
    """Attach the library's lazy transforms (crop = canvas, mild or no rescaling, h-flip) to train/validation/test."""
    for split in ("train", "validation", "test"):
        if split not in dsd:
            raise LADError(f"the DatasetDict needs train/validation/test splits; it has {list(dsd)}")
    if canvas_size is None:
        first = dsd["train"][0]["image"]
        canvas_size = int(first.size[0])
    args = DataArguments(crop_size=int(canvas_size), min_scale=min_scale, max_scale=max_scale, hflip_prob=hflip_prob)
    out = apply_transforms(dsd, args)
    id2label = {int(k): v for k, v in (id2label or FASHION_SCENES_ID2LABEL).items()}
    return Prepared(out["train"], out["validation"], out["test"], build_collator(args), id2label, int(canvas_size),
                    args.ignore_index)


# conv + BatchNorm stems: UperNet on a small ResNet (random init). 0.18M, 0.42M (2.3×) and 0.74M (4.1×) parameters
# at 11 classes.
CNN_PRESETS: Dict[str, Dict[str, Any]] = {
    "cnn-tiny": dict(backbone=dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
                     hidden_size=32, pool_scales=[1, 2, 3]),
    "cnn-small": dict(backbone=dict(embedding_size=24, hidden_sizes=[24, 48, 96, 192], depths=[1, 2, 2, 1]),
                      hidden_size=48, pool_scales=[1, 2, 3]),
    "cnn-medium": dict(backbone=dict(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 2, 2, 1]),
                       hidden_size=64, pool_scales=[1, 2, 3]),
}


def build_segformer(preset: str, id2label: Mapping[int, str], seed: int = 0):
    """A randomly initialised segmentation model from a preset: SegFormer (`MODEL_PRESETS`) or UperNet on a
    ResNet with a conv + BatchNorm stem (`CNN_PRESETS`, names `cnn-*`)."""
    from transformers import (ResNetConfig, SegformerConfig, SegformerForSemanticSegmentation, UperNetConfig,
                              UperNetForSemanticSegmentation)

    if preset not in MODEL_PRESETS and preset not in CNN_PRESETS:
        raise LADError(f"unknown model preset {preset!r}; choose one of {sorted(MODEL_PRESETS) + sorted(CNN_PRESETS)}")
    id2label = {int(k): v for k, v in id2label.items()}
    labels = dict(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(seed)
    if preset in CNN_PRESETS:
        p = dict(CNN_PRESETS[preset])
        backbone = ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"], **p.pop("backbone"))
        return UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, use_auxiliary_head=False,
                                                            **labels, **p))
    cfg = SegformerConfig(num_channels=3, **labels, **MODEL_PRESETS[preset])
    return SegformerForSemanticSegmentation(cfg)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _use_bf16(spec: RunSpec) -> bool:
    if spec.bf16 is not None:
        return bool(spec.bf16) and torch.cuda.is_available()
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _common_args(spec: RunSpec, out_dir: str) -> Dict[str, Any]:
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=out_dir, max_steps=int(spec.steps), per_device_train_batch_size=int(spec.batch_size),
        per_device_eval_batch_size=int(spec.eval_batch_size), learning_rate=float(spec.lr),
        weight_decay=float(spec.weight_decay), warmup_steps=int(math.ceil(spec.warmup_ratio * spec.steps)),
        lr_scheduler_type="linear", seed=int(spec.seed), data_seed=int(spec.seed), use_cpu=not cuda,
        bf16=_use_bf16(spec), report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no",
        disable_tqdm=True, dataloader_num_workers=4 if cuda else 0, dataloader_pin_memory=cuda,
    )


def _noise_args(spec: RunSpec) -> Dict[str, Any]:
    return spec.noise_settings()


class _Workdir:
    """A temporary trainer output dir, removed afterwards (nothing is saved: save_strategy='no')."""

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="lad_exp_")
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def _metrics(raw: Mapping[str, float], prefix: str, id2label: Mapping[int, str]) -> Dict[str, Any]:
    per_class = {}
    for k, name in id2label.items():
        key = f"{prefix}_iou_{'_'.join(str(name).replace('/', ' ').split())}"
        if key in raw:
            per_class[name] = float(raw[key])
    out = {"mean_iou": float(raw[f"{prefix}_mean_iou"]), "overall_accuracy": float(raw[f"{prefix}_overall_accuracy"]),
           "per_class_iou": per_class}
    if f"{prefix}_mkl" in raw:
        out["mkl_x100"] = float(raw[f"{prefix}_mkl"])
    for key in ("mean_iou_no_label", "label_gain", "mean_iou_shuffled_label", "label_gain_shuffled"):
        if f"{prefix}_{key}" in raw:
            out[key] = float(raw[f"{prefix}_{key}"])
    return out


def _train(trainer) -> float:
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def train_plain(data: Prepared, spec: RunSpec, workdir: Optional[str] = None):
    """Plain supervised training (baseline student or plain KD teacher). Returns `(model, trainer, seconds)`."""
    from ..trainers import SegmentationConfig, SegmentationTrainer

    model = build_segformer(spec.model, data.id2label, spec.seed)
    with _Workdir() as tmp:
        args = SegmentationConfig(**_common_args(spec, workdir or tmp))
        trainer = SegmentationTrainer(model=model, args=args, train_dataset=data.train, data_collator=data.collator)
        seconds = _train(trainer)
    return trainer.model, trainer, seconds


def train_lad_teacher(data: Prepared, spec: RunSpec, workdir: Optional[str] = None):
    """Label-assisted teacher (add_label_channel + LADTeacherTrainer). Returns `(model, trainer, seconds)`."""
    from ..trainers import LADTeacherConfig, LADTeacherTrainer

    model = build_segformer(spec.model, data.id2label, spec.seed)
    model = add_label_channel(model, init=spec.label_channel_init, scale=spec.label_channel_scale, seed=spec.seed)
    with _Workdir() as tmp:
        args = LADTeacherConfig(
            **_common_args(spec, workdir or tmp), **_noise_args(spec), label_channel_init=spec.label_channel_init,
            dual_path=bool(spec.dual_path), consistency_weight=float(spec.consistency_weight),
            consistency_tau=float(spec.consistency_tau), eval_stability_draws=int(spec.eval_stability_draws),
            label_channel_scale=float(spec.label_channel_scale), rgb_dropout=float(spec.rgb_dropout),
        )
        trainer = LADTeacherTrainer(model=model, args=args, train_dataset=data.train, data_collator=data.collator)
        seconds = _train(trainer)
    return trainer.model, trainer, seconds


def train_student(data: Prepared, spec: RunSpec, teacher, workdir: Optional[str] = None):
    """Distil a 3-channel student from `teacher` (label-assisted: LAD; plain: conventional CWD/KD).

    Returns `(model, trainer, seconds)`. The student's init depends only on `spec.model` and `spec.seed`, so a
    baseline and a student with the same seed start from the same weights.
    """
    from ..trainers import LADDistillationConfig, LADDistillationTrainer

    model = build_segformer(spec.model, data.id2label, spec.seed)
    with _Workdir() as tmp:
        args = LADDistillationConfig(
            **_common_args(spec, workdir or tmp), **_noise_args(spec), distill_loss=spec.distill_loss,
            distill_tau=float(spec.distill_tau), distill_weight=float(spec.distill_weight),
            fixed_class_encoding=bool(spec.fixed_class_encoding),
        )
        trainer = LADDistillationTrainer(model=model, teacher_model=teacher, args=args, train_dataset=data.train,
                                         data_collator=data.collator)
        seconds = _train(trainer)
    teacher.float()  # under bf16 the trainer distils from a cast copy; this keeps the caller's teacher fp32 either way
    return trainer.model, trainer, seconds


def evaluate_plain(trainer, data: Prepared, splits: Iterable[str] = ("validation", "test")) -> Dict[str, Any]:
    """mIoU (and per-class IoU) of a 3-channel model with its trainer's `evaluate` on each split."""
    out = {}
    for split in splits:
        raw = trainer.evaluate(eval_dataset=getattr(data, split), metric_key_prefix=split)
        out[split] = _metrics(raw, split, data.id2label)
    return out



# --------------------------------------------------------------------------------------------------- segment oracle


def segment_oracle(pred: np.ndarray, label: np.ndarray, num_labels: int, ignore_index: int = 255) -> np.ndarray:
    """`pred` [H,W] with every connected ground-truth segment replaced by the majority class predicted inside it.

    Segments are the 4-connected components of each class's region in `label` (`scipy.ndimage.label`); ignore
    pixels keep their prediction. Ties go to the smallest class id. Predictions outside `[0, K)` do not vote.
    """
    from scipy import ndimage

    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape or pred.ndim != 2:
        raise LADError(f"segment_oracle needs two [H, W] maps of one shape, got {pred.shape} and {label.shape}")
    k = int(num_labels)
    seg = np.zeros(label.shape, dtype=np.int64)
    offset = 0
    for c in np.unique(label):
        if c == ignore_index or not (0 <= c < k):
            continue
        comp, n = ndimage.label(label == c)
        seg[comp > 0] = comp[comp > 0] + offset
        offset += n
    if offset == 0:
        return pred.copy()
    valid = (seg > 0) & (pred >= 0) & (pred < k)
    votes = np.bincount(seg[valid] * k + pred[valid].astype(np.int64), minlength=(offset + 1) * k).reshape(offset + 1, k)
    has_votes = votes.sum(1) > 0
    majority = votes.argmax(1)
    out = pred.copy()
    inside = seg > 0
    replace = inside & has_votes[seg]
    out[replace] = majority[seg[replace]]
    return out


@torch.no_grad()
def _predict(model, batch, device, noiser: Optional[LabelNoiser] = None) -> torch.Tensor:
    x = batch["pixel_values"].to(device)
    y = batch["labels"].to(device)
    if noiser is not None:
        x = noiser.assist(x, y)
    dtype = next(model.parameters()).dtype
    logits = segmentation_logits(model, x.to(dtype)).float()
    logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(1)


def _loader(dataset, collator, batch_size: int):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)


def oracle_and_predictions(model, data: Prepared, split: str = "test", batch_size: int = 64,
                           keep: int = 0) -> Dict[str, Any]:
    """The model's mIoU and its segment-oracle mIoU on `split` (one pass), plus the first `keep` predictions."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    plain = StreamingMeanIoU(data.num_labels, data.ignore_index)
    oracle = StreamingMeanIoU(data.num_labels, data.ignore_index)
    kept = []
    for batch in _loader(getattr(data, split), data.collator, batch_size):
        pred = _predict(model, batch, device).cpu().numpy()
        lab = batch["labels"].numpy()
        fixed = np.stack([segment_oracle(p, l, data.num_labels, data.ignore_index) for p, l in zip(pred, lab)])
        plain.update(torch.from_numpy(pred), torch.from_numpy(lab))
        oracle.update(torch.from_numpy(fixed), torch.from_numpy(lab))
        if len(kept) < keep:
            kept.extend(list(pred[: keep - len(kept)]))
    model.train(was_training)
    return {"mean_iou": float(plain.compute()["mean_iou"]), "oracle_mean_iou": float(oracle.compute()["mean_iou"]),
            "predictions": kept}


def predict_teacher(model, data: Prepared, noiser: LabelNoiser, split: str = "test", n: int = 4) -> np.ndarray:
    """A label-assisted teacher's predictions [n, H, W] on the first `n` images of `split` with noised labels."""
    device = next(model.parameters()).device
    model.eval()
    batch = data.collator([getattr(data, split)[i] for i in range(n)])
    return _predict(model, batch, device, noiser).cpu().numpy()


# --------------------------------------------------------------------------------------------------- attribution


def input_attribution(model, data: Prepared, noiser: LabelNoiser, split: str = "validation", num_images: int = 64,
                      batch_size: int = 32) -> Dict[str, float]:
    """Share of `|gradient x input|` from the RGB channels and from the label channel (Fig. 4, measured).

    For each image the score is the sum over non-ignored pixels of the logit of the class the teacher predicts there
    (logits upsampled to the label size); its gradient with respect to the input `[x ; ŷ]` times the input, in
    absolute value, is summed per channel group. Returns `{"rgb": s, "label": 1 - s}` pooled over `num_images`.
    With 3 image channels and 1 label channel, an input-blind split would be 0.75 / 0.25.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    c = int(getattr(model.config, "label_assisted_image_channels", image_channels(model.config) - 1))
    dataset = getattr(data, split)
    n = min(int(num_images), len(dataset))
    rgb = lab = 0.0
    dtype = next(model.parameters()).dtype
    for start in range(0, n, batch_size):
        batch = data.collator([dataset[i] for i in range(start, min(n, start + batch_size))])
        x, y = batch["pixel_values"].to(device), batch["labels"].to(device)
        inp = noiser.assist(x, y).to(dtype).detach().requires_grad_(True)
        logits = segmentation_logits(model, inp).float()
        logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        valid = y != data.ignore_index
        score = logits.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)[valid].sum()
        (grad,) = torch.autograd.grad(score, inp)
        gi = (grad.float() * inp.detach().float()).abs()
        rgb += float(gi[:, :c].sum())
        lab += float(gi[:, c:].sum())
    model.train(was_training)
    total = rgb + lab
    if total <= 0:
        return {"rgb": float("nan"), "label": float("nan")}
    return {"rgb": rgb / total, "label": lab / total}


def make_noiser(num_labels: int, spec: RunSpec, seed: int = 0, clean: bool = False) -> LabelNoiser:
    """A seeded noiser with the spec's noise options (`clean=True`: no class noise, no pixel noise)."""
    gen = torch.Generator().manual_seed(int(seed))
    noise = dataclasses.replace(spec, label_sigma=0.0, class_noise=False, pixel_noise=False) if clean else spec
    resolved = LabelNoiseArguments(**{k: v if v is not None else NOISE_DEFAULTS[k] for k, v in noise.noise_settings().items()})
    return LabelNoiser.from_args(resolved, num_labels, generator=gen)
