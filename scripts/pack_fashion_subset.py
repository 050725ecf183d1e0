"""Pack Fashion-MNIST for the GPU machine (64 MiB carry limit): train images not used by the first N train scenes
are zeroed (they compress to nothing); the test split is copied whole. Scenes built from it are identical.

    python scripts/pack_fashion_subset.py --num_train 8000 --output_dir .data
"""
import argparse
import gzip
import os
import shutil
import struct

import numpy as np

from lad_hf.fashion_scenes import load_fashion_mnist, scene_layout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--num_train", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default=".data")
    p.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    images, labels = load_fashion_mnist(a.source)["train"]
    used = {it.fashion_index for i in range(a.num_train) for it in scene_layout("train", i, seed=a.seed).items}
    keep = np.zeros(len(images), bool)
    keep[sorted(used)] = True
    packed = np.where(keep[:, None, None], images, 0).astype(np.uint8)
    os.makedirs(a.output_dir, exist_ok=True)
    with gzip.open(os.path.join(a.output_dir, "train-images-idx3-ubyte.gz"), "wb", compresslevel=9) as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + packed.tobytes())
    with gzip.open(os.path.join(a.output_dir, "train-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(a.source, name), os.path.join(a.output_dir, name))
    print(f"kept {keep.sum()} of {len(images)} train items")


if __name__ == "__main__":
    main()
