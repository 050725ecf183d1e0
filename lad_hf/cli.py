"""`lad-hf` command line: train | teacher | distill | evaluate | export | predict.

Each training command takes `--config recipe.yaml` plus any `--key value` override, parsed with
`transformers.HfArgumentParser`'s field rules into (ModelArguments, DataArguments, <Config>) as in the transformers
examples. Works the same under `accelerate launch -m lad_hf <command> ...`.

Rules of the command line:

* Every bad input is ONE line on stderr, `lad-hf <command>: error: ...`, exit code 2, no traceback: unknown or
  abbreviated flags (`--max_step` is an error, never `--max_steps`), values argparse refuses, recipe keys and
  values, model/teacher input channels, I/O errors (the path is named).
* Recipe values are type-checked against the dataclass fields before anything loads, as the command line would read
  them: `true`/`false` for bool fields (strings argparse reads as bools, `"yes"`, `"0"`..., too), integers for
  int fields (never `2.5`), integers or floats for float fields (and strings such as `"1e-4"`, which YAML reads as
  a string), strings for str fields (numbers become strings, `2017` -> `"2017"`; YAML booleans such as an
  unquoted `no` are refused with a hint to quote them), lists for list fields, `null` only for Optional fields.
* `lad-hf <command> --help` lists `--config` first, then the command's own lad_hf options, then the inherited
  `TrainingArguments` options.
* `lad-hf --version` prints the version. `--do_train`/`--do_eval`/`--do_predict` are refused with what to do
  instead (each command does one job).
* `lad-hf evaluate` writes only one JSON line on stdout (the metrics table goes to stderr), so `| jq` works.
  Without `--output_dir` it writes nothing: the metrics are printed as one JSON line on stdout and
  the Trainer works in a temporary folder that is removed afterwards. With `--output_dir` they are also saved there
  (`eval_results.json`).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from .checks import (_RUN, check_model_channels, check_output_dir, check_smallest_image, io_error_line,
                     is_write_failure, teacher_config)
from .errors import LADError
from .parsing import parse_args, parse_values, build_dataclasses

logger = logging.getLogger("lad_hf")


# ------------------------------------------------------------------------------------------------ shared steps


def _setup_logging(training_args) -> None:
    import datasets
    import transformers

    level = training_args.get_process_log_level()
    _attach_handler()
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    if getattr(training_args, "disable_tqdm", False):  # also the weight-loading/saving bars of from/save_pretrained
        transformers.utils.logging.disable_progress_bar()



class _StderrHandler(logging.StreamHandler):
    """Writes to the `sys.stderr` of the moment (not the one at creation)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _attach_handler() -> None:
    """One handler on the `lad_hf` logger, none on the root: transformers, datasets and huggingface_hub print through
    their own handlers, so no line appears twice. An application that configured the root logger keeps it (lad_hf's
    records propagate to it) and gets no second handler."""
    if logging.getLogger().handlers or any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)


_TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"


class _TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' one notice that an image processor falls back to its PIL backend (no torchvision): the PIL
    backend is what lad_hf uses without torchvision; every other transformers message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _TORCHVISION_FALLBACK not in record.getMessage()


def _silence_torchvision_fallback() -> None:
    lg = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _TorchvisionFallbackFilter) for f in lg.filters):
        lg.addFilter(_TorchvisionFallbackFilter())


def _default_image_processor(model_args, data_args):
    from .data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN, IMAGENET_DEFAULT_STD as IMAGENET_STD
    from .models import load_image_processor
    from .models.builder import segformer_processor_class

    proc = load_image_processor(model_args)
    if proc is not None:
        return proc
    return segformer_processor_class()(
        size={"height": data_args.crop_size, "width": data_args.crop_size},
        image_mean=list(data_args.image_mean or IMAGENET_MEAN), image_std=list(data_args.image_std or IMAGENET_STD),
        do_reduce_labels=False,
    )


