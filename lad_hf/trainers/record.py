"""Every trainer writes its training record (`lad_training_info.json`) and lad_hf's model card (README.md).

`save_model()` into `output_dir` (also the one `push_to_hub` runs) writes both, and `create_model_card` (what
`Trainer.push_to_hub` calls before uploading) writes lad_hf's card instead of transformers' generic one; a LoRA
folder gets it too, instead of PEFT's template. An `evaluate()` after the final save updates both with its metrics.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

from ..card import TEACHER_EVAL_KEYS, model_card, training_record


class TrainingRecordMixin:
    """Trainer overrides: the training record and the model card are the trainer's own (CLI and Python alike).

    `record_extra` (a dict) adds what the trainer cannot see, e.g. the dataset and model options of the CLI.
    """

    record_extra: Optional[Dict] = None
    _final_metrics: Optional[Dict] = None
    _final_saved = False

    def training_record(self) -> Dict:
        """The record as it stands now: Config, model, teacher, last evaluation, trainer state, `record_extra`."""
        metrics = self._final_metrics
        if metrics is None:  # the last evaluation run during training, if any
            evals = [h for h in self.state.log_history if "eval_mean_iou" in h]
            metrics = evals[-1] if evals else None
        return training_record(self.args, self.accelerator.unwrap_model(self.model), getattr(self, "teacher", None),
                               self.record_extra, metrics, self.state)

    def _is_final_folder(self, output_dir: Optional[str]) -> bool:
        folder = output_dir or self.args.output_dir
        return os.path.abspath(folder) == os.path.abspath(self.args.output_dir)

    def write_record_and_card(self, model_name: Optional[str] = None, tags=None, license: Optional[str] = None) -> None:
        """`lad_training_info.json` and README.md in `output_dir` (main process only)."""
        from ..export import card_inputs, read_training_info, write_training_info

        if not self.is_world_process_zero():
            return
        write_training_info(self.args.output_dir, self.training_record())
        info = read_training_info(self.args.output_dir)  # with its Hub ids and the teacher's evaluation
        model = self.accelerator.unwrap_model(self.model)
        repo = self.args.hub_model_id if self.args.push_to_hub else None
        card = model_card(model, info, repo_id=repo, model_path=self.args.output_dir, license=license,
                          tags=[tags] if isinstance(tags, str) else tags, model_name=model_name,
                          adapter=hasattr(model, "peft_config"), **card_inputs(info, self.args.output_dir))
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None) -> None:
        """lad_hf's card (the one `lad-hf export` writes), not transformers' generic one; used by `push_to_hub`."""
        self.write_record_and_card(model_name=model_name, tags=tags, license=license)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if self._is_final_folder(output_dir):  # not the checkpoint-* folders
            self._final_saved = True
            self.write_record_and_card()

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self.is_world_process_zero():  # the card uploaded with a checkpoint push is lad_hf's too (as push_to_hub's)
            os.makedirs(self.args.output_dir, exist_ok=True)
            self.create_model_card()
        super()._push_from_checkpoint(checkpoint_folder)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if metric_key_prefix == "eval" and eval_dataset is None:
            self._final_metrics = dict(metrics)
            model = self.accelerator.unwrap_model(self.model)
            if getattr(model.config, "label_assisted", False):  # a teacher keeps its evaluation for its students
                model.config.lad_eval = {k: metrics[k] for k in TEACHER_EVAL_KEYS if k in metrics}
            if self._final_saved:
                self.write_record_and_card()
        return metrics
