"""One run per output folder: refusal of a used folder, a lock naming its holder's PID, and atomic final saves.

* A training run refuses an `--output_dir` that holds another run's checkpoints or final model unless it resumes
  (`--resume_from_checkpoint`) or replaces it (`--overwrite_output_dir true`, which removes the old run's files).
* `_lad_hf.lock` in the folder holds `<pid> <host>` while a run writes there; a second run is refused, a lock whose
  process is gone is taken over with a warning.
* The final model (weights, config, processor, record, card) is written into `_lad_hf_final.tmp/`, which is renamed
  to `_lad_hf_final.ready/` once complete (the commit), then moved into the folder file by file. A kill before the
  commit leaves the old model with its own record; after it, `roll_forward` (run by every lad_hf reader of the folder)
  finishes the move. Names starting with `_` are never uploaded by the Trainer's `push_to_hub`.
"""

from __future__ import annotations

import atexit
import logging
from contextlib import contextmanager
import os
import re
import shutil
import socket
from typing import Dict, List, Optional

from .errors import LADError

logger = logging.getLogger("lad_hf")

LOCK = "_lad_hf.lock"
STAGE = "_lad_hf_final.tmp"
READY = "_lad_hf_final.ready"
_CHECKPOINT_RE = re.compile(r"^checkpoint-\d+$")
# what a finished run leaves at the top of its folder (weights, state, record)
RUN_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "adapter_config.json",
             "pytorch_model.bin", "trainer_state.json", "lad_training_info.json")
# what --overwrite_output_dir removes besides checkpoint-* (files the Trainer and lad_hf write; nothing else)
_OVERWRITTEN = RUN_FILES + ("config.json", "preprocessor_config.json", "training_args.bin", "README.md",
                            "all_results.json", "train_results.json", "eval_results.json")
_HELD: Dict[str, str] = {}  # lock path -> our lock line


# ------------------------------------------------------------------------------------------------ used folders


def previous_run(output_dir: str) -> List[str]:
    """What of another run `output_dir` holds: its checkpoint-* folders and final-model files (empty if none)."""
    if not os.path.isdir(output_dir):
        return []
    roll_forward(output_dir)
    names = sorted(os.listdir(output_dir))
    return [n for n in names if _CHECKPOINT_RE.match(n)] + [n for n in names if n in RUN_FILES]


def check_run_folder(output_dir: str, resume, overwrite: bool) -> None:
    """Refuse a folder that holds another run unless resuming or overwriting; contradictory flags are refused."""
    resuming = resume not in (None, False) and str(resume).strip().lower() not in ("", "false", "none", "no", "0")
    if resuming and overwrite:
        raise LADError("--resume_from_checkpoint and --overwrite_output_dir true contradict each other: resume the "
                       "run, or replace it")
    found = previous_run(output_dir)
    if found and not resuming and not overwrite:
        shown = ", ".join(found[:4]) + (" ..." if len(found) > 4 else "")
        raise LADError(f"--output_dir {output_dir!r} holds another run ({shown}); resume it with "
                       "--resume_from_checkpoint last, replace it with --overwrite_output_dir true, or choose another "
                       "--output_dir")


