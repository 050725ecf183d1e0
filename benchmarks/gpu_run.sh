#!/usr/bin/env bash
# The device checks, as run on the lent GPU (H100/H200; torch 2.11, transformers 5.17, no network, no `datasets`).
# Before: stage the wheels the image lacks (datasets, ...) on a CPU machine, `../shared/gpu/stage-wheels.sh`, and
# carry ".whl" (plus ".data" for `reproduce`, see scripts/pack_fashion_subset.py). Then, in the repository root:
#   bash benchmarks/gpu_run.sh throughput  # ~4-6 min, at most ~8: table x2 + Trainer-overhead proxy + CUDA profile
#   bash benchmarks/gpu_run.sh reproduce   # reproduce.py --full, 3 seeds side by side (small models are launch-bound)
#   bash benchmarks/gpu_run.sh transfer    # lad_transfer.py --plan gpu: mosaic at 128 px, B0/B1, 3 seeds side by side
#     (mosaic canvases draw items from all of Fashion-MNIST: carry ".data" holding the four full idx .gz files, 30 MB,
#      `mkdir -p .data && cp /usr/share/datasets/fashion-mnist/*.gz .data/`)
# Logs, tables (.md/.json) and traces go under $OUT; the last lines printed are a short summary table.
# CPU dry run of the same Python entry points at tiny sizes: DRY_RUN=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_run.sh throughput
set -u
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
if [ -z "${DRY_RUN:-}" ]; then
  if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:$PWD
  else
    echo "no .whl/*.whl: stage them with ../shared/gpu/stage-wheels.sh and carry .whl (the image has no datasets)"
    export PYTHONPATH=$PWD
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
  DEV=cuda
