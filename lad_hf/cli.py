"""``lad-hf`` command line: train | teacher | distill | evaluate | export | scenes.

Each training command takes ``--config recipe.yaml`` plus any ``--key value`` override, parsed with
``transformers.HfArgumentParser`` into (ModelArguments, DataArguments, <Config>) as in the transformers examples.
Works the same under ``accelerate launch -m lad_hf <command> ...``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import LADError

logger = logging.getLogger("lad_hf")


# ------------------------------------------------------------------------------------------------ parsing


def _known_fields(types) -> Dict[str, object]:
    return {f.name: t for t in types for f in fields(t)}


def parse_args(types: Sequence[type], argv: Sequence[str]) -> Tuple:
    """``--config recipe.yaml`` sets defaults (every key must be a real argument); ``--key value`` overrides them."""
    import yaml
    from transformers import HfArgumentParser

    argv = list(argv)
    config_path = None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            argv[i : i + 1] = ["--config", a.split("=", 1)[1]]
            break
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise LADError("--config needs a path to a YAML recipe")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    # fields shared by several dataclasses (ignore_index, trust_remote_code) become one flag feeding all of them
    parser = HfArgumentParser(types, conflict_handler="resolve")
    if config_path:
        if not os.path.isfile(config_path):
            raise LADError(f"recipe {config_path!r} not found")
        with open(config_path) as f:
            try:
                recipe = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise LADError(f"recipe {config_path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(recipe, dict):
            raise LADError(f"recipe {config_path!r} must be a mapping of argument names to values")
        known = _known_fields(types)
        for key in recipe:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise LADError(f"recipe {config_path!r}: unknown key {key!r}{hint}")
        parser.set_defaults(**recipe)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [u for u in unknown if u.startswith("--")] or unknown
        close = difflib.get_close_matches(flags[0].lstrip("-"), list(_known_fields(types)), n=3)
        hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
        raise LADError(f"unknown argument {flags[0]}{hint}")
    values = vars(namespace)
    try:
        return tuple(t(**{f.name: values[f.name] for f in fields(t) if f.init and f.name in values}) for t in types)
    except (ValueError, TypeError) as e:  # raised by a dataclass __post_init__ (TrainingArguments checks)
        raise LADError(f"invalid arguments: {str(e).strip().splitlines()[0]}") from None


# ------------------------------------------------------------------------------------------------ shared steps


def _setup_logging(training_args) -> None:
    import datasets
    import transformers

    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    if getattr(training_args, "disable_tqdm", False):  # also the weight-loading/saving bars of from/save_pretrained
        transformers.utils.logging.disable_progress_bar()


def _default_image_processor(model_args, data_args):
    from transformers import SegformerImageProcessor

    from .data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN, IMAGENET_DEFAULT_STD as IMAGENET_STD
    from .modeling import load_image_processor

    proc = load_image_processor(model_args)
    if proc is not None:
        return proc
    return SegformerImageProcessor(
        size={"height": data_args.crop_size, "width": data_args.crop_size},
        image_mean=list(data_args.image_mean or IMAGENET_MEAN), image_std=list(data_args.image_std or IMAGENET_STD),
        do_reduce_labels=False,
    )


def _load_data(data_args, training_args, need_train=True):
    from .data import apply_transforms, load_segmentation_dataset

    data_args.ignore_index = training_args.ignore_index
    ds, id2label = load_segmentation_dataset(data_args, seed=training_args.seed, require_train=need_train)
    if need_train and "train" not in ds:
        raise LADError(f"no training split {data_args.train_split!r} in {data_args.dataset_name!r}; found {list(ds)}")
    return ds, id2label


def _seed(training_args) -> None:
    """Seed before the model is built, so --seed fixes the initial weights too (the Trainer seeds only later)."""
    from transformers import enable_full_determinism, set_seed

    enable_full_determinism(training_args.seed) if training_args.full_determinism else set_seed(training_args.seed)


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
    for split, d in raw.items():
        validate_dataset_sample(d, len(id2label), training_args.ignore_index, n=16, data_args=data_args, split=split)
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
    from .modeling import build_model

    raw, id2label = _load_data(data_args, training_args, need_train)
    raw = _check_data(raw, id2label, data_args, training_args)
    _seed(training_args)
    model = build_model(model_args, id2label)
    proc = _default_image_processor(model_args, data_args)
    ds = apply_transforms(raw, data_args, proc)
    return model, proc, ds, build_collator(data_args, len(id2label)), id2label


def _info(model_args, data_args, training_args, extra=None) -> Dict:
    keep = ["max_steps", "num_train_epochs", "learning_rate", "per_device_train_batch_size", "seed", "label_sigma",
            "class_noise", "pixel_noise", "ignore_mode", "dual_path", "consistency_loss", "consistency_weight",
            "consistency_tau", "distill_loss", "distill_tau", "distill_weight", "fixed_class_encoding",
            "teacher_model_name_or_path", "run_name"]
    info = {k: getattr(training_args, k) for k in keep if hasattr(training_args, k)}
    info.update(dataset_name=data_args.dataset_name, model_name_or_path=model_args.model_name_or_path,
                config_name=model_args.config_name, config_overrides=model_args.config_overrides)
    info.update(extra or {})
    return info


def _train_and_save(trainer, model_args, data_args, training_args, extra_info=None):
    from .hub import write_training_info

    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    metrics = {}
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    skipped = _report_skipped(data_args) if trainer.is_world_process_zero() else {}
    if trainer.is_world_process_zero():
        info = _info(model_args, data_args, training_args, extra_info)
        info["eval_metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if skipped:
            info["skipped_bad_samples"] = skipped
        write_training_info(training_args.output_dir, info)
    return metrics


# ------------------------------------------------------------------------------------------------ commands


def cmd_train(argv):
    """Plain supervised segmentation (baselines; bigger plain teachers for conventional KD)."""
    from .data import DataArguments
    from .dinov2 import prepare_patch_student
    from .lora import LoraArguments, maybe_apply_lora
    from .modeling import ModelArguments
    from .segmentation_trainer import SegmentationConfig, SegmentationTrainer

    model_args, data_args, lora_args, args = parse_args([ModelArguments, DataArguments, LoraArguments, SegmentationConfig], argv)
    _setup_logging(args)
    model, proc, ds, collator, _ = _prepare(model_args, data_args, args)
    model = maybe_apply_lora(model, lora_args, args)
    collator, proc = prepare_patch_student(model, collator, proc, data_args, args)  # DINOv2: pad to 14, checkpointing
    trainer = SegmentationTrainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds.get("validation"),
                                  data_collator=collator, processing_class=proc)
    return _train_and_save(trainer, model_args, data_args, args, {"lora": lora_args.use_lora})


def cmd_teacher(argv):
    """Train a label-assisted teacher (dual-path consistency)."""
    from .data import DataArguments
    from .modeling import ModelArguments, add_label_channel, is_label_assisted
    from .teacher_trainer import LADTeacherConfig, LADTeacherTrainer

    model_args, data_args, args = parse_args([ModelArguments, DataArguments, LADTeacherConfig], argv)
    _setup_logging(args)
    model, proc, ds, collator, _ = _prepare(model_args, data_args, args)
    if not is_label_assisted(model):
        add_label_channel(model, init=args.label_channel_init)
    from .dinov2 import fit_collator

    collator = fit_collator(model, collator, args.ignore_index)  # patch-14 teachers: pad to a multiple of 14
    trainer = LADTeacherTrainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds.get("validation"),
                                data_collator=collator, processing_class=proc)
    return _train_and_save(trainer, model_args, data_args, args, {"label_assisted": True})


def cmd_distill(argv):
    """Distil a student from a (label-assisted or plain) teacher."""
    from .data import DataArguments
    from .dinov2 import prepare_patch_student
    from .distillation_trainer import LADDistillationConfig, LADDistillationTrainer, load_teacher
    from .lora import LoraArguments, maybe_apply_lora
    from .modeling import ModelArguments, is_label_assisted

    model_args, data_args, lora_args, args = parse_args([ModelArguments, DataArguments, LoraArguments, LADDistillationConfig], argv)
    _setup_logging(args)
    if not args.teacher_model_name_or_path:
        raise LADError("distill needs --teacher_model_name_or_path (a teacher trained with `lad-hf teacher`, or any plain model)")
    teacher = load_teacher(args.teacher_model_name_or_path, args.trust_remote_code)
    model, proc, ds, collator, _ = _prepare(model_args, data_args, args)
    model = maybe_apply_lora(model, lora_args, args)
    collator, proc = prepare_patch_student(model, collator, proc, data_args, args)  # DINOv2: pad to 14, checkpointing
    trainer = LADDistillationTrainer(model=model, teacher_model=teacher, args=args, train_dataset=ds["train"],
                                     eval_dataset=ds.get("validation"), data_collator=collator, processing_class=proc)
    extra = {"teacher_label_assisted": is_label_assisted(teacher), "lora": lora_args.use_lora}
    return _train_and_save(trainer, model_args, data_args, args, extra)


def cmd_evaluate(argv):
    """Streaming mIoU (per class too) of a saved model; for a label-assisted teacher with noised labels, plus mKL."""
    from .data import DataArguments, apply_transforms, build_collator
    from .hub import load_for_export
    from .modeling import is_label_assisted
    from .segmentation_trainer import SegmentationTrainer
    from .teacher_trainer import LADTeacherConfig, LADTeacherTrainer
    from .modeling import ModelArguments

    model_args, data_args, args = parse_args([ModelArguments, DataArguments, LADTeacherConfig], argv)
    _setup_logging(args)
    if not model_args.model_name_or_path:
        raise LADError("evaluate needs --model_name_or_path (a folder written by lad-hf, or a Hub id)")
    path = model_args.model_name_or_path
    model = load_for_export(path) if os.path.isdir(path) else None
    if model is None:
        from .modeling import build_model

        model = build_model(model_args)
    raw, id2label = _load_data(data_args, args, need_train=False)
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
    proc = _default_image_processor(model_args, data_args)
    ds = apply_transforms(raw, data_args, proc)
    cls = LADTeacherTrainer if is_label_assisted(model) else SegmentationTrainer
    from .dinov2 import fit_collator

    collator = fit_collator(model, build_collator(data_args, len(id2label)), args.ignore_index)
    trainer = cls(model=model, args=args, eval_dataset=ds["validation"], data_collator=collator)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        _report_skipped(data_args)
        trainer.save_metrics("eval", metrics, combined=False)
        print(json.dumps({k: v for k, v in metrics.items()}, default=float))
    return metrics


@dataclass
class ExportArguments:
    """Arguments of ``lad-hf export``."""

    model_path: str = field(metadata={"help": "Trained student folder (output_dir of train/distill)."})
    output_dir: str = field(metadata={"help": "Where to write the stock transformers model."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the exported folder to the Hub."})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Hub repo id, user/name."})
    hub_token: Optional[str] = field(default=None, metadata={"help": "Hub token (default: the logged-in token)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the repo as private."})
    allow_label_assisted: bool = field(default=False, metadata={"help": "Also export a label-assisted teacher."})


def cmd_export(argv):
    """Write a plain transformers model (LoRA merged, safetensors, model card); optionally push it."""
    from .hub import export_model, push_folder

    (a,) = parse_args([ExportArguments], argv)
    metrics = None
    for name in ("eval_results.json", "all_results.json"):
        p = os.path.join(a.model_path, name)
        if os.path.isfile(p):
            with open(p) as f:
                metrics = {k: v for k, v in json.load(f).items() if k.startswith("eval_")}
            break
    out = export_model(a.model_path, a.output_dir, metrics=metrics, repo_id=a.hub_model_id,
                       allow_label_assisted=a.allow_label_assisted)
    print(f"exported to {out}")
    if a.push_to_hub:
        url = push_folder(out, a.hub_model_id, token=a.hub_token, private=a.hub_private_repo)
        print(f"pushed to {url}")
    return out


def cmd_scenes(argv):
    """Build and cache the embedded fashion-scenes dataset."""
    from .scenes import main as scenes_main

    return scenes_main(list(argv))


COMMANDS: Dict[str, Callable] = {
    "train": cmd_train,
    "teacher": cmd_teacher,
    "distill": cmd_distill,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "scenes": cmd_scenes,
}


def _usage() -> str:
    lines = ["usage: lad-hf <command> [--config recipe.yaml] [--key value ...]", "", "commands:"]
    lines += [f"  {name:9s} {fn.__doc__.strip().splitlines()[0]}" for name, fn in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    cmd = argv.pop(0)
    if cmd not in COMMANDS:
        print(f"lad-hf: error: unknown command {cmd!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        COMMANDS[cmd](argv)
    except LADError as e:
        print(f"lad-hf {cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0
