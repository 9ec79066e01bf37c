# A tiny Backpack on the project's sample corpus: trains on a 2-core CPU in a few minutes
# and ends with a val loss well below the unigram entropy of the data (printed at start).
# Prepare the data once (a 512-token BPE: the default vocabulary is too large for 450 pairs):
#   python -m data.europarl.prepare --source local --corpus data/europarl/sample/parliament --name sample --vocab_size 512
# then: python train.py config/train_sample_tiny.py
# Its Transformer baselines are overlays given after it: config/train_sample_tiny_transformer.py (the same
# backbone) and config/train_sample_tiny_transformer_matched.py (as many parameters).
out_dir = 'out-europarl-tiny'
data_dir = 'sample'
model_type = 'backpack'

n_layer = 4
n_head = 4
n_embd = 128
n_senses = 4
block_size = 128
dropout = 0.2

batch_size = 16
learning_rate = 2e-3
max_iters = 600  # the 450-pair sample teaches little more: best val loss 3.649 against 3.628 with 800 iterations (+0.6%)
warmup_iters = 150
weight_decay = 0.1
beta2 = 0.99  # small batches: a shorter second-moment memory

eval_interval = 200
eval_iters = 20
log_interval = 100
checkpoint_interval = 400
