#!/usr/bin/env bash
# SENSIA at CPU scale, from a clean checkout (about 20 minutes on 2 cores): prepare a bilingual BPE
# dataset whose LM stream is English only, pretrain a tiny English Backpack on it, adapt it to French
# with SENSIA and with the LM-only control (same data, steps, schedule and freezing; MCL too with
# RUN_MCL=1), evaluate both on the test pairs and print one comparison table (also written to
# $OUT/comparison.md).
#
#   bash experiments/sensia_tiny.sh
#
# Corpus: $ENFR_DATA/parallel/europarl-v7-head (3,000 Europarl pairs) when present, else the project's
# sample corpus (500 pairs); the table says which. Runs go to $OUT (default experiments/out/sensia_tiny);
# a finished step is reused when run again.
# PYTHON: the interpreter that runs each step (default: the python on PATH), e.g. PYTHON=venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
# glibc keeps freed memory for reuse instead of unmapping each step's large buffers (logits, their gradient):
# CPU training steps 12-25% faster measured (docs/performance.md); a value already set is kept
export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_-68719476736}
if [[ -z ${ENFR_DATA:-} && -d ../shared/data/en-fr ]]; then
  export ENFR_DATA=$(cd ../shared/data/en-fr && pwd)
fi
OUT=${OUT:-experiments/out/sensia_tiny}
PRETRAIN_ITERS=${PRETRAIN_ITERS:-400}
ADAPT_ITERS=${ADAPT_ITERS:-200}
"$PYTHON" -m backpacks.cli --writable OUT="$OUT" --count PRETRAIN_ITERS="$PRETRAIN_ITERS" ADAPT_ITERS="$ADAPT_ITERS"
COMMON=(--device=cpu --dtype=auto)  # bfloat16 only where the CPU has it natively (AMX, AVX512-BF16)
corpus=${ENFR_DATA:-/nonexistent}/parallel/europarl-v7-head
[[ -f $corpus.en && -f $corpus.fr ]] || corpus=data/europarl/sample/parliament
data=$OUT/data/sensia_en

[[ -f $data/meta.json ]] || "$PYTHON" -m data.europarl.prepare --source local --corpus "$corpus" --name sensia_en \
  --out_root "$OUT/data" --vocab_size 2048 --lm_languages en

train() {  # out_dir, then train.py arguments: a finished run is kept, an interrupted one resumed
  local out=$1; shift
  if [[ -f $out/ckpt.pt ]]; then
    "$PYTHON" train.py --init_from=resume --out_dir="$out"
  else
    "$PYTHON" train.py "$@" --out_dir="$out" --data_dir="$data" "${COMMON[@]}"
  fi
}
train "$OUT/english" config/pretrain_english_tiny.py --max_iters="$PRETRAIN_ITERS" --eval_interval=200
runs=(sensia lm_only)
[[ ${RUN_MCL:-0} == 1 ]] && runs+=(mcl)
for run in "${runs[@]}"; do  # the controls: an overlay after SENSIA's config
  configs=(config/adapt_sensia_tiny.py)
  [[ $run != sensia ]] && configs+=("config/adapt_${run}.py")
  train "$OUT/$run" "${configs[@]}" --init_from="$OUT/english" --max_iters="$ADAPT_ITERS"
done

tasks=loss,sensia,xnli,pawsx
for run in english "${runs[@]}"; do  # the end of each run (same steps): no checkpoint selection
  "$PYTHON" evaluate.py --out_dir "$OUT/$run" --ckpt latest --tasks "$tasks" --device cpu > /dev/null
done
"$PYTHON" - "$OUT" "$corpus" "${runs[@]}" <<'PY'
import json, sys
from pathlib import Path
from backpacks.study.report import sensia_table
out, corpus, runs = Path(sys.argv[1]), sys.argv[2], ['english'] + sys.argv[3:]
results = {run: json.loads((out / run / 'eval' / 'results.json').read_text()) for run in runs}
table = (sensia_table(results) + f"\n\ncorpus {corpus}; english = the starting point before adaptation; "
         "multiple-choice details: " + ", ".join(str(out / run / 'eval' / 'report.md') for run in runs) + "\n")
(out / 'comparison.md').write_text(table)
print(table)
PY
