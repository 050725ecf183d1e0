"""Loading a `DatasetDict` (+ id2label) from the Hub, a parquet folder, a `save_to_disk` folder or an image folder."""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import LADError
from .arguments import DataArguments
from .columns import IMAGE_PATH_COLUMN_CANDIDATES, MASK_PATH_COLUMN_CANDIDATES, ROW_INDEX_COLUMN, pick_column, resolve_columns
from .label_sets import get_label_set, label_decoding
from .labels import parse_id2label, reduce_id2label
from .layouts import detect_layout, load_layout

logger = logging.getLogger(__name__)

# Split names as written in files/folders -> canonical name.
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}

# Hub datasets whose label names live elsewhere (as in transformers' example script).
_KNOWN_LABEL_FILES = {"scene_parse_150": ("huggingface/label-files", "ade20k-id2label.json")}

METADATA_FILES = ("metadata.csv", "metadata.jsonl")

# Hub datasets whose masks match a shipped label set (see the recipes): named in the "no class names" error only;
# a Hub dataset never gets a label set without --label_set.
_HUB_LABEL_SET_HINTS = {
    "scene_parse_150": "ade20k",
    "zhoubolei/scene_parse_150": "ade20k",
    "merve/scene_parse_150": "ade20k",
    "Chris1/cityscapes": "cityscapes",
    "nateraw/pascal-voc-2012": "voc",
    "jxie/pascal-voc-2012": "voc",
    "GATE-engine/COCOStuff164K": "coco-stuff",
}


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def _is_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def _canonical_split(name: str) -> str:
    return _SPLIT_ALIASES.get(name.lower(), name)


def _find_split(names: Iterable[str], wanted: str) -> Optional[str]:
    names = list(names)
    if wanted in names:
        return wanted
    canon = _canonical_split(wanted)
    for n in names:
        if _canonical_split(n) == canon:
            return n
    return None


def _split_of_file(rel_path: str, known: Iterable[str]) -> Optional[str]:
    """Split name of a data file from its folders (deepest match wins) or its file-name prefix."""
    known = {k.lower() for k in known} | set(_SPLIT_ALIASES)
    parts = rel_path.replace("\\", "/").split("/")
    for d in reversed(parts[:-1]):
        if d.lower() in known:
            return _canonical_split(d)
    stem = os.path.basename(parts[-1])
    token = re.split(r"[-_.]", stem, maxsplit=1)[0]
    if token.lower() in known:
        return _canonical_split(token)
    # e.g. "val2017-0000.parquet" when --eval_split val2017
    for k in sorted(known, key=len, reverse=True):
        if stem.lower().startswith(k + "-") or stem.lower().startswith(k + "_") or stem.lower().startswith(k + "."):
            return _canonical_split(k)
    return None


def _group_by_split(root: str, files: Sequence[str], known: Iterable[str]) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    unknown: List[str] = []
    for f in sorted(files):
        split = _split_of_file(os.path.relpath(f, root), known)
        (groups.setdefault(split, []) if split else unknown).append(f)
    if not groups:
        return {"train": unknown}
    if unknown:
        logger.warning(
            "ignoring %d file(s) in %s whose split is not recognisable from their folder or name (e.g. %s)",
            len(unknown), root, os.path.relpath(unknown[0], root),
        )
    return groups


