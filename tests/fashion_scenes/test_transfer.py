"""The transfer study's measurements: boundary band, transfer ratio, cell keys."""

import numpy as np
import pytest
import torch

from lad_hf.fashion_scenes.transfer import DEFAULT, _band, cell_key, transfer_ratios


def test_boundary_band_matches_a_naive_loop():
    lab = torch.from_numpy(np.repeat(np.arange(3), 3)[None, None, :].repeat(9, 1))  # three vertical stripes
    lab[0, 4, 4] = 255  # an ignore pixel is never in the band
    lab[0, 0, 0] = 2  # a corner pixel: its band stops at the image border (no wrap-around)
    band = _band(lab, width=2)[0].numpy()
    y = lab[0].numpy()
    for i in range(9):
        for j in range(9):
            near = {y[i + di, j + dj] for di in range(-2, 3) for dj in range(-2, 3) if 0 <= i + di < 9 and 0 <= j + dj < 9}
            assert band[i, j] == (y[i, j] != 255 and len(near - {y[i, j]}) > 0), (i, j)


def test_transfer_ratio_is_student_gain_over_teacher_lead():
    rows = {"baseline": {"validation": {"mean_iou": 0.40}}, "lad_teacher": {"validation": {"mean_iou": 0.50}},
            "lad_student": {"validation": {"mean_iou": 0.43}, "teacher": "lad_teacher"},
            "self_student": {"validation": {"mean_iou": 0.41}, "teacher": "baseline"}}
    out = transfer_ratios(rows, "validation")
    assert out["lad_student"]["ratio"] == pytest.approx(0.3) and out["lad_student"]["gain"] == pytest.approx(0.03)
    assert out["self_student"]["ratio"] is None  # its teacher is the baseline: no lead, no ratio
    rows["lad_teacher"]["validation"]["mean_iou"] = 0.39  # a teacher below the baseline: a ratio would mislead
    assert transfer_ratios(rows, "validation")["lad_student"]["ratio"] is None


def test_cell_keys_name_only_what_differs_from_the_default():
    assert cell_key({}, 1) == '{"seed": 1}'
    assert cell_key({"label_sigma": 0.1, "lr": DEFAULT["lr"]}, 0) == '{"label_sigma": 0.1, "seed": 0}'
