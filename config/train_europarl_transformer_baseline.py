# The Transformer baseline of config/train_europarl_scratch.py, given after it: the same backbone, data
# and schedule, logits read from the final hidden states instead of from sense vectors.
#   python train.py config/train_europarl_scratch.py config/train_europarl_transformer_baseline.py
out_dir = 'out-europarl-transformer'
model_type = 'transformer'
