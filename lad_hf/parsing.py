"""Command-line parsing: `--config recipe.yaml` + `--key value` flags -> the argument dataclasses.

HfArgumentParser's field rules, no abbreviations, recipe values type-checked against the fields before anything
loads (the rules are listed in `lad_hf.cli`), and `--help` that lists `--config` and the command's own options
before the inherited `TrainingArguments`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import typing
from dataclasses import MISSING, fields
from enum import Enum
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import LADError

logger = logging.getLogger("lad_hf")




# TrainingArguments flags that transformers' example scripts read and lad-hf does not: each command does one job
_NO_OPS = {
    "do_train": "`lad-hf train|teacher|distill` always train",
    "do_eval": "the training commands evaluate at the end whenever there is a validation split, and `lad-hf "
               "evaluate` evaluates a saved model",
    "do_predict": "`lad-hf predict` writes predictions",
}


def refuse_no_ops(argv: Sequence[str], recipe: Dict, config_path: Optional[str]) -> None:
    """`--do_train`/`--do_eval`/`--do_predict` would be accepted and ignored: refuse them with what to do instead."""
    for arg in argv:
        name = arg.split("=", 1)[0].lstrip("-").replace("-", "_") if arg.startswith("--") else None
        if name in _NO_OPS:
            raise LADError(f"--{name} is not used by lad-hf ({_NO_OPS[name]}); remove it")
    for key in recipe:
        if key in _NO_OPS:
            raise LADError(f"recipe {config_path!r}: {key} is not used by lad-hf ({_NO_OPS[key]}); delete the line")


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
    """The argument parser of a command: `--config` first, then the lad_hf dataclasses' own options, then the
    inherited `TrainingArguments` options (argument groups in that order). No abbreviations (`allow_abbrev=False`).
    Options shared by several dataclasses (`ignore_index`, `trust_remote_code`) become one flag feeding all."""
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
    """`value` as the field type `tp` wants it, or _Mismatch. Strings are read as argparse reads them."""
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
    """Type-check (and convert) the recipe's values against the fields of `types`.

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


def _recipe_loader():
    """yaml.SafeLoader that refuses a key given twice (plain YAML silently keeps the last value)."""
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str) and key in seen:
                    raise LADError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1}); keep one")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return RecipeLoader


def _load_recipe(config_path: str, types: Sequence[type]) -> Dict:
    import yaml

    if not os.path.isfile(config_path):
        raise LADError(f"recipe {config_path!r} not found")
    not_recipe = (f"--config {config_path!r} is not a lad_hf recipe (a YAML mapping of argument names to values, as "
                  "in recipes/)")
    try:
        with open(config_path) as f:
            recipe = yaml.load(f, Loader=_recipe_loader()) or {}
    except LADError as e:
        raise LADError(f"recipe {config_path!r}: {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError, ValueError):  # its content is never echoed
        raise LADError(f"{not_recipe}: it is not valid YAML") from None
    if not isinstance(recipe, dict):
        raise LADError(not_recipe)
    known = _known_fields(types)
    unknown = [key for key in recipe if key not in known]
    if unknown and len(unknown) == len(recipe):  # no argument at all: not a recipe; its content is not shown
        raise LADError(f"{not_recipe}: none of its {len(recipe)} key(s) is an argument")
    for key in unknown:
        close = difflib.get_close_matches(str(key), list(known), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise LADError(f"recipe {config_path!r}: unknown key {str(key)[:40]!r}{hint}")
    return check_recipe_values(recipe, types, config_path)


def parse_values(types: Sequence[type], argv: Sequence[str], command: Optional[str] = None,
                 description: Optional[str] = None) -> Dict[str, object]:
    """`--config recipe.yaml` sets defaults (every key a real argument of the right type); `--key value` overrides
    them. Returns the parsed values by field name (before the dataclasses are built). `-h`/`--help` prints the
    command's help and raises `SystemExit(0)`."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        build_parser(types, command, description).print_help()
        raise SystemExit(0)
    argv, config_path = _split_config(argv)
    recipe = _load_recipe(config_path, types) if config_path else {}
    refuse_no_ops(argv, recipe, config_path)
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
    """`--config recipe.yaml` sets defaults (every key must be a real argument); `--key value` overrides them."""
    return build_dataclasses(types, parse_values(types, argv, command, description))
