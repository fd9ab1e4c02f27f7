#!/usr/bin/env bash
# Issue-4 GPU benchmarks in one device call (device kind nvidia-h200). Run from the repo root with
# the tiny Shakespeare corpus carried in .carry/ (cp ../shared/data/tinyshakespeare.txt .carry/).
#   bash bench/run_gpu_train.sh [throughput] [ttl]      (both when no argument)
# Results: JSON lines on stdout; full child logs under $OUT (or /tmp/bench_out).
set -u
export PYTHONPATH=.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
DATA=.carry/tinyshakespeare.txt
what=${*:-throughput ttl}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'

if [[ " $what " == *" throughput "* ]]; then
  python3 bench/bench_train.py throughput ${VARIANTS:+--variants $VARIANTS} 2>&1 | tee "$OUT/throughput.txt"
fi

ttl() {  # name, then tinylm train flags
  local name=$1; shift
  python3 bench/bench_train.py ttl --data "$DATA" --name "$name" --log "$OUT/ttl_$name.log" --out "/tmp/$name.model" -- "$@" 2>&1 | tail -1
}
NANO="--layers 6 --heads 6 --embd 384 --context 256 --ff 1536 --batch-size 64"
if [[ " $what " == *" ttl "* ]]; then
  # cold compile cache for the first run, as a new user would have it
  export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_cold_$$
  ttl nanogpt_recipe $NANO --dropout 0.2 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --steps 5000 --time 75 --eval-interval 250
  export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_warm
  ${TTL_RUNS:-true}
fi
