"""``lad-hf`` command line: train | teacher | distill | evaluate | export.

Each training command takes ``--config recipe.yaml`` plus any ``--key value`` override, parsed with
``transformers.HfArgumentParser``'s field rules into (ModelArguments, DataArguments, <Config>) as in the transformers
examples. Works the same under ``accelerate launch -m lad_hf <command> ...``.

Rules of the command line:

* Every bad input is ONE line on stderr, ``lad-hf <command>: error: ...``, exit code 2, no traceback: unknown or
  abbreviated flags (``--max_step`` is an error, never ``--max_steps``), values argparse refuses, recipe keys and
  values, model/teacher input channels, I/O errors (the path is named).
* Recipe values are type-checked against the dataclass fields before anything loads, as the command line would read
  them: ``true``/``false`` for bool fields (strings argparse reads as bools, ``"yes"``, ``"0"``..., too), integers for
  int fields (never ``2.5``), integers or floats for float fields (and strings such as ``"1e-4"``, which YAML reads as
  a string), strings for str fields (numbers become strings, ``2017`` -> ``"2017"``; YAML booleans such as an
  unquoted ``no`` are refused with a hint to quote them), lists for list fields, ``null`` only for Optional fields.
* ``lad-hf <command> --help`` lists ``--config`` first, then the command's own lad_hf options, then the inherited
  ``TrainingArguments`` options.
* ``lad-hf evaluate`` without ``--output_dir`` writes nothing: the metrics are printed as one JSON line on stdout and
  the Trainer works in a temporary folder that is removed afterwards. With ``--output_dir`` they are also saved there
  (``eval_results.json``).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import logging
import os
import sys
import typing
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import LADError

logger = logging.getLogger("lad_hf")


# ------------------------------------------------------------------------------------------------ parsing


def _known_fields(types) -> Dict[str, object]:
    return {f.name: t for t in types for f in fields(t)}


def _parser_class():
    from transformers import HfArgumentParser

    class _Parser(HfArgumentParser):
        """argparse refusals (bad value, invalid choice, missing required flag) become one LADError line."""

        def error(self, message):
            raise LADError(message.strip().splitlines()[0])

    return _Parser


def _first_doc_line(t) -> str:
    for line in (t.__doc__ or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def build_parser(types: Sequence[type], command: Optional[str] = None, description: Optional[str] = None):
    """The argument parser of a command: ``--config`` first, then the lad_hf dataclasses' own options, then the
    inherited ``TrainingArguments`` options (argument groups in that order). No abbreviations (``allow_abbrev=False``).
    Options shared by several dataclasses (``ignore_index``, ``trust_remote_code``) become one flag feeding all."""
    from transformers import HfArgumentParser, TrainingArguments

    prog = f"lad-hf {command}" if command else "lad-hf"
    parser = _parser_class()(
        prog=prog, usage=f"{prog} [--config recipe.yaml] [--key value ...]", description=description,
        allow_abbrev=False, conflict_handler="resolve", add_help=False,
    )
    parser.add_argument(
        "--config", metavar="recipe.yaml", default=argparse.SUPPRESS,
        help="YAML recipe: each key sets the default of the option of that name (values are type-checked before "
             "anything loads); --key value on the command line overrides it.",
    )
    parser.add_argument("-h", "--help", action="help", default=argparse.SUPPRESS, help="Show this help and exit.")
    trainer_fields = {f.name for f in fields(TrainingArguments)}
    inherited = []
    for t in types:
        hints = typing.get_type_hints(t)
        is_training = isinstance(t, type) and issubclass(t, TrainingArguments)
        own = [f for f in fields(t) if f.init and not (is_training and f.name in trainer_fields)]
        if own:
            desc = (f"lad_hf options of {t.__name__} (the inherited TrainingArguments options follow)" if is_training
                    else _first_doc_line(t))
            group = parser.add_argument_group(t.__name__, desc)
            for f in own:
                f.type = hints[f.name]  # HfArgumentParser narrows field.type in place; start from the declaration
                HfArgumentParser._parse_dataclass_field(group, f)
        if is_training:
            inherited.append((t, hints))
    for t, hints in inherited:
        group = parser.add_argument_group(
            "TrainingArguments", "transformers' Trainer options (defaults are lad_hf's where it changes them; see "
                                 "https://huggingface.co/docs/transformers/main_classes/trainer)")
        for f in fields(t):
            if f.init and f.name in trainer_fields:
                f.type = hints[f.name]
                HfArgumentParser._parse_dataclass_field(group, f)
    return parser


# recipe values: checked (and converted as the command line would) against the declared field types


class _Mismatch(Exception):
    pass


def _is_enum(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, Enum)


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        members = [a for a in args if a is not type(None)]
        if any(_is_enum(m) for m in members):
            members = [m for m in members if m is not str]
        return " or ".join(_describe(m) for m in members)
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin is list or tp is list:
        if not args:
            return "a list"
        inner = _describe(args[0])
        for article in ("a ", "an "):
            if inner.startswith(article):
                return f"a list of {inner[len(article):]}s"
        return f"a list of values, each {inner}"
    if origin is dict or tp is dict:
        return "a mapping"
    if _is_enum(tp):
        return "one of " + ", ".join(json.dumps(e.value) for e in tp)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp):
    """``value`` as the field type ``tp`` wants it, or _Mismatch. Strings are read as argparse reads them."""
    from transformers.hf_argparser import string_to_bool

    if tp is typing.Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        members = [a for a in args if a is not type(None)]
        if any(_is_enum(m) for m in members):  # `IntervalStrategy | str`: the enum's values only
            members = [m for m in members if m is not str]
        for m in members:
            try:
                return _coerce(value, m)
            except _Mismatch:
                continue
        raise _Mismatch
    if value is None:
        raise _Mismatch
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise _Mismatch
        return [_coerce(v, args[0]) for v in value] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return value
    if _is_enum(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str) and value in [e.value for e in tp]:
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return string_to_bool(value)
            except argparse.ArgumentTypeError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is int or tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int) or (tp is float and isinstance(value, float)):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    return value  # types no recipe can spell (e.g. accelerate's ParallelismConfig) are left to the dataclass


def _field_default(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _recipe_fix(key: str, value, tp, f) -> str:
    """How to write the value instead (appended to the error line)."""
    expected, default = _describe(tp), _field_default(f)
    if value is None:
        return "" if default is MISSING else f"; delete the line to keep the default ({json.dumps(default, default=str)})"
    if isinstance(value, bool) and ("string" in expected or "one of" in expected):
        word = "no" if value is False else "yes"
        return f"; YAML reads yes/no/on/off/true/false as booleans: quote the value (e.g. {key}: \"{word}\")"
    if isinstance(value, float) and "an integer" in expected and value == value and abs(value) != float("inf"):
        return f" (e.g. {key}: {int(value)})"
    if not isinstance(value, list) and expected.startswith("a list"):
        return f"; write a YAML list (e.g. {key}: [{json.dumps(value, default=str)}])"
    if default not in (MISSING, None) and not isinstance(default, (list, dict)):
        example = default.value if isinstance(default, Enum) else default
        return f" (e.g. {key}: {json.dumps(example, default=str)})"
    return ""


def check_recipe_values(recipe: Dict, types: Sequence[type], path: str) -> Dict:
    """Type-check (and convert) the recipe's values against the fields of ``types``.

    Refusals are one LADError naming the recipe file and the key, raised before anything loads."""
    owners: Dict[str, Tuple[type, object]] = {}
    for t in types:
        hints = typing.get_type_hints(t)
        for f in fields(t):
            owners.setdefault(f.name, (hints[f.name], f))
    out = {}
    for key, value in recipe.items():
        tp, f = owners[key]
        shown = json.dumps(value, default=str)
        try:
            converted = _coerce(value, tp)
        except _Mismatch:
            fix = _recipe_fix(key, value, tp, f)
            raise LADError(f"recipe {path!r}: {key}: {shown} is not {_describe(tp)}{fix}") from None
        choices = f.metadata.get("choices")
        if choices and converted is not None:
            if any(v not in choices for v in (converted if isinstance(converted, list) else [converted])):
                allowed = ", ".join(json.dumps(c) for c in choices)
                raise LADError(f"recipe {path!r}: {key}: {shown} is not one of {allowed}")
        out[key] = converted
    return out


def _split_config(argv: List[str]) -> Tuple[List[str], Optional[str]]:
    argv = list(argv)
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            argv[i : i + 1] = ["--config", a.split("=", 1)[1]]
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
            raise LADError("--config needs a path to a YAML recipe")
        config_path = argv[i + 1]
        del argv[i : i + 2]
        if "--config" in argv:
            raise LADError("--config is given twice; pass one recipe (override its values with --key value)")
    return argv, config_path


def _load_recipe(config_path: str, types: Sequence[type]) -> Dict:
    import yaml

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
            close = difflib.get_close_matches(str(key), list(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise LADError(f"recipe {config_path!r}: unknown key {key!r}{hint}")
    return check_recipe_values(recipe, types, config_path)


def parse_values(types: Sequence[type], argv: Sequence[str], command: Optional[str] = None,
                 description: Optional[str] = None) -> Dict[str, object]:
    """``--config recipe.yaml`` sets defaults (every key a real argument of the right type); ``--key value`` overrides
    them. Returns the parsed values by field name (before the dataclasses are built). ``-h``/``--help`` prints the
    command's help and raises ``SystemExit(0)``."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        build_parser(types, command, description).print_help()
        raise SystemExit(0)
    argv, config_path = _split_config(argv)
    recipe = _load_recipe(config_path, types) if config_path else {}
    parser = build_parser(types, command, description)
    if recipe:
        parser.set_defaults(**recipe)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [u for u in unknown if u.startswith("-")] or unknown
        flag = flags[0].split("=", 1)[0]
        name, known = flag.lstrip("-").replace("-", "_"), list(_known_fields(types))
        prefixed = [k for k in known if name and k.startswith(name)]  # an abbreviation: never expanded silently
        close = prefixed[:3] or difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
        if prefixed:
            hint += " (options are never abbreviated)"
        raise LADError(f"unknown argument {flag}{hint}")
    return vars(namespace)


