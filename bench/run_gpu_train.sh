#!/usr/bin/env bash
# Issue-4 GPU benchmarks in one device call (device kind nvidia-h200). Run from the repo root with
# the tiny Shakespeare corpus carried in .carry/ (cp ../shared/data/tinyshakespeare.txt .carry/).
#   bash bench/run_gpu_train.sh throughput nanogpt_recipe fast20 ...   (names: see the case below)
# Results: JSON lines on stdout; full child logs under $OUT (or /tmp/bench_out).
set -u
export PYTHONPATH=.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
DATA=.carry/tinyshakespeare.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
# The first compile on this machine is cold; later runs reuse the kernels (as a user's re-runs do).
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_cache

ttl() {  # name, then tinylm train flags
  local name=$1; shift
  python3 bench/bench_train.py ttl --data "$DATA" --name "$name" --log "$OUT/ttl_$name.log" --out "/tmp/$name.model" -- "$@" 2>&1 | tail -1
}
GPT2="--layers 12 --heads 12 --embd 768 --ff 3072 --context 1024 --batch 12 --vocab 50304 --dropout 0 --iters 30"
NANO="--layers 6 --heads 6 --embd 384 --context 256 --ff 1536 --batch-size 64"
for run in "$@"; do
  case $run in
    throughput) python3 bench/bench_train.py throughput ${VARIANTS:+--variants $VARIANTS} 2>&1 | tee "$OUT/throughput.txt" ;;
    nanogpt_recipe) ttl $run $NANO --dropout 0.2 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --steps 5000 --time 75 --eval-interval 250 ;;
    fast20) ttl $run $NANO --dropout 0.2 --lr 2e-3 --min-lr 2e-4 --beta2 0.99 --warmup 50 --time 20 --eval-interval 100 ;;
    fast20_muon) ttl $run $NANO --dropout 0.2 --lr 2e-3 --min-lr 2e-4 --beta2 0.99 --warmup 50 --time 20 --eval-interval 100 --optimizer muon ;;
    best60) ttl $run $NANO --dropout 0.2 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 55 --eval-interval 200 ;;
    best60_big) ttl $run --layers 8 --heads 8 --embd 512 --ff 2048 --context 256 --batch-size 64 --dropout 0.3 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 55 --eval-interval 200 ;;
    fast_rope) ttl $run $NANO --positions rope --dropout 0.2 --lr 2e-3 --min-lr 2e-4 --beta2 0.99 --warmup 50 --time 14 --eval-interval 100 ;;
    fast_rope_relu2_qk) ttl $run $NANO --positions rope --activation relu2 --qk-norm --dropout 0.2 --lr 3e-3 --min-lr 3e-4 --beta2 0.99 --warmup 50 --time 14 --eval-interval 100 ;;
    profile) python3 bench/profile_train.py --variants ${PROFILE_VARIANTS:-eager,full,graph,full-ro} --profile ${PROFILE_WHICH:-graph} 2>&1 | tee "$OUT/profile.txt" ;;
    tests) python3 -m pytest -q tests/test_gpu.py tests/test_generate_cache.py tests/test_decode_kernel.py tests/test_faults.py tests/test_optim.py tests/test_tokenfile.py tests/test_distributed.py tests/test_fused_ce.py ${TEST_ARGS:-} > "$OUT/tests.txt" 2>&1; tail -25 "$OUT/tests.txt" ;;
    graph20) ttl $run $NANO --dropout 0.2 --lr 2e-3 --min-lr 2e-4 --beta2 0.99 --warmup 50 --time 20 --eval-interval 100 --cuda-graph ;;
    graph16) ttl $run $NANO --dropout 0.2 --lr 2e-3 --min-lr 2e-4 --beta2 0.99 --warmup 50 --time 16 --eval-interval 100 --cuda-graph ;;
    graph55_big) ttl $run --layers 8 --heads 8 --embd 512 --ff 2048 --context 256 --batch-size 64 --dropout 0.25 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 55 --eval-interval 200 --cuda-graph ;;
    graph55) ttl $run $NANO --dropout 0.2 --lr 1.5e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 55 --eval-interval 200 --cuda-graph ;;
    nano16) ttl $run $NANO --dropout 0.2 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 16 --eval-interval 100 ;;
    nano16_lr2) ttl $run $NANO --dropout 0.2 --lr 2e-3 --min-lr 1e-4 --beta2 0.99 --warmup 50 --time 16 --eval-interval 100 ;;
    d35) ttl $run $NANO --dropout 0.35 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 50 --eval-interval 200 --cuda-graph ;;
    big_d45) ttl $run --layers 8 --heads 8 --embd 512 --ff 2048 --context 256 --batch-size 64 --dropout 0.45 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 50 --eval-interval 200 --cuda-graph ;;
    d3_wd) ttl $run $NANO --dropout 0.3 --weight-decay 1.0 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 50 --eval-interval 200 --cuda-graph ;;
    d3_wd1_t35) ttl $run $NANO --dropout 0.3 --weight-decay 1.0 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 35 --eval-interval 200 --cuda-graph ;;
    d35_wd2_t45) ttl $run $NANO --dropout 0.35 --weight-decay 2.0 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 45 --eval-interval 200 --cuda-graph ;;
    d4_wd3_t50) ttl $run $NANO --dropout 0.4 --weight-decay 3.0 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 50 --eval-interval 200 --cuda-graph ;;
    d35_wd3_t50) ttl $run $NANO --dropout 0.35 --weight-decay 3.0 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 --warmup 100 --time 50 --eval-interval 200 --cuda-graph ;;
    speedrun) ttl $run --preset speedrun ;;
    s60) ttl $run --preset speedrun60 ;;
    s60_t53) ttl $run --preset speedrun60 --time 53 ;;
    speedrun_t18) ttl $run --preset speedrun --time 18 ;;
    s60_seed*) ttl $run --preset speedrun60 --seed ${run#s60_seed} ;;
    s60_ema995) ttl $run --preset speedrun60 --ema 0.995 ;;
    s60_ema998) ttl $run --preset speedrun60 --ema 0.998 ;;
    s60_ema995_seed*) ttl $run --preset speedrun60 --ema 0.995 --seed ${run#s60_ema995_seed} ;;
    s60_ema998_seed*) ttl $run --preset speedrun60 --ema 0.998 --seed ${run#s60_ema998_seed} ;;
    s60_gc_ema995) ttl $run --preset speedrun60 --ema 0.995 --compile model --cuda-graph ;;
    s60_b128) ttl $run --preset speedrun60 --batch-size 128 --lr 1.5e-3 --min-lr 1.5e-4 --eval-interval 100 ;;
    s60_b128_wd2) ttl $run --preset speedrun60 --batch-size 128 --lr 1.5e-3 --min-lr 1.5e-4 --eval-interval 100 --weight-decay 2.0 ;;
    s60_b128_seed*) ttl $run --preset speedrun60 --batch-size 128 --lr 1.5e-3 --min-lr 1.5e-4 --eval-interval 100 --seed ${run#s60_b128_seed} ;;
    s60_b128_lr2) ttl $run --preset speedrun60 --batch-size 128 --lr 2e-3 --min-lr 2e-4 --eval-interval 100 ;;
    s60_wd5) ttl $run --preset speedrun60 --weight-decay 5.0 ;;
    startup) python3 -m cProfile -s cumtime -m tinylm train -d $DATA -o /tmp/startup.model --force --preset speedrun --steps 30 --eval-interval 0 2>&1 | grep -v "INFO |" | head -70 > "$OUT/startup.txt" ;;
    speedrun_gc) ttl $run --preset speedrun --compile model --cuda-graph ;;
    profile_char) python3 bench/profile_train.py --variants graph,graphfull --profile graphfull --rows 10 2>&1 | tee "$OUT/profile_char.txt" ;;
    profile124) python3 bench/profile_train.py --variants graphfull --profile graphfull --rows 10 $GPT2 2>&1 | tee "$OUT/profile124.txt" ;;
    profile124_bf16) python3 bench/profile_train.py --variants graphfull --profile graphfull --rows 10 --top 14 --no-bias --pure-bf16 $GPT2 2>&1 | tee "$OUT/profile124_bf16.txt" ;;
    profile124_shapes) python3 bench/profile_train.py --variants full --profile full --rows 40 --shapes --no-bias $GPT2 2>&1 | tee "$OUT/profile124_shapes.txt" ;;
    gen) python3 bench/bench_generate.py ${GEN_ARGS:---device cuda} 2>&1 | tail -25 ;;
    *) echo "unknown run $run" ;;
  esac
done