else  # CPU dry run: same commands, tiny sizes
  export PYTHONPATH=$PWD
  DEV=cpu
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 LAD_FASHION_MNIST_DIR=$PWD/.data TOKENIZERS_PARALLELISM=false
$PY -c "import torch, transformers, datasets, pyarrow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" 2>&1 | tee -a "$OUT/gpu.txt"
case "${1:-reproduce}" in
  reproduce)
    BUDGET=${BUDGET:-270}
    $PY -c "from lad_hf.fashion_scenes import load_or_build_fashion_scenes as b; b('outputs/cache', num_train=8000, num_validation=500, num_test=1000, canvas_size=96, seed=0, num_proc=8)" > "$OUT/scenes.log" 2>&1 || { tail -5 "$OUT/scenes.log"; exit 1; }
    for s in 0 1 2; do
      $PY benchmarks/reproduce.py --full --seeds $s --time_budget_s "$BUDGET" --threads 4 --results_dir "$OUT" > "$OUT/reproduce_seed$s.log" 2>&1 &
    done
    wait
    $PY benchmarks/reproduce.py --merge "$OUT"/reproduce_full_seeds*.json --results_dir "$OUT" > "$OUT/merge.log" 2>&1
    tail -3 "$OUT"/reproduce_seed0.log
    grep -E "^\| Tab. 1|^\| Fig|^\| shortcut|^\| Tab. 8" "$OUT/reproduce_full.md" | head -30
    ;;
  transfer)
    # The LAD transfer study scaled up: mosaic regime at 128 px, SegFormer-B0 student and LAD teacher, B1 bigger
    # teacher, 2000 steps x batch 16 (5x the CPU demo's pixels seen), baseline / LAD teacher / LAD student /
    # self-distillation / bigger-teacher CWD, one seed per process side by side (the GPU is launch-bound here).
    if [ "$DEV" = cuda ]; then
      SIZE=(--canvas_size 128 --num_train 8000 --num_validation 500 --num_test 1000)
      $PY -c "from lad_hf.fashion_scenes import load_or_build_fashion_scenes as b; b('outputs/cache', num_train=8000, num_validation=500, num_test=1000, canvas_size=128, seed=0, num_proc=8, layout='mosaic')" > "$OUT/scenes.log" 2>&1 || { tail -5 "$OUT/scenes.log"; exit 1; }
    else  # CPU dry run: tiny sizes and models, seeds one after another
      SIZE=(--tiny --set '{"student": "tiny", "big_teacher": "small"}')
    fi
    for s in 0 1 2; do
      cmd=(timeout "${TLIMIT:-480}" $PY benchmarks/lad_transfer.py --plan gpu --seeds $s "${SIZE[@]}" --threads 4
           --cache_dir outputs/cache --json "$OUT/lad_transfer_gpu_seed$s.jsonl")
      if [ "$DEV" = cuda ]; then "${cmd[@]}" > "$OUT/transfer_seed$s.log" 2>&1 & else "${cmd[@]}" > "$OUT/transfer_seed$s.log" 2>&1; fi
    done
    wait
    cat "$OUT"/lad_transfer_gpu_seed*.jsonl > "$OUT/lad_transfer_gpu.jsonl"
    $PY benchmarks/lad_transfer.py --report --json "$OUT/lad_transfer_gpu.jsonl" > "$OUT/report.log" 2>&1
    grep -A8 "^## Summary (validation" "$OUT/lad_transfer_gpu.md"
    ;;
  throughput)
    # Issue 13. Budget: table ~40 s per run (no eval/teacher/compile rows), proxy ~2-3 min, unsynced proxy ~1 min;
    # `timeout` caps each (110 + 180 + 70 + 110 s = 470 s at most, plus ~20 s of setup).
    # The table rows that the targets compare: plain (B0 Trainer), raw (B0 raw loop, pre-loaded tensors),
    # lad (B0 + B0 label-assisted teacher), cwd (B0 + B5 plain teacher); bf16, 512x1024, batch 8, 4 workers.
    if [ "$DEV" = cuda ]; then
      TABLE="--device cuda --steps ${STEPS:-12} --warmup ${WARMUP:-4}"
      PROXY="--proxy --device cuda --rounds ${ROUNDS:-3} --time_budget_s ${PROXY_BUDGET:-100} --breakdown_rounds 1 --trace_dir $OUT/traces"
      NOSYNC="--proxy --device cuda --rounds 2 --time_budget_s 50"
    else
      TINY="--height 64 --width 64 --batch_size 2 --num_labels 5 --student tiny --lad_teacher tiny --num_workers 1 --threads 1"
      TABLE="--device cpu $TINY --cwd_teacher small --steps 3 --warmup 1"
      PROXY="--proxy --device cpu $TINY --steps 3 --warmup 1 --rounds 2 --time_budget_s 60 --breakdown_rounds 1 --variants plain,plain_raw,plain_raw_preloaded,lad,lad_raw,plain-extras,lad-extras,plain-pin_memory,plain+non_blocking --trace_dir $OUT/traces"
      NOSYNC="--proxy --device cpu $TINY --steps 3 --warmup 1 --rounds 1"
    fi
    T0=$SECONDS
    table() {
      timeout "${TLIMIT:-110}" $PY benchmarks/throughput.py $TABLE --rows plain,raw,lad,cwd --no_compile --miou_masks 0 \
        --output "$OUT/throughput_${DEV}_run$1.md" > "$OUT/throughput_run$1.log" 2>&1
      echo "[table run $1] rc=$? at $((SECONDS - T0)) s"
    }
    table 1
    # Trainer vs raw loop (with a DataLoader and pre-loaded), ablations (lad_hf extras, pin-memory thread),
    # per-phase host time with the device wait, and torch.profiler (CPU+CUDA) of one plain and one LAD step
    timeout "${PLIMIT:-180}" $PY benchmarks/throughput.py $PROXY --miou_masks 0 \
      --output "$OUT/throughput_${DEV}_proxy.md" > "$OUT/throughput_proxy.log" 2>&1
    echo "[proxy] rc=$? at $((SECONDS - T0)) s"
    # the same without a sync at the step boundaries: the training pace with the device pipeline kept full
    timeout "${NLIMIT:-70}" $PY benchmarks/throughput.py $NOSYNC --no_step_sync --no_breakdown --no_profile --miou_masks 0 \
      --variants plain,plain_raw,plain_raw_preloaded,lad,lad_raw,plain+non_blocking \
      --output "$OUT/throughput_${DEV}_proxy_nosync.md" > "$OUT/throughput_proxy_nosync.log" 2>&1
    echo "[proxy, no step sync] rc=$? at $((SECONDS - T0)) s"
    table 2
    echo
    sed -n '/^## Trainer vs raw loop/,/^## Every variant/p' "$OUT/throughput_${DEV}_proxy.md" 2>/dev/null | grep -E "^\|" \
      || tail -20 "$OUT/throughput_proxy.log"
    echo
    grep -E "^\| (plain|lad)(_raw)? \|" "$OUT/profile_${DEV}_proxy.md" 2>/dev/null | head -4
    echo
    grep -E "^\| (LAD / plain|CWD|Trainer plain)" "$OUT"/throughput_${DEV}_run*.md 2>/dev/null
    echo
    $PY benchmarks/throughput.py --summarize "$OUT/throughput_${DEV}_run1.json" "$OUT/throughput_${DEV}_proxy.json" \
      "$OUT/throughput_${DEV}_proxy_nosync.json" "$OUT/throughput_${DEV}_run2.json"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_run.sh {throughput|reproduce|transfer}"; exit 2
    ;;
esac