def _load_data(model_args, data_args, training_args, need_train=True):
    from .data import load_segmentation_dataset

    data_args.ignore_index = training_args.ignore_index
    # the Hub options of ModelArguments apply to the dataset too (private datasets, a shared cache)
    ds, id2label = load_segmentation_dataset(data_args, seed=training_args.seed, require_train=need_train,
                                             cache_dir=model_args.cache_dir, token=model_args.token,
                                             trust_remote_code=model_args.trust_remote_code)
    ignore = training_args.ignore_index
    names = {int(k): v for k, v in id2label.items()}
    if ignore in names:
        raise LADError(f"--ignore_index {ignore} is also class {ignore} ({names[ignore]!r}) of the label set: its "
                       "pixels would be ignored and its IoU counted as 0; use an index outside the classes (e.g. 255), "
                       "or --do_reduce_labels if that class means 'no label'")
    if need_train and "train" not in ds:
        raise LADError(f"no training split {data_args.train_split!r} in {data_args.dataset_name!r}; found {list(ds)}")
    return ds, id2label


def _seed(training_args) -> None:
    """Seed before the model is built, so --seed fixes the initial weights too (the Trainer seeds only later)."""
    from transformers import enable_full_determinism, set_seed

    enable_full_determinism(training_args.seed) if training_args.full_determinism else set_seed(training_args.seed)


EVAL_PRECHECK_ROWS = 2000  # validation splits up to this size are decoded and checked whole before training


def _check_data(raw, id2label, data_args, training_args):
    """--skip_bad_samples drops unreadable rows (counted in data_args.skipped_bad_samples); then a sample is validated."""
    from .data import drop_bad_samples, validate_dataset_sample

    if data_args.skip_bad_samples:
        skipped = getattr(data_args, "skipped_bad_samples", {})
        for split in list(raw):
            raw[split], dropped = drop_bad_samples(raw[split], data_args, split=split)
            if dropped:
                skipped[split] = dropped
        data_args.skipped_bad_samples = skipped
    found = {}
    for split, d in raw.items():
        # the whole validation split when small (a bad row found at the first evaluation would cost the training
        # before it); a larger one is checked when evaluated, after the step's checkpoint is saved
        n = len(d) if split == "validation" and len(d) <= EVAL_PRECHECK_ROWS else 16
        found[split] = validate_dataset_sample(d, len(id2label), training_args.ignore_index, n=n, data_args=data_args,
                                               split=split)
    data_args.smallest_eval_image = (found.get("validation") or {}).get("smallest")
    return raw


def _report_skipped(data_args) -> Dict[str, int]:
    """The count of rows --skip_bad_samples dropped, logged again at the end of the run."""
    skipped = getattr(data_args, "skipped_bad_samples", None) or {}
    counts = {split: len(rows) for split, rows in skipped.items()}
    for split, rows in skipped.items():
        shown = ", ".join(str(r) for r in rows[:10]) + (" ..." if len(rows) > 10 else "")
        logger.warning("--skip_bad_samples: skipped %d bad sample(s) in %s (rows %s)", len(rows), split, shown)
    return counts


def _prepare(model_args, data_args, training_args, need_train=True):
    from .data import apply_transforms, build_collator
    from .models import build_model

    raw, id2label = _load_data(model_args, data_args, training_args, need_train)
    if "validation" not in raw and str(training_args.eval_strategy).split(".")[-1].lower() != "no":
        raise LADError(f"--eval_strategy {str(training_args.eval_strategy).split('.')[-1].lower()} needs a validation "
                       f"split, and {data_args.dataset_name!r} has none named {data_args.eval_split!r} (found "
                       f"{list(raw)}); pass --eval_split NAME, --train_val_split 0.1, or --eval_strategy no")
    raw = _check_data(raw, id2label, data_args, training_args)
    _seed(training_args)
    model = build_model(model_args, id2label)
    check_model_channels(model.config, f"the model ({model_args.model_name_or_path or model_args.config_name})")
    check_smallest_image(model, getattr(data_args, "smallest_eval_image", None), data_args)
    proc = _default_image_processor(model_args, data_args)
    ds = apply_transforms(raw, data_args, proc)
    return model, proc, ds, build_collator(data_args, len(id2label)), id2label


