#!/usr/bin/env bash
# The main job on a CPU, from a fresh clone: install the requirements, prepare an English-French
# dataset, train a tiny Backpack and its matched Transformer, evaluate both and write the comparison.
#
#   bash experiments/tiny_comparison.sh                    # the project's sample corpus, offline
#   bash experiments/tiny_comparison.sh --source europarl  # Europarl from the Hugging Face hub
#   SMOKE=1 INSTALL=0 bash experiments/tiny_comparison.sh  # every step at toy sizes, in seconds
#
# Evaluation resources (word similarity, dictionaries) are read from $ENFR_DATA (by default
# ../shared/data/en-fr beside the repository when it exists), else from the resources.py cache,
# else fetched when online; a missing resource skips its metric with the reason recorded. Running it again resumes or reuses what is already trained.
# Settings (environment): OUT (runs; default out), DATA_ROOT (prepared datasets; default data), INSTALL=0 (the
# requirements are already installed: no pip), SMOKE=1 (a 2-layer, 32-wide model for 6 iterations and a
# short evaluation; OUT defaults to out/tiny_comparison_smoke, DATA_ROOT to OUT/data), ENFR_DATA,
# PYTHON (the interpreter that runs each step; default: the python on PATH, e.g. PYTHON=venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
# glibc keeps freed memory for reuse instead of unmapping each step's large buffers (logits, their gradient):
# CPU training steps 12-25% faster measured (docs/performance.md); a value already set is kept
export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_-68719476736}

source=local
if [[ $# -gt 0 ]]; then
  [[ $# -eq 2 && $1 == --source && ($2 == local || $2 == europarl) ]] \
    || { echo "usage: [SMOKE=1] [INSTALL=0] [OUT=DIR] [DATA_ROOT=DIR] [PYTHON=...] bash experiments/tiny_comparison.sh [--source local|europarl]" >&2; exit 2; }
  source=$2
fi
if [[ -z ${ENFR_DATA:-} && -d ../shared/data/en-fr ]]; then
  export ENFR_DATA=$(cd ../shared/data/en-fr && pwd)
fi
"$PYTHON" -m backpacks.cli  # the environment, in one line, before anything is installed or written

[[ ${INSTALL:-1} == 0 ]] || "$PYTHON" -m pip install -q -r requirements.txt

if [[ ${SMOKE:-0} == 1 ]]; then  # the same steps at toy sizes: checks the recipe, measures nothing
  OUT=${OUT:-out/tiny_comparison_smoke}; DATA_ROOT=${DATA_ROOT:-$OUT/data}
  SHAPE=(--n_layer=2 --n_head=2 --n_embd=32 --n_senses=4 --block_size=64 --batch_size=4 --max_iters=6 --eval_iters=2)
  EVAL=(--loss_batches 2 --translation_samples 4 --max_new_tokens 12 --sentence_pairs 16 --sense_sentences 4
        --sense_pairs 50)
else
  SHAPE=(); EVAL=()
fi
OUT=${OUT:-out}; DATA_ROOT=${DATA_ROOT:-data}
"$PYTHON" -m backpacks.cli --writable OUT="$OUT" DATA_ROOT="$DATA_ROOT"
sizing=()  # the configs' 600 iterations fit the 450-pair sample; 20,000 pairs teach longer: stop on val loss
if [[ $source == europarl ]]; then
  data=europarl_tiny
  sizing=(--max_iters=2400 --early_stop_evals=3)
  [[ -f $DATA_ROOT/$data/meta.json ]] || "$PYTHON" -m data.europarl.prepare --source europarl --name $data \
    --out_root "$DATA_ROOT" --max_pairs 20000 --vocab_size 4096
else
  data=sample
  [[ -f $DATA_ROOT/$data/meta.json ]] || "$PYTHON" -m data.europarl.prepare --source local \
    --corpus data/europarl/sample/parliament --name $data --out_root "$DATA_ROOT" --vocab_size 512
fi

train() {  # out_dir, config files: continue an earlier run of the same job instead of starting over
  local out=$1 resume=()
  shift
  [[ -f $out/ckpt.pt ]] && resume=(--init_from=resume)
  "$PYTHON" train.py "$@" --data_dir="$DATA_ROOT/$data" --out_dir="$out" "${sizing[@]}" "${SHAPE[@]}" "${resume[@]}"
}
runs=$OUT/tiny_${data}
train "${runs}_backpack" config/train_sample_tiny.py
train "${runs}_transformer" config/train_sample_tiny.py config/train_sample_tiny_transformer.py

"$PYTHON" compare_models.py --backpack_dir "${runs}_backpack" --transformer_dir "${runs}_transformer" \
  --device cpu --output_dir "${runs}_comparison" "${EVAL[@]}"
# tasks that must have run: word similarity and lexicon induction wherever their resources exist
require=loss,translation,sentence
[[ -n ${ENFR_DATA:-} && -d $ENFR_DATA/wordsim ]] && require+=,wordsim
[[ -n ${ENFR_DATA:-} && -f $ENFR_DATA/lexicon/muse-en-fr.0-5000.tsv ]] && require+=,bli
"$PYTHON" verify_evaluation.py --out_dir "${runs}_backpack" --require $require,senses
"$PYTHON" verify_evaluation.py --out_dir "${runs}_transformer" --require $require
echo "comparison report: ${runs}_comparison/comparison.md"
