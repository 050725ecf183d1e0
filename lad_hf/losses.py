"""Losses: the segmentation loss, and the distillation distances D(student_logits, teacher_logits) in one registry.

All losses run in float32 whatever the autocast dtype, detach the teacher side, and resize the
teacher's logits (bilinear) to the student's spatial size when they differ.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import LADError

LOSSES: Dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str):
    def deco(cls):
        LOSSES[name] = cls
        return cls

    return deco


def _align(student: torch.Tensor, teacher: torch.Tensor):
    if student.dim() != 4 or teacher.dim() != 4:
        raise LADError(f"logits must be [N, C, H, W]; got student {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
    if student.shape[:2] != teacher.shape[:2]:
        raise LADError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ in batch or "
            "number of classes; teacher and student must share the same label set"
        )
    teacher = teacher.detach()
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher.float(), size=student.shape[-2:], mode="bilinear", align_corners=False)
    return student.float(), teacher.float()


class _Distance(nn.Module):
    def __init__(self, tau: float = 1.0):
        super().__init__()
        if tau <= 0:
            raise LADError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            s, t = _align(student_logits, teacher_logits)
            return self.distance(s, t)


@register_loss("cwd")
class ChannelWiseDivergence(_Distance):
    """Channel-wise distillation (Shu et al. 2021).

    D = τ² / (N·C) · Σ_{n,c} KL( softmax_HW(t_nc / τ) ‖ softmax_HW(s_nc / τ) ), teacher detached.
    """

    def distance(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, c = s.shape[:2]
        s = s.reshape(n * c, -1) / self.tau
        t = t.reshape(n * c, -1) / self.tau
        log_p_t = F.log_softmax(t, dim=1)
        kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=1))).sum()
        return kl * self.tau**2 / (n * c)


@register_loss("kl")
class PixelWiseKL(_Distance):
    """Pixel-wise KD (Hinton): D = τ² / (N·H·W) · Σ_{n,h,w} KL( softmax_C(t/τ) ‖ softmax_C(s/τ) )."""

    def distance(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, _, h, w = s.shape
        log_p_t = F.log_softmax(t / self.tau, dim=1)
        kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s / self.tau, dim=1))).sum()
        return kl * self.tau**2 / (n * h * w)


@register_loss("mse")
class LogitMSE(_Distance):
    """D = mean over n,c,h,w of (s - t)²  (τ unused)."""

    def distance(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(s, t)


def build_loss(name: str, tau: float = 1.0) -> nn.Module:
    """`build_loss("cwd", tau=4.0)`; unknown names get a clear error listing the registry."""
    if name not in LOSSES:
        raise LADError(f"unknown distillation loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name](tau=tau)


def upsample(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling of logits [N,K,h,w] to the label size (SegFormer predicts at 1/4 resolution)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel-wise cross-entropy (float32) of logits upsampled to the label size, mean over non-ignored pixels.

    A batch with no valid pixel gives 0 rather than NaN.
    """
    logits = upsample(logits.float(), labels.shape[-2:])
    total = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)
