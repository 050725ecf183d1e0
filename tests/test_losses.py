"""lad_hf.losses: distillation distances against independent float64 loop implementations."""

import math

import pytest
import torch
import torch.nn.functional as F

from lad_hf.errors import LADError
from lad_hf.losses import LOSSES, ChannelWiseDivergence, LogitMSE, PixelWiseKL, build_loss


def _pair(n=2, c=3, h=5, w=4, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, h, w, generator=g) * scale
    t = torch.randn(n, c, h, w, generator=g) * scale
    return s, t


def _kl(p_logits, q_logits):
    """KL(softmax(p) ‖ softmax(q)) over a 1-D float64 vector, written out."""
    p = [math.exp(v) for v in p_logits]
    q = [math.exp(v) for v in q_logits]
    zp, zq = sum(p), sum(q)
    return sum((pi / zp) * math.log((pi / zp) / (qi / zq)) for pi, qi in zip(p, q))


def naive_cwd(s, t, tau):
    """τ² / (N·C) · Σ_{n,c} KL(softmax_HW(t_nc/τ) ‖ softmax_HW(s_nc/τ))."""
    s, t = s.double(), t.double()
    n, c = s.shape[:2]
    total = 0.0
    for i in range(n):
        for j in range(c):
            total += _kl((t[i, j].flatten() / tau).tolist(), (s[i, j].flatten() / tau).tolist())
    return tau**2 * total / (n * c)


def naive_kl(s, t, tau):
    """τ² / (N·H·W) · Σ_{n,h,w} KL(softmax_C(t/τ) ‖ softmax_C(s/τ))."""
    s, t = s.double(), t.double()
    n, _, h, w = s.shape
    total = 0.0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                total += _kl((t[i, :, y, x] / tau).tolist(), (s[i, :, y, x] / tau).tolist())
    return tau**2 * total / (n * h * w)


def naive_mse(s, t):
    s, t = s.double(), t.double()
    n, c, h, w = s.shape
    total = 0.0
    for i in range(n):
        for j in range(c):
            total += ((s[i, j] - t[i, j]) ** 2).sum().item()
    return total / (n * c * h * w)


NAIVE = {"cwd": naive_cwd, "kl": naive_kl, "mse": lambda s, t, tau: naive_mse(s, t)}
CLASSES = {"cwd": ChannelWiseDivergence, "kl": PixelWiseKL, "mse": LogitMSE}


@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("name", ["cwd", "kl", "mse"])
def test_matches_naive_float64(name, tau):
    s, t = _pair(seed=int(tau * 10))
    loss = CLASSES[name](tau=tau)
    got = loss(s, t)
    assert got.dim() == 0 and got.dtype == torch.float32
    want = NAIVE[name](s, t, tau)
    assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert want > 0


def test_cwd_normalises_over_space_not_classes():
    # adding a per-pixel constant across classes leaves pixel-wise KL unchanged but changes CWD,
    # adding a per-channel constant over space leaves CWD unchanged but changes pixel-wise KL
    s, t = _pair(seed=3)
    per_pixel = torch.randn(2, 1, 5, 4) * 5
    per_channel = torch.randn(2, 3, 1, 1) * 5
    cwd, kl = ChannelWiseDivergence(tau=2.0), PixelWiseKL(tau=2.0)
    assert kl(s + per_pixel, t).item() == pytest.approx(kl(s, t).item(), rel=1e-4)
    assert cwd(s + per_pixel, t).item() != pytest.approx(cwd(s, t).item(), rel=1e-2)
    assert cwd(s + per_channel, t).item() == pytest.approx(cwd(s, t).item(), rel=1e-4)
    assert kl(s + per_channel, t).item() != pytest.approx(kl(s, t).item(), rel=1e-2)


def test_cwd_is_kl_teacher_to_student_not_reversed():
    s, t = _pair(seed=4)
    cwd = ChannelWiseDivergence(tau=1.0)
    assert cwd(s, t).item() == pytest.approx(naive_cwd(s, t, 1.0), rel=1e-4)
    assert cwd(s, t).item() != pytest.approx(naive_cwd(t, s, 1.0), rel=1e-3)


@pytest.mark.parametrize("name", ["cwd", "kl", "mse"])
def test_zero_when_student_equals_teacher(name):
    s, _ = _pair(seed=5)
    assert abs(build_loss(name, tau=4.0)(s, s.clone()).item()) < 1e-5


@pytest.mark.parametrize("name", ["cwd", "kl", "mse"])
def test_gradient_reaches_student_only(name):
    s, t = _pair(seed=6)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = build_loss(name, tau=2.0)(s, t)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    # and the gradient is the one of the naive formula
    s64 = s.detach().double().requires_grad_(True)
    if name == "mse":
        ref = ((s64 - t.detach().double()) ** 2).mean()
    elif name == "kl":
        lp_t = F.log_softmax(t.detach().double() / 2, 1)
        ref = 4 * (lp_t.exp() * (lp_t - F.log_softmax(s64 / 2, 1))).sum() / (2 * 5 * 4)
    else:
        lp_t = F.log_softmax(t.detach().double().flatten(2) / 2, 2)
        ref = 4 * (lp_t.exp() * (lp_t - F.log_softmax(s64.flatten(2) / 2, 2))).sum() / (2 * 3)
    assert ref.item() == pytest.approx(loss.item(), rel=1e-4)
    ref.backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-7)


