#!/usr/bin/env python
"""Throughput of the LAD training paths, timed in the real ``Trainer`` pipeline.

Every training row runs ``trainer.train()`` with ``max_steps`` on a ``datasets.Dataset`` of PNG-encoded random
uint8 images and masks, through :func:`lad_hf.data.apply_transforms` (random scale, crop, flip, normalise in
DataLoader workers) and :func:`lad_hf.data.build_collator`. A :class:`StepTimer` callback records
``time.perf_counter()`` at ``on_step_begin``/``on_step_end`` (``torch.cuda.synchronize()`` first on CUDA); the
first ``--warmup`` steps are dropped and medians are reported.

Rows::

    plain        SegFormer-B0 student, SegmentationTrainer
    lad          B0 student + B0 label-assisted teacher, LADDistillationTrainer
    cwd          B0 student + SegFormer-B5 plain teacher (conventional KD with CWD), LADDistillationTrainer
    teacher_1    B0 label-assisted teacher, LADTeacherTrainer(dual_path=False)
    teacher_2    same, dual path (one forward over 2N)
    eval         trainer.evaluate() of the B0 student over the eval set (second call timed)
    raw          plain PyTorch loop over pre-loaded device tensors (same model, optimizer, clipping, loss)
    compile_off  B0 at 96 px, batch 32, Trainer                     (CUDA by default; --compile forces on CPU)
    compile_on   same with TrainingArguments(torch_compile=True)

Columns: ``ms/step`` is the median on_step_begin -> on_step_end time (the forward/backward/optimizer step; the
ratios and targets use it); ``min ms`` is the fastest timed step, a hint of the time without other load on a shared
machine. ``wall ms/step`` is the median on_step_end -> next on_step_end interval, which adds
the wait for the next batch from the DataLoader and the Trainer's own bookkeeping; ``images/s`` comes from it.
Peak memory is ``torch.cuda.max_memory_allocated`` (reset per row) on CUDA, and the process high-water mark
``ru_maxrss`` on CPU (monotonic across rows; the JSON also has the sampled peak RSS of each row).

Also: a micro-benchmark of ``StreamingMeanIoU.update`` against a bare per-image numpy ``bincount`` confusion
matrix, both timed in this run.

Usage::

    python benchmarks/throughput.py                       # CUDA if available: 512x1024, batch 8, 19 classes
    python benchmarks/throughput.py --device cpu --quick  # CPU-sized: 128x128, batch 2, a few steps
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import io
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

#: Time of ``evaluate``'s ``mean_iou`` on the same workload, quoted from the issue; NOT measured by this script.
EVALUATE_MEAN_IOU_REFERENCE_S = 6.25

ROW_ORDER = ("plain", "lad", "cwd", "teacher_1", "teacher_2", "eval", "raw", "compile_off", "compile_on")

# ------------------------------------------------------------------------------------------------ model configs

from lad_hf.fashion_scenes.experiments import MODEL_PRESETS, cpu_name  # noqa: E402
from lad_hf.fashion_scenes.experiments import machine_info as _base_machine_info  # noqa: E402

#: The MiT encoder/decoder shapes of the GPU-sized teachers; every other size is a ``MODEL_PRESETS`` entry
#: (``tiny``, ``small``, ``medium``, ``b0``, ``b0-wide``, ``b1``), the one preset table of the package.
_LARGE_SEGFORMERS: Dict[str, Dict[str, Any]] = {
    "b2": dict(num_encoder_blocks=4, depths=[3, 4, 6, 3], sr_ratios=[8, 4, 2, 1], hidden_sizes=[64, 128, 320, 512],
               num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=768),
    "b5": dict(num_encoder_blocks=4, depths=[3, 6, 40, 3], sr_ratios=[8, 4, 2, 1], hidden_sizes=[64, 128, 320, 512],
               num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=768),
}
assert not set(_LARGE_SEGFORMERS) & set(MODEL_PRESETS)
#: Every SegFormer size a row can use: ``MODEL_PRESETS`` plus B2/B5.
SEGFORMER_SIZES: Dict[str, Dict[str, Any]] = {**MODEL_PRESETS, **_LARGE_SEGFORMERS}


def segformer(size: str, num_labels: int, seed: int = 0):
    """A randomly initialised ``SegformerForSemanticSegmentation`` of one of :data:`SEGFORMER_SIZES` (seeded)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    return SegformerForSemanticSegmentation(SegformerConfig(num_labels=num_labels, **SEGFORMER_SIZES[size]))


# ------------------------------------------------------------------------------------------------ configuration