def _info(model_args, data_args, extra=None) -> Dict:
    """What the trainer's training record cannot see: the model and data options (the Config's own are recorded by the
    trainer itself), e.g. how evaluation saw the images (the exported processor and the card's model-index follow it)."""
    info = dict(dataset_name=data_args.dataset_name, model_name_or_path=model_args.model_name_or_path,
                config_name=model_args.config_name, config_overrides=model_args.config_overrides)
    for k in ("dataset_config_name", "eval_split", "eval_resize", "image_mean", "image_std", "label_set"):
        info[k] = getattr(data_args, k, None)
    skipped = {split: len(rows) for split, rows in (getattr(data_args, "skipped_bad_samples", None) or {}).items()}
    if skipped:
        info["skipped_bad_samples"] = skipped
    info.update(extra or {})
    return info


def _train_and_save(trainer, model_args, data_args, training_args, extra_info=None):
    """Train, then write the final folder atomically: inside `staged_final_save` every write to `--output_dir`
    (weights, config, processor, state, metrics, and the record and model card the trainer writes itself) lands in a
    staging folder that is committed as a whole; the evaluation runs before the commit (the record and card then get
    the final metrics), the push after it."""
    from .run_folder import staged_final_save

    trainer.record_extra = _info(model_args, data_args, extra_info)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if getattr(trainer, "resume_changes", None):
        trainer.record_extra["resumed_with_changes"] = {k: list(v) for k, v in trainer.resume_changes.items()}
    main_process, metrics, failure = trainer.is_world_process_zero(), {}, None
    with staged_final_save(training_args, main_process, trainer.accelerator.wait_for_everyone) as stage:
        trainer.save_model(_internal_call=True)  # every process (FSDP/DeepSpeed gather); pushed after the commit
        trainer.log_metrics("train", result.metrics)
        if trainer.eval_dataset is not None:
            try:
                metrics = trainer.evaluate()
                trainer.log_metrics("eval", metrics)
            except LADError as e:  # the trained model is still committed, without metrics
                failure = e
        trainer.save_state()
        if main_process:
            _write_results(stage, result.metrics, metrics)
            _report_skipped(data_args)
    if failure is not None:
        raise failure
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")
    return metrics


def _write_results(folder: str, train: Dict, evaluation: Dict) -> None:
    """train_results.json, eval_results.json and all_results.json (as `Trainer.save_metrics`), into `folder`."""
    from .metrics import json_safe

    files = {"train_results.json": train, "eval_results.json": evaluation, "all_results.json": {**train, **evaluation}}
    for name, values in files.items():
        if values:
            with open(os.path.join(folder, name), "w") as f:
                json.dump(json_safe(values), f, indent=4, sort_keys=True)


# ------------------------------------------------------------------------------------------------ commands


def _hub_base(model_args) -> str:
    """The Hub id the weights came from ("" when built from a config): what a LoRA adapter names as its base."""
    return "" if model_args.config_name else (model_args.model_name_or_path or "")



def _check_output(args) -> None:
    """Before anything loads: the folder is writable, the Hub reachable if pushing, and the folder is this run's
    (another run's folder is refused, the folder is locked, `--overwrite_output_dir` clears it)."""
    check_output_dir(args.output_dir)
    _RUN["output_dir"] = args.output_dir
    if getattr(args, "push_to_hub", False) and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise LADError("--push_to_hub needs the Hub, which is offline (HF_HUB_OFFLINE=1); train without it and push "
                       "later with `lad-hf export --push_to_hub true`")
    from .run_folder import acquire_lock, check_run_folder, clear_run_folder

    if args.process_index == 0:  # the lock first: the folder is read only while no other run writes it
        acquire_lock(args.output_dir)
    check_run_folder(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    if args.process_index == 0 and args.overwrite_output_dir:
        clear_run_folder(args.output_dir)


def cmd_train(argv):
    """Plain supervised segmentation (baselines; bigger plain teachers for conventional KD)."""
    from .data import DataArguments
    from .models.dinov2 import prepare_patch_student
    from .models.lora import LoraArguments, maybe_apply_lora
    from .models import ModelArguments
    from .trainers import SegmentationConfig, SegmentationTrainer

    model_args, data_args, lora_args, args = parse_args(
        [ModelArguments, DataArguments, LoraArguments, SegmentationConfig], argv, "train", cmd_train.__doc__)
    _check_output(args)
    _setup_logging(args)
    model, proc, ds, collator, _ = _prepare(model_args, data_args, args)
    model = maybe_apply_lora(model, lora_args, args, base_model_id=_hub_base(model_args))
    collator, proc = prepare_patch_student(model, collator, proc, data_args, args)  # DINOv2: pad to 14, checkpointing
    trainer = SegmentationTrainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds.get("validation"),
                                  data_collator=collator, processing_class=proc)
    return _train_and_save(trainer, model_args, data_args, args, {"lora": lora_args.use_lora})