def test_gradient_does_not_reach_teacher_graph():
    w = torch.nn.Parameter(torch.tensor(2.0))
    s, t = _pair(seed=7)
    teacher_logits = t * w  # part of a graph
    student = s.clone().requires_grad_(True)
    ChannelWiseDivergence(tau=4.0)(student, teacher_logits).backward()
    assert w.grad is None
    assert student.grad is not None


@pytest.mark.parametrize("name", ["cwd", "kl", "mse"])
@pytest.mark.parametrize("teacher_hw", [(10, 8), (3, 3), (5, 9)])
def test_teacher_resized_bilinearly_to_student(name, teacher_hw):
    g = torch.Generator().manual_seed(8)
    s = torch.randn(2, 3, 5, 4, generator=g) * 2
    t = torch.randn(2, 3, *teacher_hw, generator=g) * 2
    loss = build_loss(name, tau=4.0)
    resized = F.interpolate(t, size=(5, 4), mode="bilinear", align_corners=False)
    got = loss(s, t)
    assert got.item() == pytest.approx(loss(s, resized).item(), rel=1e-5, abs=1e-7)
    assert got.item() == pytest.approx(NAIVE[name](s, resized, 4.0), rel=1e-4, abs=1e-6)
    # nearest-neighbour resizing would give another value (bilinear is really used)
    nearest = F.interpolate(t, size=(5, 4), mode="nearest")
    assert got.item() != pytest.approx(loss(s, nearest).item(), rel=1e-3)


def test_student_is_never_resized():
    # the teacher follows the student, not the other way round: a bigger student keeps its size
    g = torch.Generator().manual_seed(9)
    s = torch.randn(1, 2, 8, 8, generator=g)
    t = torch.randn(1, 2, 4, 4, generator=g)
    want = naive_cwd(s, F.interpolate(t, size=(8, 8), mode="bilinear", align_corners=False), 1.0)
    assert ChannelWiseDivergence(tau=1.0)(s, t).item() == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("name", ["cwd", "kl", "mse"])
def test_autocast_bf16_runs_in_float32(name):
    s, t = _pair(seed=10, h=8, w=8)
    loss = build_loss(name, tau=4.0)
    fp32 = loss(s, t)
    sb, tb = s.bfloat16().requires_grad_(True), t.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(sb, tb)
    assert got.dtype == torch.float32
    # exactly the float32 computation on the bf16-rounded inputs, close to the fp32 value
    assert got.item() == pytest.approx(loss(sb.detach().float(), tb.float()).item(), rel=1e-6)
    assert got.item() == pytest.approx(fp32.item(), rel=0.03)
    got.backward()
    assert sb.grad is not None and sb.grad.dtype == torch.bfloat16


def test_registry_and_build_loss():
    assert {"cwd", "kl", "mse"} <= set(LOSSES)
    assert LOSSES["cwd"] is ChannelWiseDivergence
    assert LOSSES["kl"] is PixelWiseKL
    assert LOSSES["mse"] is LogitMSE
    cwd = build_loss("cwd", tau=4.0)
    assert isinstance(cwd, ChannelWiseDivergence) and cwd.tau == 4.0
    assert "tau=4.0" in repr(cwd)
    assert build_loss("kl").tau == 1.0
    with pytest.raises(LADError) as exc:
        build_loss("cirkd")
    msg = str(exc.value)
    assert "cirkd" in msg and all(name in msg for name in ("cwd", "kl", "mse"))
    for bad in (0.0, -1.0):
        with pytest.raises(LADError, match="tau"):
            build_loss("cwd", tau=bad)


def test_tau_scales_cwd_as_in_formula():
    s, t = _pair(seed=11)
    for tau in (1.0, 2.0, 8.0):
        assert build_loss("cwd", tau=tau)(s, t).item() == pytest.approx(naive_cwd(s, t, tau), rel=1e-4)
    assert build_loss("mse", tau=1.0)(s, t).item() == build_loss("mse", tau=7.0)(s, t).item()


@pytest.mark.parametrize("name", ["cwd", "kl", "mse"])
def test_shape_mismatches_raise(name):
    loss = build_loss(name)
    s = torch.zeros(2, 3, 4, 4)
    with pytest.raises(LADError, match="label set"):
        loss(s, torch.zeros(2, 5, 4, 4))
    with pytest.raises(LADError):
        loss(s, torch.zeros(1, 3, 4, 4))
    with pytest.raises(LADError, match=r"\[N, C, H, W\]"):
        loss(torch.zeros(2, 3, 16), torch.zeros(2, 3, 16))



def naive_cwd_torch(s, t, tau):
    n, c = s.shape[:2]
    lp_t = F.log_softmax(t.flatten(2) / tau, 2)
    return tau**2 * (lp_t.exp() * (lp_t - F.log_softmax(s.flatten(2) / tau, 2))).sum() / (n * c)
