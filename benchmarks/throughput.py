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

Also: a micro-benchmark of ``StreamingMeanIoU.update`` (one call per mask and one call for all masks) against a
bare per-image numpy ``bincount`` confusion matrix, all timed in this run (``--miou_before REV`` adds an earlier
``lad_hf/metrics.py``).

Overhead proxy (``--cpu_proxy``; ``--proxy`` on any device): the Trainer's per-step overhead over raw PyTorch
loops doing the same work (plain and LAD paths), the candidate causes switched off one at a time (monkeypatches of
one trainer instance, made here only), all interleaved over rounds in one process; a per-phase host-time breakdown
(data, forward, teacher, noiser, losses, backward, optimizer, Trainer bookkeeping); the host cost of each candidate
in a tight loop; and a ``torch.profiler`` profile of one plain and one LAD Trainer step (CUDA activities on a GPU)
with the operators the Trainer adds over the raw loop. Writes ``throughput_<device>_proxy.md`` (+ .json) and
``profile_<device>_proxy.md``. ``--summarize A.json B.json ...`` prints a short table of earlier runs.

Usage::

    python benchmarks/throughput.py                       # CUDA if available: 512x1024, batch 8, 19 classes
    python benchmarks/throughput.py --device cpu --quick  # CPU-sized: 128x128, batch 2, a few steps
    python benchmarks/throughput.py --cpu_proxy           # tiny SegFormer, host overhead dominates (~4 min)
    python benchmarks/throughput.py --proxy --device cuda --time_budget_s 120 --trace_dir $OUT
    python benchmarks/throughput.py --device cuda --rows plain,raw,lad,cwd --no_compile --miou_masks 0
