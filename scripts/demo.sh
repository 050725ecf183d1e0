#!/usr/bin/env bash
# make demo: check Fashion-MNIST is on disk (install the Debian package when possible), then run the LAD demo.
# Usage: bash scripts/demo.sh [OUTPUT_DIR]
set -euo pipefail
OUT="${1:-outputs/demo}"
cd "$(dirname "$0")/.."
FM_DIR="${LAD_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
have_fm() {
  for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [ -f "$FM_DIR/$f" ] || return 1
  done
}
if ! have_fm; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "Fashion-MNIST not found in $FM_DIR; installing the Debian package dataset-fashion-mnist"
    apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }
  fi
fi
if ! have_fm; then
  echo "error: Fashion-MNIST is missing from $FM_DIR (train-/t10k- images and labels .gz)." >&2
  echo "Install it with 'sudo apt-get install -y dataset-fashion-mnist', or point LAD_FASHION_MNIST_DIR at a" >&2
  echo "folder holding the four Fashion-MNIST idx .gz files, then rerun 'make demo'." >&2
  exit 1
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
export LAD_FASHION_MNIST_DIR="$FM_DIR"
exec "$PY" -m lad_hf.fashion_scenes.demo --output_dir "$OUT"
