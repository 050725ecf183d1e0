#!/usr/bin/env bash
# The device checks, as run on the lent H100 (no network, no `datasets` in its image):
#   bash scripts/stage + carry [".whl", ".data"]    (see ../shared/gpu/README.md and scripts/pack_fashion_subset.py)
#   bash benchmarks/gpu_run.sh reproduce   # reproduce.py --full, 3 seeds side by side (small models are launch-bound)
#   bash benchmarks/gpu_run.sh throughput  # benchmarks/throughput.py --device cuda
# Logs and results go under $OUT.
set -u
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 LAD_FASHION_MNIST_DIR=$PWD/.data TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers, datasets, pyarrow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
case "${1:-reproduce}" in
  reproduce)
    BUDGET=${BUDGET:-270}
    python3 -c "from lad_hf.fashion_scenes import load_or_build_fashion_scenes as b; b('outputs/cache', num_train=8000, num_validation=500, num_test=1000, canvas_size=96, seed=0, num_proc=8)" > "$OUT/scenes.log" 2>&1 || { tail -5 "$OUT/scenes.log"; exit 1; }
    for s in 0 1 2; do
      python3 benchmarks/reproduce.py --full --seeds $s --time_budget_s "$BUDGET" --threads 4 --results_dir "$OUT" > "$OUT/reproduce_seed$s.log" 2>&1 &
    done
    wait
    python3 benchmarks/reproduce.py --merge "$OUT"/reproduce_full_seeds*.json --results_dir "$OUT" > "$OUT/merge.log" 2>&1
    tail -3 "$OUT"/reproduce_seed0.log
    grep -E "^\| Tab. 1|^\| Fig|^\| shortcut|^\| Tab. 8" "$OUT/reproduce_full.md" | head -30
    ;;
  throughput)
    timeout "${TLIMIT:-230}" python3 benchmarks/throughput.py --device cuda --steps ${STEPS:-12} --warmup ${WARMUP:-4} ${TFLAGS:-} --output "$OUT/throughput_h100.md" > "$OUT/throughput.log" 2>&1
    echo "rc=$?"; tail -30 "$OUT/throughput_h100.md" 2>/dev/null || tail -30 "$OUT/throughput.log"
    ;;
esac
