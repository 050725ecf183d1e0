"""lad_hf.stability: the paper's mKL (Tab. 8) against a naive double loop, and on a real tiny teacher."""

import copy
import math

import numpy as np
import pytest
import torch

from conftest import synthetic_scene, tiny_segformer
from lad_hf.errors import LADError
from lad_hf.modeling import add_label_channel
from lad_hf.noising import LabelNoiser
from lad_hf.stability import mean_pairwise_kl, teacher_stability


def naive_mkl_per_image(logits):
    """1/(D(D-1)) Σ_{i≠j} mean_pixels KL(p_i ‖ p_j), explicit loops in float64."""
    logits = logits.double()
    d, n, c, h, w = logits.shape
    out = []
    for img in range(n):
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i == j:
                    continue
                kl_sum = 0.0
                for y in range(h):
                    for x in range(w):
                        p = torch.softmax(logits[i, img, :, y, x], 0)
                        q = torch.softmax(logits[j, img, :, y, x], 0)
                        kl_sum += sum(p[k].item() * math.log(p[k].item() / q[k].item()) for k in range(c))
                total += kl_sum / (h * w)
        out.append(total / (d * (d - 1)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_mean_pairwise_kl_matches_naive_double_loop(d):
    g = torch.Generator().manual_seed(d)
    logits = torch.randn(d, 2, 4, 3, 3, generator=g) * 2
    want = naive_mkl_per_image(logits)
    per_image = mean_pairwise_kl(logits, reduction="none")
    assert per_image.shape == (2,)
    torch.testing.assert_close(per_image.double(), want, rtol=1e-4, atol=1e-6)
    assert mean_pairwise_kl(logits).item() == pytest.approx(want.mean().item(), rel=1e-4)
    assert (want > 0).all()


def test_mean_pairwise_kl_is_not_the_one_sided_kl():
    # with D = 3 the asymmetric pairs must all be counted: compare against only i<j pairs
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 4, 2, 2, generator=g) * 3
    lp = torch.log_softmax(logits.double(), 2)
    one_sided = sum(
        (lp[i].exp() * (lp[i] - lp[j])).sum(1).mean() for i in range(3) for j in range(3) if i < j
    ) / 3
    assert mean_pairwise_kl(logits).item() != pytest.approx(one_sided.item(), rel=1e-3)


def test_mean_pairwise_kl_zero_for_identical_draws():
    g = torch.Generator().manual_seed(1)
    one = torch.randn(1, 2, 5, 4, 4, generator=g) * 10
    same = one.expand(4, -1, -1, -1, -1)
    assert abs(mean_pairwise_kl(same).item()) < 1e-6
    # a class-independent shift per pixel does not change the distribution either
    shifted = torch.cat([one, one + 3.0])
    assert abs(mean_pairwise_kl(shifted).item()) < 1e-6


def test_mean_pairwise_kl_bad_shapes():
    with pytest.raises(LADError):
        mean_pairwise_kl(torch.zeros(1, 2, 3, 4, 4))
    with pytest.raises(LADError):
        mean_pairwise_kl(torch.zeros(2, 3, 4, 4))


def _batch(n=2, size=32):
    rng = np.random.default_rng(0)
    imgs, labs = zip(*(synthetic_scene(rng, size) for _ in range(n)))
    return torch.tensor(np.stack(imgs)), torch.tensor(np.stack(labs))


def _unit_scale(model):
    """std 1/sqrt(fan_in) weights: HF's 0.02 init gives near-constant logits that would hide any instability."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model


def test_teacher_stability_on_label_assisted_segformer():
    x, y = _batch()
    base = _unit_scale(tiny_segformer(seed=0))
    # zero label weights: the label channel is ignored, every draw gives the same logits
    ignoring = add_label_channel(copy.deepcopy(base), init="zeros")
    # large label weights: the prediction moves with the random class codes
    sensitive = add_label_channel(copy.deepcopy(base), init="random", scale=50.0)

    noiser = LabelNoiser(4, sigma=0.01, generator=torch.Generator().manual_seed(0))
    zero = teacher_stability(ignoring, x, y, noiser, draws=4)
    assert zero.dim() == 0 and torch.isfinite(zero)
    assert abs(zero.item()) < 1e-6

    sensitive.train()
    mkl = teacher_stability(sensitive, x, y, noiser, draws=4)
    assert sensitive.training  # the mode is restored
    assert mkl.dim() == 0 and torch.isfinite(mkl)
    assert mkl.item() > 0
    assert mkl.item() > 1e-3

    # it is the naive mKL of the teacher's outputs on fresh draws of the same images
    noiser.generator.manual_seed(5)
    again = teacher_stability(sensitive, x, y, noiser, draws=3)
    noiser.generator.manual_seed(5)
    sensitive.eval()
    with torch.no_grad():
        outs = torch.stack([sensitive(pixel_values=noiser.assist(x, y)).logits for _ in range(3)])
    assert again.item() == pytest.approx(mean_pairwise_kl(outs).item(), rel=1e-5)


def test_teacher_stability_needs_two_draws():
    x, y = _batch(n=1)
    teacher = add_label_channel(tiny_segformer())
    with pytest.raises(LADError, match="draws"):
        teacher_stability(teacher, x, y, LabelNoiser(4), draws=1)