"""

from __future__ import annotations

import argparse
import contextlib
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
    rows: Optional[str] = None  # table rows to run (comma-separated ROW_ORDER keys; None: all)
    # --proxy / --cpu_proxy
    proxy: bool = False
    rounds: int = 3
    variants: Optional[str] = None  # comma-separated PROXY_VARIANTS keys; None: all
    breakdown: bool = True
    profile: bool = True
    trace_dir: Optional[str] = None
    miou_before: Optional[str] = None
    time_budget_s: Optional[float] = None  # proxy: start no round that would end after this
    breakdown_rounds: int = 2
    teardown_demo: bool = False
    micro_calls: int = 200  # calls per repetition in the tight-loop costs
    step_sync: bool = True  # proxy: synchronise at every step's begin and end (False: host pacing, full pipeline)
    clock: str = "wall"  # proxy step clock: "wall" (perf_counter) or "cpu" (the main thread's CPU time)
    summarize: Optional[List[str]] = None

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
    p.add_argument("--output", help="markdown report (default benchmarks/results/throughput_<device>[_quick|_proxy].md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", help=f"table rows to run, comma-separated from {','.join(ROW_ORDER)} (default: all; "
                                  "compile_off/compile_on go together)")
    p.add_argument("--student", choices=sorted(SEGFORMER_SIZES))
    p.add_argument("--lad_teacher", choices=sorted(SEGFORMER_SIZES))
    g = p.add_argument_group("overhead proxy (Trainer vs raw loop, ablations, host-time breakdown, profiler)")
    g.add_argument("--proxy", action="store_true", help="run the overhead proxy on --device at the table's sizes")
    g.add_argument("--cpu_proxy", action="store_true",
                   help="the proxy on CPU with a tiny SegFormer where host overhead dominates: tiny student and "
                        "teacher, 64x64, batch 4, 1 thread, no DataLoader workers, 7 rounds; report "
                        "benchmarks/results/throughput_cpu_proxy.md, profile_cpu_proxy.md")
    g.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 7 with --cpu_proxy)")
    g.add_argument("--variants", help="comma-separated proxy variants (default: all): " + ",".join(PROXY_VARIANTS))
    g.add_argument("--no_breakdown", action="store_true", help="skip the per-phase host-time breakdown")
    g.add_argument("--breakdown_rounds", type=int, help="runs per column of the breakdown (default 2)")
    g.add_argument("--micro_calls", type=int, help="calls per repetition of each tight-loop cost (default 200)")
    g.add_argument("--teardown_demo", action=argparse.BooleanOptionalAction, default=None,
                   help="time freeing a trainer with one DataLoader worker three ways (default: on with --cpu_proxy)")
    g.add_argument("--time_budget_s", type=float, help="start no interleaved round that would end after this")
    g.add_argument("--no_step_sync", action="store_true",
                   help="no torch.cuda.synchronize() at the step boundaries of the rounds: the end-to-end wall ms/step "
                        "is then the pace of training with the device pipeline kept full")
    g.add_argument("--no_profile", action="store_true", help="skip the torch.profiler step profiles")
    g.add_argument("--trace_dir", help="also write the profiled steps as gzipped Chrome traces here")
    g.add_argument("--miou_before", help="earlier lad_hf/metrics.py (file or git revision) timed beside the current "
                                         "one (default with --cpu_proxy: b6a1101)")
    g.add_argument("--clock", choices=sorted(CLOCKS), help="proxy step clock: wall (default; CUDA) or the main "
                   "thread's CPU time (default with --cpu_proxy: 1 thread, no workers, robust to a shared machine)")
    g.add_argument("--miou_height", type=int)
    g.add_argument("--miou_width", type=int)
    g.add_argument("--miou_reps", type=int)
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="print a short table of earlier runs' JSON files and exit")
    a = p.parse_args(argv)

    if a.cpu_proxy:
        if a.device == "cuda":
            p.error("--cpu_proxy runs on CPU; use --proxy --device cuda")
        a.device, a.proxy = "cpu", True
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    cfg = BenchConfig(device=device, quick=a.quick)
    if a.quick:
        cfg.height, cfg.width, cfg.batch_size, cfg.steps, cfg.warmup = 128, 128, 2, 15, 3
        cfg.eval_images, cfg.unique_images, cfg.cwd_teacher = 4, 4, "b2"
        cfg.compile_size, cfg.compile_batch_size, cfg.compile_steps, cfg.compile_warmup = 96, 8, 6, 3
    cfg.num_workers = 4 if device == "cuda" else 1
    if a.proxy:
        cfg.proxy, cfg.eval_images, cfg.steps, cfg.warmup = True, 1, 12, 4
    if a.cpu_proxy:
        cfg.student, cfg.lad_teacher, cfg.height, cfg.width, cfg.batch_size = "tiny", "tiny", 64, 64, 4
        cfg.steps, cfg.warmup, cfg.rounds, cfg.num_workers, cfg.threads = 20, 5, 7, 0, 1
        cfg.unique_images, cfg.miou_reps, cfg.miou_before, cfg.clock = 8, 7, "b6a1101", "cpu"
        cfg.teardown_demo = True
    for name in ("height", "width", "batch_size", "num_labels", "steps", "warmup", "eval_images", "num_workers",
                 "cwd_teacher", "compile_steps", "output", "rows", "student", "lad_teacher", "rounds", "variants",
                 "trace_dir", "miou_before", "miou_height", "miou_width", "miou_reps", "threads", "clock",
                 "breakdown_rounds", "time_budget_s", "teardown_demo", "micro_calls"):
        if getattr(a, name, None) is not None:
            setattr(cfg, name, getattr(a, name))
    cfg.bf16 = not a.no_bf16
    cfg.compile = (device == "cuda" and not a.no_compile) or a.compile
    cfg.miou_masks, cfg.seed = a.miou_masks, a.seed
    cfg.breakdown, cfg.profile, cfg.step_sync = not a.no_breakdown, not a.no_profile, not a.no_step_sync
    if a.quick and a.miou_reps is None:
        cfg.miou_reps = 2
    if cfg.steps < 1 or cfg.warmup < 0 or cfg.batch_size < 1 or cfg.rounds < 1:
        p.error("--steps and --rounds must be >= 1, --warmup >= 0, --batch_size >= 1")
    if cfg.rows:
        bad = [r for r in cfg.rows.split(",") if r.strip() not in ROW_ORDER]
        if bad:
            p.error(f"unknown --rows {bad}; choose from {','.join(ROW_ORDER)}")
    cfg.summarize = a.summarize
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


#: The clocks a step can be timed with: wall time, or the calling thread's CPU time. With one intra-op thread
#: and no DataLoader workers every CPU step runs on the main thread, and its CPU time leaves out the time the OS
#: gives a shared machine's cores to other processes (the 2-core CI machines run several jobs at once).
CLOCKS: Dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


class StepTimer(TrainerCallback):
    """Records ``perf_counter`` (and the thread's CPU time) at every step's begin and end (after
    ``torch.cuda.synchronize()`` on CUDA)."""

    def __init__(self, device: str, sync: bool = True):
        self.device = device if sync else "cpu"  # sync=False: no synchronize (host pacing, pipeline kept full)
        self.begin: List[float] = []
        self.end: List[float] = []
        self.cpu_begin: List[float] = []
        self.cpu_end: List[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        _sync(self.device)
        self.begin.append(time.perf_counter())
        self.cpu_begin.append(time.thread_time())

    def on_step_end(self, args, state, control, **kwargs):
        _sync(self.device)
        self.end.append(time.perf_counter())
        self.cpu_end.append(time.thread_time())


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
    release_workers(trainer)
    row.peak_mem_mib = _peak_mib(cfg.device)
    row.row_peak_rss_mib = rss.peak / 2**20
    return _finish_row(row, timer.begin, timer.end, warmup)


def release_workers(trainer) -> int:
    """Shut down the worker processes of the trainer's (persistent-worker) DataLoaders now; returns how many.

    A lad_hf trainer sits in a reference cycle (its ``_NonFiniteGuard`` callback holds the trainer), so only the
    cyclic garbage collector frees it; by then multiprocessing has finalised the DataLoader's index queues, the
    workers never get the stop signal, and ``_shutdown_workers`` waits out its 5 s join timeout for every worker
    (measured: ``measure_worker_teardown``). Shutting them down explicitly after ``train()``/``evaluate()``
    keeps that wait out of the benchmark's run time (it is never inside a timed step)."""
    n = 0
    for dl in list(getattr(trainer.accelerator, "_dataloaders", [])):
        it = getattr(dl, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
            dl._iterator = None
            n += 1
    return n


def _free_memory() -> None:
    """Collect the finished row's trainer (it sits in reference cycles with its callbacks), its DataLoader
    workers and cached CUDA blocks before the next row."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_plain_and_eval(cfg, train_ds, eval_ds, collator, out_dir, with_eval: bool = True):
    from lad_hf import SegmentationConfig, SegmentationTrainer

    args = SegmentationConfig(**_train_kwargs(cfg, out_dir, cfg.batch_size, cfg.warmup + cfg.steps))
    trainer = SegmentationTrainer(model=segformer(cfg.student, cfg.num_labels, cfg.seed), args=args,
                                  train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator)
    plain = time_train(cfg, Row("plain", f"plain student ({cfg.student.upper()})", cfg.batch_size), trainer, cfg.warmup)
    if not with_eval:
        return plain

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
    release_workers(trainer)
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
    return out  # the masks go with this frame


# ------------------------------------------------------------------------------------------------ overhead proxy
#
# ``--cpu_proxy`` (``--proxy`` on any device): the Trainer's per-step overhead over a raw PyTorch loop doing the
# same work, for the plain and the LAD path, with the candidate causes switched off one at a time, all measured
# interleaved in one process; then a per-phase host-time breakdown of each path and a torch.profiler profile of one
# plain and one LAD Trainer step.

P_GPU_WAIT = "wait for the device (sync at the step boundary)"
P_FETCH = "data: fetch (decode + transforms, to device)"
P_COLLATE = "data: collate"
P_CHECK = "batch checks (shape, check_labels)"
P_TRAIN_MODE = "model.train() module walk"
P_FORWARD = "student forward"
P_TEACHER_EVAL = "teacher.eval() module walk"
P_NOISER = "noiser (label channel)"
P_TEACHER = "teacher forward"
P_SEG_LOSS = "loss: segmentation CE"
P_DIST_LOSS = "loss: distillation (CWD)"
P_RECORD = "loss-part logging (record)"
P_GUARD = "non-finite guard (isfinite, .item() on CPU)"
P_BACKWARD = "backward"
P_CLIP = "clip grad norm"
P_OPTIM = "optimizer step"
P_SCHED = "lr scheduler step"
P_ZERO = "zero_grad"
P_CALLBACKS = "Trainer: callback events"
P_LOGCHECK = "Trainer: log/save/evaluate check"
P_OTHER = "other (Trainer glue: training_step, accelerate, state)"
PHASE_ORDER = (P_GPU_WAIT, P_FETCH, P_COLLATE, P_CHECK, P_TRAIN_MODE, P_FORWARD, P_TEACHER_EVAL, P_NOISER, P_TEACHER,
               P_SEG_LOSS, P_DIST_LOSS, P_RECORD, P_GUARD, P_BACKWARD, P_CLIP, P_OPTIM, P_SCHED, P_ZERO, P_CALLBACKS,
               P_LOGCHECK, P_OTHER)


class PhaseTimer:
    """Exclusive host time per named phase, step by step.

    :meth:`wrap` replaces one instance's method (or callable attribute) by a timed one. Phases nest, and a phase's
    time excludes the phases nested in it, so the phases of a step add up to at most the step's time; the rest is
    :data:`P_OTHER`. :meth:`boundary` closes a step (after ``torch.cuda.synchronize()``, timed as
    :data:`P_GPU_WAIT`, on CUDA). With ``ranges=True`` every phase is also a ``torch.profiler.record_function``
    range, and ``on_boundary`` (e.g. ``profiler.step``) runs at every boundary."""

    def __init__(self, device: str = "cpu", ranges: bool = False, on_boundary: Optional[Callable[[], None]] = None,
                 clock: str = "wall"):
        self.device = device
        self.clock = CLOCKS[clock]
        self.ranges = ranges
        self.on_boundary = on_boundary
        self.steps: List[Dict[str, float]] = []  # exclusive seconds per phase, one dict per closed step
        self.totals: List[float] = []  # seconds from one boundary to the next
        self._cur: Dict[str, float] = {}
        self._stack: List[List[float]] = []
        self._last: Optional[float] = None

    @contextlib.contextmanager
    def phase(self, name: str):
        frame = [0.0]
        self._stack.append(frame)
        rf = torch.profiler.record_function(name) if self.ranges else contextlib.nullcontext()
        t0 = self.clock()
        try:
            with rf:
                yield
        finally:
            elapsed = self.clock() - t0
            self._stack.pop()
            self._cur[name] = self._cur.get(name, 0.0) + elapsed - frame[0]
            if self._stack:
                self._stack[-1][0] += elapsed

    def wrap(self, obj: Any, attr: str, name: str) -> bool:
        fn = getattr(obj, attr, None)
        if fn is None or getattr(fn, "_lad_phase", None) is self:
            return False
        timer = self

        def timed(*args, **kwargs):
            with timer.phase(name):
                return fn(*args, **kwargs)

        timed.__dict__.update(getattr(fn, "__dict__", {}))  # e.g. the LR scheduler's mark on optimizer.step
        timed._lad_phase = self  # type: ignore[attr-defined]
        setattr(obj, attr, timed)
        return True

    def boundary(self) -> None:
        if self.device == "cuda" and self._last is not None:
            with self.phase(P_GPU_WAIT):
                torch.cuda.synchronize()
        now = self.clock()
        if self._last is not None:
            self.steps.append(self._cur)
            self.totals.append(now - self._last)
        self._cur = {}
        self._last = now
        if self.on_boundary is not None:
            self.on_boundary()

    def summary(self, skip: int = 0) -> Dict[str, Any]:
        """Median ms per phase over the closed steps after ``skip``, the median step total, and ``other``."""
        steps, totals = self.steps[skip:] or self.steps[-1:], self.totals[skip:] or self.totals[-1:]
        names = sorted({k for s in steps for k in s}, key=lambda k: PHASE_ORDER.index(k) if k in PHASE_ORDER else 99)
        phases = {k: statistics.median([s.get(k, 0.0) for s in steps]) * 1e3 for k in names}
        other = [t - sum(s.values()) for s, t in zip(steps, totals)]
        phases[P_OTHER] = statistics.median(other) * 1e3 if other else 0.0
        return {"steps": len(steps), "total_ms": statistics.median(totals) * 1e3 if totals else None,
                "phases_ms": phases}


class _InstrumentCallback(TrainerCallback):
    """Times the optimizer and scheduler steps, which the Trainer creates inside ``train()``."""

    def __init__(self, timer: PhaseTimer):
        self.timer = timer

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if optimizer is not None:
            self.timer.wrap(optimizer, "step", P_OPTIM)
        if lr_scheduler is not None:
            self.timer.wrap(lr_scheduler, "step", P_SCHED)


def instrument_trainer(trainer, timer: PhaseTimer) -> None:
    """Wrap the per-step work of a lad_hf trainer in :class:`PhaseTimer` phases (instance attributes only; the
    trainer classes are untouched). The step boundary is the start of the Trainer's batch fetch."""
    fetch = trainer.get_batch_samples

    def timed_fetch(*args, **kwargs):
        timer.boundary()
        with timer.phase(P_FETCH):
            return fetch(*args, **kwargs)

    trainer.get_batch_samples = timed_fetch
    timer.wrap(trainer, "data_collator", P_COLLATE)  # runs here only with dataloader_num_workers=0
    model = trainer.model
    timer.wrap(trainer, "check_batch", P_CHECK)
    timer.wrap(model, "train", P_TRAIN_MODE)
    timer.wrap(model, "forward", P_FORWARD)
    timer.wrap(model, "zero_grad", P_ZERO)
    timer.wrap(trainer, "seg_loss", P_SEG_LOSS)
    timer.wrap(trainer, "record", P_RECORD)
    timer.wrap(trainer, "_flag_non_finite", P_GUARD)
    timer.wrap(trainer.accelerator, "backward", P_BACKWARD)
    timer.wrap(trainer.accelerator, "clip_grad_norm_", P_CLIP)
    timer.wrap(trainer, "_maybe_log_save_evaluate", P_LOGCHECK)
    for event in ("on_step_begin", "on_step_end", "on_pre_optimizer_step", "on_optimizer_step", "on_substep_end"):
        timer.wrap(trainer.callback_handler, event, P_CALLBACKS)
    teacher = getattr(trainer, "teacher", None)
    if teacher is not None:
        timer.wrap(teacher, "forward", P_TEACHER)
        timer.wrap(teacher, "eval", P_TEACHER_EVAL)
        timer.wrap(trainer.distill, "forward", P_DIST_LOSS)
    if getattr(trainer, "noiser", None) is not None:
        timer.wrap(trainer.noiser, "assist", P_NOISER)
    trainer.add_callback(_InstrumentCallback(timer))


# ---- the two paths as raw loops


class RawLoop:
    """The work of one Trainer step without the Trainer: same model/init, data (``DataLoader`` over the same
    dataset and collator), optimizer class and kwargs, LR schedule, gradient clipping, losses, autocast; for LAD
    the same label-assisted teacher (cast like the trainer does), noiser options and distillation loss."""

    def __init__(self, cfg: BenchConfig, path: str, train_ds, collator, out_dir: str, max_steps: int,
                 preload: int = 0):
        from torch.utils.data import DataLoader
        from transformers import Trainer, get_scheduler

        from lad_hf import LADDistillationConfig, SegmentationConfig, add_label_channel
        from lad_hf.losses import build_loss
        from lad_hf.noising import LabelNoiser

        self.cfg, self.path = cfg, path
        self.device = torch.device(cfg.device)
        config_cls = LADDistillationConfig if path == "lad" else SegmentationConfig
        args = config_cls(**_train_kwargs(cfg, out_dir, cfg.batch_size, max_steps))
        self.args = args
        self.model = segformer(cfg.student, cfg.num_labels, cfg.seed).to(self.device).train()
        opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, self.model)
        self.opt = opt_cls([p for p in self.model.parameters() if p.requires_grad], **opt_kwargs)
        self.sched = get_scheduler(args.lr_scheduler_type, self.opt, num_warmup_steps=args.get_warmup_steps(max_steps),
                                   num_training_steps=max_steps)
        self.teacher = self.noiser = self.distill = None
        if path == "lad":
            dtype = torch.bfloat16 if cfg.use_bf16 else None
            teacher = add_label_channel(segformer(cfg.lad_teacher, cfg.num_labels, cfg.seed + 1)).requires_grad_(False)
            self.teacher = teacher.to(device=self.device, dtype=dtype).eval()
            args.resolve_noise({})
            gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003)
            self.noiser = LabelNoiser.from_args(args, cfg.num_labels, generator=gen)
            self.distill = build_loss(args.distill_loss, args.distill_tau)
        workers = int(cfg.num_workers)
        self.collator, self._timer = collator, None
        self.loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, collate_fn=self._collate,
                                 num_workers=workers, pin_memory=cfg.cuda, persistent_workers=workers > 0,
                                 drop_last=True, generator=torch.Generator().manual_seed(cfg.seed))
        self.amp = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cfg.use_bf16)
        # preload > 0: cycle that many batches already on the device (no DataLoader, no pin-memory thread)
        self.preloaded = []
        if preload:
            it = iter(self.loader)
            self.preloaded = [{k: v.to(self.device) for k, v in next(it).items()}
                              for _ in range(max(1, min(preload, len(self.loader))))]

    def _collate(self, rows):
        if self._timer is None or torch.utils.data.get_worker_info() is not None:  # timed in-process only
            return self.collator(rows)
        with self._timer.phase(P_COLLATE):
            return self.collator(rows)

    def _batches(self):
        while True:
            yield from (self.preloaded or self.loader)

    def run(self, n_steps: int, timer: Optional[PhaseTimer] = None) -> Dict[str, List[float]]:
        """``n_steps`` steps; returns ``perf_counter`` and thread CPU time at each step's begin and end (after the
        batch is on the device, like the Trainer's ``on_step_begin``; synchronised on CUDA)."""
        from lad_hf.losses import segmentation_loss

        ph = timer.phase if timer is not None else (lambda name: contextlib.nullcontext())
        dev, cuda, args = self.device, self.cfg.cuda, self.args
        self._timer = timer
        begin, end, cpu_begin, cpu_end = [], [], [], []
        batches = self._batches()
        for _ in range(n_steps):
            if timer is not None:
                timer.boundary()
            with ph(P_FETCH):
                batch = next(batches)
                x = batch["pixel_values"].to(dev, non_blocking=cuda)
                y = batch["labels"].to(dev, non_blocking=cuda)
            if self.cfg.step_sync:
                _sync(self.cfg.device)
            begin.append(time.perf_counter())
            cpu_begin.append(time.thread_time())
            with self.amp:
                with ph(P_FORWARD):
                    s = self.model(pixel_values=x).logits
                if self.teacher is not None:
                    with torch.no_grad():
                        with ph(P_NOISER):
                            xt = self.noiser.assist(x, y)
                        with ph(P_TEACHER):
                            t = self.teacher(pixel_values=xt.to(next(self.teacher.parameters()).dtype)).logits
                with ph(P_SEG_LOSS):
                    loss = segmentation_loss(s, y, args.ignore_index)
                if self.teacher is not None:
                    with ph(P_DIST_LOSS):
                        loss = loss + args.distill_weight * self.distill(s, t)
            with ph(P_BACKWARD):
                loss.backward()
            if args.max_grad_norm and args.max_grad_norm > 0:
                with ph(P_CLIP):
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            with ph(P_OPTIM):
                self.opt.step()
            with ph(P_SCHED):
                self.sched.step()
            with ph(P_ZERO):
                self.model.zero_grad(set_to_none=True)
            if self.cfg.step_sync:
                _sync(self.cfg.device)
            end.append(time.perf_counter())
            cpu_end.append(time.thread_time())
        _sync(self.cfg.device)
        if timer is not None:
            timer.boundary()
        self._timer = None
        return {"begin": begin, "end": end, "cpu_begin": cpu_begin, "cpu_end": cpu_end}


