#!/usr/bin/env bash
# The study: a Backpack against Transformers matched by tokens, training FLOPs and parameters, in
# units (one model at one seed) whose small results go into a results folder; SENSIA against its
# controls; the sense interventions; one report (study.md and figures) generated from the results
# folder alone, whose path is the last line printed. A unit whose results are in the folder is not run
# again, an interrupted one resumes, so a stopped study (or another machine, given the committed folder)
# continues where it stopped.
#
#   bash experiments/study.sh                          # Europarl en-fr from the hub, 100k pairs
#   bash experiments/study.sh --corpus PREFIX ...      # local NAME.en/NAME.fr pairs (or TSV files)
#   SMOKE=1 bash experiments/study.sh                  # every step on the sample corpus, in minutes
#
# Settings (environment): OUT (weights and data; default out/study), RESULTS (the units' results and the
# report; default OUT/results), ITERS (Backpack iterations, default 1200), SEEDS (seeds of the decisive
# pair, the Backpack and the FLOP-matched Transformer: 1 to 3, default 3), OTHER_SEEDS (seeds of the
# token- and parameter-matched Transformers: 0 to 3, default 1), SENSIA_PRETRAIN_ITERS (300),
# SENSIA_ITERS (60), PROFILE=gpu (one GPU: a 6-layer, 384-wide Backpack on batches of 32 x 256 tokens, its
# iterations sized from the step time bench.py measures there, about 8 minutes of training per unit), ENFR_DATA (evaluation resources; default ../shared/data/en-fr when present),
# PYTHON (the interpreter that runs each step; default: the python on PATH, e.g. PYTHON=venv/bin/python).
# docs/study.md says what each step measures and how long it takes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
# glibc keeps freed memory for reuse instead of unmapping each step's large buffers (logits, their gradient):
# CPU training steps 12-25% faster measured (docs/performance.md); a value already set is kept
export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_-68719476736}

