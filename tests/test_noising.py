"""lad_hf.noising: the Label Noising Module (paper Eq. 5)."""

import pytest
import torch

from lad_hf.errors import LADError
from lad_hf.noising import LabelNoiser, check_labels, reference_fixed_alpha

K = 5
IGNORE = 255


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _labels(n=3, h=12, w=10, k=K, seed=0, ignore=True):
    """Random label maps where every image holds every class (and some ignore pixels)."""
    g = _gen(seed)
    lab = torch.randint(0, k, (n, h, w), generator=g)
    lab[:, 0, :k] = torch.arange(k)  # every class present in every image
    if ignore:
        lab[:, -1, :3] = IGNORE
    return lab


def _all_classes_batch(n, k=K):
    """n identical 1xK label maps: pixel k has class k, so out[:, 0, 0, :] are the per-image class codes."""
    return torch.arange(k).view(1, 1, k).expand(n, 1, k).clone()


# ------------------------------------------------------------------------------------------------ shape & layout


@pytest.mark.parametrize("pixel_noise", [True, False])
def test_output_shape_dtype_device(pixel_noise):
    lab = _labels(n=3, h=12, w=10)
    out = LabelNoiser(K, pixel_noise=pixel_noise, generator=_gen(0))(lab)
    assert out.shape == (3, 1, 12, 10)
    assert out.dtype == torch.float32
    assert out.device == lab.device
    assert torch.isfinite(out).all()
    out64 = LabelNoiser(K, pixel_noise=pixel_noise, generator=_gen(0))(lab, dtype=torch.float64)
    assert out64.dtype == torch.float64


def test_labels_of_any_integer_dtype():
    lab = _labels()
    ref = LabelNoiser(K, generator=_gen(0))(lab)
    for dt in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(LabelNoiser(K, generator=_gen(0))(lab.to(dt)), ref)


def test_class_noise_constant_within_each_class_and_image():
    lab = _labels(n=4, h=16, w=16)
    out = LabelNoiser(K, pixel_noise=False, generator=_gen(1))(lab)[:, 0]
    for n in range(4):
        values = []
        for k in range(K):
            v = out[n][lab[n] == k]
            assert v.numel() > 0
            assert torch.all(v == v[0]), "pixels of one class must share one value"
            values.append(v[0].item())
        assert len(set(values)) == K, "different classes of one image get different codes"


def test_codes_are_independent_across_images_and_standard_normal():
    n = 4000
    noiser = LabelNoiser(K, pixel_noise=False, generator=_gen(2))
    codes = noiser(_all_classes_batch(n))[:, 0, 0, :].double()  # [n, K]
    # statistically N(0, 1): mean 0, std 1 (SE of the mean ~ 0.007 over 20k draws)
    assert abs(codes.mean().item()) < 0.05
    assert abs(codes.std().item() - 1.0) < 0.05
    assert abs((codes**4).mean().item() - 3.0) < 0.3  # Gaussian kurtosis, not e.g. uniform (1.8)
    for k in range(K):
        assert abs(codes[:, k].mean().item()) < 0.1 and abs(codes[:, k].std().item() - 1) < 0.1
    # image i and image i+1 get unrelated codes (a shared code would give correlation 1)
    a, b = codes[0::2].flatten(), codes[1::2].flatten()
    r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(r) < 0.05
    # and classes within one image are unrelated too
    r_cls = torch.corrcoef(codes.T)
    off = r_cls[~torch.eye(K, dtype=torch.bool)]
    assert off.abs().max().item() < 0.08
    # two images with identical labels never get identical encodings
    assert not torch.equal(codes[0], codes[1])
    assert (codes[0::2] != codes[1::2]).all()


def test_fresh_codes_every_call():
    noiser = LabelNoiser(K, pixel_noise=False, generator=_gen(3))
    lab = _labels(n=2)
    assert not torch.equal(noiser(lab), noiser(lab))


@pytest.mark.parametrize("sigma", [0.01, 0.3])
def test_pixel_noise_has_std_sigma(sigma):
    lab = _labels(n=4, h=64, w=64)
    clean = LabelNoiser(K, sigma=sigma, pixel_noise=False, generator=_gen(4))(lab)
    noisy = LabelNoiser(K, sigma=sigma, pixel_noise=True, generator=_gen(4))(lab)
    diff = (noisy - clean).double()
    assert diff.abs().min() > 0  # every pixel is perturbed
    assert abs(diff.mean().item()) < 0.05 * sigma
    assert diff.std().item() == pytest.approx(sigma, rel=0.05)
    # pixel noise is per pixel: within one class the values are no longer equal
    v = noisy[0, 0][lab[0] == 1]
    assert v.std() > 0.5 * sigma


