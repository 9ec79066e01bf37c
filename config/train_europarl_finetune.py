# Finetune the published Backpack (stanfordnlp/backpack-gpt2, 124M) on Europarl English-French.
# It reads GPT-2 token ids, so the data must be prepared with the gpt2 tokenizer first:
#   python -m data.europarl.prepare --tokenizer gpt2 --name europarl_en_fr_gpt2
# Without hub access, download the model elsewhere and add --pretrained_path=DIR.
out_dir = 'out-europarl-finetune'
data_dir = 'europarl_en_fr_gpt2'
init_from = 'backpack-gpt2'
model_type = 'backpack'

block_size = 512
dropout = 0.1

batch_size = 16
learning_rate = 1e-5
max_iters = 5000
warmup_iters = 100
weight_decay = 0.1

eval_interval = 250
eval_iters = 200
checkpoint_interval = 250