# ---- variants and ablations

#: Per-step work that can be switched off on one trainer instance (benchmark-only monkeypatches).
def _ablate(trainer, what: str) -> None:
    import types

    from transformers import Trainer

    if what == "nonfinite":
        trainer._flag_non_finite = lambda value, name: None
    elif what == "check_labels":
        trainer.args.validate_labels = False
    elif what == "record":
        trainer.record = lambda **parts: None
    elif what == "teacher_eval":
        teacher = trainer.teacher
        teacher.eval = lambda: teacher
    elif what == "model_train":
        model = trainer.model
        model.train = lambda mode=True: model
    elif what == "default_flops":
        trainer.floating_point_ops = types.MethodType(Trainer.floating_point_ops, trainer)
    elif what == "pin_memory":
        trainer.args.dataloader_pin_memory = False
    elif what == "non_blocking":  # = TrainingArguments(accelerator_config={"non_blocking": True})
        trainer.accelerator.dataloader_config.non_blocking = True
    else:  # pragma: no cover
        raise ValueError(what)


ABLATIONS: Dict[str, str] = {
    "nonfinite": "non-finite guard off (isfinite + where per step; on CPU also check_non_finite's .item())",
    "check_labels": "per-step check_labels off (validate_labels=False; a bool(any()) host sync)",
    "record": "loss-part logging off (record: 2 detach/float/add per step)",
    "teacher_eval": "per-step teacher.eval() off (a walk over the teacher's modules)",
    "model_train": "per-step model.train() off (transformers' training_step walks the student's modules)",
    "default_flops": "transformers' floating_point_ops instead of lad_hf's 0 (what the override saves)",
    "pin_memory": "dataloader_pin_memory=False (no pin-memory thread in the training process)",
    "non_blocking": "non-blocking host-to-device batch copies (accelerator_config non_blocking=True)",
}
LAD_EXTRAS = ("nonfinite", "check_labels", "record", "teacher_eval")