def build_dataclasses(types: Sequence[type], values: Dict[str, object]) -> Tuple:
    try:
        return tuple(t(**{f.name: values[f.name] for f in fields(t) if f.init and f.name in values}) for t in types)
    except (ValueError, TypeError) as e:  # raised by a dataclass __post_init__ (TrainingArguments checks)
        raise LADError(f"invalid arguments: {str(e).strip().splitlines()[0]}") from None


def parse_args(types: Sequence[type], argv: Sequence[str], command: Optional[str] = None,
               description: Optional[str] = None) -> Tuple:
    """``--config recipe.yaml`` sets defaults (every key must be a real argument); ``--key value`` overrides them."""
    return build_dataclasses(types, parse_values(types, argv, command, description))


# ------------------------------------------------------------------------------------------------ checks before loading


def check_output_dir(path: str, flag: str = "--output_dir") -> None:
    """The folder can be created and written (nothing is created here): else one line naming the path."""
    probe = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise LADError(f"{flag} {path!r} cannot be created: {probe!r} is a file, not a folder; choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LADError(f"{flag} {path!r} is not writable ({probe!r} is read-only for this user); choose a folder you "
                       f"may write to")


RGB_CHANNELS = 3  # lad_hf's data pipeline decodes every image to RGB


def check_model_channels(config, what: str) -> None:
    """The model takes RGB images: 3 input channels, or 3 + 1 for a label-assisted model."""
    from .models import image_channels, is_label_assisted

    c = image_channels(config)
    if is_label_assisted(config):
        img = int(getattr(config, "label_assisted_image_channels", c - 1))
        if img != RGB_CHANNELS or c != img + 1:
            raise LADError(f"{what} is label-assisted with {c} input channels ({img} image + 1 label), but lad-hf "
                           f"feeds RGB images: it needs {RGB_CHANNELS} + 1 = {RGB_CHANNELS + 1}")
        return
    if c != RGB_CHANNELS:
        if c == RGB_CHANNELS + 1:
            raise LADError(f"{what} takes {c} input channels but its config has no `label_assisted: true`; a plain "
                           f"model takes {RGB_CHANNELS} (RGB) channels, a label-assisted teacher (trained with "
                           f"`lad-hf teacher`) {RGB_CHANNELS} + 1 and says label_assisted: true in its config.json")
        raise LADError(f"{what} takes {c} input channel{'s' if c != 1 else ''} (config num_channels={c}), but lad-hf "
                       f"feeds RGB images: use a model with num_channels={RGB_CHANNELS}")


