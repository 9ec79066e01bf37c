# The study's models (experiments/study.sh): a 4-layer, 256-wide Backpack with 16 senses on a 16k
# bilingual BPE, and the Transformers matched to it (study.sh passes model_type, width, iterations,
# data and out_dir). The same schedule for all: linear warmup over the first tenth, cosine to a tenth.
out_dir = 'out/study/backpack'
model_type = 'backpack'
n_layer = 4
n_head = 4
n_embd = 256
n_senses = 16
block_size = 128
dropout = 0.0  # fewer tokens than one epoch of the corpus: nothing to regularise

batch_size = 16
learning_rate = 1.5e-3
max_iters = 300
warmup_iters = 30
weight_decay = 0.1
beta2 = 0.99  # small batches: a shorter second-moment memory

eval_interval = 60
eval_iters = 8
log_interval = 20
checkpoint_interval = 60