def cmd_teacher(argv):
    """Train a label-assisted teacher (dual-path consistency)."""
    from .data import DataArguments
    from .models import ModelArguments, add_label_channel, is_label_assisted
    from .trainers import LADTeacherConfig, LADTeacherTrainer

    model_args, data_args, args = parse_args([ModelArguments, DataArguments, LADTeacherConfig], argv, "teacher",
                                             cmd_teacher.__doc__)
    _check_output(args)
    _setup_logging(args)
    model, proc, ds, collator, _ = _prepare(model_args, data_args, args)  # checks the stem takes RGB
    if not is_label_assisted(model):
        add_label_channel(model, init=args.label_channel_init, scale=args.label_channel_scale, seed=args.seed)
    from .models.dinov2 import fit_collator

    collator = fit_collator(model, collator, args.ignore_index)  # patch-14 teachers: pad to a multiple of 14
    trainer = LADTeacherTrainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds.get("validation"),
                                data_collator=collator, processing_class=proc)
    return _train_and_save(trainer, model_args, data_args, args, {"label_assisted": True})


def cmd_distill(argv):
    """Distil a student from a (label-assisted or plain) teacher."""
    from .data import DataArguments
    from .models.dinov2 import prepare_patch_student
    from .trainers import LADDistillationConfig, LADDistillationTrainer
    from .models.lora import LoraArguments, maybe_apply_lora
    from .models import ModelArguments

    model_args, data_args, lora_args, args = parse_args(
        [ModelArguments, DataArguments, LoraArguments, LADDistillationConfig], argv, "distill", cmd_distill.__doc__)
    if not args.teacher_model_name_or_path:
        raise LADError("distill needs --teacher_model_name_or_path (a teacher trained with `lad-hf teacher`, or any plain model)")
    _check_output(args)
    # the teacher's config.json (path, input channels) is checked before the data and the models load
    teacher_config(args.teacher_model_name_or_path, args.trust_remote_code)
    _setup_logging(args)
    model, proc, ds, collator, _ = _prepare(model_args, data_args, args)
    model = maybe_apply_lora(model, lora_args, args, base_model_id=_hub_base(model_args))
    collator, proc = prepare_patch_student(model, collator, proc, data_args, args)  # DINOv2: pad to 14, checkpointing
    # the trainer loads the teacher from args.teacher_model_name_or_path (as TRL's distillation script)
    trainer = LADDistillationTrainer(model=model, args=args, train_dataset=ds["train"],
                                     eval_dataset=ds.get("validation"), data_collator=collator, processing_class=proc)
    extra = {"teacher_label_assisted": trainer.label_assisted, "lora": lora_args.use_lora}
    return _train_and_save(trainer, model_args, data_args, args, extra)


def cmd_evaluate(argv):
    """Streaming mIoU (per class too) of a saved model; for a label-assisted teacher with noised labels, plus mKL.

    The metrics are printed as one JSON line on stdout. With --output_dir they are also saved there
    (eval_results.json); without it nothing is written (the Trainer works in a temporary folder, removed afterwards).
    """
    import shutil
    import tempfile

    from .models import ModelArguments
    from .data import DataArguments
    from .trainers import LADTeacherConfig

    types = [ModelArguments, DataArguments, LADTeacherConfig]
    values = parse_values(types, argv, "evaluate", cmd_evaluate.__doc__)
    keep = values.get("output_dir") is not None
    if keep:
        check_output_dir(values["output_dir"])
        _RUN["output_dir"] = values["output_dir"]
    else:
        values = dict(values, output_dir=tempfile.mkdtemp(prefix="lad-hf-evaluate-"))
    try:
        model_args, data_args, args = build_dataclasses(types, values)
        return _evaluate(model_args, data_args, args, save=keep)
    finally:
        if not keep:
            shutil.rmtree(values["output_dir"], ignore_errors=True)


