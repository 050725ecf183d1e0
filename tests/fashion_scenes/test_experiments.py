"""lad_hf.fashion_scenes.experiments: segment oracle vs a naive loop, attribution shares, one tiny end-to-end runner call."""

import time

import numpy as np
import pytest
import torch

from lad_hf.fashion_scenes import experiments as E


def naive_oracle(pred, label, k, ignore=255):
    """Flood-fill each 4-connected ground-truth segment and take its majority prediction (ties: smallest id)."""
    h, w = label.shape
    out = pred.copy()
    seen = np.zeros_like(label, dtype=bool)
    for i in range(h):
        for j in range(w):
            if seen[i, j] or label[i, j] == ignore:
                continue
            c, stack, cells = label[i, j], [(i, j)], []
            seen[i, j] = True
            while stack:
                a, b = stack.pop()
                cells.append((a, b))
                for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    x, y = a + da, b + db
                    if 0 <= x < h and 0 <= y < w and not seen[x, y] and label[x, y] == c:
                        seen[x, y] = True
                        stack.append((x, y))
            votes = np.bincount([pred[a, b] for a, b in cells if 0 <= pred[a, b] < k], minlength=k)
            if votes.sum():
                for a, b in cells:
                    out[a, b] = int(np.argmax(votes))
    return out


def test_segment_oracle_hand_made():
    label = np.array([
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 255, 0],
        [2, 2, 0, 0],
    ])
    pred = np.array([
        [0, 3, 1, 2],
        [0, 0, 2, 2],
        [1, 2, 3, 3],
        [1, 1, 0, 3],
    ])
    out = E.segment_oracle(pred, label, num_labels=4)
    # top-left background -> 0 (3 of 4); class-1 block -> 2 (3 of 4); class-2 block -> 1 (3 of 4);
    # ignore pixel keeps 3; bottom-right background segment (3 px, separate component) -> 3 (2 of 3)
    want = np.array([
        [0, 0, 2, 2],
        [0, 0, 2, 2],
        [1, 1, 3, 3],
        [1, 1, 3, 3],
    ])
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(out, naive_oracle(pred, label, 4))


def test_segment_oracle_matches_naive_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(20):
        label = rng.integers(0, 4, (9, 11))
        label[rng.random(label.shape) < 0.1] = 255
        pred = rng.integers(0, 4, (9, 11))
        np.testing.assert_array_equal(E.segment_oracle(pred, label, 4), naive_oracle(pred, label, 4))


def test_segment_oracle_is_perfect_for_a_perfect_prediction_up_to_class():
    label = np.zeros((8, 8), dtype=np.int64)
    label[2:5, 2:6] = 3
    pred = label.copy()
    pred[2, 2] = 1  # one wrong pixel inside the segment: the vote fixes it
    np.testing.assert_array_equal(E.segment_oracle(pred, label, 4), label)


@pytest.fixture(scope="module")
def scenes():
    from lad_hf.fashion_scenes import load_or_build_fashion_scenes  # Fashion-MNIST: the committed test subset

    import tempfile

    cache = tempfile.mkdtemp(prefix="lad_scenes_test_")
    return load_or_build_fashion_scenes(cache, num_train=30, num_validation=8, num_test=8, canvas_size=64, seed=0)


def test_attribution_shares_sum_to_one(scenes):
    data = E.prepare_data(scenes, 64)
    spec = E.RunSpec(model="tiny", seed=0)
    model = E.add_label_channel(E.build_segformer("tiny", data.id2label, 0), init="random", scale=1.0)
    for clean in (False, True):
        shares = E.input_attribution(model, data, E.make_noiser(data.num_labels, spec, clean=clean), num_images=6,
                                     batch_size=4)
        assert 0.0 <= shares["label"] <= 1.0 and 0.0 <= shares["rgb"] <= 1.0
        assert shares["rgb"] + shares["label"] == pytest.approx(1.0, abs=1e-9)


def test_tiny_end_to_end_runner(scenes):
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = E.prepare_data(scenes, 64)
    spec = E.RunSpec(model="tiny", steps=3, batch_size=4, lr=1e-3, seed=0, eval_batch_size=8)
    base, btr, _ = E.train_plain(data, spec)
    ev = E.evaluate_plain(btr, data)
    assert set(ev) == {"validation", "test"}
    assert 0.0 <= ev["test"]["mean_iou"] <= 1.0 and "background" in ev["test"]["per_class_iou"]
    orc = E.oracle_and_predictions(base, data, "test", batch_size=8, keep=2)
    assert orc["mean_iou"] == pytest.approx(ev["test"]["mean_iou"], abs=1e-6)  # same model, same data, same metric
    assert orc["oracle_mean_iou"] >= 0.0 and len(orc["predictions"]) == 2

    teacher, ttr, _ = E.train_lad_teacher(data, spec)
    tev = E.evaluate_plain(ttr, data, splits=("test",))
    assert 0.0 <= tev["test"]["mean_iou"] <= 1.0 and tev["test"]["mkl_x100"] >= 0.0
    student, _, _ = E.train_student(data, spec, teacher)
    assert next(teacher.parameters()).dtype == torch.float32
    plain_t, _, _ = E.train_plain(data, spec.replace(model="small"))
    cwd, ctr, _ = E.train_student(data, spec, plain_t)
    assert 0.0 <= E.evaluate_plain(ctr, data, ("test",))["test"]["mean_iou"] <= 1.0
    assert time.perf_counter() - start < 60


def test_build_segformer_presets_are_seeded():
    from lad_hf.fashion_scenes import FASHION_SCENES_ID2LABEL

    a = E.build_segformer("tiny", FASHION_SCENES_ID2LABEL, seed=3)
    b = E.build_segformer("tiny", FASHION_SCENES_ID2LABEL, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert E.count_parameters(E.build_segformer("small", FASHION_SCENES_ID2LABEL)) > 2 * E.count_parameters(a)