@dataclass
class BenchConfig:
    device: str = "cpu"
    quick: bool = False
    height: int = 512
    width: int = 1024
    batch_size: int = 8
    num_labels: int = 19
    steps: int = 20
    warmup: int = 5
    eval_images: int = 32
    num_workers: int = 4
    bf16: bool = True
    min_scale: float = 0.5
    max_scale: float = 2.0
    unique_images: int = 16
    student: str = "b0"
    lad_teacher: str = "b0"
    cwd_teacher: str = "b5"
    compile: bool = False
    compile_size: int = 96
    compile_batch_size: int = 32
    compile_steps: int = 20
    compile_warmup: int = 5
    miou_masks: int = 50
    miou_height: int = 512
    miou_width: int = 1024
    miou_reps: int = 3
    threads: Optional[int] = None
    output: Optional[str] = None
    seed: int = 0
    command: str = ""

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def use_bf16(self) -> bool:
        return self.cuda and self.bf16


def parse_args(argv: Optional[Sequence[str]] = None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--quick", action="store_true", help="CPU-sized run: 128x128, batch 2, few steps, B2 for B5")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--num_labels", type=int)
    p.add_argument("--steps", type=int, help="timed steps per row (after the warm-up)")
    p.add_argument("--warmup", type=int, help="discarded warm-up steps per row")
    p.add_argument("--eval_images", type=int, help="size of the eval set (row 'eval')")
    p.add_argument("--num_workers", type=int, help="dataloader_num_workers (default 4 on CUDA, 1 on CPU)")
    p.add_argument("--no_bf16", action="store_true", help="fp32 on CUDA (bf16 autocast is the default there)")
    p.add_argument("--cwd_teacher", choices=sorted(SEGFORMER_SIZES), help="conventional-KD teacher (default b5; b2 with --quick)")
    p.add_argument("--compile", action="store_true", help="also run the torch.compile rows on CPU")
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile rows on CUDA")
    p.add_argument("--compile_steps", type=int)
    p.add_argument("--miou_masks", type=int, default=50)
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads (default on CPU: CPUs available minus DataLoader workers, >= 1)")
    p.add_argument("--output", help="markdown report (default benchmarks/results/throughput_<device>[_quick].md)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    cfg = BenchConfig(device=device, quick=a.quick)
    if a.quick:
        cfg.height, cfg.width, cfg.batch_size, cfg.steps, cfg.warmup = 128, 128, 2, 15, 3
        cfg.eval_images, cfg.unique_images, cfg.cwd_teacher = 4, 4, "b2"
        cfg.compile_size, cfg.compile_batch_size, cfg.compile_steps, cfg.compile_warmup = 96, 8, 6, 3
    cfg.num_workers = 4 if device == "cuda" else 1
    for name in ("height", "width", "batch_size", "num_labels", "steps", "warmup", "eval_images", "num_workers",
                 "cwd_teacher", "compile_steps", "output"):
        if getattr(a, name, None) is not None:
            setattr(cfg, name, getattr(a, name))
    cfg.bf16 = not a.no_bf16
    cfg.compile = (device == "cuda" and not a.no_compile) or a.compile
    cfg.miou_masks, cfg.seed, cfg.threads = a.miou_masks, a.seed, a.threads
    if a.quick:
        cfg.miou_reps = 2
    if cfg.steps < 1 or cfg.warmup < 0 or cfg.batch_size < 1:
        p.error("--steps must be >= 1, --warmup >= 0, --batch_size >= 1")
    cfg.command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    return cfg


# ------------------------------------------------------------------------------------------------ data


def _png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array (HxWx3 -> RGB, HxW -> L)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def make_raw_split(n_rows: int, height: int, width: int, num_labels: int, unique: int, seed: int):
    """A ``datasets.Dataset`` with ``image`` (RGB noise PNG) and ``label`` (blocky ``L`` mask PNG, ~5% ignore)
    columns of ``datasets.Image`` type; ``unique`` encoded pairs are repeated to fill ``n_rows``."""
    from datasets import Dataset, Features, Image

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(max(1, min(unique, n_rows))):
        img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        # piecewise-constant masks (regions of 16x16 px), like real annotations
        coarse = rng.integers(0, num_labels, (-(-height // 16), -(-width // 16)), dtype=np.uint8)
        coarse[rng.random(coarse.shape) < 0.05] = 255
        lab = np.ascontiguousarray(np.repeat(np.repeat(coarse, 16, 0), 16, 1)[:height, :width])
        pool.append(({"bytes": _png(img), "path": None}, {"bytes": _png(lab), "path": None}))
    rows = [pool[i % len(pool)] for i in range(n_rows)]
    import pyarrow as pa
    from datasets import DatasetInfo

    features = Features({"image": Image(), "label": Image()})
    table = pa.Table.from_pydict({"image": [r[0] for r in rows], "label": [r[1] for r in rows]},
                                 schema=features.arrow_schema)
    # explicit fingerprint: hashing the features with dill fails on some pyarrow/dill pairs (the GPU image)
    return Dataset(table, info=DatasetInfo(features=features), fingerprint=f"throughput-{seed}-{n_rows}-{height}x{width}")


def make_data(cfg: BenchConfig, height: int, width: int, batch_size: int, n_train_batches: int, n_eval: int):
    """(train_ds, eval_ds, collator, data_args) through ``apply_transforms`` / ``build_collator``.

    ``DataArguments.crop_size`` is a square side; the training transform's crop is set to ``(height, width)``
    afterwards so batches have the full image size (as a 512x1024 Cityscapes crop would)."""
    from datasets import DatasetDict

    from lad_hf.data import DataArguments, TrainTransform, apply_transforms, build_collator

    data_args = DataArguments(crop_size=min(height, width), min_scale=cfg.min_scale, max_scale=cfg.max_scale,
                              ignore_index=255)
    raw = DatasetDict({
        "train": make_raw_split(batch_size * n_train_batches, height, width, cfg.num_labels, cfg.unique_images, cfg.seed),
        "validation": make_raw_split(max(1, n_eval), height, width, cfg.num_labels, min(cfg.unique_images, max(1, n_eval)),
                                     cfg.seed + 1),
    })
    dsd = apply_transforms(raw, data_args)
    train_fn = (dsd["train"].format.get("format_kwargs") or {}).get("transform")
    if isinstance(train_fn, TrainTransform):
        train_fn.crop_size = (height, width)
    elif height != width:
        print(f"warning: could not reach the training transform; crops are {data_args.crop_size} px squares")
    return dsd["train"], dsd["validation"], build_collator(data_args), data_args


# ------------------------------------------------------------------------------------------------ timing helpers


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Records ``perf_counter`` at every step's begin and end (after ``torch.cuda.synchronize()`` on CUDA)."""

    def __init__(self, device: str):
        self.device = device
        self.begin: List[float] = []
        self.end: List[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        _sync(self.device)
        self.begin.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        _sync(self.device)
        self.end.append(time.perf_counter())


class RSSSampler:
    """Peak resident memory of this process during a block (sampled from /proc every 10 ms; Linux only)."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return 0

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _maxrss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10  # bytes on macOS, KiB on Linux


def _reset_peak(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _maxrss_mib()


@dataclass
class Row:
    key: str
    name: str
    batch_size: int
    ms_step: Optional[float] = None
    ms_min: Optional[float] = None
    ms_wall: Optional[float] = None
    images_s: Optional[float] = None
    peak_mem_mib: Optional[float] = None
    row_peak_rss_mib: Optional[float] = None
    steps_timed: int = 0
    step_ms: List[float] = field(default_factory=list)
    notes: str = ""
    skipped: Optional[str] = None


def _finish_row(row: Row, begin: Sequence[float], end: Sequence[float], warmup: int) -> Row:
    n = min(len(begin), len(end))
    step = [(end[i] - begin[i]) * 1e3 for i in range(warmup, n)]
    if not step:  # fewer steps than warm-up: keep the last one
        step = [(end[n - 1] - begin[n - 1]) * 1e3]
    wall = [(end[i] - end[i - 1]) * 1e3 for i in range(max(warmup, 1), n) if i - 1 >= warmup] or step
    row.step_ms = [round(s, 3) for s in step]
    row.steps_timed = len(step)
    row.ms_step = statistics.median(step)
    row.ms_min = min(step)
    row.ms_wall = max(statistics.median(wall), row.ms_step)
    row.images_s = row.batch_size * 1e3 / row.ms_wall
    return row


# ------------------------------------------------------------------------------------------------ the rows


def _train_kwargs(cfg: BenchConfig, out_dir: str, batch_size: int, max_steps: int, **extra) -> Dict[str, Any]:
    workers = int(cfg.num_workers)
    kw = dict(
        output_dir=out_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size, learning_rate=6e-5, seed=cfg.seed,
        report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=workers, dataloader_pin_memory=cfg.cuda,
        dataloader_persistent_workers=workers > 0, bf16=cfg.use_bf16, use_cpu=not cfg.cuda,
    )
    kw.update(extra)
    return kw


def _quiet(trainer):
    """``disable_tqdm=True`` makes the Trainer print every log dict (train/eval summaries): drop that printer."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def time_train(cfg: BenchConfig, row: Row, trainer, warmup: int) -> Row:
    timer = StepTimer(cfg.device)
    trainer.add_callback(timer)
    _quiet(trainer)
    _reset_peak(cfg.device)
    with RSSSampler() as rss:
        trainer.train()
    _sync(cfg.device)
    row.peak_mem_mib = _peak_mib(cfg.device)
    row.row_peak_rss_mib = rss.peak / 2**20
    return _finish_row(row, timer.begin, timer.end, warmup)


def _free_memory() -> None:
    """Collect the finished row's trainer (it sits in reference cycles with its callbacks), its DataLoader
    workers and cached CUDA blocks before the next row."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_plain_and_eval(cfg, train_ds, eval_ds, collator, out_dir) -> Tuple[Row, Row]:
    from lad_hf import SegmentationConfig, SegmentationTrainer

    args = SegmentationConfig(**_train_kwargs(cfg, out_dir, cfg.batch_size, cfg.warmup + cfg.steps))
    trainer = SegmentationTrainer(model=segformer(cfg.student, cfg.num_labels, cfg.seed), args=args,
                                  train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator)
    plain = time_train(cfg, Row("plain", f"plain student ({cfg.student.upper()})", cfg.batch_size), trainer, cfg.warmup)

    ev = Row("eval", f"evaluate ({cfg.student.upper()}, {len(eval_ds)} images)", cfg.batch_size)
    _quiet(trainer)
    trainer.evaluate()  # warm-up: eval dataloader workers, first-batch allocations
    _reset_peak(cfg.device)
    with RSSSampler() as rss:
        _sync(cfg.device)
        t0 = time.perf_counter()
        metrics = trainer.evaluate()
        _sync(cfg.device)
        total = time.perf_counter() - t0
    n_img = len(eval_ds)
    n_batches = math.ceil(n_img / cfg.batch_size)
    ev.ms_step = ev.ms_min = ev.ms_wall = total * 1e3 / n_batches
    ev.images_s = n_img / total
    ev.peak_mem_mib = _peak_mib(cfg.device)
    ev.row_peak_rss_mib = rss.peak / 2**20
    ev.steps_timed = n_batches
    ev.notes = f"{total * 1e3 / n_img:.1f} ms/image (whole eval set, 2nd call); mIoU {metrics.get('eval_mean_iou', float('nan')):.3f}"
    return plain, ev


def bench_distill(cfg, train_ds, collator, out_dir, key: str, teacher_size: str, label_assisted: bool) -> Row:
    from lad_hf import LADDistillationConfig, LADDistillationTrainer, add_label_channel

    teacher = segformer(teacher_size, cfg.num_labels, cfg.seed + 1)
    if label_assisted:
        teacher = add_label_channel(teacher)
    args = LADDistillationConfig(**_train_kwargs(cfg, out_dir, cfg.batch_size, cfg.warmup + cfg.steps))
    trainer = LADDistillationTrainer(model=segformer(cfg.student, cfg.num_labels, cfg.seed), teacher_model=teacher,
                                     args=args, train_dataset=train_ds, data_collator=collator)
    s, t = cfg.student.upper(), teacher_size.upper()
    name = (f"LAD: {s} student + {t} label-assisted teacher" if label_assisted
            else f"CWD KD: {s} student + {t} plain teacher")
    row = time_train(cfg, Row(key, name, cfg.batch_size), trainer, cfg.warmup)
    return row


def bench_teacher(cfg, train_ds, collator, out_dir, dual: bool) -> Row:
    from lad_hf import LADTeacherConfig, LADTeacherTrainer, add_label_channel

    args = LADTeacherConfig(dual_path=dual, **_train_kwargs(cfg, out_dir, cfg.batch_size, cfg.warmup + cfg.steps))
    model = add_label_channel(segformer(cfg.lad_teacher, cfg.num_labels, cfg.seed + 1))
    trainer = LADTeacherTrainer(model=model, args=args, train_dataset=train_ds, data_collator=collator)
    name = f"teacher {cfg.lad_teacher.upper()}, {'dual path (2N forward)' if dual else 'single path'}"
    row = time_train(cfg, Row("teacher_2" if dual else "teacher_1", name, cfg.batch_size), trainer, cfg.warmup)
    return row


def bench_raw(cfg, train_ds, collator, out_dir) -> Row:
    """The plain student's step without the Trainer: same model/init, optimizer class and kwargs (from
    ``Trainer.get_optimizer_cls_and_kwargs``), gradient clipping (``max_grad_norm``), loss and autocast."""
    from transformers import Trainer

    from lad_hf import SegmentationConfig
    from lad_hf.losses import segmentation_loss

    device = torch.device(cfg.device)
    args = SegmentationConfig(**_train_kwargs(cfg, out_dir, cfg.batch_size, cfg.warmup + cfg.steps))
    model = segformer(cfg.student, cfg.num_labels, cfg.seed).to(device).train()
    opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    opt = opt_cls([p for p in model.parameters() if p.requires_grad], **opt_kwargs)
    n_batches = max(1, min(4, cfg.steps, len(train_ds) // cfg.batch_size))
    batches = []
    for b in range(n_batches):
        batch = collator([train_ds[b * cfg.batch_size + i] for i in range(cfg.batch_size)])
        batches.append({k: v.to(device, non_blocking=True) for k, v in batch.items()})
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.use_bf16)
    begin, end = [], []
    _reset_peak(cfg.device)
    with RSSSampler() as rss:
        for i in range(cfg.warmup + cfg.steps):
            b = batches[i % n_batches]
            _sync(cfg.device)
            begin.append(time.perf_counter())
            with amp:
                logits = model(pixel_values=b["pixel_values"]).logits
                loss = segmentation_loss(logits, b["labels"], 255)
            loss.backward()
            if args.max_grad_norm and args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            model.zero_grad(set_to_none=True)
            _sync(cfg.device)
            end.append(time.perf_counter())
    row = Row("raw", f"raw PyTorch loop ({cfg.student.upper()}, pre-loaded device tensors)", cfg.batch_size)
    row.peak_mem_mib = _peak_mib(cfg.device)
    row.row_peak_rss_mib = rss.peak / 2**20
    row.notes = f"{opt_cls.__name__}, clip {args.max_grad_norm}, {'bf16 autocast' if cfg.use_bf16 else 'fp32'}"
    _finish_row(row, begin, end, cfg.warmup)
    row.ms_wall = row.ms_step  # no data loading in this loop: throughput from the step time
    row.images_s = row.batch_size * 1e3 / row.ms_step
    return row


def bench_compile(cfg, out_dir) -> Tuple[Row, Row]:
    from lad_hf import SegmentationConfig, SegmentationTrainer

    size, bs = cfg.compile_size, cfg.compile_batch_size
    n_steps = cfg.compile_warmup + cfg.compile_steps
    train_ds, _, collator, _ = make_data(cfg, size, size, bs, n_steps, 1)
    rows = []
    for on in (False, True):
        key = "compile_on" if on else "compile_off"
        args = SegmentationConfig(**_train_kwargs(cfg, out_dir, bs, n_steps, torch_compile=on))
        trainer = SegmentationTrainer(model=segformer(cfg.student, cfg.num_labels, cfg.seed), args=args,
                                      train_dataset=train_ds, data_collator=collator)
        name = f"plain {cfg.student.upper()} @{size}px b{bs}" + (", torch_compile=True" if on else "")
        t0 = time.perf_counter()
        row = time_train(cfg, Row(key, name, bs), trainer, cfg.compile_warmup)
        row.notes = f"row wall {time.perf_counter() - t0:.1f} s incl. compile" if on else ""
        rows.append(row)
        del trainer
        _free_memory()
    off, on = rows
    on.notes = (on.notes + f"; gain x{off.ms_step / on.ms_step:.2f} vs eager").lstrip("; ")
    return off, on


# ------------------------------------------------------------------------------------------------ mIoU micro-bench


def _numpy_confusion(preds: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    for p, lab in zip(preds, labels):
        p, lab = p.ravel(), lab.ravel()
        valid = (lab >= 0) & (lab < k)
        cm += np.bincount(k * lab[valid] + p[valid], minlength=k * k).reshape(k, k)
    return cm


def load_metrics_before(ref: Optional[str]):
    """An earlier ``lad_hf/metrics.py`` as a module (``lad_hf._metrics_before``), for before/after timings.

    ``ref`` is a file, or a git revision of this checkout (``git show REV:lad_hf/metrics.py``). Returns
    ``(module, description)``, or ``(None, reason)`` when it cannot be loaded (e.g. no ``.git`` on the GPU copy)."""
    import importlib.util
    import subprocess

    if not ref:
        return None, "no earlier version given (--miou_before)"
    path, desc = ref, ref
    if not os.path.isfile(ref):
        try:
            text = subprocess.run(["git", "-C", _REPO, "show", f"{ref}:lad_hf/metrics.py"], check=True,
                                  capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as err:
            return None, f"cannot read lad_hf/metrics.py at {ref!r}: {str(err).splitlines()[0] if str(err) else err}"
        fd, path = tempfile.mkstemp(prefix="lad_metrics_before_", suffix=".py")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        desc = f"git {ref}:lad_hf/metrics.py"
    spec = importlib.util.spec_from_file_location("lad_hf._metrics_before", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "lad_hf"  # its relative imports (.errors) resolve in the installed package
    spec.loader.exec_module(module)
    return module, desc


def bench_miou(n: int, height: int, width: int, k: int, reps: int = 3, seed: int = 0, before=None,
               before_desc: str = "") -> Dict[str, Any]:
    """``StreamingMeanIoU.update`` one mask per call and all masks in one call, against a bare numpy per-image
    ``bincount`` confusion matrix, on int64 maps [n, H, W] (the dtype of the collator's labels and of ``argmax``).

    Every method runs once per repetition, interleaved, so load drift on a shared machine hits all alike; the
    medians over ``reps`` are reported (the minima are in the JSON). ``before``: an earlier ``lad_hf.metrics``
    module (see :func:`load_metrics_before`), timed the same way."""
    from lad_hf import metrics as after

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, (n, height, width), dtype=np.int64)
    labels[rng.random((n, height, width)) < 0.05] = 255
    preds = rng.integers(0, k, (n, height, width), dtype=np.int64)
    lt, pt = torch.from_numpy(labels), torch.from_numpy(preds)

    def per_mask(mod):
        m = mod.StreamingMeanIoU(k, ignore_index=255)
        for i in range(n):
            m.update(pt[i], lt[i])
        return m.confusion.numpy()

    def batched(mod):
        m = mod.StreamingMeanIoU(k, ignore_index=255)
        m.update(pt, lt)
        return m.confusion.numpy()

    methods: Dict[str, Callable[[], np.ndarray]] = {
        "numpy_bincount_s": lambda: _numpy_confusion(preds, labels, k),
        "streaming_s": lambda: per_mask(after),
        "streaming_batched_s": lambda: batched(after),
    }
    if before is not None:
        methods["before_streaming_s"] = lambda: per_mask(before)
        methods["before_streaming_batched_s"] = lambda: batched(before)
    out: Dict[str, Any] = {"masks": n, "height": height, "width": width, "num_labels": k, "reps": max(1, reps),
                           "torch_threads": torch.get_num_threads(), "before": before_desc if before is not None else None}
    results = {name: fn() for name, fn in methods.items()}  # warm-up, and the values checked below
    times: Dict[str, List[float]] = {name: [] for name in methods}
    for _ in range(max(1, reps)):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        out[name] = statistics.median(ts)
        out[name[:-2] + "_min_s"] = min(ts)
    ref = results["numpy_bincount_s"]
    out["same_confusion"] = bool(all(np.array_equal(ref, cm) for cm in results.values()))
    out["ratio_streaming_vs_numpy"] = out["streaming_s"] / out["numpy_bincount_s"]
    out["ratio_batched_vs_per_mask"] = out["streaming_batched_s"] / out["streaming_s"]
    out["evaluate_mean_iou_reference_s"] = EVALUATE_MEAN_IOU_REFERENCE_S
    out["evaluate_mean_iou_reference_note"] = "from the issue; not measured here"
    del labels, preds, lt, pt
    gc.collect()
    return out


# ------------------------------------------------------------------------------------------------ targets & report


def _ratio(rows: Dict[str, Row], a: str, b: str) -> Optional[float]:
    ra, rb = rows.get(a), rows.get(b)
    if ra is None or rb is None or ra.ms_step is None or rb.ms_step is None or rb.ms_step <= 0:
        return None
    return ra.ms_step / rb.ms_step


def evaluate_targets(cfg: BenchConfig, rows: Dict[str, Row], miou: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    gpu = cfg.cuda
    cwd_t = cfg.cwd_teacher.upper()
    checks: List[Tuple[str, Optional[float], str, float, Optional[str]]] = [
        ("LAD / plain student", _ratio(rows, "lad", "plain"), "<=", 1.20 if gpu else 1.40, None),
        (f"CWD-{cwd_t} / LAD", _ratio(rows, "cwd", "lad"), ">=", 1.8,
         None if gpu and cfg.cwd_teacher == "b5" else "target is for a B5 teacher on GPU"),
        ("teacher dual / single path", _ratio(rows, "teacher_2", "teacher_1"), "<=", 1.55, None),
        ("Trainer plain / raw loop", _ratio(rows, "plain", "raw"), "<=", 1.10, None),
        ("StreamingMeanIoU / numpy bincount", miou["ratio_streaming_vs_numpy"] if miou else None, "<=", 2.0, None),
        ("StreamingMeanIoU one call / per mask", miou["ratio_batched_vs_per_mask"] if miou else None, "<=", 1.0, None),
    ]
    out = []
    for name, value, op, limit, na in checks:
        if value is None:
            status = "N/A"
        else:
            ok = value <= limit if op == "<=" else value >= limit
            status = ("PASS" if ok else "FAIL") if na is None else "N/A"
        out.append({"check": name, "value": value, "op": op, "limit": limit, "status": status,
                    "note": na or ""})
    gain = _ratio(rows, "compile_off", "compile_on")
    out.append({"check": "torch.compile gain (eager / compiled)", "value": gain, "op": "", "limit": None,
                "status": "INFO" if gain is not None else "N/A",
                "note": "" if gain is not None else (rows["compile_on"].skipped if "compile_on" in rows else "")})
    return out


def _fmt(x: Optional[float], nd: int = 1) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def format_table(cfg: BenchConfig, rows: Dict[str, Row]) -> str:
    mem = "peak mem MiB (CUDA max allocated)" if cfg.cuda else "peak mem MiB (ru_maxrss)"
    lines = [f"| row | ms/step | min ms | wall ms/step | images/s | {mem} | ratio vs plain | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    plain = rows.get("plain")
    for key in ROW_ORDER:
        r = rows.get(key)
        if r is None:
            continue
        if r.skipped:
            lines.append(f"| {r.name} | — | — | — | — | — | — | skipped: {r.skipped} |")
            continue
        ratio = None
        if key in ("plain", "lad", "cwd", "teacher_1", "teacher_2", "raw") and plain and plain.ms_step:
            ratio = r.ms_step / plain.ms_step
        lines.append(f"| {r.name} | {_fmt(r.ms_step)} | {_fmt(r.ms_min)} | {_fmt(r.ms_wall)} | {_fmt(r.images_s)} | "
                     f"{_fmt(r.peak_mem_mib, 0)} | {_fmt(ratio, 2)} | {r.notes} |")
    return "\n".join(lines)


def format_targets(targets: List[Dict[str, Any]]) -> str:
    lines = ["| check | value | target | status |", "|---|---:|---|---|"]
    for t in targets:
        tgt = f"{t['op']} {t['limit']}" if t["limit"] is not None else "—"
        status = t["status"] + (f" ({t['note']})" if t["note"] else "")
        lines.append(f"| {t['check']} | {_fmt(t['value'], 3)} | {tgt} | {status} |")
    return "\n".join(lines)


def format_miou(m: Optional[Dict[str, Any]]) -> str:
    if not m:
        return "(mIoU micro-benchmark not run)"
    base = m["numpy_bincount_s"]
    rows = [("numpy per-image bincount (measured)", "numpy_bincount_s")]
    if m.get("before_streaming_s") is not None:
        rows += [(f"before ({m['before']}): update per mask", "before_streaming_s"),
                 (f"before ({m['before']}): update, one call for all masks", "before_streaming_batched_s")]
    rows += [("StreamingMeanIoU.update per mask (measured)", "streaming_s"),
             ("StreamingMeanIoU.update, one call for all masks (measured)", "streaming_batched_s")]
    lines = [f"StreamingMeanIoU.update over {m['masks']} masks {m['height']}x{m['width']}, {m['num_labels']} classes "
             f"(int64, CPU, {m['torch_threads']} torch threads; median of {m['reps']} interleaved repetitions):", "",
             "| method | seconds | min s | ratio vs numpy |", "|---|---:|---:|---:|"]
    for name, key in rows:
        lines.append(f"| {name} | {m[key]:.3f} | {m.get(key[:-2] + '_min_s', m[key]):.3f} | {m[key] / base:.2f} |")
    lines.append(f"| evaluate `mean_iou` (reference from the issue, NOT measured here) | "
                 f"{m['evaluate_mean_iou_reference_s']:.2f} | — | {m['evaluate_mean_iou_reference_s'] / base:.1f} |")
    lines += ["", f"One call for all masks / one call per mask: {m['ratio_batched_vs_per_mask']:.2f}. "
              f"Identical confusion matrices: {m['same_confusion']}."]
    return "\n".join(lines)


def machine_info(cfg: BenchConfig) -> Dict[str, Any]:
    """``lad_hf.fashion_scenes.experiments.machine_info`` plus what the report needs (datasets, affinity, CUDA)."""
    try:
        import datasets

        ds_version = datasets.__version__
    except ImportError:  # pragma: no cover - the GPU image has no datasets unless the wheels are installed
        ds_version = None
    info: Dict[str, Any] = dict(_base_machine_info())
    info.update({
        "datasets": ds_version, "platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(), "device": cfg.device,
    })
    if cfg.cuda:
        info["device_name"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["device_name"] = f"CPU: {info['cpu']}"
    return info


def default_output(cfg: BenchConfig) -> str:
    suffix = "_quick" if cfg.quick else ""
    return os.path.join(_REPO, "benchmarks", "results", f"throughput_{cfg.device}{suffix}.md")


def render_report(result: Dict[str, Any]) -> str:
    cfg = result["config"]
    m = result["machine"]
    setup = (f"{cfg['height']}x{cfg['width']} px, batch {cfg['batch_size']}, {cfg['num_labels']} classes, "
             f"{cfg['steps']} timed steps after {cfg['warmup']} warm-up, dataloader_num_workers={cfg['num_workers']}, "
             f"{'bf16 autocast' if cfg['device'] == 'cuda' and cfg['bf16'] else 'fp32'}, "
             f"student {cfg['student'].upper()}, CWD teacher {cfg['cwd_teacher'].upper()}")
    return "\n".join([
        f"# lad_hf throughput ({m['device_name']})",
        "",
        f"- date (UTC): {result['date_utc']}",
        f"- command: `{cfg['command']}`",
        f"- machine: {m['device_name']}; CPU count {m['cpu_count']} (affinity {m['cpu_affinity']}), "
        f"torch threads {m['torch_threads']}; python {m['python']}, torch {m['torch']}, transformers "
        f"{m['transformers']}, datasets {m['datasets']}",
        f"- setup: {setup}",
        f"- total run time: {result['total_s']:.1f} s",
        "",
        "ms/step: median on_step_begin→on_step_end (synchronised); min ms: fastest timed step (less sensitive to "
        "other load on a shared machine); wall ms/step: median on_step_end→on_step_end "
        "(adds the DataLoader wait); images/s from the wall time. Eval row: ms per eval batch.",
        "",
        result["table"],
        "",
        "## Targets",
        "",
        result["targets_table"],
        "",
        "## Evaluation metric micro-benchmark",
        "",
        result["miou_text"],
        "",
    ])


def default_threads(cfg: BenchConfig) -> Optional[int]:
    """On CPU, leave one core per DataLoader worker: oversubscribed intra-op threads make CPU steps both slow
    and erratic (seen here: 2 threads + 1 worker on 2 cores ran 2-10x slower than 1 thread)."""
    if cfg.threads:
        return cfg.threads
    if cfg.cuda:
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus - int(cfg.num_workers))


def run_benchmark(cfg: BenchConfig, write: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run every row, print the table and targets, write the markdown report and a JSON beside it.

    The torch thread count is set for the run (see :func:`default_threads`) and restored afterwards."""
    before = torch.get_num_threads()
    threads = default_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(cfg, write, log)
    finally:
        torch.set_num_threads(before)


def _run(cfg: BenchConfig, write: bool, log: Callable[[str], None]) -> Dict[str, Any]:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    t_start = time.perf_counter()
    rows: Dict[str, Row] = {}
    with tempfile.TemporaryDirectory(prefix="lad_bench_") as tmp:
        t0 = time.perf_counter()
        train_ds, eval_ds, collator, _ = make_data(cfg, cfg.height, cfg.width, cfg.batch_size,
                                                   cfg.warmup + cfg.steps, cfg.eval_images)
        log(f"[data] {len(train_ds)} train / {len(eval_ds)} eval rows of {cfg.height}x{cfg.width} "
            f"in {time.perf_counter() - t0:.1f} s")

        def step(key, fn, *a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            for r in (out if isinstance(out, tuple) else (out,)):
                rows[r.key] = r
                log(f"[{r.key}] {_fmt(r.ms_step)} ms/step, wall {_fmt(r.ms_wall)} ms, {_fmt(r.images_s)} images/s")
            _free_memory()
            log(f"[{key}] done in {time.perf_counter() - t:.1f} s")

        # rows compared in a target run back to back (plain/raw, plain/LAD/CWD, single/dual), so that drift in
        # the machine's load (a shared CPU, GPU clocks) affects both sides of a ratio alike
        step("plain+eval", bench_plain_and_eval, cfg, train_ds, eval_ds, collator, tmp)
        step("raw", bench_raw, cfg, train_ds, collator, tmp)
        step("lad", bench_distill, cfg, train_ds, collator, tmp, "lad", cfg.lad_teacher, True)
        step("cwd", bench_distill, cfg, train_ds, collator, tmp, "cwd", cfg.cwd_teacher, False)
        step("teacher_1", bench_teacher, cfg, train_ds, collator, tmp, False)
        step("teacher_2", bench_teacher, cfg, train_ds, collator, tmp, True)
        if cfg.compile:
            step("compile", bench_compile, cfg, tmp)
        else:
            why = "CUDA only by default (--compile forces it)" if not cfg.cuda else "--no_compile"
            s, b = cfg.compile_size, cfg.compile_batch_size
            rows["compile_off"] = Row("compile_off", f"plain {cfg.student.upper()} @{s}px b{b}", b, skipped=why)
            rows["compile_on"] = Row("compile_on", f"plain {cfg.student.upper()} @{s}px b{b}, torch_compile=True", b, skipped=why)
        del train_ds, eval_ds
        gc.collect()
    miou = None
    if cfg.miou_masks > 0:
        t = time.perf_counter()
        miou = bench_miou(cfg.miou_masks, cfg.miou_height, cfg.miou_width, cfg.num_labels, cfg.miou_reps, cfg.seed)
        log(f"[miou] streaming {miou['streaming_s']:.3f} s vs numpy {miou['numpy_bincount_s']:.3f} s "
            f"(x{miou['ratio_streaming_vs_numpy']:.2f}) in {time.perf_counter() - t:.1f} s")

    targets = evaluate_targets(cfg, rows, miou)
    result: Dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(cfg),
        "rows": {k: dataclasses.asdict(rows[k]) for k in ROW_ORDER if k in rows},
        "targets": targets,
        "miou": miou,
        "total_s": time.perf_counter() - t_start,
    }
    result["table"] = format_table(cfg, rows)
    result["targets_table"] = format_targets(targets)
    result["miou_text"] = format_miou(miou)
    log("")
    log(result["table"])
    log("")
    log(result["targets_table"])
    log("")
    log(result["miou_text"])
    if write:
        path = cfg.output or default_output(cfg)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(render_report(result))
        json_path = os.path.splitext(path)[0] + ".json"
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1, default=float)
        result["output"], result["json_output"] = path, json_path
        log(f"\nwrote {path} and {json_path}")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = parse_args(argv)
    result = run_benchmark(cfg)
    print(f"total {result['total_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
