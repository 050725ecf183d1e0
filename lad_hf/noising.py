"""Label Noising Module (LNM, paper Eq. 5).

    ŷ = Σ_k α_k · Y_k + σ · β,    α_k ~ N(0, 1) per image and class,   β ~ N(0, 1) per pixel

Σ_k α_k · Y_k is computed as `alpha.gather(label)` (O(H·W)); no K-channel one-hot is built.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Optional

import torch

from .data.validation import check_labels
from .errors import LADError

IGNORE_MODES = ("zero", "class")


# the paper's settings; a field left unset (None) takes the teacher's saved setting, else these
NOISE_DEFAULTS = {"label_sigma": 0.01, "class_noise": True, "pixel_noise": True, "ignore_mode": "zero"}
NOISE_FIELDS = tuple(NOISE_DEFAULTS)


@dataclass
class LabelNoiseArguments:
    """The label-noise options (paper Eq. 5), declared once; both LAD configs inherit them.

    Unset (`None`) options take the setting the teacher was trained with (saved in its `config.lad_label_noise`),
    else the paper's: σ 0.01, class noise on, pixel noise on, ignore pixels 0.
    """

    label_sigma: Optional[float] = field(
        default=None, metadata={"help": "σ of the per-pixel noise β on the label channel (default 0.01, or the teacher's)."}
    )
    class_noise: Optional[bool] = field(
        default=None, metadata={"help": "Random per-image class codes α_k ~ N(0,1); false feeds the clean label "
                                        "(shortcut ablation). Default true, or the teacher's."}
    )
    pixel_noise: Optional[bool] = field(default=None, metadata={"help": "Add σ·β per-pixel noise (default true, or the teacher's)."})
    ignore_mode: Optional[str] = field(
        default=None, metadata={"help": "Label-channel value of ignore pixels: 0 ('zero') or a code of their own ('class'). "
                                        "Default 'zero', or the teacher's.", "choices": list(IGNORE_MODES)}
    )

    def check_noise(self) -> None:
        if self.label_sigma is not None and not (self.label_sigma >= 0 and math.isfinite(self.label_sigma)):
            raise LADError(f"--label_sigma must be a finite number >= 0, got {self.label_sigma}")
        if self.ignore_mode is not None and self.ignore_mode not in IGNORE_MODES:
            raise LADError(f"--ignore_mode must be one of {list(IGNORE_MODES)}, got {self.ignore_mode!r}")

    def resolve_noise(self, saved: Optional[dict] = None) -> dict:
        """Fill unset options from `saved` (a teacher's `config.lad_label_noise`), then the defaults; in place."""
        saved = saved or {}
        for name, default in NOISE_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, saved.get(name, default))
        self.check_noise()
        return self.noise_settings()

    def noise_settings(self) -> dict:
        """The settings saved with a teacher (`config.lad_label_noise`)."""
        return {f: getattr(self, f) for f in NOISE_FIELDS}



class LabelNoiser:
    """Randomly encodes a label map as one noisy channel (paper Eq. 5).

    `noiser(labels[N,H,W]) -> FloatTensor[N,1,H,W]`; `noiser.assist(x[N,C,H,W], labels) -> [N,C+1,H,W]`.

    * class noise: α_{n,k} ~ N(0,1), every pixel of class k in image n gets α_{n,k};
      with `class_noise=False` the clean label is a fixed code in [-1/2, 1/2] per class, never 0 (the ignore code).
    * pixel noise: + σ·β, β ~ N(0,1) per pixel (`pixel_noise=False` or `sigma=0` disables it).
    * ignore pixels: 0 (`ignore_mode="zero"`) or their own random class value (`"class"`, as the reference code).
    * `fixed_alpha`: a fixed per-class encoding tensor [K] (the reference code uses α_k = (k-11)/10 when distilling).
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
        if fixed_alpha is not None and ignore_mode == "zero" and bool((fixed_alpha == 0).any()):
            raise LADError("fixed_alpha gives a class the code 0, which ignore_mode='zero' uses for ignore pixels; "
                           "use codes without 0 (reference_fixed_alpha) or ignore_mode='class'")
        self.num_labels = num_labels
        self.sigma = float(sigma)
        self.class_noise = class_noise
        self.pixel_noise = pixel_noise
        self.ignore_index = ignore_index
        self.ignore_mode = ignore_mode
        self.generator = generator
        self.fixed_alpha = fixed_alpha
        self.validate = validate

    @classmethod
    def from_args(cls, args, num_labels: int, generator: Optional[torch.Generator] = None,
                  fixed_alpha: Optional[torch.Tensor] = None, validate: bool = False) -> "LabelNoiser":
        """A noiser from any object carrying the `LabelNoiseArguments` fields (and `ignore_index`)."""
        missing = [f for f in NOISE_FIELDS if getattr(args, f, None) is None]
        if missing:
            raise LADError(f"{type(args).__name__} has no resolved label-noise options {missing}; call resolve_noise()")
        return cls(num_labels, sigma=args.label_sigma, class_noise=args.class_noise, pixel_noise=args.pixel_noise,
                   ignore_index=getattr(args, "ignore_index", 255), ignore_mode=args.ignore_mode, generator=generator,
                   fixed_alpha=fixed_alpha, validate=validate)

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
            codes = clean_codes(k, device, dtype).expand(batch_size, k + 1).clone()
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


def clean_codes(num_labels: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The clean encoding [K+1]: class k -> (j_k - K/2) / K on the grid j = 0..K with the zero point skipped, so no
    class gets 0 (the ignore code of `ignore_mode="zero"`); column K (ignore, `"class"` mode) gets -1/2 - 1/K."""
    k = num_labels
    j = torch.arange(k, device=device, dtype=dtype)
    if k % 2 == 0:
        j = j + (j >= k // 2).to(dtype)  # even K: the grid's middle point would be exactly 0
    codes = (j - k / 2) / k
    return torch.cat([codes, torch.full((1,), -0.5 - 1.0 / k, device=device, dtype=dtype)])


def reference_fixed_alpha(num_labels: int) -> torch.Tensor:
    """The reference code's fixed distillation-time encoding α_k = (k - 11) / 10 (VOC, 21 classes), generalised to
    centre c = (K+1)//2; the class at the centre would get 0 (the ignore code), so classes k >= c move up by 0.1."""
    centre = (num_labels + 1) // 2
    k = torch.arange(num_labels, dtype=torch.float32)
    return (k - centre + (k >= centre).float()) / 10