def _evaluate(model_args, data_args, args, save: bool):
    from .data import apply_transforms, build_collator
    from .export import load_for_export
    from .models import is_label_assisted
    from .trainers import LADTeacherTrainer, SegmentationTrainer

    _setup_logging(args)
    if not model_args.model_name_or_path:
        raise LADError("evaluate needs --model_name_or_path (a folder written by lad-hf, or a Hub id)")
    path = model_args.model_name_or_path
    model = load_for_export(path) if os.path.isdir(path) else None
    if model is None:
        from .models import build_model

        model = build_model(model_args)
    check_model_channels(model.config, f"the model {path!r}")
    raw, id2label = _load_data(model_args, data_args, args, need_train=False)
    if "validation" not in raw:
        raise LADError(f"no evaluation split {data_args.eval_split!r} in {data_args.dataset_name!r}")
    if len(id2label) != model.config.num_labels:
        raise LADError(f"the model has {model.config.num_labels} labels but the dataset {len(id2label)}; evaluate on its own label set")
    names = {int(k): v for k, v in (model.config.id2label or {}).items()}
    if any(not str(v).startswith("LABEL_") for v in names.values()) and names != {int(k): v for k, v in id2label.items()}:
        diff = [k for k in sorted(id2label) if names.get(k) != id2label[k]][:5]
        raise LADError(
            f"the model's id2label differs from the dataset's at ids {diff} (e.g. {diff[0]}: model "
            f"{names.get(diff[0])!r}, data {id2label[diff[0]]!r}); pass the --id2label the model was trained with"
        )
    from datasets import DatasetDict

    raw = _check_data(DatasetDict(validation=raw["validation"]), id2label, data_args, args)
    check_smallest_image(model, getattr(data_args, "smallest_eval_image", None), data_args)
    proc = _default_image_processor(model_args, data_args)
    ds = apply_transforms(raw, data_args, proc)
    cls = LADTeacherTrainer if is_label_assisted(model) else SegmentationTrainer
    from .models.dinov2 import fit_collator

    collator = fit_collator(model, build_collator(data_args, len(id2label)), args.ignore_index)
    trainer = cls(model=model, args=args, eval_dataset=ds["validation"], data_collator=collator)
    metrics = trainer.evaluate()
    from .metrics import json_safe

    if save and trainer.is_world_process_zero():  # first: a failing write is then the only line on stderr
        with open(os.path.join(args.output_dir, "eval_results.json"), "w") as f:
            json.dump(json_safe(metrics), f, indent=4, sort_keys=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON line only
        trainer.log_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        _report_skipped(data_args)
        print(json.dumps(json_safe(metrics), allow_nan=False))
    return metrics


@dataclass
class ExportArguments:
    """Arguments of `lad-hf export`."""

    model_path: str = field(metadata={"help": "Trained student folder (output_dir of train/distill)."})
    output_dir: str = field(metadata={"help": "Where to write the stock transformers model."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the exported folder to the Hub."})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Hub repo id, user/name."})
    hub_token: Optional[str] = field(default=None, metadata={"help": "Hub token (default: the logged-in token)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the repo as private."})
    allow_label_assisted: bool = field(default=False, metadata={"help": "Also export a label-assisted teacher."})
    license: Optional[str] = field(
        default=None, metadata={"help": "Licence of the model card (a Hub licence id, e.g. apache-2.0; default: the "
                                        "base model's licence when known)."})
    tags: Optional[List[str]] = field(default=None, metadata={"help": "Extra tags of the model card (space-separated)."})
    model_name: Optional[str] = field(
        default=None, metadata={"help": "Name in the card's title and model-index (default: --hub_model_id, else "
                                        "<model type>-lad-student / -lad-teacher / -baseline)."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a non-empty --output_dir (refused without it)."})


def _check_export_target(a) -> None:
    """--output_dir is a new folder: never the model's own folder (or inside it), never a used one unless replaced."""
    from .run_folder import nonempty, restore_folder

    src, dst = os.path.realpath(a.model_path), os.path.realpath(a.output_dir)
    if dst == src or dst.startswith(src + os.sep):
        raise LADError(f"--output_dir {a.output_dir!r} is (inside) --model_path: export writes a new folder and would "
                       "replace the run's own record; choose another --output_dir")
    check_output_dir(a.output_dir)
    restore_folder(a.output_dir)
    found = nonempty(a.output_dir)
    if found and not a.overwrite_output_dir:
        raise LADError(f"--output_dir {a.output_dir!r} is not empty ({', '.join(found[:3])}{' ...' if len(found) > 3 else ''}); "
                       "pass --overwrite_output_dir true to replace it, or choose another --output_dir")


def cmd_export(argv):
    """Write a plain transformers model (LoRA merged, safetensors, model card); optionally push it."""
    from .export import export_model, push_folder

    (a,) = parse_args([ExportArguments], argv, "export", cmd_export.__doc__)
    _RUN["output_dir"] = a.output_dir
    _check_export_target(a)
    metrics = None
    for name in ("eval_results.json", "all_results.json"):
        p = os.path.join(a.model_path, name)
        if os.path.isfile(p):
            with open(p) as f:
                metrics = {k: v for k, v in json.load(f).items() if k.startswith("eval_")}
            break
    out = export_model(a.model_path, a.output_dir, metrics=metrics, repo_id=a.hub_model_id,
                       allow_label_assisted=a.allow_label_assisted, license=a.license, tags=a.tags,
                       model_name=a.model_name)
    print(f"exported to {out}")
    if a.push_to_hub:
        url = push_folder(out, a.hub_model_id, token=a.hub_token, private=a.hub_private_repo)
        print(f"pushed to {url}")
    return out


def cmd_predict(argv):
    """Segment images: a class-id mask per image, and an overlay with a legend (--overlay true)."""
    from .data import DataArguments
    from .models import ModelArguments
    from .predict import PredictArguments, run_predict

    model_args, data_args, args = parse_args([ModelArguments, DataArguments, PredictArguments], argv, "predict",
                                             cmd_predict.__doc__)
    check_output_dir(args.output_dir)
    _RUN["output_dir"] = args.output_dir
    counts = run_predict(model_args, data_args, args)
    extra = f" and {counts['overlays']} overlays" if counts["overlays"] else ""
    print(f"wrote {counts['masks']} masks{extra} to {args.output_dir}")
    return counts


COMMANDS: Dict[str, Callable] = {
    "train": cmd_train,
    "teacher": cmd_teacher,
    "distill": cmd_distill,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "predict": cmd_predict,
}


def _usage() -> str:
    lines = ["usage: lad-hf <command> [--config recipe.yaml] [--key value ...]", "       lad-hf --version", "",
             "commands:"]
    lines += [f"  {name:9s} {fn.__doc__.strip().splitlines()[0]}" for name, fn in COMMANDS.items()]
    lines += ["", "`lad-hf <command> --help` lists the options of a command."]
    return "\n".join(lines)


def _cpu_process_group() -> None:
    """A launcher (`accelerate launch`, torchrun) started several processes on a machine without GPUs: make them one
    CPU (gloo) group. Without this each process would train alone on the same data and folder."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "ACCELERATE_USE_CPU" not in os.environ:
        import torch

        if not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            os.environ["ACCELERATE_USE_CPU"] = "true"


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"lad-hf {__version__}")
        return 0
    cmd = argv.pop(0)
    if cmd not in COMMANDS:
        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"lad-hf: error: unknown command {cmd!r}{hint}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    _silence_torchvision_fallback()
    _cpu_process_group()
    _RUN.clear()
    from .run_folder import release_locks

    try:
        COMMANDS[cmd](argv)
    except SystemExit as e:  # --help
        if e.code in (0, None):
            return 0
        raise
    except LADError as e:
        print(f"lad-hf {cmd}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # full disk, read-only or missing paths: one line naming the path
        print(f"lad-hf {cmd}: error: {io_error_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - only write failures of safetensors/torch.save; anything else is a bug
        if not is_write_failure(e):
            raise
        print(f"lad-hf {cmd}: error: {io_error_line(e)}", file=sys.stderr)
        return 2
    finally:
        release_locks()
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Under `accelerate launch`/torchrun: leave the process group before the interpreter exits (a group torn down
    at exit can abort in gloo's threads, failing a finished run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
