"""Shared fixtures: tiny real HF models built from configs and small real `datasets` objects."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# tiny models: one intra-op thread is fastest and avoids oversubscribing 2 cores (also for subprocesses)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the embedded-data tests bring their own data: a committed Fashion-MNIST subset (tests/fixtures/fashion-mnist)
FASHION_MNIST_FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "fashion-mnist")
os.environ["LAD_FASHION_MNIST_DIR"] = FASHION_MNIST_FIXTURE

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

NUM_LABELS = 4
ID2LABEL = {0: "background", 1: "square", 2: "disc", 3: "bar"}


def tiny_segformer(num_labels=NUM_LABELS, seed=0, **kw):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    cfg = SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
        decoder_hidden_size=16, num_labels=num_labels,
        id2label={k: v for k, v in ID2LABEL.items() if k < num_labels} if num_labels <= 4 else None, **kw,
    )
    if num_labels > 4:
        cfg.id2label = {i: f"c{i}" for i in range(num_labels)}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    else:
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    return SegformerForSemanticSegmentation(cfg)


def synthetic_scene(rng, size=32):
    """Image whose colours determine the label: a learnable toy segmentation sample."""
    img = rng.normal(0, 0.3, (3, size, size)).astype(np.float32)
    lab = np.zeros((size, size), dtype=np.int64)
    for k in (1, 2, 3):
        y, x = rng.integers(0, size - 10, 2)
        s = rng.integers(6, 10)
        lab[y:y + s, x:x + s] = k
        img[k - 1, y:y + s, x:x + s] += 1.5
    lab[0, :3] = 255
    return img, lab


@pytest.fixture
def tensor_dataset():
    """A real `datasets.Dataset` of already-normalised tensors (pixel_values, labels)."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    imgs, labs = zip(*(synthetic_scene(rng) for _ in range(16)))
    ds = Dataset.from_dict({"pixel_values": list(imgs), "labels": list(labs)})
    return ds.with_format("torch")


@pytest.fixture
def id2label():
    return dict(ID2LABEL)


def write_parquet_dataset(root, n_train=24, n_val=8, size=32, seed=0):
    """A real local parquet dataset (PNG images + L-mode masks) with an id2label.json next to it."""
    import json
    from pathlib import Path

    from datasets import Dataset, Image as ImageFeature
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("validation", n_val)):
        images, masks = [], []
        for _ in range(n):
            img, lab = synthetic_scene(rng, size)
            rgb = np.clip((img.transpose(1, 2, 0) * 0.25 + 0.5) * 255, 0, 255).astype(np.uint8)
            images.append(Image.fromarray(rgb))
            masks.append(Image.fromarray(lab.astype(np.uint8), mode="L"))
        ds = Dataset.from_dict({"image": images, "label": masks}).cast_column("image", ImageFeature()).cast_column("label", ImageFeature())
        ds.to_parquet(str(root / f"{split}.parquet"))
    (root / "id2label.json").write_text(json.dumps({str(k): v for k, v in ID2LABEL.items()}))
    return root


TINY_SEGFORMER_OVERRIDES = (
    "num_encoder_blocks=2,depths=[1,1],sr_ratios=[2,1],hidden_sizes=[8,16],patch_sizes=[7,3],strides=[4,2],"
    "num_attention_heads=[1,2],mlp_ratios=[2,2],decoder_hidden_size=16"
)


# ------------------------------------------------------------------------------- trainer test helpers (shared)


def trainer_args(config_cls, tmp_path, **kw):
    """A small CPU config of ``config_cls`` (SegmentationConfig or a LAD config) writing under ``tmp_path``."""
    base = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                per_device_eval_batch_size=4, use_cpu=True, report_to=[], save_strategy="no", learning_rate=1e-3,
                disable_tqdm=True)
    base.update(kw)
    return config_cls(**base)


def first_batch(ds, n=4):
    """The first ``n`` rows of a tensor dataset as one batch ``{pixel_values [n,3,H,W], labels [n,H,W]}``."""
    rows = [ds[i] for i in range(n)]
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.stack([r["labels"] for r in rows])}


def label_assisted_segformer(seed=5, scale=1.0):
    """A tiny label-assisted SegFormer (random label-channel weights, so the label channel matters)."""
    from lad_hf import add_label_channel

    return add_label_channel(tiny_segformer(seed=seed), init="random", scale=scale)


class ForwardRecorder:
    """Forward pre-hook on a model: counts its calls and keeps a copy of every ``pixel_values`` it is given."""

    def __init__(self, model):
        self.inputs = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
        self.inputs.append(x.detach().clone())

    @property
    def calls(self):
        return len(self.inputs)

    @property
    def batch_sizes(self):
        return [x.shape[0] for x in self.inputs]

    def remove(self):
        self.handle.remove()