@pytest.mark.parametrize("sigma_off", [dict(sigma=0.0), dict(pixel_noise=False)])
def test_sigma_zero_or_pixel_noise_off_is_class_noise_only(sigma_off):
    lab = _labels()
    a = LabelNoiser(K, generator=_gen(5), **sigma_off)(lab)
    b = LabelNoiser(K, pixel_noise=False, generator=_gen(5))(lab)
    assert torch.equal(a, b)


@pytest.mark.parametrize("ignore_mode", ["zero", "class"])
@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_gather_equals_direct_one_hot_sum(ignore_mode, sigma):
    """ŷ = Σ_k α_k · Y_k + σ · β, computed naively (one-hot planes, float64) from the same random draws."""
    n, h, w = 3, 9, 11
    lab = _labels(n=n, h=h, w=w, seed=7)
    out = LabelNoiser(K, sigma=sigma, ignore_mode=ignore_mode, generator=_gen(11))(lab)

    replay = LabelNoiser(K, sigma=sigma, ignore_mode=ignore_mode, generator=_gen(11))
    alpha = replay.class_codes(n, "cpu").double()  # [n, K+1], column K is the ignore slot
    assert alpha.shape == (n, K + 1)
    beta = torch.randn((n, 1, h, w), generator=replay.generator).double() if sigma > 0 else 0.0

    expected = torch.zeros(n, 1, h, w, dtype=torch.float64)
    for i in range(n):
        for k in range(K):
            expected[i, 0] += alpha[i, k] * (lab[i] == k).double()
        expected[i, 0] += alpha[i, K] * (lab[i] == IGNORE).double()
    expected = expected + sigma * beta
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    if ignore_mode == "zero":
        assert torch.all(alpha[:, K] == 0)


def test_ignore_mode_zero_gives_exact_zero():
    lab = _labels(n=3)
    ign = lab == IGNORE
    assert ign.any()
    out = LabelNoiser(K, pixel_noise=False, ignore_mode="zero", generator=_gen(6))(lab)[:, 0]
    assert torch.all(out[ign] == 0)
    assert torch.all(out[~ign] != 0)


def test_ignore_mode_class_gives_one_random_value_per_image():
    lab = _labels(n=4)
    ign = lab == IGNORE
    out = LabelNoiser(K, pixel_noise=False, ignore_mode="class", generator=_gen(6))(lab)[:, 0]
    ignore_values = []
    for i in range(4):
        v = out[i][ign[i]]
        assert torch.all(v == v[0])
        assert v[0] != 0
        class_values = {out[i][lab[i] == k][0].item() for k in range(K)}
        assert v[0].item() not in class_values  # its own class, not merged with a real one
        ignore_values.append(v[0].item())
    assert len(set(ignore_values)) == 4  # random per image


@pytest.mark.parametrize("ignore_mode", ["zero", "class"])
def test_ignore_index_other_than_255(ignore_mode):
    lab = _labels(n=2, ignore=False)
    lab[:, 1, :2] = -1
    out = LabelNoiser(K, pixel_noise=False, ignore_index=-1, ignore_mode=ignore_mode, generator=_gen(0))(lab)[:, 0]
    v = out[lab == -1]
    if ignore_mode == "zero":
        assert torch.all(v == 0)
    else:
        assert torch.all(out[0][lab[0] == -1] == out[0][lab[0] == -1][0])
    with pytest.raises(LADError):
        LabelNoiser(K, ignore_index=-1)(_labels(n=2))  # 255 is no longer the ignore index


