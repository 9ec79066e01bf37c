# The LM-only control of SENSIA, given after a SENSIA config: the same data, steps, schedule and freezing,
# the French LM loss alone (weights 0, 0, 1). --out_dir names its run folder:
#   python train.py config/adapt_sensia_tiny.py config/adapt_lm_only.py --out_dir=out-lm-only-tiny
#   python train.py config/adapt_sensia_backpack_gpt2.py config/adapt_lm_only.py --out_dir=out-lm-only-backpack-gpt2
out_dir = 'out-lm-only'  # without --out_dir: a folder of its own, never the SENSIA run's
sensia_losses = 'lm'