usage="usage: [SMOKE=1] [OUT=DIR] [RESULTS=DIR] [ITERS=N] [SEEDS=1..3] [OTHER_SEEDS=0..3] [PYTHON=...] bash experiments/study.sh [--corpus PREFIX ...]"
corpus=()
if [[ $# -gt 0 ]]; then
  [[ $1 == --corpus && $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }
  shift
  corpus=("$@")
fi
[[ ${SEEDS:-3} =~ ^[123]$ ]] || { echo "error: SEEDS must be 1, 2 or 3, got $SEEDS" >&2; exit 2; }
[[ ${OTHER_SEEDS:-1} =~ ^[0123]$ ]] || { echo "error: OTHER_SEEDS must be 0, 1, 2 or 3, got $OTHER_SEEDS" >&2; exit 2; }
[[ ${PROFILE:-cpu} == cpu || ${PROFILE:-cpu} == gpu ]] || { echo "error: PROFILE must be cpu or gpu, got $PROFILE" >&2; exit 2; }
[[ ${PROFILE:-cpu} == cpu || ${SMOKE:-0} != 1 ]] || { echo "error: SMOKE=1 runs the CPU toy sizes; leave PROFILE unset" >&2; exit 2; }
counts=()  # the iteration settings given: positive integers, checked with the folders below
for count in ITERS SENSIA_PRETRAIN_ITERS SENSIA_ITERS; do [[ -n ${!count:-} ]] && counts+=("$count=${!count}"); done
if [[ -z ${ENFR_DATA:-} && -d ../shared/data/en-fr ]]; then
  export ENFR_DATA=$(cd ../shared/data/en-fr && pwd)
fi
"$PYTHON" -m backpacks.cli --writable OUT="${OUT:-out}" RESULTS="${RESULTS:-${OUT:-out}}" --count "${counts[@]}"

if [[ ${SMOKE:-0} == 1 ]]; then  # the same steps at toy sizes: checks the pipeline, measures nothing
  OUT=${OUT:-out/study_smoke}; ITERS=${ITERS:-6}; SEEDS=${SEEDS:-2}; PRE=${SENSIA_PRETRAIN_ITERS:-6}; ADAPT=${SENSIA_ITERS:-4}
  ADAPT_BATCH=(--batch_size=8 --sensia_eval_pairs=16)
  ((${#corpus[@]})) || corpus=(data/europarl/sample/parliament)
  VOCAB=512; MAX_PAIRS=(); SHAPE=(--n_layer=2 --n_head=2 --n_embd=32 --n_senses=4 --block_size=64 --batch_size=4)
  EVAL=(--loss_batches 2)  # every snapshot; the last one also FINAL_EVAL
  FINAL_EVAL=(--translation_samples 4 --max_new_tokens 12 --sentence_pairs 16 --mc_examples 8 --sense_sentences 4
              --sense_pairs 50)
  SENSIA_EVAL=(--loss_batches 2 --mc_examples 8 --geometry_pairs 50 --geometry_sentences 16)
  INTERVENE=(--samples 1 --max_new_tokens 4 --topics 1 --professions 2)
  REPORT=(--samples 200)
else
  OUT=${OUT:-out/study$([[ ${PROFILE:-cpu} == gpu ]] && echo _gpu)}; ITERS=${ITERS:-1200}; PRE=${SENSIA_PRETRAIN_ITERS:-300}; ADAPT=${SENSIA_ITERS:-60}
  VOCAB=16384; MAX_PAIRS=(--max_pairs 100000); SHAPE=()
  # every snapshot: 960 disjoint test windows (123k tokens); the last one: 100 translations each way, 500
  # sentence pairs, 200 multiple-choice examples per set (100 reported); SENSIA: 500 dictionary pairs and
  # 200 test pairs for its geometry
  EVAL=(--loss_batches 60)
  FINAL_EVAL=(--translation_samples 100 --sentence_pairs 500 --mc_examples 200)
  SENSIA_EVAL=(--loss_batches 60 --mc_examples 200 --geometry_pairs 500 --geometry_sentences 200)
  INTERVENE=(--samples 4 --max_new_tokens 20)
  REPORT=()
  ADAPT_BATCH=(--batch_size=16 --sensia_eval_pairs=200)  # 16 pairs: 15 negatives per InfoNCE row
fi
UNIT_COUNTS=(--seeds "${SEEDS:-3}" --other_seeds "${OTHER_SEEDS:-1}")
if ((${#corpus[@]})); then source=(--source local --corpus "${corpus[@]}"); else source=(--source europarl); fi
RESULTS=${RESULTS:-$OUT/results}
mkdir -p "$OUT/steps" "$RESULTS"
data=$OUT/data/study
data_en=$OUT/data/study_en
started=$SECONDS
step_number=0
step() {  # progress line of the next step
  step_number=$((step_number + 1))
  printf '[study %2d | %s | %3d min] %s\n' "$step_number" "$(date +%H:%M:%S)" $(((SECONDS - started) / 60)) "$*"
}
fail() { echo "error: $*" >&2; exit 1; }
timed() {  # name, command...: run it and append its wall time to $OUT/steps/times.tsv
  local name=$1 t0=$SECONDS; shift
  "$@" || return
  printf '%s\t%d\n' "$name" $((SECONDS - t0)) >> "$OUT/steps/times.tsv"
}
key_of() {  # the settings (and input files) a step ran with, as a short key
  printf '%s\n' "$@" | sha256sum | cut -c1-16
}
files() {  # input files by name, size and time: a retrained checkpoint changes the key
  stat -c '%n %s %Y' "$@"
}
is_done() {  # step name, key: the step finished with exactly these settings
  [[ -f $OUT/steps/$1.done && $(cat "$OUT/steps/$1.done") == "$2" ]]
}
mark_done() {
  echo "$2" > "$OUT/steps/$1.done"
}
finished() {  # out_dir, iterations: its training log reached the last iteration
  "$PYTHON" -c 'import json, sys; log = json.load(open(sys.argv[1])); sys.exit(not log or log[-1]["iter"] < int(sys.argv[2]))' \
    "$1/training_log.json" "$2" 2> /dev/null
}
train() {  # step name, out_dir, iterations, train.py arguments: a finished run is kept, an interrupted one resumed
  local name=$1 out=$2 iters=$3; shift 3
  local key; key=$(key_of "$@")
  if is_done "train_$name" "$key"; then
    echo "  reusing the finished run $out"
    return
  fi
  if [[ -f $out/ckpt.pt ]]; then
    [[ $(cat "$OUT/steps/train_$name.started" 2> /dev/null) == "$key" ]] \
      || fail "$out was trained with other settings than this study's now; remove it or choose another OUT"
    timed "train $name" "$PYTHON" train.py --init_from=resume --out_dir="$out"
  else
    echo "$key" > "$OUT/steps/train_$name.started"
    timed "train $name" "$PYTHON" train.py "$@" --out_dir="$out"
  fi
  finished "$out" "$iters" || fail "$out stopped before iteration $iters (interrupted?); run the study again to resume it"
  mark_done "train_$name" "$key"
}
prepare() {  # dataset name, prepare.py options: prepared once; other settings later are refused
  local key; key=$(key_of "$@")
  if [[ -f $OUT/data/$1/meta.json ]]; then
    is_done "prepare_$1" "$key" || fail "$OUT/data/$1 was prepared from another corpus or settings; choose another OUT"
    return
  fi
  timed "prepare $1" "$PYTHON" -m data.europarl.prepare --name "$1" --out_root "$OUT/data" "${@:2}"
  mark_done "prepare_$1" "$key"
}

step "datasets: a ${VOCAB}-token bilingual BPE on ${corpus[*]:-Europarl from the hub}; pairs, and English only for SENSIA"
prepare study "${source[@]}" --vocab_size $VOCAB "${MAX_PAIRS[@]}"
prepare study_en "${source[@]}" --vocab_size $VOCAB "${MAX_PAIRS[@]}" --lm_languages en

if [[ ${PROFILE:-cpu} == gpu ]]; then
  step "GPU profile: the shape and iterations for this GPU"
  { read -r -a SHAPE && read -r ITERS; } < <("$PYTHON" -m experiments.study gpu_profile --data_dir "$data")
  [[ -n ${ITERS:-} ]] || fail "the GPU profile could not be sized (see above)"
fi

step "plan: the Transformers matched to the Backpack by tokens, FLOPs and parameters; the standard test sets"
"$PYTHON" -m experiments.study plan --out "$OUT" --results "$RESULTS" --data_dir "$data" --iters "$ITERS" "${SHAPE[@]}"
source "$OUT/plan.env"  # TRANSFORMER_*_MAX_ITERS, TRANSFORMER_*_N_EMBD, TEST_SET, DICTIONARY

# the units: one model at one seed each, trained with snapshots every 300 iterations, every snapshot evaluated,
# the unit's results written into $RESULTS (no weights); a unit whose results are there is not run again
evaluate_snapshots() {  # unit name, model type, run dir: evaluate.py on each snapshot (the last one fully)
  local snapshot last reps
  [[ $2 == backpack ]] && reps=embedding,mean,minpair,maxpair,random_pieces || reps=embedding,random_pieces
  last=$(ls -d "$3"/snapshots/iter_* | tail -1)
  for snapshot in "$3"/snapshots/iter_*; do
    [[ -f $snapshot/eval/results.json ]] && continue
    local tasks=loss,wordsim,bli more=()
    if [[ $snapshot == "$last" ]]; then
      tasks+=,translation,sentence,xnli,pawsx
      [[ $2 == backpack ]] && tasks+=,senses
      more=("${FINAL_EVAL[@]}" "${TEST_SET[@]}")
    fi
    timed "evaluate $1 $(basename "$snapshot")" "$PYTHON" evaluate.py --out_dir "$snapshot" --ckpt latest --tasks "$tasks" \
      --word_reps "$reps" --bli_reps "${reps/,minpair,maxpair/}" "${EVAL[@]}" "${more[@]}" "${DICTIONARY[@]}" > /dev/null
  done
}
while read -r -u 3 unit model_type settings; do  # fd 3: the steps inside keep their own stdin
  step "unit $unit: train, evaluate its snapshots, write $RESULTS/$unit.json"
  read -ra settings <<< "$settings"
  for setting in "${settings[@]}"; do [[ $setting == --max_iters=* ]] && iters=${setting#--max_iters=}; done
  train "$unit" "$OUT/units/$unit" "$iters" config/study.py "${SHAPE[@]}" "${settings[@]}"
  evaluate_snapshots "$unit" "$model_type" "$OUT/units/$unit"
  "$PYTHON" -m experiments.study collect --results "$RESULTS" --unit "$unit" --run_dir "$OUT/units/$unit"
done 3< <("$PYTHON" -m experiments.study units --results "$RESULTS" "${UNIT_COUNTS[@]}")
"$PYTHON" -m experiments.study status --results "$RESULTS" "${UNIT_COUNTS[@]}"

sensia() {  # SENSIA against its controls: pretrain in English, adapt three ways, evaluate, results into $RESULTS
  step "SENSIA: pretrain an English Backpack of the same shape on the English side"
  train sensia_english "$OUT/sensia/english" "$PRE" config/study.py "${SHAPE[@]}" --model_type=backpack --max_iters="$PRE" \
    --data_dir="$data_en" --warmup_iters=$((PRE / 10)) --eval_interval=$(((PRE + 4) / 5)) --checkpoint_interval=$(((PRE + 4) / 5))
  local run configs key
  for run in sensia lm_only mcl; do
    step "SENSIA: adapt to French with $run ($ADAPT steps)"
    configs=(config/adapt_sensia_tiny.py)  # the controls: an overlay after SENSIA's config
    [[ $run != sensia ]] && configs+=("config/adapt_${run}.py")
    train "sensia_$run" "$OUT/sensia/$run" "$ADAPT" "${configs[@]}" --init_from="$OUT/sensia/english" \
      --data_dir="$data_en" "${ADAPT_BATCH[@]}" --max_iters="$ADAPT" --warmup_iters=$((ADAPT / 10)) \
      --eval_interval=$(((ADAPT + 3) / 4)) --checkpoint_interval=$(((ADAPT + 3) / 4))
  done
  for run in english sensia lm_only mcl; do
    step "evaluate SENSIA run $run (French loss, recall@1, entropy, topology, Procrustes, mixture, XNLI, PAWS-X)"
    key=$(key_of "${SENSIA_EVAL[@]}" "$(files "$OUT/sensia/$run/ckpt.pt")")
    if ! is_done "evaluate_sensia_$run" "$key" || [[ ! -f $OUT/sensia/$run/eval/results.json ]]; then
      timed "evaluate $run" "$PYTHON" evaluate.py --out_dir "$OUT/sensia/$run" --ckpt latest --tasks loss,sensia,xnli,pawsx \
        "${SENSIA_EVAL[@]}" > /dev/null
      mark_done "evaluate_sensia_$run" "$key"
    fi
    "$PYTHON" -m experiments.study collect --results "$RESULTS" --unit "sensia_$run" --run_dir "$OUT/sensia/$run"
  done
}
if [[ -f $RESULTS/sensia_english.json && -f $RESULTS/sensia_sensia.json && -f $RESULTS/sensia_lm_only.json \
      && -f $RESULTS/sensia_mcl.json ]]; then
  step "SENSIA: its results are in $RESULTS"
else
  sensia
fi

backpack=$OUT/units/backpack_seed1337 transformer=$OUT/units/transformer_tokens_seed1337
if [[ -f $RESULTS/interventions.json ]]; then
  step "interventions: their results are in $RESULTS"
elif [[ -f $backpack/ckpt.pt && -f $transformer/ckpt.pt ]]; then
  step "interventions on the Backpack against the token-matched Transformer"
  key=$(key_of "${INTERVENE[@]}" "$(files "$backpack/ckpt.pt" "$transformer/ckpt.pt")")
  if ! is_done interventions "$key" || [[ ! -f $backpack/interventions/interventions.json ]]; then
    timed interventions "$PYTHON" -m experiments.run_interventions --out_dir "$backpack" --ckpt latest \
      --baseline_dir "$transformer" "${INTERVENE[@]}" > /dev/null
    mark_done interventions "$key"
  fi
  cp "$backpack"/interventions/interventions.{json,md} "$RESULTS/"
else
  step "interventions: skipped, the weights of backpack_seed1337 and transformer_tokens_seed1337 are not both in $OUT"
fi

step "report"
"$PYTHON" -m experiments.study report --results "$RESULTS" "${REPORT[@]}"