def _looks_like_local_path(path: str) -> bool:
    return (os.path.isabs(path) or path.startswith((".", "~")) or path.endswith(("/", os.sep)) or "\\" in path
            or path.count("/") > 1)


def teacher_config(path: str, trust_remote_code: bool = False):
    """Read the teacher's config.json (no weights) and check it before anything loads: one line naming the path."""
    from transformers import AutoConfig

    flag = "--teacher_model_name_or_path"
    if os.path.isdir(path):
        has_config = os.path.isfile(os.path.join(path, "config.json"))
        if not has_config and os.path.isfile(os.path.join(path, "adapter_config.json")):
            return None  # a LoRA folder: its base model's config is resolved when the teacher loads
        if not has_config:
            raise LADError(f"{flag} {path!r} has no config.json; pass the --output_dir of `lad-hf teacher` (or of "
                           "`lad-hf train` for a plain teacher): a folder with config.json and model.safetensors")
    elif os.path.exists(path):
        raise LADError(f"{flag} {path!r} is a file; pass the folder that holds the teacher's config.json and weights")
    elif _looks_like_local_path(path):
        raise LADError(f"{flag} {path!r} does not exist; pass the --output_dir of `lad-hf teacher` or a Hub id "
                       "(user/name)")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = "" if os.path.isdir(path) else "no such folder here, and as a Hub id: "
        raise LADError(f"cannot read the config of teacher {path!r}: {where}{str(e).strip().splitlines()[0]}") from None
    check_model_channels(config, f"teacher {path!r}")
    return config


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


