#!/usr/bin/env bash
# Issue-4 CPU benchmark: wall-clock from launch to val loss <= 1.88 on tiny Shakespeare (char),
# on a 2-core machine like CI's. Run from the repo root with the venv built (make setup):
#   bash bench/run_cpu_train.sh nanogpt_cpu cpu_preset ...    (names: see the case below)
set -u
export PYTHONPATH=.
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/bench_cpu}; mkdir -p "$OUT"
nproc; grep -m1 "model name" /proc/cpuinfo; uptime
ttl() {
  local name=$1; shift
  $PY bench/bench_train.py ttl --data "$DATA" --name "$name" --target 1.88 --window 120 --log "$OUT/$name.log" --out "/tmp/$name.model" -- --device cpu "$@" 2>&1 | tail -1
}
for run in "$@"; do
  case $run in
    # nanoGPT's CPU recipe (README: 4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iters, no dropout)
    nanogpt_cpu) ttl $run --layers 4 --heads 4 --embd 128 --context 64 --ff 512 --batch-size 12 --steps 2000 --lr 1e-3 --min-lr 1e-4 --warmup 100 --dropout 0 --eval-interval 250 ;;
    cpu_preset) ttl $run --preset cpu --time 40 ;;
    cpu_preset_t41) ttl $run --preset cpu --time 41.5 ;;
    cpu_preset_lr6) ttl $run --preset cpu --time 40 --lr 6e-3 --min-lr 6e-4 ;;
    cpu_b64_lr3) ttl $run --preset cpu --time 40 --batch-size 64 --lr 3e-3 --min-lr 3e-4 ;;
    cpu_lr3) ttl $run --preset cpu --time 40 --lr 3e-3 --min-lr 3e-4 ;;
    cpu_l3_w192) ttl $run --preset cpu --time 40 --layers 3 --embd 192 --heads 4 --ff 768 ;;
    cpu_b16_lr3) ttl $run --preset cpu --time 40 --batch-size 16 --lr 3e-3 --min-lr 3e-4 --warmup 30 --eval-interval 400 ;;
    cpu_b16_lr5_l3) ttl $run --preset cpu --time 40 --layers 3 --batch-size 16 --lr 5e-3 --min-lr 5e-4 --warmup 30 --eval-interval 400 ;;
    *) echo "unknown run $run" ;;
  esac
done
