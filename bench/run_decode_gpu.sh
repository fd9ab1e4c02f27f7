#!/usr/bin/env bash
# Decoding speed work for issue 5 in one device call (device kind nvidia-h200), from the repo root:
#   bash bench/run_decode_gpu.sh [tests] [tune] [profile] [gen_char] [gen_gpt2] [profile_gpt2]
# Each writes $OUT/<name>.txt (or .md/.json); the first lines of each also go to stdout.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_cache
OUT=${OUT:-/tmp/decode_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for r in "${@:-tests tune profile gen_char gen_gpt2}"; do
  for run in $r; do
    echo "=== $run $(date +%T)"
    case $run in
      tests) python3 -m pytest -q -x tests/test_decode_linear.py tests/test_decode_kernel.py tests/test_generate_cache.py \
               tests/test_gpu.py > "$OUT/tests.txt" 2>&1; tail -5 "$OUT/tests.txt" ;;
      tune) python3 bench/tune_decode_linear.py > "$OUT/tune.md" 2>&1; cat "$OUT/tune.md" ;;
      profile) python3 bench/profile_decode.py --decodes graph,graph-unfused,compile,compile-unfused > "$OUT/profile_char.txt" 2>&1
               grep "^\[" "$OUT/profile_char.txt" ;;
      profile_gpt2) python3 bench/profile_decode.py --shape gpt2 --decodes graph,graph-unfused > "$OUT/profile_gpt2.txt" 2>&1
               grep "^\[" "$OUT/profile_gpt2.txt" ;;
      gen_char) python3 bench/bench_generate.py --device cuda --shapes char --json "$OUT/gen_char.json" > "$OUT/gen_char.md" 2>&1
                cat "$OUT/gen_char.md" | tail -20 ;;
      gen_gpt2) python3 bench/bench_generate.py --device cuda --shapes gpt2 --json "$OUT/gen_gpt2.json" > "$OUT/gen_gpt2.md" 2>&1
                cat "$OUT/gen_gpt2.md" | tail -20 ;;
      *) echo "unknown run $run" ;;
    esac
  done
done
