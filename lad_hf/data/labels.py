"""Class names and label colours from JSON options: `--id2label`, `--label_colors`, `--do_reduce_labels`."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union


from ..errors import LADError

logger = logging.getLogger(__name__)

# Names of class 0 that --do_reduce_labels removes from id2label (see reduce_id2label).
BACKGROUND_NAMES = frozenset(
    {"background", "__background__", "bg", "other", "others", "unlabeled", "unlabelled", "void", "ignore", "none", "clutter"}
)


# ---------------------------------------------------------------------------------------------------------------------
# JSON options: id2label and label colours
# ---------------------------------------------------------------------------------------------------------------------


def _read_json_option(value: Union[str, Mapping, Sequence], flag: str) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if os.path.isfile(os.path.expanduser(text)):
        path = os.path.expanduser(text)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise LADError(f"{flag}: cannot read JSON file {path}: {str(e).splitlines()[0]}") from None
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise LADError(f"{flag}: invalid inline JSON ({e.msg} at char {e.pos}): {text[:80]}") from None
    raise LADError(f"{flag} must be an existing JSON file or inline JSON ({{...}} or [...]); got {text[:80]!r}")


def parse_id2label(value: Union[str, Mapping, Sequence]) -> Dict[int, str]:
    """`{"0": "road"}` / `["road", ...]` / a JSON file holding either -> `{0: "road", ...}` (ids 0..K-1)."""
    data = _read_json_option(value, "--id2label")
    if isinstance(data, Mapping):
        out = {}
        for k, v in data.items():
            try:
                out[int(k)] = str(v)
            except (TypeError, ValueError):
                raise LADError(f"--id2label keys must be class ids (integers), got {k!r}") from None
    elif isinstance(data, (list, tuple)):
        out = {i: str(v) for i, v in enumerate(data)}
    else:
        raise LADError(f"--id2label must be a JSON object or list, got {type(data).__name__}")
    if not out:
        raise LADError("--id2label is empty; give one name per class")
    if sorted(out) != list(range(len(out))):
        missing = sorted(set(range(max(out) + 1)) - set(out))[:5]
        raise LADError(f"--id2label ids must be 0..K-1 without gaps; missing {missing}, ids given {sorted(out)[:10]}")
    return dict(sorted(out.items()))


def _parse_color(key: Any) -> Optional[Tuple[int, int, int]]:
    """`"r,g,b"`, `"#rrggbb"`, `"[r,g,b]"`, `"(r, g, b)"` or a list -> (r, g, b); None if not a colour."""
    if isinstance(key, (list, tuple)):
        parts = list(key)
    elif isinstance(key, str):
        s = key.strip()
        if s.startswith("#"):
            h = s[1:]
            if len(h) == 3:
                h = "".join(c * 2 for c in h)
            if len(h) != 6 or not re.fullmatch(r"[0-9a-fA-F]{6}", h):
                return None
            return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
        parts = [p for p in re.split(r"[,\s]+", s.strip("[]() ")) if p]
    else:
        return None
    if len(parts) not in (3, 4):  # RGBA colour: alpha ignored
        return None
    try:
        rgb = tuple(int(p) for p in parts[:3])
    except (TypeError, ValueError):
        return None
    if any(not 0 <= c <= 255 for c in rgb):
        return None
    return rgb  # type: ignore[return-value]


def parse_label_colors(value: Union[str, Mapping, None]) -> Optional[Dict[Tuple[int, int, int], int]]:
    """Colour table for RGB masks -> `{(r, g, b): class_id}`. Accepts colour -> id and id -> colour."""
    if value is None:
        return None
    data = _read_json_option(value, "--label_colors") if isinstance(value, str) else value
    if isinstance(data, (list, tuple)):  # a palette: position = class id
        data = {i: c for i, c in enumerate(data)}
    if not isinstance(data, Mapping) or not data:
        raise LADError('--label_colors must be a non-empty JSON object like {"128,64,128": 0, "#000000": 255}')
    out: Dict[Tuple[int, int, int], int] = {}
    for k, v in data.items():
        color, cid = _parse_color(k), v
        if color is None or isinstance(v, (list, tuple)) or (isinstance(v, str) and _parse_color(v) is not None):
            # id -> colour form
            color, cid = _parse_color(v), k
        if color is None:
            raise LADError(
                f'--label_colors entry {k!r}: {v!r} is not colour -> id; write colours as "r,g,b", "#rrggbb" or "[r,g,b]"'
            )
        try:
            cid = int(cid)
        except (TypeError, ValueError):
            raise LADError(f"--label_colors: class id for colour {color} must be an int, got {cid!r}") from None
        if color in out and out[color] != cid:
            raise LADError(f"--label_colors maps colour {color} to two ids ({out[color]} and {cid})")
        out[color] = cid
    return out


def reduce_id2label(id2label: Mapping[int, str]) -> Dict[int, str]:
    """id2label after `--do_reduce_labels`.

    If class 0 is named like background (`background`, `other`, `unlabeled`, `void`, ...), it is dropped
    and the other ids shift down by one. Otherwise the names are assumed to already describe the reduced labels
    (as `ade20k-id2label.json` does for ADE20k, whose 150 names start with `wall`) and are kept unchanged.
    """
    id2label = {int(k): v for k, v in id2label.items()}
    if id2label and str(id2label.get(0, "")).strip().lower() in BACKGROUND_NAMES:
        return {k - 1: v for k, v in sorted(id2label.items()) if k != 0}
    return dict(sorted(id2label.items()))
