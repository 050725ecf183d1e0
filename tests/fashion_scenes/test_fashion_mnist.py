"""lad_hf.fashion_scenes.fashion_mnist: reading the idx files, and one-line errors when they are missing."""

import pytest

from lad_hf.errors import LADError
from lad_hf.fashion_scenes import dataset as scenes
from lad_hf.fashion_scenes import fashion_mnist as fm

SMALL = dict(num_train=40, num_validation=10, num_test=10, canvas_size=64)


@pytest.fixture(scope="module")
def fashion():
    return fm.load_fashion_mnist()


def test_fashion_mnist_loads(fashion):
    assert fashion["train"][0].shape == (60000, 28, 28) and fashion["test"][0].shape == (10000, 28, 28)
    assert fashion["train"][1].max() == 9 and fashion["test"][1].min() == 0


def test_missing_fashion_dir_raises_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(LADError) as err:
        fm.load_fashion_mnist(missing)
    message = str(err.value)
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "--fashion_mnist_dir" in message and str(missing) in message
    assert "\n" not in message
    with pytest.raises(LADError, match="apt-get"):
        scenes.build_fashion_scenes(fashion_mnist_dir=missing, **SMALL)


def test_missing_fashion_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(fm.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(LADError, match=str(tmp_path)):
        fm.load_fashion_mnist()


def test_idx_file_name_variants(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    (tmp_path / "train-labels.idx1-ubyte").write_bytes(b"")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    assert fm._find_idx_file(tmp_path, "train", "images").name == "train-images-idx3-ubyte"
    assert fm._find_idx_file(tmp_path, "train", "labels").name == "train-labels.idx1-ubyte"
    assert fm._find_idx_file(tmp_path, "test", "images").name == "t10k-images-idx3-ubyte.gz"
    assert fm._find_idx_file(tmp_path, "test", "labels") is None
