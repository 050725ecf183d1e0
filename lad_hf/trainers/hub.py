"""Trainer overrides for the Hub: repo creation and pushes fail in one line naming the Hub, and nothing local leaks.

A push uploads the run folder's record and card in their public form (`export.public_files`: local paths replaced,
exactly as `lad-hf export` publishes them); the local files keep the paths.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from ..errors import LADError

logger = logging.getLogger(__name__)


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}._lad_hf_tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@contextmanager
def published(folder: str):
    """While a push reads `folder`: its record and card in public form; the local versions are put back after."""
    from ..export import public_files

    saved = {}
    try:
        for name, data in public_files(folder).items():
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                saved[path] = f.read()
            _write(path, data)
        yield
    finally:
        for path, data in saved.items():
            _write(path, data)


def hub_failure(e: BaseException, repo: str, folder: str) -> LADError:
    """One line for a Hub failure (unreachable, refused, server error), naming the Hub and what is kept."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return LADError(f"the Hub failed for {repo} ({type(e).__name__}: {first}); the run in {folder!r} is intact: push "
                    "it later with `lad-hf export --push_to_hub true`, or train without --push_to_hub")


class HubMixin:
    """`init_hf_repo`, `push_to_hub` and checkpoint pushes of the Trainer with one-line failures and public files."""

    def init_hf_repo(self, token=None, private=None) -> None:
        try:
            super().init_hf_repo(token=token, private=private)
        except LADError:
            raise
        except Exception as e:  # noqa: BLE001 - connection refused, DNS, auth, HTTP errors of repo creation
            raise hub_failure(e, self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir)),
                              self.args.output_dir) from None

    def push_to_hub(self, commit_message="End of training", blocking=True, token=None, revision=None, private=None,
                    **kwargs):
        """As `Trainer.push_to_hub`, except that the model is not saved again (lad_hf's final save wrote it
        atomically) and the record and card are uploaded in public form."""
        from transformers.trainer import hf_api

        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        if not self.is_world_process_zero():
            return None
        model_name = kwargs.pop("model_name", None) or (self.args.hub_model_id or self.args.output_dir).rstrip("/").split("/")[-1]
        self.create_model_card(model_name=model_name, **kwargs)
        self._finish_current_push()
        folder = self.args.output_dir
        try:
            with published(folder):
                return hf_api().upload_folder(repo_id=self.hub_model_id, folder_path=folder,
                                              commit_message=commit_message, token=token,
                                              ignore_patterns=["_*", "checkpoint-*"],
                                              revision=revision or self.args.hub_revision)
        except Exception as e:  # noqa: BLE001 - one line naming the Hub, never "I/O error while writing"
            raise hub_failure(e, self.hub_model_id, folder) from None

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Checkpoint pushes read the public record and card too (the upload is awaited, then the local ones return)."""
        with published(self.args.output_dir):
            super()._push_from_checkpoint(checkpoint_folder)
            if self.push_in_progress is not None:
                try:
                    self.push_in_progress.wait_until_done()
                except Exception as e:  # noqa: BLE001
                    raise hub_failure(e, self.hub_model_id, self.args.output_dir) from None
