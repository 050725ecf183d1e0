"""Teacher stability under label noise: the paper's mKL (Tab. 8).

    mKL = 1 / (D(D-1)) · Σ_{i≠j} mean_pixels KL(p_i ‖ p_j),   p_i = softmax_C(T(x, ŷ_i)) for D noise draws.

Computed in O(D): Σ_{i≠j} KL(p_i‖p_j) = D·Σ_i Σ_c p_i log p_i − Σ_c (Σ_i p_i)(Σ_j log p_j).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import LADError


def mean_pairwise_kl(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """logits [D, N, C, H, W] of D noise draws -> mean pairwise KL per image [N] (``"none"``) or its mean."""
    if logits.dim() != 5 or logits.shape[0] < 2:
        raise LADError(f"mean_pairwise_kl needs logits [D>=2, N, C, H, W], got {tuple(logits.shape)}")
    d = logits.shape[0]
    logp = F.log_softmax(logits.float(), dim=2)
    p = logp.exp()
    total = d * (p * logp).sum(dim=(0, 2)) - (p.sum(0) * logp.sum(0)).sum(dim=1)  # [N, H, W]
    per_image = (total.flatten(1).mean(1) / (d * (d - 1))).clamp_min(0)  # ≥ 0; clamp float rounding
    return per_image if reduction == "none" else per_image.mean()


@torch.no_grad()
def teacher_stability(teacher, pixel_values: torch.Tensor, labels: torch.Tensor, noiser, draws: int = 5) -> torch.Tensor:
    """The teacher's mean pairwise KL over ``draws`` noised labels for the same images (paper's mKL; ×100 in Tab. 8)."""
    if draws < 2:
        raise LADError(f"teacher_stability needs draws >= 2, got {draws}")
    was_training = teacher.training
    teacher.eval()
    outs = []
    for _ in range(draws):
        out = teacher(pixel_values=noiser.assist(pixel_values, labels))
        outs.append(out.logits if hasattr(out, "logits") else out[0])
    teacher.train(was_training)
    return mean_pairwise_kl(torch.stack(outs))
