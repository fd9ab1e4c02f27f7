#!/usr/bin/env bash
# The regrouping (issue 15) must not move speed: the headline figures of the tree before it
# (.carry/old, `git archive 89a88e9 | tar -x -C .carry/old`) and of this tree, alternately, in one
# device call (nvidia-h200). Needs .carry/tinyshakespeare.txt. From the repo root:
#   bash bench/run_layout_ab.sh
# Prints one line per measurement; child logs and JSON rows go to $OUT.
set -u
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_cache
OUT=${OUT:-/tmp/ab_out}; mkdir -p "$OUT"
ROOT=$PWD
DATA=$ROOT/.carry/tinyshakespeare.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
ttl() { (cd "$2" && PYTHONPATH=. python3 bench/bench_train.py ttl --data "$DATA" --name "$1" --log "$OUT/ttl_$1.log" \
          --out "/tmp/$1.model" -- --preset speedrun 2>&1 | tail -1 | sed "s/^/ttl $1: /"); }
step() { (cd "$2" && PYTHONPATH=. python3 bench/bench_train.py throughput --variants tinylm:graphfull 2>&1 | grep -i "graphfull" | sed "s/^/step $1: /"); }
dec() { (cd "$2" && PYTHONPATH=. python3 bench/bench_generate.py --device cuda --shapes char,gpt2 --batches 1 --decodes graph \
          --no-hf --json "$OUT/gen_$1.json" > "$OUT/gen_$1.md" 2>&1; grep -E "graph" "$OUT/gen_$1.md" | sed "s/^/decode $1: /"); }
for m in ${@:-ttl step dec}; do
  $m old1 "$ROOT/.carry/old"; $m new1 "$ROOT"; $m old2 "$ROOT/.carry/old"; $m new2 "$ROOT"
done