def _segformer_processor_class():
    """``SegformerImageProcessor`` (torchvision backend) where torchvision is installed, else its PIL twin, named
    directly: transformers' fallback would warn about it on every command."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import SegformerImageProcessor

        return SegformerImageProcessor
    from transformers import SegformerImageProcessorPil

    return SegformerImageProcessorPil


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

    proc = load_image_processor(model_args)
    if proc is not None:
        return proc
    return _segformer_processor_class()(
        size={"height": data_args.crop_size, "width": data_args.crop_size},
        image_mean=list(data_args.image_mean or IMAGENET_MEAN), image_std=list(data_args.image_std or IMAGENET_STD),
        do_reduce_labels=False,
    )


def _load_data(data_args, training_args, need_train=True):
    from .data import load_segmentation_dataset

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
    from .models import build_model

    raw, id2label = _load_data(data_args, training_args, need_train)
    raw = _check_data(raw, id2label, data_args, training_args)
    _seed(training_args)
    model = build_model(model_args, id2label)
    check_model_channels(model.config, f"the model ({model_args.model_name_or_path or model_args.config_name})")
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
    from .export import write_training_info

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

_RUN: Dict[str, str] = {}  # the output folder of the running command: named by I/O errors that carry no path


def _check_output(args) -> None:
    check_output_dir(args.output_dir)
    _RUN["output_dir"] = args.output_dir


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
    model = maybe_apply_lora(model, lora_args, args)
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
        add_label_channel(model, init=args.label_channel_init)
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
    model = maybe_apply_lora(model, lora_args, args)
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
    from .models.dinov2 import fit_collator

    collator = fit_collator(model, build_collator(data_args, len(id2label)), args.ignore_index)
    trainer = cls(model=model, args=args, eval_dataset=ds["validation"], data_collator=collator)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        _report_skipped(data_args)
        if save:
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
    from .export import export_model, push_folder

    (a,) = parse_args([ExportArguments], argv, "export", cmd_export.__doc__)
    _RUN["output_dir"] = a.output_dir
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


COMMANDS: Dict[str, Callable] = {
    "train": cmd_train,
    "teacher": cmd_teacher,
    "distill": cmd_distill,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
}


def _usage() -> str:
    lines = ["usage: lad-hf <command> [--config recipe.yaml] [--key value ...]", "", "commands:"]
    lines += [f"  {name:9s} {fn.__doc__.strip().splitlines()[0]}" for name, fn in COMMANDS.items()]
    lines += ["", "`lad-hf <command> --help` lists the options of a command."]
    return "\n".join(lines)


_IO_HINTS = {
    errno.ENOSPC: "the disk is full: free space or choose another --output_dir",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another --output_dir",
    errno.EROFS: "the file system is read-only: choose another --output_dir",
    errno.EACCES: "permission denied: choose a path you may write to",
    errno.EPERM: "permission denied: choose a path you may write to",
    errno.EFBIG: "the file is too large for this file system or limit",
}


def _file_on_the_way(path) -> Optional[str]:
    """The first part of ``path`` that exists and is a file (why a folder cannot be made there), if any."""
    probe = os.path.abspath(path)
    parts = []
    while True:
        parts.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for p in reversed(parts):
        if os.path.exists(p) and not os.path.isdir(p):
            return p
    return None


def io_error_line(e: BaseException) -> str:
    """One line for an I/O failure: what failed, at which path, and what to do."""
    if isinstance(e, OSError):
        reason = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = f" ({_IO_HINTS[e.errno]})" if e.errno in _IO_HINTS else ""
        if e.filename is not None:
            where = f" at {os.fspath(e.filename)!r}"
            if getattr(e, "filename2", None) is not None:
                where += f" -> {os.fspath(e.filename2)!r}"
            if e.errno in (errno.ENOTDIR, errno.EEXIST):
                blocker = _file_on_the_way(os.fspath(e.filename))
                hint = f" ({blocker!r} is a file, not a folder)" if blocker else hint
        elif _RUN.get("output_dir"):
            where = f" while writing {_RUN['output_dir']!r}"
        else:
            where = ""
        return f"I/O error{where}: {reason}{hint}"
    # safetensors / torch.save report write failures as their own types; the output folder is what was being written
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    path = _RUN.get("output_dir")
    where = f" while writing {path!r}" if path else ""
    full = "StorageFull" in first or "No space" in first
    hint = " (the disk is full: free space or choose another --output_dir)" if full else ""
    return f"I/O error{where}: {first}{hint}"


def _is_write_failure(e: BaseException) -> bool:
    text = str(e)
    return (type(e).__name__ == "SafetensorError" and "IoError" in text) or (
        isinstance(e, RuntimeError) and ("PytorchStreamWriter failed" in text or "file write failed" in text))


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    cmd = argv.pop(0)
    if cmd not in COMMANDS:
        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"lad-hf: error: unknown command {cmd!r}{hint}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    _silence_torchvision_fallback()
    _RUN.clear()
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
        if not _is_write_failure(e):
            raise
        print(f"lad-hf {cmd}: error: {io_error_line(e)}", file=sys.stderr)
        return 2
    return 0
