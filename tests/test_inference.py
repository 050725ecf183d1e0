"""Sliding-window inference against a naive per-pixel average and whole-image inference."""

import pytest
import torch

from conftest import tiny_segformer
from lad_hf import SegmentationConfig, SegmentationTrainer
from lad_hf.errors import LADError
from lad_hf.inference import sliding_window_logits, window_starts


@pytest.mark.parametrize("length,window,stride", [(10, 4, 3), (9, 4, 4), (4, 8, 2), (17, 5, 2)])
def test_windows_cover_every_position_and_stay_inside(length, window, stride):
    starts = window_starts(length, window, stride)
    covered = set()
    for s in starts:
        assert 0 <= s and (s + window <= length or s == 0)
        covered.update(range(s, min(length, s + window)))
    assert covered == set(range(length))


def test_matches_naive_average_of_overlapping_windows():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1).double()  # border effects make windows disagree
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64)
    got = sliding_window_logits(conv, x, window=6, stride=4, num_labels=5)
    want = torch.zeros(2, 5, 11, 13, dtype=torch.float64)
    for i in range(11):
        for j in range(13):
            vals = []
            for t in window_starts(11, 6, 4):
                for l in window_starts(13, 6, 4):
                    if t <= i < t + 6 and l <= j < l + 6:
                        vals.append(conv(x[:, :, t:t + 6, l:l + 6])[:, :, i - t, j - l])
            want[:, :, i, j] = torch.stack(vals).mean(0)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_pointwise_model_equals_whole_image_and_bad_stride_fails():
    conv = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(1, 3, 20, 30)
    assert torch.allclose(sliding_window_logits(conv, x, 8, 5, 4), conv(x), atol=1e-6)
    with pytest.raises(LADError, match="stride"):
        sliding_window_logits(conv, x, 8, 9, 4)


def test_trainer_sliding_eval_equals_whole_image_when_window_covers_it(tmp_path, tensor_dataset):
    model = tiny_segformer()
    kw = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_eval_batch_size=4, disable_tqdm=True)
    whole = SegmentationTrainer(model=model, args=SegmentationConfig(**kw), eval_dataset=tensor_dataset).evaluate()
    same = SegmentationTrainer(model=model, args=SegmentationConfig(eval_window_size=64, **kw),
                               eval_dataset=tensor_dataset).evaluate()
    tiled = SegmentationTrainer(model=model, args=SegmentationConfig(eval_window_size=16, eval_window_stride=8, **kw),
                                eval_dataset=tensor_dataset).evaluate()
    assert same["eval_mean_iou"] == pytest.approx(whole["eval_mean_iou"], abs=1e-9)
    assert 0 <= tiled["eval_mean_iou"] <= 1 and tiled["eval_loss"] != pytest.approx(whole["eval_loss"], abs=1e-6)