def _load_parquet(root: str, files: Sequence[str], known: Iterable[str], cache_dir: Optional[str]):
    import datasets

    data_files = _group_by_split(root, files, known)
    try:
        return datasets.load_dataset("parquet", data_files=data_files, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - one readable line for the user
        empty = re.search(r'Instruction "([^"]+)" corresponds to no data', str(e))
        if empty:  # datasets' words for a split whose parquet files hold no rows
            raise LADError(f"{empty.group(1)} is empty: its parquet files in {root} hold no rows") from None
        raise LADError(f"cannot read the parquet files in {root}: {str(e).splitlines()[0]}") from None


def _read_metadata(path: str):
    import pandas as pd

    try:
        if path.endswith(".csv"):
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_json(path, lines=True, dtype=False)
    except Exception as e:  # noqa: BLE001
        raise LADError(f"cannot read {path}: {str(e).splitlines()[0]}") from None


def _confine(root: str, meta_path: str, listed: Sequence[str], paths: Sequence[str]) -> None:
    """Every listed path resolves (symlinks followed) inside the dataset folder: else one line that names the
    metadata row's path as written, never whether the target exists."""
    top = os.path.realpath(root)
    for shown, path in zip(listed, paths):
        real = os.path.realpath(path)
        if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
            raise LADError(f"{meta_path} lists {shown!r}, which leads outside the dataset folder {root!r} (an absolute "
                           "path, '..' or a symlink); keep the files inside it, or pass --allow_outside_paths true")


def _metadata_columns(meta_path: str, cols: List[str], data_args: DataArguments) -> Tuple[str, str]:
    """(image-path column, mask-path column) of a metadata file's columns."""
    explicit_image = data_args.image_column if data_args.image_column in cols else None
    try:
        img_col = pick_column(cols, explicit_image, IMAGE_PATH_COLUMN_CANDIDATES, "image path", "--image_column")
    except LADError:
        raise LADError(f"{meta_path} needs a file_name column with the image paths; its columns are {cols}") from None
    rest = [c for c in cols if c != img_col and c != "split"]
    wanted = data_args.label_column
    if wanted and wanted not in rest:
        for suffix in ("_file_name", "_path"):
            if wanted + suffix in rest:
                wanted = wanted + suffix
                break
    try:
        lbl_col = pick_column(rest, wanted, MASK_PATH_COLUMN_CANDIDATES, "mask path", "--label_column", cols)
    except LADError:
        generic = [c for c in rest if c.endswith("_file_name")]
        if data_args.label_column or not generic:
            raise LADError(
                f"{meta_path}: no mask-path column (e.g. label_file_name) among {cols}; pass --label_column"
            ) from None
        lbl_col = generic[0]
    return img_col, lbl_col


def _load_image_folder(root: str, metadata_files: Sequence[str], data_args: DataArguments, known: Iterable[str]):
    """Image folder whose metadata.csv/.jsonl pairs `file_name` (image) with a mask-path column."""
    import datasets

    per_split: Dict[str, List[Dict[str, list]]] = {}
    image_name = label_name = None
    for meta_path in sorted(metadata_files):
        df = _read_metadata(meta_path)
        base = os.path.dirname(meta_path)
        cols = list(df.columns)
        if image_name is None:
            img_col, lbl_col = _metadata_columns(meta_path, cols, data_args)
            image_name, label_name = img_col, lbl_col
        else:
            img_col, lbl_col = image_name, label_name
            if img_col not in df.columns or lbl_col not in df.columns:
                raise LADError(f"{meta_path} lacks column {img_col!r} or {lbl_col!r}; its columns are {cols}")

        rel_dir = os.path.relpath(base, root)
        folder_split = None if rel_dir == "." else _split_of_file(rel_dir + "/x", known)
        if "split" in df.columns:
            splits = [_canonical_split(str(s)) for s in df["split"]]
        else:
            splits = [folder_split or "train"] * len(df)

        images = [os.path.normpath(os.path.join(base, str(p))) for p in df[img_col]]
        masks = [os.path.normpath(os.path.join(base, str(p))) for p in df[lbl_col]]
        if not data_args.allow_outside_paths:
            _confine(root, meta_path, [str(p) for p in df[img_col]] + [str(p) for p in df[lbl_col]], images + masks)
        missing = [p for pair in zip(images, masks) for p in pair if not os.path.isfile(p)]
        keep = [True] * len(df)
        if missing:
            if not data_args.skip_bad_samples:
                raise LADError(
                    f"{meta_path}: {len(missing)} listed file(s) do not exist, e.g. {missing[:3]}; "
                    "fix the paths (relative to the metadata file) or pass --skip_bad_samples"
                )
            missing_set = set(missing)
            keep = [a not in missing_set and b not in missing_set for a, b in zip(images, masks)]
            logger.warning("%s: skipping %d row(s) with missing files, e.g. %s", meta_path, keep.count(False), missing[:3])

        extra = [c for c in cols if c not in (img_col, lbl_col, "split", "image", "label")]
        records = df[extra].to_dict("records") if extra else [{} for _ in range(len(df))]
        for i in range(len(df)):
            if keep[i]:
                per_split.setdefault(splits[i], []).append({**records[i], "image": images[i], "label": masks[i]})

    mask_out = label_name
    for suffix in ("_file_name", "_path"):
        if mask_out.endswith(suffix):
            mask_out = mask_out[: -len(suffix)]
    if mask_out in ("", "image", "file_name"):
        mask_out = "label"

    out = {}
    for split, rows in per_split.items():
        columns = {"image": [r["image"] for r in rows], mask_out: [r["label"] for r in rows]}
        for c in rows[0]:
            if c not in ("image", "label") and c not in columns:
                columns[c] = [r[c] for r in rows]
        ds = datasets.Dataset.from_dict(columns)
        ds = ds.cast_column("image", datasets.Image()).cast_column(mask_out, datasets.Image())
        out[split] = ds
    if not out:
        raise LADError(f"the metadata files in {root} list no rows")
    return datasets.DatasetDict(out)


def _load_local(path: str, data_args: DataArguments, cache_dir: Optional[str]):
    import datasets

    known = {data_args.train_split, data_args.eval_split}
    if os.path.isfile(path):
        if path.endswith(".parquet"):
            return _load_parquet(os.path.dirname(path), [path], {"train"}, cache_dir)
        raise LADError(f"--dataset_name {path} is a file; give a .parquet file or a folder (parquet, save_to_disk, metadata.csv)")

    if os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(os.path.join(path, "state.json")):
        try:
            ds = datasets.load_from_disk(path)
        except Exception as e:  # noqa: BLE001
            raise LADError(f"cannot load the save_to_disk folder {path}: {str(e).splitlines()[0]}") from None
        return ds if isinstance(ds, datasets.DatasetDict) else datasets.DatasetDict({"train": ds})

    meta = [
        f
        for name in METADATA_FILES
        for f in glob.glob(os.path.join(glob.escape(path), "**", name), recursive=True)
    ]
    if meta:
        return _load_image_folder(path, meta, data_args, known)

    parquet = glob.glob(os.path.join(glob.escape(path), "**", "*.parquet"), recursive=True)
    if parquet:
        return _load_parquet(path, parquet, known, cache_dir)

    # One save_to_disk Dataset per split sub-folder.
    subs = {}
    for entry in sorted(os.listdir(path)):
        sub = os.path.join(path, entry)
        if os.path.isfile(os.path.join(sub, "state.json")):
            subs[_canonical_split(entry)] = datasets.load_from_disk(sub)
    if subs:
        return datasets.DatasetDict(subs)
    raise LADError(
        f"folder {path} holds no parquet files, no metadata.csv/metadata.jsonl and is not a save_to_disk folder; "
        "see --dataset_name for the supported layouts"
    )


def _load_hub(data_args: DataArguments, cache_dir, token, trust_remote_code):
    import datasets

    name = data_args.dataset_name
    kwargs = dict(revision=data_args.dataset_revision, data_dir=data_args.data_dir, cache_dir=cache_dir, token=token)
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        ds = datasets.load_dataset(name, data_args.dataset_config_name, **kwargs)
    except ConnectionError as e:
        if _is_offline():
            raise LADError(
                f"dataset {name!r} not found locally and the Hub is offline (HF_HUB_OFFLINE=1); "
                "download it once online, or pass a local folder (parquet, save_to_disk, metadata.csv)"
            ) from None
        raise LADError(f"cannot reach the Hub for dataset {name!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - DatasetNotFoundError, bad config name, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if type(e).__name__ in ("DatasetNotFoundError", "FileNotFoundError", "FileNotFoundDatasetsError"):
            raise LADError(
                f"dataset {name!r} is neither a local path nor a Hub dataset ({msg}); check --dataset_name"
            ) from None
        raise LADError(f"cannot load dataset {name!r}: {msg}") from None
    if not isinstance(ds, datasets.DatasetDict):
        ds = datasets.DatasetDict({"train": ds})
    return ds


def _hub_id2label(data_args: DataArguments, cache_dir, token) -> Optional[Dict[int, str]]:
    try:
        from huggingface_hub import hf_hub_download

        repo, filename = _KNOWN_LABEL_FILES.get(data_args.dataset_name, (data_args.dataset_name, "id2label.json"))
        revision = None if repo != data_args.dataset_name else data_args.dataset_revision
        path = hf_hub_download(repo, filename, repo_type="dataset", revision=revision, cache_dir=cache_dir, token=token)
        return parse_id2label(path)
    except Exception:  # noqa: BLE001 - optional file
        return None


def _classlabel_names(feature) -> Optional[List[str]]:
    import datasets

    while feature is not None:
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        feature = getattr(feature, "feature", None)
    return None


def _local_id2label(path: str, data_dir: Optional[str]) -> Optional[Dict[int, str]]:
    roots = [os.path.join(path, data_dir)] if data_dir else []
    roots += [path if os.path.isdir(path) else os.path.dirname(path)]
    for root in roots:
        f = os.path.join(root, "id2label.json")
        if os.path.isfile(f):
            return parse_id2label(f)
    return None


def _add_row_index(ds):
    if ROW_INDEX_COLUMN in ds.column_names:
        return ds
    return ds.add_column(ROW_INDEX_COLUMN, np.arange(len(ds), dtype=np.int64))


def _select_splits(raw, data_args: DataArguments, name: str, seed: int, require_train: bool,
                   all_splits: bool) -> Dict[str, Any]:
    """`{"train", "validation"[, every other split]}` out of the loaded splits, carved and truncated as asked."""
    available = list(raw.keys())
    train_key = _find_split(available, data_args.train_split)
    eval_key = _find_split(available, data_args.eval_split)
    for flag, wanted, found, default in (
        ("--train_split", data_args.train_split, train_key, "train"),
        ("--eval_split", data_args.eval_split, eval_key, "validation"),
    ):
        if found is None and wanted != default:
            raise LADError(f"{flag} {wanted!r} is not a split of {name}; splits are {available}")
    if train_key is None and eval_key is None and not (all_splits and available):
        raise LADError(
            f"{name} has neither a {data_args.train_split!r} nor a {data_args.eval_split!r} split; splits are "
            f"{available}; pass --train_split/--eval_split"
        )
    if require_train and train_key is None:
        raise LADError(f"{name} has no {data_args.train_split!r} split to train on; splits are {available}; pass --train_split")

    out: Dict[str, Any] = {}
    if train_key is not None:
        out["train"] = _add_row_index(raw[train_key])
    if eval_key is not None:
        out["validation"] = _add_row_index(raw[eval_key])
    elif data_args.train_val_split and "train" in out:
        # As Dataset.train_test_split (same permutation for a seed), with indices kept in memory: no cache files
        # are written next to a user's save_to_disk folder.
        n = len(out["train"])
        n_test = int(math.ceil(data_args.train_val_split * n))
        if n_test < 1 or n - n_test < 1:
            raise LADError(f"--train_val_split {data_args.train_val_split} cannot split {n} training row(s) in two")
        perm = np.random.default_rng(seed).permutation(n)
        train_ds = out["train"]
        out["validation"] = train_ds.select(perm[:n_test], keep_in_memory=True)
        out["train"] = train_ds.select(perm[n_test:], keep_in_memory=True)
        logger.info("carved %d validation rows from %d training rows (seed %d)", len(out["validation"]), n, seed)
    else:
        logger.warning("%s has no %r split; evaluation needs --train_val_split or --eval_split", name, data_args.eval_split)
    for key in available if all_splits else []:  # every split under its own name (unless train/validation took it)
        if key not in out:
            out[key] = _add_row_index(raw[key])

    for key in out:
        limit = data_args.max_train_samples if key == "train" else data_args.max_eval_samples
        if limit is not None and limit < len(out[key]):
            out[key] = out[key].select(range(int(limit)))
    return out


def _find_id2label(dsd, data_args: DataArguments, label_col, name: str, is_local: bool, cache_dir, token):
    """Class names: --id2label, else the label set, the ClassLabel feature, id2label.json (local or Hub repo)."""
    id2label: Optional[Dict[int, str]] = None
    if data_args.id2label:
        id2label = parse_id2label(data_args.id2label)
    if id2label is None and data_args.label_set:
        id2label = dict(get_label_set(data_args.label_set).id2label)
    if id2label is None:
        names = _classlabel_names(next(iter(dsd.values())).features.get(label_col))
        if names:
            id2label = dict(enumerate(names))
    if id2label is None and is_local:
        id2label = _local_id2label(os.path.expanduser(name), data_args.data_dir)
    if id2label is None and not is_local:
        id2label = _hub_id2label(data_args, cache_dir, token)
    if id2label is None:
        hint = _HUB_LABEL_SET_HINTS.get(name)
        hint = f"pass --label_set {hint} (this dataset's standard classes) or" if hint else "pass --label_set for a standard dataset or"
        raise LADError(
            f"no class names found for {name} (no ClassLabel feature, no id2label.json); {hint} --id2label, e.g. "
            '\'{"0": "background", "1": "person"}\' or a JSON file, so the number of classes is known'
        )
    return id2label


def _load_raw(data_args: DataArguments, require_train: bool, cache_dir, token, trust_remote_code: bool):
    """(raw splits, the label set of a detected official layout or None, whether the data is local)."""
    name = data_args.dataset_name
    if not name:
        raise LADError("no dataset given: pass --dataset_name (Hub id, or a local parquet/save_to_disk/image folder)")
    local = os.path.expanduser(name)
    if data_args.data_dir and os.path.isdir(local):
        local = os.path.join(local, data_args.data_dir)
    looks_local = local.startswith((".", "/", "~")) or os.path.isabs(local) or name.count("/") > 1 or name.endswith(".parquet")
    layout_label_set: Optional[str] = None
    if os.path.exists(local):
        layout = None
        if os.path.isdir(local) and not any(
            os.path.isfile(os.path.join(local, f)) for f in ("dataset_dict.json", "state.json")
        ):
            layout = detect_layout(local)
        if layout is not None:
            # splits this run needs: a missing one is an error naming the folders expected
            require = [_canonical_split(data_args.train_split)] if require_train else []
            if not data_args.train_val_split:
                require.append(_canonical_split(data_args.eval_split))
            raw, layout_label_set = load_layout(
                local, layout, require=require, skip_bad_samples=data_args.skip_bad_samples
            )
        else:
            raw = _load_local(local, data_args, cache_dir)
        is_local = True
    elif looks_local:
        raise LADError(f"dataset path {local} does not exist; check --dataset_name (a folder, .parquet file or Hub id)")
    else:
        raw = _load_hub(data_args, cache_dir, token, trust_remote_code)
        is_local = False

    return raw, layout_label_set, is_local


def load_segmentation_dataset(
    data_args: DataArguments,
    seed: int = 42,
    *,
    cache_dir: Optional[str] = None,
    token: Optional[Union[str, bool]] = None,
    trust_remote_code: bool = False,
    require_train: bool = False,
    all_splits: bool = False,
):
    """Load the data named by `data_args` -> `(DatasetDict, id2label)`.

    The returned `DatasetDict` holds `"train"` and/or `"validation"` (whichever exist, the latter possibly
    carved from train with `--train_val_split`), each truncated by `--max_*_samples` and carrying
    `ROW_INDEX_COLUMN`. With `all_splits=True` it also holds every split under its own name (e.g. `"test"`, truncated
    by `--max_eval_samples`), unless `"train"`/`"validation"` already names other rows. Rows are raw (no transform); call
    `apply_transforms` next.

    A local folder in one of the official layouts (ADEChallengeData2016, Cityscapes, VOCdevkit, COCO-Stuff 164K;
    see `lad_hf.data.layouts`) is loaded as such: its splits come from its folders (a split this run needs
    that is missing raises `LADError` naming the folders) and, unless `--label_set`, `--id2label` or
    `--label_map` is given, its label set is applied: `data_args.label_set` is set, so the transforms and
    checks built from `data_args` next remap the raw mask values the same way.

    `id2label` (`{int: str}`, ids 0..K-1) comes from `--id2label`, else the label set, else the label
    column's `ClassLabel` names, else `id2label.json` next to the data (local folder) or in the Hub dataset
    repo; with `--do_reduce_labels` (and no label set/map) it goes through `reduce_id2label`. Without any
    source it raises `LADError` asking for `--label_set` or `--id2label`.

    `cache_dir`, `token` and `trust_remote_code` go to `datasets.load_dataset` for Hub datasets (the last
    one only when true; datasets >= 4 no longer runs loading scripts and only logs it).
    """
    import datasets

    name = data_args.dataset_name
    raw, layout_label_set, is_local = _load_raw(data_args, require_train, cache_dir, token, trust_remote_code)
    dsd = datasets.DatasetDict(_select_splits(raw, data_args, name, seed, require_train, all_splits))

    image_col, label_col = resolve_columns(dsd, data_args.image_column, data_args.label_column)

    # Label set: explicit --label_set, else the one of a detected official layout (unless --id2label/--label_map
    # say otherwise). It is recorded in data_args, which the transforms and checks read next.
    if layout_label_set and not data_args.label_set:
        if data_args.id2label or data_args.label_map:
            logger.info(
                "%s is in the %s layout; --id2label/--label_map given, so its label set is not applied (add "
                "--label_set %s to keep its raw-id remapping)", name, layout_label_set, layout_label_set,
            )
        else:
            data_args.label_set = layout_label_set
            logger.info("%s: official %s layout, using --label_set %s (%d classes)", name, layout_label_set,
                        layout_label_set, get_label_set(layout_label_set).num_labels)
    label_map, reduce = label_decoding(data_args)  # conflicts (e.g. --do_reduce_labels) fail here

    id2label = _find_id2label(dsd, data_args, label_col, name, is_local, cache_dir, token)
    if reduce:
        id2label = reduce_id2label(id2label)
    if not id2label:
        raise LADError("id2label is empty after --do_reduce_labels; give at least one class besides background")
    if label_map is not None:
        top = label_map.max_train_id
        source = "--label_map" if data_args.label_map else f"--label_set {data_args.label_set}"
        if top is not None and top >= len(id2label):
            raise LADError(
                f"{source} maps mask values to train ids up to {top}, but there are only {len(id2label)} class names; "
                "give an --id2label with one name per train id"
            )
        if data_args.label_set and data_args.id2label and not data_args.label_map:
            expected = get_label_set(data_args.label_set).num_labels
            if len(id2label) != expected:
                logger.warning("--id2label has %d names but --label_set %s has %d classes", len(id2label),
                               data_args.label_set, expected)
    return dsd, id2label
