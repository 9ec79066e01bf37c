# The English starting point of SENSIA on a CPU: a tiny Backpack trained on the English side only
# (the dataset's tokenizer covers both languages; its pairs files serve the adaptation afterwards).
#   python -m data.europarl.prepare --source local --corpus data/europarl/sample/parliament --name sample_en \
#       --vocab_size 512 --lm_languages en
#   python train.py config/pretrain_english_tiny.py
out_dir = 'out-english-tiny'
data_dir = 'sample_en'
model_type = 'backpack'

n_layer = 4
n_head = 4
n_embd = 128
n_senses = 8
block_size = 128
dropout = 0.1

batch_size = 16
learning_rate = 2e-3
max_iters = 600
warmup_iters = 60
weight_decay = 0.1
beta2 = 0.99

eval_interval = 100
eval_iters = 10
log_interval = 50
checkpoint_interval = 200
