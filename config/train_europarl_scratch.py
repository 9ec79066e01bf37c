# Backpack LM from scratch on Europarl English-French (a GPU run):
# python train.py config/train_europarl_scratch.py   (or --config train_europarl_scratch)
out_dir = 'out-europarl-scratch'
data_dir = 'europarl_en_fr'  # python -m data.europarl.prepare (default name)
model_type = 'backpack'

n_layer = 6
n_head = 6
n_embd = 384
n_senses = 16
block_size = 512
dropout = 0.1

batch_size = 32
learning_rate = 3e-4
max_iters = 50000
weight_decay = 0.1

eval_interval = 500
eval_iters = 200
checkpoint_interval = 500
