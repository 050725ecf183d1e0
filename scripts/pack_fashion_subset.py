"""Pack a Fashion-MNIST subset: every image not used by the first scenes is zeroed (zeros compress to nothing).

The files keep the full idx shapes (60000 / 10000 images), so scenes built from the subset are identical to
scenes built from the full dataset, for the scenes it covers.

    # the tests' fixture (committed under tests/fixtures/fashion-mnist, MIT-licensed data)
    python scripts/pack_fashion_subset.py --num_train 48 --num_eval 48 --seeds 0 1 --extra_per_class 3 \
        --mosaic_scenes 3 --output_dir tests/fixtures/fashion-mnist
    # the GPU machine's copy (64 MiB carry limit)
    python scripts/pack_fashion_subset.py --num_train 8000 --num_eval 5000 --output_dir .data
"""
import argparse
import gzip
import os
import struct

import numpy as np

from lad_hf.fashion_scenes import load_fashion_mnist, scene_layout
from lad_hf.fashion_scenes.dataset import mosaic_layout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--num_train", type=int, default=8000, help="train scenes covered (per seed)")
    p.add_argument("--num_eval", type=int, default=None, help="validation and test scenes covered (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--extra_per_class", type=int, default=0, help="also keep the first n train images of each class")
    p.add_argument("--mosaic_scenes", type=int, default=0, help="also keep the items of the first n mosaic scenes "
                                                                  "of every split (canvas 64)")
    p.add_argument("--output_dir", default=".data")
    p.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    data = load_fashion_mnist(a.source)
    keep = {split: np.zeros(len(data[split][0]), bool) for split in ("train", "test")}
    for seed in a.seeds:
        for split, n in (("train", a.num_train), ("validation", a.num_eval), ("test", a.num_eval)):
            if n is None:
                keep["test"][:] = True
                continue
            for i in range(n):
                for item in scene_layout(split, i, seed=seed).items:
                    keep[item.fashion_split][item.fashion_index] = True
            for i in range(a.mosaic_scenes):
                layout = mosaic_layout(split, i, data, seed=seed, canvas_size=64)
                for region in layout.regions:
                    keep[layout.fashion_split][list(region.items)] = True
    for c in range(10):
        keep["train"][np.flatnonzero(data["train"][1] == c)[: a.extra_per_class]] = True
    os.makedirs(a.output_dir, exist_ok=True)
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    for split, (img_name, lab_name) in names.items():
        images, labels = data[split]
        packed = np.where(keep[split][:, None, None], images, 0).astype(np.uint8)
        with gzip.GzipFile(os.path.join(a.output_dir, img_name), "wb", compresslevel=9, mtime=0) as f:
            f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + packed.tobytes())
        with gzip.GzipFile(os.path.join(a.output_dir, lab_name), "wb", compresslevel=9, mtime=0) as f:
            f.write(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())
        print(f"{split}: kept {keep[split].sum()} of {len(images)} images")


if __name__ == "__main__":
    main()