#: name -> (path, kind, ablations)
PROXY_VARIANTS: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "plain": ("plain", "trainer", ()),
    "plain_raw": ("plain", "raw", ()),
    "plain_raw_preloaded": ("plain", "raw_preloaded", ()),
    "lad": ("lad", "trainer", ()),
    "lad_raw": ("lad", "raw", ()),
    "plain-extras": ("plain", "trainer", ("nonfinite", "check_labels")),
    "lad-extras": ("lad", "trainer", LAD_EXTRAS),
    "lad-nonfinite": ("lad", "trainer", ("nonfinite",)),
    "lad-check_labels": ("lad", "trainer", ("check_labels",)),
    "lad-record": ("lad", "trainer", ("record",)),
    "lad-teacher_eval": ("lad", "trainer", ("teacher_eval",)),
    "lad-model_train": ("lad", "trainer", ("model_train",)),
    "lad+default_flops": ("lad", "trainer", ("default_flops",)),
    "plain-pin_memory": ("plain", "trainer", ("pin_memory",)),
    "plain+non_blocking": ("plain", "trainer", ("non_blocking",)),
}
#: Default variants per device: on CUDA the ones that fit a few minutes, with the pin-memory thread test.
PROXY_DEFAULT_VARIANTS: Dict[str, Tuple[str, ...]] = {
    "cpu": tuple(v for v in PROXY_VARIANTS if v not in ("plain-pin_memory", "plain+non_blocking")),
    "cuda": ("plain", "plain_raw", "plain_raw_preloaded", "lad", "lad_raw", "plain-extras", "lad-extras",
             "plain-pin_memory", "plain+non_blocking"),
}


def _variant_label(name: str) -> str:
    path, kind, abl = PROXY_VARIANTS[name]
    base = f"{'LAD' if path == 'lad' else 'plain'} " + {"raw": "raw loop", "raw_preloaded": "raw loop over 4 batches "
                                                        "pre-loaded on the device (no DataLoader)"}.get(kind, "Trainer")
    if not abl:
        return base
    if set(abl) == set(LAD_EXTRAS) or (path == "plain" and set(abl) == {"nonfinite", "check_labels"}):
        return f"{base}, all lad_hf per-step extras off ({', '.join(abl)})"
    return f"{base}, " + "; ".join(ABLATIONS[a] for a in abl)


def build_proxy_trainer(cfg: BenchConfig, path: str, train_ds, collator, out_dir: str, max_steps: int,
                        ablations: Sequence[str] = ()):
    from lad_hf import (LADDistillationConfig, LADDistillationTrainer, SegmentationConfig, SegmentationTrainer,
                        add_label_channel)

    # logging as in a real run (every 10 steps; the printer is removed), no saving or evaluation
    kw = _train_kwargs(cfg, out_dir, cfg.batch_size, max_steps, logging_strategy="steps", logging_steps=10)
    student = segformer(cfg.student, cfg.num_labels, cfg.seed)
    if path == "lad":
        teacher = add_label_channel(segformer(cfg.lad_teacher, cfg.num_labels, cfg.seed + 1))
        trainer = LADDistillationTrainer(model=student, teacher_model=teacher, args=LADDistillationConfig(**kw),
                                         train_dataset=train_ds, data_collator=collator)
    else:
        trainer = SegmentationTrainer(model=student, args=SegmentationConfig(**kw), train_dataset=train_ds,
                                      data_collator=collator)
    for what in ablations:
        _ablate(trainer, what)
    return _quiet(trainer)