def test_no_class_noise_gives_clean_normalised_encoding():
    lab = _labels(n=3)
    out = LabelNoiser(K, class_noise=False, pixel_noise=False, generator=_gen(0))(lab)[:, 0]
    for k in range(K):
        j = k + (1 if K % 2 == 0 and k >= K // 2 else 0)  # the grid (j - K/2)/K, j = 0..K, its zero point skipped
        expected = (j - K / 2) / K
        assert torch.allclose(out[lab == k], torch.tensor(expected), atol=1e-7), k
    assert torch.all(out[lab == IGNORE] == 0)
    # identical across images, distinct, never the ignore code 0, unit-scale range
    same = _all_classes_batch(3)
    codes = LabelNoiser(K, class_noise=False, pixel_noise=False)(same)[:, 0, 0, :]
    assert torch.equal(codes[0], codes[1]) and torch.equal(codes[1], codes[2])
    assert len(set(codes[0].tolist())) == K and bool((codes[0] != 0).all())
    assert codes[0].max() - codes[0].min() <= 1.0
    # and no randomness is consumed: the output does not depend on the generator
    assert torch.equal(LabelNoiser(K, class_noise=False, pixel_noise=False, generator=_gen(1))(same), codes[:, None, None])


def test_no_class_noise_with_pixel_noise():
    same = _all_classes_batch(2)
    clean = LabelNoiser(K, class_noise=False, pixel_noise=False)(same)
    noisy = LabelNoiser(K, class_noise=False, sigma=0.1, generator=_gen(0))(same)
    beta = torch.randn((2, 1, 1, K), generator=_gen(0))  # no class draw precedes the pixel noise
    torch.testing.assert_close(noisy, clean + 0.1 * beta)


def test_reproducible_from_seed():
    lab = _labels(n=2)
    a = LabelNoiser(K, sigma=0.1, generator=_gen(42))(lab)
    b = LabelNoiser(K, sigma=0.1, generator=_gen(42))(lab)
    c = LabelNoiser(K, sigma=0.1, generator=_gen(43))(lab)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # generator state round trip (used by checkpoints)
    noiser = LabelNoiser(K, sigma=0.1, generator=_gen(42))
    state = noiser.get_state()
    first = noiser(lab)
    noiser.set_state(state)
    assert torch.equal(noiser(lab), first)
    assert LabelNoiser(K).get_state() is None


def test_global_rng_used_without_generator():
    lab = _labels(n=2)
    torch.manual_seed(123)
    a = LabelNoiser(K)(lab)
    torch.manual_seed(123)
    b = LabelNoiser(K)(lab)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------- assist


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_assist_appends_label_channel_last(dtype):
    n, c, h, w = 2, 3, 8, 8
    x = torch.randn(n, c, h, w).to(dtype)
    lab = _labels(n=n, h=h, w=w)
    out = LabelNoiser(K, sigma=0.1, generator=_gen(9)).assist(x, lab)
    assert out.shape == (n, c + 1, h, w)
    assert out.dtype == dtype
    assert torch.equal(out[:, :c], x)  # image first, untouched
    expected = LabelNoiser(K, sigma=0.1, generator=_gen(9))(lab, dtype=dtype)
    assert torch.equal(out[:, c:], expected)
    # one seed, one draw: the label channel is the float32 encoding rounded to the image's dtype
    ref = LabelNoiser(K, sigma=0.1, generator=_gen(9))(lab)
    assert torch.equal(out[:, c:], ref.to(dtype))


def test_same_seed_same_noise_in_every_dtype():
    lab = _labels(n=2)
    ref = LabelNoiser(K, sigma=0.1, generator=_gen(8))(lab)
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        out = LabelNoiser(K, sigma=0.1, generator=_gen(8))(lab, dtype=dtype)
        assert out.dtype == dtype
        assert torch.equal(out, ref.to(dtype))


def test_assist_size_mismatch_raises():
    noiser = LabelNoiser(K)
    with pytest.raises(LADError, match="differ"):
        noiser.assist(torch.zeros(2, 3, 8, 8), _labels(n=2, h=8, w=9))
    with pytest.raises(LADError, match="differ"):
        noiser.assist(torch.zeros(2, 3, 8, 8), _labels(n=3, h=8, w=8))
    with pytest.raises(LADError):
        noiser.assist(torch.zeros(3, 8, 8), _labels(n=3, h=8, w=8))


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("bad", [K, K + 7, -1, -3])
def test_bad_labels_raise_naming_the_values(bad):
    lab = _labels(n=2)
    lab[1, 3, 3] = bad
    with pytest.raises(LADError, match=rf"\[{bad}\]"):
        LabelNoiser(K)(lab)
    with pytest.raises(LADError, match=rf"\[{bad}\]"):
        check_labels(lab, K, IGNORE)
    with pytest.raises(LADError):
        LabelNoiser(K).assist(torch.zeros(2, 3, 12, 10), lab)


def test_check_labels_accepts_valid_and_lists_several_bad_values():
    lab = _labels(n=2)
    check_labels(lab, K, IGNORE)  # no error: ignore pixels are fine
    lab[0, 0, 0], lab[0, 0, 1] = 9, -2
    with pytest.raises(LADError) as exc:
        check_labels(lab, K, IGNORE)
    assert "-2" in str(exc.value) and "9" in str(exc.value)
    with pytest.raises(LADError, match="255"):
        check_labels(_labels(n=1), K, ignore_index=None)


def test_validate_false_skips_the_check_and_maps_bad_values_to_the_ignore_slot():
    lab = _labels(n=1, ignore=False)
    lab[0, 2, 2] = K + 3
    out = LabelNoiser(K, pixel_noise=False, validate=False, generator=_gen(0))(lab)
    assert out[0, 0, 2, 2] == 0


def test_bad_inputs_raise():
    with pytest.raises(LADError, match="integer"):
        LabelNoiser(K)(torch.zeros(2, 4, 4))
    with pytest.raises(LADError, match="shape"):
        LabelNoiser(K)(torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(LADError, match="num_labels"):
        LabelNoiser(0)
    with pytest.raises(LADError, match="sigma"):
        LabelNoiser(K, sigma=-0.1)
    with pytest.raises(LADError, match="ignore_mode"):
        LabelNoiser(K, ignore_mode="drop")
    with pytest.raises(LADError, match="fixed_alpha"):
        LabelNoiser(K, fixed_alpha=torch.zeros(K + 1))


# ----------------------------------------------------------------------------------------------- fixed alpha


def test_reference_fixed_alpha():
    a = reference_fixed_alpha(21)  # the reference code's VOC encoding (k - 11) / 10, with class 11 moved off 0
    assert a.shape == (21,)
    want = torch.tensor([(k - 11) / 10 if k < 11 else (k - 10) / 10 for k in range(21)])
    torch.testing.assert_close(a, want)
    assert reference_fixed_alpha(4).shape == (4,)
    for k in (2, 3, 4, 7, 21, 150):  # distinct, and never the ignore code 0 of ignore_mode="zero"
        codes = reference_fixed_alpha(k).tolist()
        assert len(set(codes)) == k and 0.0 not in codes


@pytest.mark.parametrize("k", [3, 4, 5, 11])
def test_clean_and_fixed_encodings_never_clash_with_the_ignore_code(k):
    """An odd K used to give class (K-1)/2 the clean code 0: the ignore code of ignore_mode="zero"."""
    lab = torch.arange(k).view(1, 1, k).expand(2, 3, k).clone()
    lab[:, 0, 0] = IGNORE
    for noiser in (LabelNoiser(k, class_noise=False, pixel_noise=False),
                   LabelNoiser(k, pixel_noise=False, fixed_alpha=reference_fixed_alpha(k))):
        out = noiser(lab)[:, 0]
        ignore_code = out[lab == IGNORE].unique()
        class_codes = {c: out[lab == c].unique() for c in range(k)}
        assert ignore_code.tolist() == [0.0]
        assert all(v.numel() == 1 and v.item() != 0.0 for v in class_codes.values())
    with pytest.raises(LADError, match="code 0"):
        LabelNoiser(k, fixed_alpha=torch.zeros(k))


@pytest.mark.parametrize("ignore_mode", ["zero", "class"])
def test_fixed_alpha_gives_same_codes_for_every_image(ignore_mode):
    alpha = reference_fixed_alpha(K)
    noiser = LabelNoiser(K, pixel_noise=False, fixed_alpha=alpha, ignore_mode=ignore_mode, generator=_gen(0))
    lab = _labels(n=3)
    out = noiser(lab)[:, 0]
    for i in range(3):
        for k in range(K):
            assert torch.all(out[i][lab[i] == k] == alpha[k])
    ign = out[lab == IGNORE]
    if ignore_mode == "zero":
        assert torch.all(ign == 0)
    else:
        assert torch.all(ign == ign[0]) and ign[0] < alpha.min()  # a distinct value below every class
    assert torch.equal(noiser(lab), noiser(lab))  # nothing random without pixel noise

    # with pixel noise only β is resampled
    noisy = LabelNoiser(K, sigma=0.2, fixed_alpha=alpha, ignore_mode=ignore_mode, generator=_gen(1))(lab)
    beta = torch.randn((3, 1) + lab.shape[1:], generator=_gen(1))
    torch.testing.assert_close(noisy, out[:, None] + 0.2 * beta)
