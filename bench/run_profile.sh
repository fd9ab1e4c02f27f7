#!/usr/bin/env bash
# Profiles for issues 4 and 5 in one device call (device kind nvidia-h200), from the repo root:
#   bash bench/run_profile.sh [kernels] [train124] [train124_cudnn] [decode]
# kernels: attention/matmul/cross-entropy ceilings at GPT-2 124M shapes (microbench_kernels.py)
# train124: where tinylm's compiled training step spends its time at GPT-2 124M shape
# train124_cudnn: the same step with cuDNN attention first in SDPA's priority list
# decode: where a batch-1 decoding step spends its time at the char shape
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_cache
G124="--layers 12 --heads 12 --embd 768 --ff 3072 --context 1024 --batch 12 --vocab 50304 --dropout 0 --iters 30"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for run in "${@:-kernels train124 train124_cudnn decode}"; do
  for r in $run; do
    echo "=== $r"
    case $r in
      kernels) python3 bench/microbench_kernels.py ;;
      train124) python3 bench/profile_train.py --variants full --profile full --rows 30 $G124 ;;
      train124_cudnn) python3 bench/profile_train.py --variants full --profile full --rows 12 --sdpa cudnn,flash,efficient,math $G124 ;;
      train124_nobias_cudnn) python3 bench/profile_train.py --variants full --no-bias --sdpa cudnn,flash,efficient,math $G124 ;;
      decode) python3 bench/profile_decode.py --decodes graph,compile ;;
      *) echo "unknown run $r" ;;
    esac
  done
done
