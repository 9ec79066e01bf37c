#!/usr/bin/env bash
# SENSIA at CPU scale, from a clean checkout (about 20 minutes on 2 cores): prepare a bilingual BPE
# dataset whose LM stream is English only, pretrain a tiny English Backpack on it, adapt it to French
# with SENSIA and with the LM-only control (same data, steps, schedule and freezing; MCL too with
# RUN_MCL=1), evaluate both on the test pairs and print one comparison table (also written to
# $OUT/comparison.md).
#
#   bash experiments/sensia_tiny.sh
#   SMOKE=1 bash experiments/sensia_tiny.sh   # every step at toy sizes on the sample corpus, in seconds
#
# Corpus: $ENFR_DATA/parallel/europarl-v7-head (3,000 Europarl pairs) when present, else the project's
# sample corpus (500 pairs); the table says which. A finished step is reused when run again.
# Settings (environment): OUT (runs and data; default experiments/out/sensia_tiny), PRETRAIN_ITERS (400),
# ADAPT_ITERS (200), RUN_MCL=1, SMOKE=1, ENFR_DATA (corpus and evaluation resources; default
# ../shared/data/en-fr when present), PYTHON (the interpreter that runs each step; default: the python on
# PATH, e.g. PYTHON=venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
# glibc keeps freed memory for reuse instead of unmapping each step's large buffers (logits, their gradient):
# CPU training steps 12-25% faster measured (docs/performance.md); a value already set is kept
export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_-68719476736}
if [[ -z ${ENFR_DATA:-} && -d ../shared/data/en-fr ]]; then
  export ENFR_DATA=$(cd ../shared/data/en-fr && pwd)
fi
COMMON=(--device=cpu --dtype=auto)  # bfloat16 only where the CPU has it natively (AMX, AVX512-BF16)
corpus=${ENFR_DATA:-/nonexistent}/parallel/europarl-v7-head
[[ -f $corpus.en && -f $corpus.fr ]] || corpus=data/europarl/sample/parliament
if [[ ${SMOKE:-0} == 1 ]]; then  # the same steps at toy sizes: checks the recipe, measures nothing
  OUT=${OUT:-experiments/out/sensia_tiny_smoke}; PRETRAIN_ITERS=${PRETRAIN_ITERS:-6}; ADAPT_ITERS=${ADAPT_ITERS:-4}
  corpus=data/europarl/sample/parliament; VOCAB=512
  PRETRAIN=(--n_layer=2 --n_head=2 --n_embd=32 --n_senses=4 --block_size=64 --batch_size=4 --eval_iters=2)
  ADAPT=(--batch_size=8 --sensia_eval_pairs=16 --eval_iters=2)
  EVAL=(--loss_batches 2 --mc_examples 8 --geometry_pairs 50 --geometry_sentences 16)
else
  OUT=${OUT:-experiments/out/sensia_tiny}; PRETRAIN_ITERS=${PRETRAIN_ITERS:-400}; ADAPT_ITERS=${ADAPT_ITERS:-200}
  VOCAB=2048; PRETRAIN=(); ADAPT=(); EVAL=()
fi
"$PYTHON" -m backpacks.cli --writable OUT="$OUT" --count PRETRAIN_ITERS="$PRETRAIN_ITERS" ADAPT_ITERS="$ADAPT_ITERS"
data=$OUT/data/sensia_en

[[ -f $data/meta.json ]] || "$PYTHON" -m data.europarl.prepare --source local --corpus "$corpus" --name sensia_en \
  --out_root "$OUT/data" --vocab_size "$VOCAB" --lm_languages en

train() {  # out_dir, then train.py arguments: a finished run is kept, an interrupted one resumed
  local out=$1; shift
  if [[ -f $out/ckpt.pt ]]; then
    "$PYTHON" train.py --init_from=resume --out_dir="$out"
  else
    "$PYTHON" train.py "$@" --out_dir="$out" --data_dir="$data" "${COMMON[@]}"
  fi
}
train "$OUT/english" config/pretrain_english_tiny.py --max_iters="$PRETRAIN_ITERS" --eval_interval=200 "${PRETRAIN[@]}"
runs=(sensia lm_only)
[[ ${RUN_MCL:-0} == 1 ]] && runs+=(mcl)
for run in "${runs[@]}"; do  # the controls: an overlay after SENSIA's config
  configs=(config/adapt_sensia_tiny.py)
  [[ $run != sensia ]] && configs+=("config/adapt_${run}.py")
  train "$OUT/$run" "${configs[@]}" --init_from="$OUT/english" --max_iters="$ADAPT_ITERS" "${ADAPT[@]}"
done

tasks=loss,sensia,xnli,pawsx
for run in english "${runs[@]}"; do  # the end of each run (same steps): no checkpoint selection
  "$PYTHON" evaluate.py --out_dir "$OUT/$run" --ckpt latest --tasks "$tasks" --device cpu "${EVAL[@]}" > /dev/null
done
"$PYTHON" - "$OUT" "$corpus" "${runs[@]}" <<'PY'
import json, sys
from pathlib import Path
from backpacks.study.sections import sensia_table
out, corpus, runs = Path(sys.argv[1]), sys.argv[2], ['english'] + sys.argv[3:]
results = {run: json.loads((out / run / 'eval' / 'results.json').read_text()) for run in runs}
table = (sensia_table(results) + f"\n\ncorpus {corpus}; english = the starting point before adaptation; "
         "multiple-choice details: " + ", ".join(str(out / run / 'eval' / 'report.md') for run in runs) + "\n")
(out / 'comparison.md').write_text(table)
print(table)
PY