@torch.no_grad()
def sharpen_head(model, pixel_values, target_std=3.0):
    """Scale a SegFormer's final classifier so its logits on ``pixel_values`` have std ``target_std``.

    Tiny random models give logits of std ~3e-4: their CWD terms (~1e-7) would vanish below any allclose tolerance.
    """
    was_training = model.training
    model.eval()
    std = model(pixel_values=pixel_values).logits.std()
    head = model.decode_head.classifier
    head.weight.mul_(target_std / std)
    head.bias.mul_(target_std / std)
    model.train(was_training)
    return model


def ce64(logits, labels, ignore_index=255):
    """Pixel CE in float64 of logits upsampled (bilinear) to the label size, mean over non-ignored pixels."""
    import torch.nn.functional as F

    up = F.interpolate(logits.double(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(up, labels.long(), ignore_index=ignore_index)


def naive_cwd64(s, t, tau):
    """Channel-wise distillation written out in float64: τ²/(N·C) Σ_{n,c} KL(softmax_HW(t/τ) ‖ softmax_HW(s/τ))."""
    s, t = s.double(), t.double()
    total = torch.zeros((), dtype=torch.float64)
    n, c = s.shape[:2]
    for i in range(n):
        for k in range(c):
            p = torch.softmax(t[i, k].flatten() / tau, 0)
            q = torch.softmax(s[i, k].flatten() / tau, 0)
            total = total + (p * (p.log() - q.log())).sum()
    return total * tau**2 / (n * c)


def float64_copy(model):
    import copy

    return copy.deepcopy(model).double().eval()


def assert_label_channel_encodes(channel, labels, ignore_index=255):
    """``channel`` [H,W] is constant within each class region of ``labels`` [H,W] (class noise, no pixel noise),
    distinct classes get distinct codes and ignore pixels get 0; returns {class: code}."""
    codes = {}
    for k in labels.unique().tolist():
        values = channel[labels == k]
        assert torch.all(values == values[0]), f"label channel not constant within class {k}: {values.unique()[:5]}"
        codes[k] = float(values[0])
    if ignore_index in codes:
        assert codes.pop(ignore_index) == 0.0
    assert len(set(codes.values())) == len(codes), codes
    return codes


def check_label_channel_noise(channel, labels, class_noise, pixel_noise, label_sigma, ignore_mode, num_labels=NUM_LABELS,
                              ignore_index=255):
    """The label channels ``channel`` [M,H,W] fed for ``labels`` [M,H,W] follow the noise settings (Eq. 5).

    Within each (image, class) region the values spread with std σ (0 without pixel noise) around one code per
    region: the clean encoding without class noise, codes spread ~N(0, 1) over images with it; ignore pixels 0
    (``ignore_mode="zero"``) or a code of their own (``"class"``).
    """
    from lad_hf.noising import clean_codes

    k = num_labels
    slots = torch.where(labels == ignore_index, torch.full_like(labels, k), labels).long()
    sigma = label_sigma if pixel_noise else 0.0
    ss, dof, means = 0.0, 0, {}
    for r in range(channel.shape[0]):
        for c in slots[r].unique().tolist():
            v = channel[r][slots[r] == c].double()
            means[(r, c)] = (v.mean().item(), v.numel())
            ss += ((v - v.mean()) ** 2).sum().item()
            dof += v.numel() - 1
    within = (ss / dof) ** 0.5
    if sigma == 0:
        assert within == 0, f"pixel noise of std {within} fed with pixel noise off"
    else:
        assert abs(within / sigma - 1) < 0.1, f"pixel noise std {within}, expected sigma {sigma}"
    clean = clean_codes(k).tolist()
    tol = lambda n: 5 * sigma / n**0.5 + 1e-6  # noqa: E731
    for (r, c), (m, n) in means.items():
        if c == k and ignore_mode == "zero":
            assert abs(m) <= tol(n), f"ignore pixels of image {r} have code {m}, expected 0"
        elif not class_noise:
            assert abs(m - clean[c]) <= tol(n), f"class {c} of image {r} has code {m}, clean encoding {clean[c]}"
    if class_noise:
        per_class = torch.tensor([m for (r, c), (m, n) in means.items() if c < k])
        assert per_class.std() > 0.4, f"class codes {per_class} do not look drawn from N(0, 1)"
        if ignore_mode == "class":
            ignore = torch.tensor([m for (r, c), (m, n) in means.items() if c == k])
            assert ignore.abs().max() > 0.1, f"ignore pixels {ignore}: expected codes of their own"


@pytest.fixture(autouse=True)
def _restore_transformers_verbosity():
    """Benchmarks and CLI runs set transformers' global verbosity; `--log_level passive` inherits it, so a leak
    would silence lad_hf's warnings in later tests."""
    import transformers

    level = transformers.logging.get_verbosity()
    yield
    transformers.logging.set_verbosity(level)