def _median(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def run_proxy_rounds(cfg: BenchConfig, variants: Sequence[str], train_ds, collator, out_dir: str,
                     log: Callable[[str], None]) -> Dict[str, Any]:
    """Every variant ``cfg.rounds`` times, interleaved (the order rotates each round); per round the median
    ms/step over the timed steps; paired per-round differences for the comparisons."""
    n_steps = cfg.warmup + cfg.steps
    # raw loops persist across rounds; a trainer is built afresh for every run (outside the timing): a second
    # train() of one trainer would let accelerate wrap the model's forward in autocast once more under bf16
    raw = {name: RawLoop(cfg, PROXY_VARIANTS[name][0], train_ds, collator, out_dir, n_steps,
                         preload=4 if PROXY_VARIANTS[name][1] == "raw_preloaded" else 0)
           for name in variants if PROXY_VARIANTS[name][1] != "trainer"}
    per_round: Dict[str, List[Dict[str, float]]] = {name: [] for name in variants}
    setup: Dict[str, List[Dict[str, float]]] = {name: [] for name in variants if PROXY_VARIANTS[name][1] == "trainer"}
    order = list(variants)
    t_rounds = time.perf_counter()
    for r in range(cfg.rounds):
        elapsed = time.perf_counter() - t_rounds
        if r and cfg.time_budget_s and elapsed + elapsed / r > cfg.time_budget_s:
            log(f"[proxy] stopping after {r} rounds: another would pass --time_budget_s {cfg.time_budget_s:g}")
            break
        rot = order[r % len(order):] + order[: r % len(order)]
        for name in rot:
            path, kind, abl = PROXY_VARIANTS[name]
            if kind != "trainer":
                t = raw[name].run(n_steps)
            else:
                t0 = time.perf_counter()
                trainer = build_proxy_trainer(cfg, path, train_ds, collator, out_dir, n_steps, abl)
                timer = StepTimer(cfg.device, sync=cfg.step_sync)
                trainer.add_callback(timer)
                t1 = time.perf_counter()
                trainer.train()
                _sync(cfg.device)
                t2 = time.perf_counter()
                release_workers(trainer)
                t = {"begin": timer.begin, "end": timer.end, "cpu_begin": timer.cpu_begin, "cpu_end": timer.cpu_end}
                del trainer
                _free_memory()
                # where a run's time outside the timed steps goes (trainer build, DataLoader start, teardown)
                setup[name].append({"build_s": t1 - t0, "to_first_step_s": t["begin"][0] - t1 if t["begin"] else None,
                                    "after_last_step_s": t2 - t["end"][-1] if t["end"] else None,
                                    "free_s": time.perf_counter() - t2})
            wall = _finish_row(Row(name, name, cfg.batch_size), t["begin"], t["end"], cfg.warmup)
            cpu = _finish_row(Row(name, name, cfg.batch_size), t["cpu_begin"], t["cpu_end"], cfg.warmup)
            row = cpu if cfg.clock == "cpu" else wall
            per_round[name].append({"ms_step": row.ms_step, "ms_min": row.ms_min, "ms_wall": wall.ms_wall,
                                    "ms_step_wall": wall.ms_step, "ms_step_cpu": cpu.ms_step})
        log(f"[proxy] round {r + 1}/{cfg.rounds} ({time.perf_counter() - t_rounds:.0f} s): " + ", ".join(
            f"{n} {per_round[n][-1]['ms_step']:.2f}" for n in variants))
    first = next(iter(setup.values()), None)
    if first:
        log("[proxy] per trainer run outside the timed steps (s, first variant, medians): " + ", ".join(
            f"{k} {_fmt(_median([x[k] for x in first]), 2)}" for k in first[0]))
    del raw
    _free_memory()

    out: Dict[str, Any] = {"variants": {}, "comparisons": [], "ablations": [],
                           "rounds_done": min(len(v) for v in per_round.values()),
                           "trainer_run_overhead_s": {name: {k: _median([x[k] for x in runs]) for k in runs[0]}
                                                      for name, runs in setup.items() if runs}}
    for name in variants:
        steps = [x["ms_step"] for x in per_round[name]]
        out["variants"][name] = {
            "label": _variant_label(name), "ms_step": _median(steps), "ms_step_rounds": steps,
            "ms_min": min(x["ms_min"] for x in per_round[name]), "ms_wall": _median([x["ms_wall"] for x in per_round[name]]),
            "ms_step_wall": _median([x["ms_step_wall"] for x in per_round[name]]),
            "ms_step_cpu": _median([x["ms_step_cpu"] for x in per_round[name]]),
        }

    def paired(a: str, b: str) -> Optional[Dict[str, Any]]:
        if a not in per_round or b not in per_round:
            return None
        da = [x["ms_step"] for x in per_round[a]]
        db = [x["ms_step"] for x in per_round[b]]
        diffs = [p - q for p, q in zip(da, db)]
        ratios = [p / q for p, q in zip(da, db)]
        return {"a": a, "b": b, "diff_ms": _median(diffs), "diff_ms_range": [min(diffs), max(diffs)],
                "ratio": _median(ratios), "ratio_range": [min(ratios), max(ratios)]}

    for a, b, what in (("plain", "plain_raw", "Trainer / raw loop, plain path"),
                       ("lad", "lad_raw", "Trainer / raw loop, LAD path"),
                       ("lad", "plain", "LAD / plain, Trainer"),
                       ("lad_raw", "plain_raw", "LAD / plain, raw loops"),
                       ("plain-extras", "plain_raw", "Trainer without lad_hf extras / raw loop, plain path"),
                       ("lad-extras", "lad_raw", "Trainer without lad_hf extras / raw loop, LAD path")):
        c = paired(a, b)
        if c is not None:
            c["what"] = what
            out["comparisons"].append(c)
    trainer_overhead = {p: (paired(p, f"{p}_raw") or {}).get("diff_ms") for p in ("plain", "lad")}
    for name in variants:
        path, kind, abl = PROXY_VARIANTS[name]
        if kind != "trainer" or not abl:
            continue
        c = paired(path, name)
        if c is None:
            continue
        c["what"] = _variant_label(name)
        c["saves_ms"] = c.pop("diff_ms")
        c["saves_ms_range"] = c.pop("diff_ms_range")
        ov = trainer_overhead.get(path)
        c["share_of_trainer_overhead"] = (c["saves_ms"] / ov) if ov else None
        out["ablations"].append(c)
    return out


def run_proxy_breakdown(cfg: BenchConfig, train_ds, collator, out_dir: str, log: Callable[[str], None],
                        rounds: int = 2) -> Dict[str, Any]:
    """Per-phase host time (median ms per step) of the plain and LAD Trainer steps and their raw loops."""
    n_steps = cfg.warmup + cfg.steps
    timers: Dict[str, List[PhaseTimer]] = {k: [] for k in ("plain", "plain_raw", "lad", "lad_raw")}
    for r in range(rounds):
        for key in timers:
            path = key.split("_")[0]
            timer = PhaseTimer(cfg.device, clock=cfg.clock)
            if key.endswith("_raw"):
                RawLoop(cfg, path, train_ds, collator, out_dir, n_steps).run(n_steps, timer)
            else:
                trainer = build_proxy_trainer(cfg, path, train_ds, collator, out_dir, n_steps)
                instrument_trainer(trainer, timer)
                trainer.train()
                timer.boundary()
                release_workers(trainer)
                del trainer
            timers[key].append(timer)
            _free_memory()
        log(f"[breakdown] round {r + 1}/{rounds} done")
    out: Dict[str, Any] = {}
    for key, ts in timers.items():
        merged = PhaseTimer(cfg.device, clock=cfg.clock)
        for t in ts:  # pool the timed steps of every round (the first `warmup` steps of each dropped)
            merged.steps += t.steps[cfg.warmup:]
            merged.totals += t.totals[cfg.warmup:]
        out[key] = merged.summary()
    return out


def measure_worker_teardown(cfg: BenchConfig, train_ds, collator, out_dir: str, workers: int = 1) -> Dict[str, Any]:
    """Seconds to free a trained plain trainer with ``workers`` DataLoader workers: as is (the cyclic garbage
    collector), after :func:`release_workers`, and with the ``_NonFiniteGuard``'s trainer reference made weak
    (what a ``weakref`` in ``lad_hf/trainers/base.py`` would give)."""
    import weakref

    from lad_hf.trainers.base import _NonFiniteGuard

    wcfg = dataclasses.replace(cfg, num_workers=workers)
    out: Dict[str, Any] = {"workers": workers}
    for how in ("gc", "release_workers", "weakref_guard"):
        trainer = build_proxy_trainer(wcfg, "plain", train_ds, collator, out_dir, 2)
        trainer.train()
        if how == "weakref_guard":
            for cb in trainer.callback_handler.callbacks:
                if isinstance(cb, _NonFiniteGuard):
                    cb.trainer = weakref.proxy(trainer)
        t0 = time.perf_counter()
        if how == "release_workers":
            release_workers(trainer)
        del trainer
        gc.collect()
        out[f"{how}_s"] = time.perf_counter() - t0
    return out


def _profile_rows(prof) -> List[Dict[str, Any]]:
    rows = []
    for e in prof.key_averages():
        dev_self = getattr(e, "self_device_time_total", None)
        if dev_self is None:
            dev_self = getattr(e, "self_cuda_time_total", 0.0)
        rows.append({"name": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                     "cpu_total_ms": e.cpu_time_total / 1e3, "self_device_ms": (dev_self or 0.0) / 1e3})
    return rows


def run_proxy_profile(cfg: BenchConfig, train_ds, collator, out_dir: str, trace_dir: Optional[str],
                      log: Callable[[str], None]) -> Dict[str, Any]:
    """``torch.profiler`` (CPU, plus CUDA on a GPU) over exactly one step of each path after warm-up: the plain
    and LAD Trainer steps, and the raw loops for the operator counts. A step runs from one batch fetch to the next;
    the phases are ``record_function`` ranges."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cfg.cuda else [])
    warm = max(1, min(cfg.warmup, 5))
    active_step = warm + 1  # profiler steps start at each boundary; step `warm + 1` is the active one
    out: Dict[str, Any] = {}
    for key in ("plain", "plain_raw", "lad", "lad_raw"):
        path = key.split("_")[0]
        prof = profile(activities=activities, schedule=schedule(wait=warm, warmup=1, active=1, repeat=1),
                       record_shapes=False, with_stack=False)
        timer = PhaseTimer(cfg.device, ranges=True, on_boundary=prof.step)
        if key.endswith("_raw"):
            loop = RawLoop(cfg, path, train_ds, collator, out_dir, warm + 4)
            with prof:
                loop.run(warm + 3, timer)
            del loop
        else:
            trainer = build_proxy_trainer(cfg, path, train_ds, collator, out_dir, warm + 4)
            instrument_trainer(trainer, timer)
            with prof:
                trainer.train()
                timer.boundary()
            release_workers(trainer)
            del trainer
        _free_memory()
        # the boundary that closes step j (j >= 1) appends totals[j - 1]
        step_ms = timer.totals[active_step - 1] * 1e3 if len(timer.totals) >= active_step else None
        rows = _profile_rows(prof)
        phase_names = set(PHASE_ORDER)
        ranges = {r["name"]: r for r in rows if r["name"] in phase_names}
        ops = [r for r in rows if r["name"] not in phase_names and not r["name"].startswith("ProfilerStep")]
        info: Dict[str, Any] = {
            "step_ms": step_ms, "ranges": ranges,
            "top_cpu_ops": sorted(ops, key=lambda r: -r["self_cpu_ms"])[:25],
            "op_calls": {r["name"]: r["calls"] for r in ops},
            "op_self_cpu_ms": {r["name"]: r["self_cpu_ms"] for r in ops},
            "n_ops": sum(r["calls"] for r in ops if r["name"].startswith("aten::")),
            "device_busy_ms": sum(r["self_device_ms"] for r in ops) if cfg.cuda else None,
        }
        if cfg.cuda:
            info["top_device_ops"] = sorted(ops, key=lambda r: -r["self_device_ms"])[:20]
        if trace_dir:
            import gzip
            import shutil

            os.makedirs(trace_dir, exist_ok=True)
            trace = os.path.join(trace_dir, f"profile_{cfg.device}_{key}_step.json")
            prof.export_chrome_trace(trace)
            with open(trace, "rb") as src, gzip.open(trace + ".gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.remove(trace)
            info["trace"] = trace + ".gz"
        out[key] = info
        busy = "" if info["device_busy_ms"] is None else f", device busy {info['device_busy_ms']:.2f} ms"
        log(f"[profile] {key}: one step {_fmt(step_ms, 2)} ms, {info['n_ops']} aten op calls{busy}")
    for path in ("plain", "lad"):  # operators the Trainer step calls more (or less) often than the raw loop
        a, b = out[path], out[f"{path}_raw"]
        diff = []
        for name in sorted(set(a["op_calls"]) | set(b["op_calls"])):
            d = a["op_calls"].get(name, 0) - b["op_calls"].get(name, 0)
            if d and name.startswith("aten::"):
                diff.append({"name": name, "extra_calls": d, "trainer_calls": a["op_calls"].get(name, 0),
                             "raw_calls": b["op_calls"].get(name, 0)})
        out[f"{path}_extra_ops"] = sorted(diff, key=lambda r: (-abs(r["extra_calls"]), r["name"]))
    return out


def run_proxy_micro(cfg: BenchConfig, train_ds, collator, out_dir: str, log: Callable[[str], None],
                    calls: int = 200, rounds: int = 7) -> List[Dict[str, Any]]:
    """Host cost of each candidate per-step extra, in a tight loop on a real LAD trainer and batch: ``calls``
    calls per repetition, the items interleaved, median over ``rounds`` repetitions (µs per call, both clocks)."""
    from transformers import Trainer

    from lad_hf.data import check_labels

    trainer = build_proxy_trainer(cfg, "lad", train_ds, collator, out_dir, 1)
    dev = trainer.args.device
    batch = collator([train_ds[i] for i in range(cfg.batch_size)])
    inputs = {k: v.to(dev) for k, v in batch.items()}
    x, y = inputs["pixel_values"], inputs["labels"]
    model, teacher = trainer.model.to(dev), trainer.teacher
    with torch.no_grad():
        loss = model(pixel_values=x).logits.float().mean()
    k, ignore = trainer.num_labels, trainer.args.ignore_index
    items: List[Tuple[str, int, Callable[[], Any]]] = [
        ("non-finite guard `_flag_non_finite` (loss, grad norm)", 2,
         lambda: trainer._flag_non_finite(loss, "the training loss")),
        ("`check_labels` of the batch (inside `check_batch`)", 1, lambda: check_labels(y, k, ignore)),
        ("`check_batch` (shapes + `check_labels`)", 1, lambda: trainer.check_batch(model, x, y, 3)),
        ("`record(task_loss=…, distill_loss=…)`", 1, lambda: trainer.record(task_loss=loss, distill_loss=loss)),
        ("`teacher.eval()` (module walk)", 1, teacher.eval),
        ("`model.train()` (module walk, transformers' `training_step`)", 1, model.train),
        ("transformers' default `floating_point_ops`", 1, lambda: Trainer.floating_point_ops(trainer, inputs)),
        ("lad_hf's `floating_point_ops` override (returns 0)", 1, lambda: trainer.floating_point_ops(inputs)),
        ("`loss.item()` (one host read)", 0, lambda: loss.item()),
    ]
    times = {name: {"wall": [], "cpu": []} for name, _, _ in items}
    for _ in range(rounds):
        for name, _, fn in items:
            fn()
            _sync(cfg.device)
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(calls):
                fn()
            _sync(cfg.device)
            times[name]["wall"].append((time.perf_counter() - w0) / calls * 1e6)
            times[name]["cpu"].append((time.thread_time() - c0) / calls * 1e6)
    trainer._parts.clear()
    out = []
    for name, per_step, _ in items:
        us_wall, us_cpu = statistics.median(times[name]["wall"]), statistics.median(times[name]["cpu"])
        us = us_cpu if cfg.clock == "cpu" else us_wall
        out.append({"item": name, "calls_per_step": per_step, "us_per_call": us, "us_per_call_wall": us_wall,
                    "us_per_call_cpu": us_cpu, "ms_per_step": us * per_step / 1e3})
    log("[micro] " + ", ".join(f"{r['item'].split('`')[1] if '`' in r['item'] else r['item']} {r['us_per_call']:.1f} us"
                               for r in out))
    return out


def format_proxy(result: Dict[str, Any]) -> Dict[str, str]:
    """Markdown tables of a proxy run: variants, comparisons, ablations, breakdown, profile."""
    px = result["proxy"]
    t: Dict[str, str] = {}
    clock = "CPU" if result["config"].get("clock") == "cpu" else "wall"
    lines = [f"| variant | ms/step, {clock} (median of rounds) | per-round medians | min ms | step ms, wall clock | "
             "step ms, thread CPU time | end-to-end wall ms/step (with the fetch) |", "|---|---:|---|---:|---:|---:|---:|"]
    for name, v in px["rounds"]["variants"].items():
        rounds = ", ".join(f"{x:.2f}" for x in v["ms_step_rounds"])
        lines.append(f"| `{name}`: {v['label']} | {_fmt(v['ms_step'], 2)} | {rounds} | {_fmt(v['ms_min'], 2)} | "
                     f"{_fmt(v.get('ms_step_wall'), 2)} | {_fmt(v.get('ms_step_cpu'), 2)} | {_fmt(v['ms_wall'], 2)} |")
    t["variants"] = "\n".join(lines)
    ov = px["rounds"].get("trainer_run_overhead_s") or {}
    if ov:
        t["run_overhead"] = ("Time of a Trainer run outside its timed steps (median s over rounds; not part of any "
                             "ms/step): " + "; ".join(f"`{n}` " + ", ".join(f"{k[:-2].replace('_', ' ')} {_fmt(v, 2)}"
                                                                           for k, v in o.items())
                                                      for n, o in list(ov.items())[:3]) + ".")
    lines = ["| comparison | difference ms/step (median, [min, max] over rounds) | ratio (median, [min, max]) |",
             "|---|---:|---:|"]
    for c in px["rounds"]["comparisons"]:
        lines.append(f"| {c['what']} (`{c['a']}` vs `{c['b']}`) | {c['diff_ms']:+.2f} [{c['diff_ms_range'][0]:+.2f}, "
                     f"{c['diff_ms_range'][1]:+.2f}] | {c['ratio']:.3f} [{c['ratio_range'][0]:.3f}, {c['ratio_range'][1]:.3f}] |")
    t["comparisons"] = "\n".join(lines)
    lines = ["| switched off (vs the full Trainer of the same path) | saves ms/step (median, [min, max]) | "
             "share of the Trainer−raw overhead |", "|---|---:|---:|"]
    for c in px["rounds"]["ablations"]:
        share = c.get("share_of_trainer_overhead")
        lines.append(f"| `{c['b']}`: {c['what']} | {c['saves_ms']:+.2f} [{c['saves_ms_range'][0]:+.2f}, "
                     f"{c['saves_ms_range'][1]:+.2f}] | {'—' if share is None else f'{share * 100:.0f}%'} |")
    t["ablations"] = "\n".join(lines)
    bd = px.get("breakdown")
    if bd:
        cols = [k for k in ("plain", "plain_raw", "lad", "lad_raw") if k in bd]
        names = [p for p in PHASE_ORDER if any(p in bd[c]["phases_ms"] for c in cols)]
        head = {"plain": "plain Trainer", "plain_raw": "plain raw", "lad": "LAD Trainer", "lad_raw": "LAD raw"}
        lines = ["| phase (median ms per step) | " + " | ".join(head[c] for c in cols) +
                 " | plain Trainer − raw | LAD Trainer − raw |", "|---|" + "---:|" * (len(cols) + 2)]
        for p in names:
            vals = [bd[c]["phases_ms"].get(p) for c in cols]
            d1 = (bd["plain"]["phases_ms"].get(p, 0.0) - bd["plain_raw"]["phases_ms"].get(p, 0.0)) if "plain_raw" in bd else None
            d2 = (bd["lad"]["phases_ms"].get(p, 0.0) - bd["lad_raw"]["phases_ms"].get(p, 0.0)) if "lad_raw" in bd else None
            lines.append(f"| {p} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in vals) +
                         f" | {_fmt(d1, 3)} | {_fmt(d2, 3)} |")
        tot = [bd[c]["total_ms"] for c in cols]
        d1 = bd["plain"]["total_ms"] - bd["plain_raw"]["total_ms"]
        d2 = bd["lad"]["total_ms"] - bd["lad_raw"]["total_ms"]
        lines.append("| **step total (median, fetch to fetch)** | " + " | ".join(f"**{v:.3f}**" for v in tot) +
                     f" | **{d1:.3f}** | **{d2:.3f}** |")
        t["breakdown"] = "\n".join(lines)
    td = px.get("teardown")
    if td:
        t["teardown"] = "\n".join([
            f"Freeing a trained plain trainer with {td['workers']} DataLoader worker(s) (seconds, `del` + `gc.collect()`):",
            "", "| how | s |", "|---|---:|",
            f"| as is: the trainer is in a reference cycle (`_NonFiniteGuard` holds it), freed by the cyclic gc | {td['gc_s']:.2f} |",
            f"| `release_workers(trainer)` first (explicit `_shutdown_workers`) | {td['release_workers_s']:.2f} |",
            f"| `_NonFiniteGuard` holding a `weakref.proxy` (freed by reference counting) | {td['weakref_guard_s']:.2f} |"])
    mi = px.get("micro")
    if mi:
        bd = px.get("breakdown") or {}
        lines = ["| per-step extra | µs per call (median) | calls per step | ms per step |", "|---|---:|---:|---:|"]
        for r in mi:
            lines.append(f"| {r['item']} | {r['us_per_call']:.1f} | {r['calls_per_step']} | {r['ms_per_step']:.3f} |")
        t["micro"] = "\n".join(lines)
    pr = px.get("profile")
    if pr:
        cuda = result["config"]["device"] == "cuda"
        parts = ["| step (one, after warm-up) | ms fetch to fetch | aten op calls |" + (" device busy ms |" if cuda else ""),
                 "|---|---:|---:|" + ("---:|" if cuda else "")]
        for key in ("plain", "plain_raw", "lad", "lad_raw"):
            info = pr.get(key)
            if info:
                parts.append(f"| {key} | {_fmt(info['step_ms'], 2)} | {info['n_ops']} |" +
                             (f" {_fmt(info['device_busy_ms'], 2)} |" if cuda else ""))
        parts.append("")
        for path in ("plain", "lad"):
            extra = pr.get(f"{path}_extra_ops") or []
            if extra:
                parts.append(f"aten operators the {path} Trainer step calls more often than its raw loop "
                             f"({sum(r['extra_calls'] for r in extra):+d} calls in all):\n")
                parts.append("| operator | Trainer calls | raw calls | extra |\n|---|---:|---:|---:|")
                for r in extra[:25]:
                    parts.append(f"| `{r['name']}` | {r['trainer_calls']} | {r['raw_calls']} | {r['extra_calls']:+d} |")
                parts.append("")
        for path in ("plain", "lad"):
            info = pr.get(path)
            if not info:
                continue
            parts.append(f"### {path} Trainer step\n")
            parts.append("record_function ranges (inclusive time, this one step):\n")
            parts.append("| phase | calls | CPU total ms |" + (" self device ms |" if cuda else "") +
                         "\n|---|---:|---:|" + ("---:|" if cuda else ""))
            for p in PHASE_ORDER:
                r = info["ranges"].get(p)
                if r:
                    parts.append(f"| {p} | {r['calls']} | {r['cpu_total_ms']:.3f} |" +
                                 (f" {r['self_device_ms']:.3f} |" if cuda else ""))
            parts.append("\nTop operators by self CPU time:\n")
            parts.append("| operator | calls | self CPU ms | CPU total ms |" + (" self device ms |" if cuda else "") +
                         "\n|---|---:|---:|---:|" + ("---:|" if cuda else ""))
            for r in info["top_cpu_ops"][:20]:
                parts.append(f"| `{r['name']}` | {r['calls']} | {r['self_cpu_ms']:.3f} | {r['cpu_total_ms']:.3f} |" +
                             (f" {r['self_device_ms']:.3f} |" if cuda else ""))
            if info.get("top_device_ops"):
                parts.append("\nTop operators by self device time:\n")
                parts.append("| operator | calls | self device ms | self CPU ms |\n|---|---:|---:|---:|")
                for r in info["top_device_ops"][:15]:
                    parts.append(f"| `{r['name']}` | {r['calls']} | {r['self_device_ms']:.3f} | {r['self_cpu_ms']:.3f} |")
            parts.append("")
        t["profile"] = "\n".join(parts)
    return t


def proxy_output(cfg: BenchConfig) -> str:
    return cfg.output or os.path.join(_REPO, "benchmarks", "results", f"throughput_{cfg.device}_proxy.md")


def profile_output(cfg: BenchConfig) -> str:
    """``profile_<device>_proxy.md`` beside the proxy report (its name with ``throughput`` -> ``profile``)."""
    path = os.path.abspath(proxy_output(cfg))
    name = os.path.basename(path)
    name = name.replace("throughput", "profile", 1) if "throughput" in name else f"profile_{name}"
    return os.path.join(os.path.dirname(path), name)


def render_proxy(result: Dict[str, Any], tables: Dict[str, str]) -> Tuple[str, str]:
    cfg, m = result["config"], result["machine"]
    setup = (f"student {cfg['student']} ({result['proxy']['params']['student']:,} parameters), LAD teacher "
             f"{cfg['lad_teacher']} + label channel, {cfg['height']}x{cfg['width']} px, batch {cfg['batch_size']}, "
             f"{cfg['num_labels']} classes, {'bf16 autocast' if cfg['device'] == 'cuda' and cfg['bf16'] else 'fp32'}, "
             f"dataloader_num_workers={cfg['num_workers']}, {cfg['steps']} timed steps after {cfg['warmup']} warm-up "
             f"per run, {result['proxy']['rounds']['rounds_done']} interleaved rounds")
    head = [
        f"- date (UTC): {result['date_utc']}",
        f"- command: `{cfg['command']}`",
        f"- machine: {m['device_name']} (`lscpu` model name: {m['cpu']}); CPU count {m['cpu_count']} (affinity "
        f"{m['cpu_affinity']}), torch threads {m['torch_threads']}; python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, datasets {m['datasets']}",
        f"- setup: {setup}",
        f"- total run time: {result['total_s']:.1f} s",
    ] + [f"- **{k[:-6]} failed**: {v}" for k, v in result["proxy"].items() if k.endswith("_error")] + (
        [] if result.get("complete", True) else ["- **incomplete**: written after a stage; the run did not finish"]) + [
        "",
    ]
    clock = ("the main thread's CPU time (`time.thread_time`: one torch thread and no DataLoader workers, so all of "
             "the step's work runs on that thread, and the time the shared cores spend on other processes is left "
             "out; the wall-clock medians are in the last table)" if cfg.get("clock") == "cpu"
             else "wall-clock time (`perf_counter`, after `torch.cuda.synchronize()` on CUDA)")
    how = (f"ms/step is the median on_step_begin→on_step_end time, in {clock}, of the timed steps of a "
           "run; each variant ran once per round, in an order rotated every round, and the comparisons are the "
           "medians of the per-round paired differences/ratios. The raw loops do the same work as the Trainer "
           "step: forward, loss(es), backward, clip_grad_norm_, optimizer and LR-scheduler step, zero_grad, on "
           "batches from a DataLoader over the same dataset and collator (fetch excluded from ms/step, as in the "
           "Trainer). Ablations are monkeypatches of one trainer instance, made by this benchmark only." +
           ("" if cfg.get("step_sync", True) or cfg["device"] != "cuda" else
            " Run with --no_step_sync: no synchronisation at the step boundaries, so ms/step is the host's time "
            "per step and the end-to-end wall ms/step is the training pace with the device pipeline kept full."))
    main = "\n".join([f"# lad_hf Trainer overhead proxy ({m['device_name']})", ""] + head + [
        how, "", "## Trainer vs raw loop, LAD vs plain", "", tables["comparisons"], "",
        "## Candidate causes, switched off one at a time", "", tables["ablations"], "",
        "## Host cost of each candidate, per call (tight loop)", "", tables.get("micro", "(not run)"), "",
        "## Every variant", "", tables["variants"], "", tables.get("run_overhead", ""), "",
        tables.get("teardown", ""), "",
        "## Host-time breakdown", "", (f"See `{os.path.basename(result['profile_output'])}`." if cfg["breakdown"] or
                                       cfg["profile"] else "(not run)"), "",
        "## Evaluation metric micro-benchmark", "", result["miou_text"], ""])
    prof = "\n".join([f"# Where a Trainer step's host time goes ({m['device_name']})", ""] + head + [
        "Per-phase host time (exclusive: nested phases are subtracted from their parent) from timing wrappers on "
        "one trainer instance (or contexts in the raw loop); a step runs from one batch fetch to the next, so it "
        "also holds the DataLoader wait and the Trainer's bookkeeping after `on_step_end`. Medians over the "
        f"timed steps of 2 runs per column; clock: {'thread CPU time' if cfg.get('clock') == 'cpu' else 'wall'}. "
        "On CUDA the times are host (launch) times, and the sync at the step "
        "boundary shows how long the host then waits for the device.", "",
        tables.get("breakdown", "(not run)"), "",
        "## Host cost of each candidate, per call (tight loop)", "", tables.get("micro", "(not run)"), "",
        "## torch.profiler: one plain and one LAD Trainer step (and the raw loops' operator counts)", "",
        tables.get("profile", "(not run)"), ""])
    return main, prof


def run_proxy(cfg: BenchConfig, write: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """``--proxy`` / ``--cpu_proxy``: interleaved rounds, breakdown, micro costs, profile, mIoU before/after; writes
    ``throughput_<device>_proxy.md`` (+ .json) and ``profile_<device>_proxy.md``.

    The reports are rewritten after every stage, so a run cut short (a device time limit) keeps what it measured;
    a stage that fails (e.g. no CUDA profiler on a machine) is logged and recorded as its ``error``."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    default = ",".join(PROXY_DEFAULT_VARIANTS["cuda" if cfg.cuda else "cpu"])
    variants = [v.strip() for v in (cfg.variants or default).split(",") if v.strip()]
    unknown = [v for v in variants if v not in PROXY_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; choose from {list(PROXY_VARIANTS)}")
    before_threads = torch.get_num_threads()
    threads = default_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    proxy: Dict[str, Any] = {"variant_order": variants}
    result: Dict[str, Any] = {
        "mode": "proxy", "config": dataclasses.asdict(cfg), "machine": machine_info(cfg), "proxy": proxy,
        "miou": None, "output": proxy_output(cfg), "profile_output": profile_output(cfg),
    }

    def finish(final: bool) -> None:
        result["date_utc"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        result["total_s"] = time.perf_counter() - t_start
        result["complete"] = final
        result["miou_text"] = format_miou(result["miou"])
        if "rounds" not in proxy:
            return
        result["tables"] = tables = format_proxy(result)
        if final:
            for key in ("comparisons", "ablations", "variants", "breakdown", "micro"):
                if key in tables:
                    log("")
                    log(tables[key])
            log("")
            log(result["miou_text"])
        if not write:
            return
        main_md, prof_md = render_proxy(result, tables)
        os.makedirs(os.path.dirname(os.path.abspath(result["output"])), exist_ok=True)
        with open(result["output"], "w") as f:
            f.write(main_md)
        if cfg.breakdown or cfg.profile:
            with open(result["profile_output"], "w") as f:
                f.write(prof_md)
        result["json_output"] = os.path.splitext(result["output"])[0] + ".json"
        with open(result["json_output"], "w") as f:
            json.dump(result, f, indent=1, default=float)
        if final:
            log(f"\nwrote {result['output']}, {result['json_output']}"
                + (f" and {result['profile_output']}" if cfg.breakdown or cfg.profile else ""))

    def stage(key: str, fn: Callable[[], Any]) -> None:
        t = time.perf_counter()
        try:
            proxy[key] = fn()
        except Exception as err:  # noqa: BLE001 - one failed stage must not lose the others
            import traceback

            proxy[f"{key}_error"] = f"{type(err).__name__}: {err}"
            log(f"[{key}] FAILED: {type(err).__name__}: {err}\n{traceback.format_exc(limit=4)}")
        log(f"[{key}] done in {time.perf_counter() - t:.1f} s")
        finish(False)

    try:
        with tempfile.TemporaryDirectory(prefix="lad_proxy_") as tmp:
            train_ds, _, collator, _ = make_data(cfg, cfg.height, cfg.width, cfg.batch_size, cfg.warmup + cfg.steps, 1)
            from lad_hf.models import add_label_channel

            proxy["params"] = {
                "student": sum(p.numel() for p in segformer(cfg.student, cfg.num_labels).parameters()),
                "lad_teacher": sum(p.numel() for p in add_label_channel(segformer(cfg.lad_teacher, cfg.num_labels)).parameters()),
            }
            t = time.perf_counter()
            proxy["rounds"] = run_proxy_rounds(cfg, variants, train_ds, collator, tmp, log)
            log(f"[proxy] rounds done in {time.perf_counter() - t:.1f} s")
            finish(False)
            if cfg.breakdown:
                stage("breakdown", lambda: run_proxy_breakdown(cfg, train_ds, collator, tmp, log, cfg.breakdown_rounds))
                stage("micro", lambda: run_proxy_micro(cfg, train_ds, collator, tmp, log, calls=cfg.micro_calls))
            if cfg.teardown_demo:
                stage("teardown", lambda: measure_worker_teardown(cfg, train_ds, collator, tmp))
            if cfg.profile:
                stage("profile", lambda: run_proxy_profile(cfg, train_ds, collator, tmp, cfg.trace_dir, log))
        if cfg.miou_masks > 0:
            before, desc = load_metrics_before(cfg.miou_before)
            if before is None and cfg.miou_before:
                log(f"[miou] no before/after: {desc}")
            result["miou"] = bench_miou(cfg.miou_masks, cfg.miou_height, cfg.miou_width, cfg.num_labels, cfg.miou_reps,
                                        cfg.seed, before=before, before_desc=desc)
    finally:
        torch.set_num_threads(before_threads)
    finish(True)
    return result


# ------------------------------------------------------------------------------------------------ summary


def summarize(paths: Sequence[str]) -> str:
    """A short table from throughput / proxy JSON files (the last thing ``gpu_run.sh`` prints)."""
    lines = ["| run | LAD / plain | Trainer plain / raw | CWD / LAD | Trainer−raw ms (plain, LAD) | plain ms/step |",
             "|---|---:|---:|---:|---|---:|"]
    for path in paths:
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError) as err:
            lines.append(f"| {os.path.basename(path)} | unreadable: {err} | | | | |")
            continue
        name = os.path.splitext(os.path.basename(path))[0]
        if r.get("mode") == "proxy":
            comp = {(c["a"], c["b"]): c for c in r["proxy"]["rounds"]["comparisons"]}
            lp = comp.get(("lad", "plain"), {}).get("ratio")
            tr = comp.get(("plain", "plain_raw"), {}).get("ratio")
            d1 = comp.get(("plain", "plain_raw"), {}).get("diff_ms")
            d2 = comp.get(("lad", "lad_raw"), {}).get("diff_ms")
            plain = r["proxy"]["rounds"]["variants"].get("plain", {}).get("ms_step")
            lines.append(f"| {name} (interleaved) | {_fmt(lp, 3)} | {_fmt(tr, 3)} | — | {_fmt(d1, 2)}, {_fmt(d2, 2)} | "
                         f"{_fmt(plain, 2)} |")
        else:
            rows = r.get("rows", {})

            def ms(k):
                return (rows.get(k) or {}).get("ms_step")

            def ratio(a, b):
                return ms(a) / ms(b) if ms(a) and ms(b) else None

            lines.append(f"| {name} | {_fmt(ratio('lad', 'plain'), 3)} | {_fmt(ratio('plain', 'raw'), 3)} | "
                         f"{_fmt(ratio('cwd', 'lad'), 3)} | {_fmt(ms('plain') - ms('raw') if ms('plain') and ms('raw') else None, 2)}, — | "
                         f"{_fmt(ms('plain'), 2)} |")
    return "\n".join(lines)


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
        selected = set(r.strip() for r in cfg.rows.split(",")) if cfg.rows else set(ROW_ORDER)
        if "compile_off" in selected or "compile_on" in selected:
            selected |= {"compile_off", "compile_on"}
        if selected & {"plain", "eval"}:
            step("plain+eval", bench_plain_and_eval, cfg, train_ds, eval_ds, collator, tmp, "eval" in selected)
        if "raw" in selected:
            step("raw", bench_raw, cfg, train_ds, collator, tmp)
        if "lad" in selected:
            step("lad", bench_distill, cfg, train_ds, collator, tmp, "lad", cfg.lad_teacher, True)
        if "cwd" in selected:
            step("cwd", bench_distill, cfg, train_ds, collator, tmp, "cwd", cfg.cwd_teacher, False)
        if "teacher_1" in selected:
            step("teacher_1", bench_teacher, cfg, train_ds, collator, tmp, False)
        if "teacher_2" in selected:
            step("teacher_2", bench_teacher, cfg, train_ds, collator, tmp, True)
        if "compile_off" not in selected:
            pass
        elif cfg.compile:
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
        before, desc = load_metrics_before(cfg.miou_before)
        miou = bench_miou(cfg.miou_masks, cfg.miou_height, cfg.miou_width, cfg.num_labels, cfg.miou_reps, cfg.seed,
                          before=before, before_desc=desc)
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
    if cfg.summarize:
        print(summarize(cfg.summarize))
        return 0
    result = run_proxy(cfg) if cfg.proxy else run_benchmark(cfg)
    print(f"total {result['total_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