def clear_run_folder(output_dir: str) -> List[str]:
    """Remove the previous run's checkpoints and final-model files (`--overwrite_output_dir true`); returns names."""
    removed = []
    for name in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []:
        path = os.path.join(output_dir, name)
        if _CHECKPOINT_RE.match(name) or name in (STAGE, READY):
            shutil.rmtree(path)
        elif name in _OVERWRITTEN and os.path.isfile(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    if removed:
        logger.warning("--overwrite_output_dir: removed the previous run from %s (%s)", output_dir, ", ".join(removed))
    return removed


# ------------------------------------------------------------------------------------------------ lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_lock(path: str):
    try:
        with open(path) as f:
            pid, host = (f.read(256).split() + ["", ""])[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None, ""


def acquire_lock(output_dir: str) -> str:
    """Create `<output_dir>/_lad_hf.lock` (`<pid> <host>`); refuse a live holder, take over a dead one's lock."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK)
    line = f"{os.getpid()} {socket.gethostname()}\n"
    if _HELD.get(path) == line:
        return path
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        pid, host = _read_lock(path)
        if pid is not None and host and host != socket.gethostname():
            raise LADError(f"--output_dir {output_dir!r} is in use by a run on host {host} (PID {pid}, lock {path}); "
                           "wait for it, or delete the lock file if that run is gone") from None
        if pid is not None and _alive(pid):
            raise LADError(f"--output_dir {output_dir!r} is in use by another run (PID {pid}, lock {path}); wait for "
                           "it to finish or choose another --output_dir") from None
        logger.warning("taking over the stale lock %s of PID %s (no such process: that run was stopped)", path, pid)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(line)
        os.replace(tmp, path)
    else:
        with os.fdopen(fd, "w") as f:
            f.write(line)
    _HELD[path] = line
    return path


def release_locks() -> None:
    """Remove the locks this process holds (only while they still name this process)."""
    for path, line in list(_HELD.items()):
        try:
            with open(path) as f:
                if f.read() == line:
                    os.remove(path)
        except OSError:
            pass
        _HELD.pop(path, None)


atexit.register(release_locks)


# ------------------------------------------------------------------------------------------------ atomic final save


def stage_dir(output_dir: str) -> str:
    """A fresh, empty staging folder inside `output_dir` for the final model."""
    stage = os.path.join(output_dir, STAGE)
    if os.path.islink(stage) or os.path.isfile(stage):
        os.remove(stage)
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    return stage


@contextmanager
def staged_final_save(args, main_process: bool, barrier):
    """Inside the block `args.output_dir` is a fresh staging folder, so whatever writes the final folder (the
    Trainer's `save_model`/`save_state`, metrics, the record, the card) writes there; on success the stage is
    committed as a whole. An exception leaves the old final model untouched (the stage is dropped next time)."""
    out = args.output_dir
    stage = stage_dir(out) if main_process else os.path.join(out, STAGE)
    barrier()
    args.output_dir = stage
    try:
        yield stage
    finally:
        args.output_dir = out
    barrier()
    if main_process:
        commit(out)
    barrier()


def commit(output_dir: str, stale=("lad_training_info.json", "README.md")) -> None:
    """Publish the staged final model: rename the stage to READY (the commit point), then move it into place.

    Files of the old final model in `stale` that the new one lacks (an old record, an old card) are removed so they
    never sit next to new weights."""
    stage, ready = os.path.join(output_dir, STAGE), os.path.join(output_dir, READY)
    with open(os.path.join(stage, ".complete"), "w") as f:
        f.write("\n".join(n for n in stale if not os.path.exists(os.path.join(stage, n))))
    os.replace(stage, ready)
    roll_forward(output_dir)


def roll_forward(output_dir: str) -> None:
    """Finish a committed final save that a kill interrupted (READY exists). An uncommitted stage is left alone: the
    next final save (under the lock) starts it afresh."""
    ready = os.path.join(output_dir, READY)
    if os.path.isdir(ready):
        marker = os.path.join(ready, ".complete")
        drop = []
        if os.path.isfile(marker):
            with open(marker) as f:
                drop = f.read().split()
        for name in drop:
            path = os.path.join(output_dir, name)
            if os.path.isfile(path):
                os.remove(path)
        for name in sorted(os.listdir(ready)):
            if name != ".complete":
                os.replace(os.path.join(ready, name), os.path.join(output_dir, name))
        shutil.rmtree(ready)


def replace_folder(stage: str, target: str) -> None:
    """Put the complete folder `stage` at `target` (a new or emptied export folder) in one rename where possible."""
    old = f"{target}._lad_hf_old"
    restore_folder(target)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.isdir(target):
        os.replace(target, old)
    os.replace(stage, target)
    shutil.rmtree(old, ignore_errors=True)


def restore_folder(target: str) -> None:
    """Undo a `replace_folder` a kill cut between its two renames: the old folder goes back to `target`."""
    old = f"{target}._lad_hf_old"
    if os.path.isdir(old) and not os.path.exists(target):
        os.replace(old, target)


def nonempty(path: str) -> Optional[List[str]]:
    """The entries of an existing, non-empty folder (None when it is absent or empty)."""
    if os.path.isdir(path) and os.listdir(path):
        return sorted(os.listdir(path))
    return None
