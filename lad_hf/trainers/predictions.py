"""What evaluation gives back besides the streaming metrics: argmax class maps (for `predict()` and
`compute_metrics`) and a few overlays for TensorBoard / W&B.

Class maps, not logits: per image [H, W] integers (int16 when the class ids and the ignore index fit, else int64),
gathered over processes and kept on the host. Images of different sizes are padded bottom/right with -100, the
Trainer's padding index.
"""

from __future__ import annotations

import logging
import weakref
from typing import List, Optional, Tuple

import numpy as np
import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

PAD = -100


class ClassMapCollector:
    """Per-batch (predictions, labels) class maps of one evaluation, gathered over processes, on the host."""

    def __init__(self):
        self.preds: List[np.ndarray] = []
        self.labels: List[np.ndarray] = []

    def reset(self) -> None:
        self.preds, self.labels = [], []

    @staticmethod
    def gather(accelerator, x: torch.Tensor) -> np.ndarray:
        """Pad H and W to the largest over processes, gather (dropping sampler duplicates), host numpy, compact."""
        for dim in (1, 2):
            x = accelerator.pad_across_processes(x, dim=dim, pad_index=PAD)
        x = accelerator.gather_for_metrics(x).cpu()
        small = x.numel() == 0 or (int(x.min()) >= -32768 and int(x.max()) <= 32767)
        return x.numpy().astype(np.int16 if small else np.int64)

    def add(self, preds: np.ndarray, labels: np.ndarray) -> None:
        self.preds.append(preds)
        self.labels.append(labels)

    def arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """All maps as [N, H_max, W_max] arrays (padded with -100), or (None, None) when nothing was kept."""
        if not self.preds:
            return None, None
        return _stack(self.preds), _stack(self.labels)


def _stack(batches: List[np.ndarray]) -> np.ndarray:
    h = max(b.shape[1] for b in batches)
    w = max(b.shape[2] for b in batches)
    dtype = np.result_type(*[b.dtype for b in batches])
    out = np.full((sum(b.shape[0] for b in batches), h, w), PAD, dtype=dtype)
    i = 0
    for b in batches:
        out[i : i + b.shape[0], : b.shape[1], : b.shape[2]] = b
        i += b.shape[0]
    return out


class EvalImagesCallback(TrainerCallback):
    """At each evaluation, log `eval_num_images` panels (image | ground truth | prediction) to TensorBoard and W&B.

    The trainer hands it the first samples of each evaluation (`keep`); only the main process logs.
    """

    def __init__(self, trainer, num_images: int):
        self._trainer = weakref.ref(trainer)  # no trainer <-> callback cycle (see _NonFiniteGuard)
        self.num_images = num_images
        self.samples: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def reset(self) -> None:
        self.samples = []

    def keep(self, pixel_values: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor) -> None:
        for i in range(min(pixel_values.shape[0], self.num_images - len(self.samples))):
            self.samples.append((pixel_values[i, :3].float().cpu().numpy(), labels[i].cpu().numpy(),
                                 preds[i].cpu().numpy()))

    def panels(self) -> List[np.ndarray]:
        from ..data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        from ..overlay import denormalize, panel

        trainer = self._trainer()
        proc = getattr(trainer, "processing_class", None)
        mean = getattr(proc, "image_mean", None) or IMAGENET_DEFAULT_MEAN
        std = getattr(proc, "image_std", None) or IMAGENET_DEFAULT_STD
        return [panel(denormalize(x, mean, std), y, p, trainer.num_labels) for x, y, p in self.samples]

    def on_evaluate(self, args, state, control, **kwargs):
        trainer = self._trainer()
        if trainer is None or not self.samples or not state.is_world_process_zero:
            return
        images = self.panels()
        for cb in trainer.callback_handler.callbacks:
            name = type(cb).__name__
            if name == "TensorBoardCallback":
                if getattr(cb, "tb_writer", None) is None:
                    cb._init_summary_writer(args)
                for i, img in enumerate(images):
                    cb.tb_writer.add_image(f"eval/prediction_{i}", img, state.global_step, dataformats="HWC")
                cb.tb_writer.flush()
            elif name == "WandbCallback" and getattr(cb, "_wandb", None) is not None and cb._wandb.run is not None:
                caption = "image | ground truth | prediction"
                cb._wandb.log({"eval/predictions": [cb._wandb.Image(img, caption=caption) for img in images],
                               "train/global_step": state.global_step})
        self.reset()


def wants_eval_images(args) -> bool:
    """`eval_num_images` > 0 and TensorBoard or W&B among `report_to`."""
    report = args.report_to or []
    return getattr(args, "eval_num_images", 0) > 0 and any(r in report for r in ("tensorboard", "wandb", "all"))
