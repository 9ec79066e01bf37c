# A tiny Backpack on the project's sample corpus: trains on a 2-core CPU in about ten minutes
# and ends with a val loss well below the unigram entropy of the data (printed at start).
# Prepare the data once (a 512-token BPE: the default vocabulary is too large for 450 pairs):
#   python data/europarl/prepare.py --source local --corpus data/europarl/sample/parliament --name sample --vocab_size 512
# then: python train.py config/train_europarl_tiny.py
out_dir = 'out-europarl-tiny'
data_dir = 'sample'
model_type = 'backpack'
device = 'cpu'

n_layer = 2
n_head = 4
n_embd = 128
n_senses = 4
block_size = 64
dropout = 0.2

batch_size = 16
learning_rate = 2e-3
max_iters = 800
warmup_iters = 100
weight_decay = 0.1
beta2 = 0.99  # small batches: a shorter second-moment memory

eval_interval = 100
eval_iters = 10
log_interval = 50
checkpoint_interval = 200
