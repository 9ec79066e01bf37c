#!/usr/bin/env bash
# The GPU check: on a CUDA machine, in a few minutes, one line per check:
#   - the CUDA-marked tests (pytest -m cuda);
#   - backpack-micro and transformer-micro trained 200 iterations on the sample corpus (a 16k BPE, as many
#     ids as its 450 pairs yield) at block 512 with --dtype=auto --compile: tokens/s and MFU against the
#     GPU's datasheet peak (unknown for a GPU missing from backpacks/devices.py);
#   - the SDPA kernel the Backpack's sense mixing gets, one line per shape: backpack-micro, the study
#     (config/study.py), the main job (config/train_europarl_scratch.py) and a sense head size of 6, which the
#     fused kernels take only padded; FLASH, CUDNN, EFFICIENT and MATH each tried alone, the output compared
#     with the reference product (off by more than the dtype's rounding: FAIL; a math fallback: WARN);
#   - peak memory of a training step of both models at block 512 (bench.py);
#   - KV-cache translation throughput (experiments/bench_translation.py), and the cache's next-token logits
#     against the uncached forward's, within the dtype's tolerance (greedy choices may differ at near-ties);
#   - float16 with GradScaler, stopped and resumed, bitwise equal to a straight run;
#   - torchrun --standalone --nproc_per_node=1, DDP on nccl.
# Without CUDA it runs the checks that need no GPU (the mixing kernel and a bitwise resume, on the CPU),
# says in one line that the others need a GPU, and exits 0 when those passed.
#
#   bash experiments/gpu_check.sh               # writes experiments/out/gpu_check (OUT=DIR for another)
#
# Each step's full output is in $OUT/logs/STEP.log; a failing step prints FAIL with its last line.
# PYTHON: the interpreter that runs each step (default: the python on PATH), e.g. PYTHON=venv/bin/python.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

OUT=${OUT:-experiments/out/gpu_check}
LOGS=$OUT/logs RUNS=$OUT/runs DATA=$OUT/data
"$PYTHON" -m backpacks.cli --writable OUT="$OUT" || exit 1  # before the last check's logs are removed
rm -rf "$LOGS" "$RUNS"
mkdir -p "$LOGS" "$RUNS"
failed=0

step() {  # NAME COMMAND...: the command's output goes to $LOGS/NAME.log; a failure is one FAIL line
  local name=$1
  shift
  "$@" > "$LOGS/$name.log" 2>&1 && return 0
  echo "FAIL $name: $(grep -v '^\s*$' "$LOGS/$name.log" | tail -n 1) (log: $LOGS/$name.log)"
  failed=1
  return 1
}
check() {  # one line from experiments/gpu_check.py
  "$PYTHON" -m experiments.gpu_check "$@" || failed=1
}
prepare() {  # NAME VOCAB: the sample corpus under $DATA/NAME
  [[ -f $DATA/$1/meta.json ]] || step "data_$1" "$PYTHON" -m data.europarl.prepare --source local \
    --corpus data/europarl/sample/parliament --name "$1" --vocab_size "$2" --out_root "$DATA"
}

"$PYTHON" -m experiments.gpu_check machine
device=cpu
"$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' && device=cuda
prepare sample_512 512
prepare sample_16k 16384

# --- checks that need no GPU: on the CPU when there is none
check sdpa --device $device
# stopped at 4, resumed to 8, against a straight run to 8: on the GPU in float16 with its GradScaler; on the
# CPU in what --dtype=auto picks there (most CPUs emulate float16, a hundred times slower than float32)
resume=(config/train_sample_tiny.py --data_dir="$DATA/sample_512" --device=$device --deterministic --dropout=0.1
        --max_iters=8 --warmup_iters=2 --lr_decay_iters=8 --eval_interval=4 --checkpoint_interval=4 --eval_iters=2)
if [[ $device == cuda ]]; then
  resume+=(--dtype=float16)  # only on CUDA, where every GPU multiplies float16 natively
else
  resume+=(--dtype=auto --n_layer=1 --n_embd=32 --n_head=2 --n_senses=4 --block_size=32 --batch_size=4)
fi
step resume_straight "$PYTHON" train.py "${resume[@]}" --out_dir="$RUNS/straight" \
  && step resume_first_half "$PYTHON" train.py "${resume[@]}" --max_iters=4 --out_dir="$RUNS/resumed" \
  && step resume_second_half "$PYTHON" train.py --init_from=resume --out_dir="$RUNS/resumed" --max_iters=8 \
  && check bitwise "$RUNS/straight" "$RUNS/resumed"

if [[ $device != cuda ]]; then
  echo "no CUDA GPU: the CUDA tests, micro-model training and MFU, the float16 GradScaler resume, peak memory, translation throughput and torchrun checks need one and did not run"
  exit $failed
fi

# --- checks on the GPU
step cuda_tests "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider \
  && echo "ok   cuda tests: $(tail -n 1 "$LOGS/cuda_tests.log")"
micro=(--data_dir="$DATA/sample_16k" --device=cuda --dtype=auto --compile --block_size=512 --batch_size=16
       --max_iters=200 --warmup_iters=20 --eval_interval=100 --eval_iters=10 --checkpoint_interval=200 --log_interval=50)
for model in backpack transformer; do
  step "train_$model" "$PYTHON" train.py --preset=$model-micro "${micro[@]}" --out_dir="$RUNS/$model-micro" \
    && check training "$RUNS/$model-micro"
done
step memory "$PYTHON" bench.py --device=cuda --dtype=auto --block_size=512 --batch_size=16 --steps=5 \
  && check memory "$LOGS/memory.log"
step translation "$PYTHON" -m experiments.bench_translation --out_dir "$RUNS/backpack-micro" --ckpt latest --device cuda \
    --test_corpus data/europarl/sample/parliament --samples 256 \
  && check translation "$LOGS/translation.log"
# torchrun's own entry point, so that a torchrun missing from PATH does not matter
step torchrun "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 train.py config/train_sample_tiny.py \
    --data_dir="$DATA/sample_512" --device=cuda --dtype=auto --max_iters=20 --eval_interval=10 --eval_iters=2 \
    --out_dir="$RUNS/torchrun" \
  && check torchrun "$LOGS/torchrun.log" "$RUNS/torchrun"
exit $failed
