"""Label Noising Module (LNM, paper Eq. 5).

    ŷ = Σ_k α_k · Y_k + σ · β,    α_k ~ N(0, 1) per image and class,   β ~ N(0, 1) per pixel

Σ_k α_k · Y_k is computed as ``alpha.gather(label)`` (O(H·W)); no K-channel one-hot is built.
"""

from __future__ import annotations

from typing import Optional

import torch

from .errors import LADError

IGNORE_MODES = ("zero", "class")


def check_labels(labels: torch.Tensor, num_labels: int, ignore_index: int) -> None:
    """Raise LADError when ``labels`` holds values outside [0, num_labels) that are not ``ignore_index``."""
    bad = (labels < 0) | (labels >= num_labels)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        values = torch.unique(labels[bad]).tolist()[:10]
        raise LADError(
            f"labels contain values {values} outside [0, {num_labels}) that are not the ignore index {ignore_index}; "
            "fix num_labels/id2label, or pass --do_reduce_labels if 0 means 'ignore'"
        )


class LabelNoiser:
    """Randomly encodes a label map as one noisy channel (paper Eq. 5).

    ``noiser(labels[N,H,W]) -> FloatTensor[N,1,H,W]``; ``noiser.assist(x[N,C,H,W], labels) -> [N,C+1,H,W]``.

    * class noise: α_{n,k} ~ N(0,1), every pixel of class k in image n gets α_{n,k};
      with ``class_noise=False`` the clean label is encoded as (k - (K-1)/2) / K (unit scale, zero mean).
    * pixel noise: + σ·β, β ~ N(0,1) per pixel (``pixel_noise=False`` or ``sigma=0`` disables it).
    * ignore pixels: 0 (``ignore_mode="zero"``) or their own random class value (``"class"``, as the reference code).
    * ``fixed_alpha``: a fixed per-class encoding tensor [K] (the reference code uses α_k = (k-11)/10 when distilling).
    """

    def __init__(
        self,
        num_labels: int,
        sigma: float = 0.01,
        class_noise: bool = True,
        pixel_noise: bool = True,
        ignore_index: int = 255,
        ignore_mode: str = "zero",
        generator: Optional[torch.Generator] = None,
        fixed_alpha: Optional[torch.Tensor] = None,
        validate: bool = True,
    ):
        if num_labels < 1:
            raise LADError(f"num_labels must be >= 1, got {num_labels}")
        if sigma < 0:
            raise LADError(f"sigma must be >= 0, got {sigma}")
        if ignore_mode not in IGNORE_MODES:
            raise LADError(f"ignore_mode must be one of {IGNORE_MODES}, got {ignore_mode!r}")
        if fixed_alpha is not None and tuple(fixed_alpha.shape) != (num_labels,):
            raise LADError(f"fixed_alpha must have shape ({num_labels},), got {tuple(fixed_alpha.shape)}")
        self.num_labels = num_labels
        self.sigma = float(sigma)
        self.class_noise = class_noise
        self.pixel_noise = pixel_noise
        self.ignore_index = ignore_index
        self.ignore_mode = ignore_mode
        self.generator = generator
        self.fixed_alpha = fixed_alpha
        self.validate = validate

    def __repr__(self) -> str:
        return (
            f"LabelNoiser(num_labels={self.num_labels}, sigma={self.sigma}, class_noise={self.class_noise}, "
            f"pixel_noise={self.pixel_noise}, ignore_mode={self.ignore_mode!r}, fixed={self.fixed_alpha is not None})"
        )

    def _randn(self, shape, device, dtype) -> torch.Tensor:
        gen = self.generator
        if gen is not None and gen.device.type != torch.device(device).type:
            # draw on the generator's device, then move: keeps runs reproducible from the seed
            return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32).to(device, dtype)
        return torch.randn(shape, generator=gen, device=device, dtype=dtype)

    def class_codes(self, batch_size: int, device, dtype=torch.float32) -> torch.Tensor:
        """The per-image class encoding table [N, K+1]; column K is the ignore slot."""
        k = self.num_labels
        if self.fixed_alpha is not None:
            codes = self.fixed_alpha.to(device, dtype).expand(batch_size, k)
            extra = torch.zeros(batch_size, 1, device=device, dtype=dtype)
            if self.ignore_mode == "class":
                extra = extra + codes.min() - 1.0 / max(k, 1)
            return torch.cat([codes, extra], dim=1)
        if self.class_noise:
            codes = self._randn((batch_size, k + 1), device, dtype)
        else:
            clean = (torch.arange(k + 1, device=device, dtype=dtype) - (k - 1) / 2) / k
            codes = clean.expand(batch_size, k + 1).clone()
        if self.ignore_mode == "zero":
            codes[:, k] = 0
        return codes

    def __call__(self, labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if labels.dim() != 3:
            raise LADError(f"labels must have shape [N, H, W], got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point:
            raise LADError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
        if self.validate:
            check_labels(labels, self.num_labels, self.ignore_index)
        n, h, w = labels.shape
        k = self.num_labels
        # ignore pixels (and nothing else, once validated) map to slot K
        idx = torch.where((labels >= 0) & (labels < k), labels, torch.full_like(labels, k)).long()
        # draw and add in float32 whatever the output dtype, so one seed gives the same noise in fp32/fp64/bf16
        codes = self.class_codes(n, labels.device, torch.float32)  # [N, K+1]
        out = codes.gather(1, idx.view(n, -1)).view(n, 1, h, w)
        if self.pixel_noise and self.sigma > 0:
            out = out + self.sigma * self._randn((n, 1, h, w), labels.device, torch.float32)
        return out.to(dtype)

    def assist(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[x ; ŷ]: the image with the noised label appended as the last channel."""
        if pixel_values.dim() != 4:
            raise LADError(f"pixel_values must have shape [N, C, H, W], got {tuple(pixel_values.shape)}")
        if pixel_values.shape[0] != labels.shape[0] or pixel_values.shape[-2:] != labels.shape[-2:]:
            raise LADError(
                f"image batch {tuple(pixel_values.shape)} and label batch {tuple(labels.shape)} differ in size; "
                "images and masks must have the same batch size, height and width"
            )
        return torch.cat([pixel_values, self(labels, dtype=pixel_values.dtype)], dim=1)

    # generator state for checkpoints (saved as safetensors by the trainers)
    def get_state(self) -> Optional[torch.Tensor]:
        return None if self.generator is None else self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        if self.generator is not None:
            self.generator.set_state(state)


def reference_fixed_alpha(num_labels: int) -> torch.Tensor:
    """The reference code's fixed distillation-time encoding α_k = (k - 11) / 10 (VOC, 21 classes), generalised."""
    centre = (num_labels + 1) // 2
    return (torch.arange(num_labels, dtype=torch.float32) - centre) / 10
