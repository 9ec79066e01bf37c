"""The study's plan (experiments/study.sh): the Transformer baselines matched to the Backpack by
tokens, by training FLOPs and by parameters, and the standard evaluation sets with their fallbacks.

    plan = matched_runs(shape, vocab_size, iters)   # {'transformer_flops': {'max_iters': ...}, ...}

Matching, all at the same data, batch, block and schedule shape:
  tokens:     the Backpack's backbone (layers, heads, width) and its iterations
  FLOPs:      the same backbone, iterations x flops_per_token(Backpack) / flops_per_token(Transformer),
              so both spend the same training FLOPs (model.flops_per_token: 6N + attention, per token),
              the Backpack's as it computes them: its sense network once per distinct token of a batch,
              at the share measured on the study's training batches (sense_share)
  parameters: the same depth and heads, the width whose total parameter count is nearest the
              Backpack's (the Backpack's extra parameters are its sense network), and its iterations;
              and the width whose non-embedding count (all but the token and position tables) is
              nearest: a wider token table buys the first Transformer much of its total
"""
from dataclasses import dataclass, replace

import torch

from backpacks.dataset import BatchSampler
from backpacks.eval import resources
from model import ModelConfig, build_model

MATCHINGS = ("tokens", "flops", "params")
# standard sets of the layout (resources.py), each with what stands in when it cannot be had
STANDARD_SETS = {"flores200": ("parallel/flores200-devtest.en", "parallel/flores200-devtest.fr"),
                 "muse_test": ("lexicon/muse-en-fr.5000-6500.tsv",)}


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int
    n_senses: int
    block_size: int


def meta_model(model_type, **config):
    """An untrained model on the meta device: its parameter and FLOP counts without allocating weights."""
    with torch.device("meta"):
        return build_model(model_type, ModelConfig(**config))


def build(model_type, shape, vocab_size, **overrides):
    """meta_model of a study shape."""
    shape = replace(shape, **overrides)
    args = dict(n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd, block_size=shape.block_size,
                vocab_size=vocab_size, dropout=0.0)
    if model_type == "backpack":
        args["n_senses"] = shape.n_senses
    return meta_model(model_type, **args)


def param_matched_width(shape, vocab_size, count="total"):
    """The Transformer width (a multiple of 2 x n_head: even head dimensions) whose parameters (count:
    'total' or 'non_embedding', model.param_counts) are nearest the Backpack's, and both counts."""
    target = build("backpack", shape, vocab_size).param_counts()[count]
    step = 2 * shape.n_head
    widths = range(step, 4 * shape.n_embd + step, step)
    totals = {w: build("transformer", shape, vocab_size, n_embd=w).param_counts()[count] for w in widths}
    width = min(totals, key=lambda w: abs(totals[w] - target))
    return width, totals[width], target


def sense_share(shape, data_dir, batch_size, batches=20, seed=1337):
    """The mean share of positions the Backpack's sense network runs on (BackpackLM.sense_share) over
    `batches` training batches of the study's shape drawn from data_dir."""
    backpack = build("backpack", shape, 1)  # the share reads the batch's ids only
    sampler = BatchSampler(data_dir, seed=seed)
    return sum(backpack.sense_share(sampler.get_batch("train", batch_size, shape.block_size)[0])
               for _ in range(batches)) / batches


def matched_runs(shape, vocab_size, iters, share=1.0):
    """{name: train.py settings} of the three Transformer baselines, each with why it is matched.
    share: the Backpack's sense share (sense_share), which its FLOPs per token count."""
    backpack = build("backpack", shape, vocab_size)
    transformer = build("transformer", shape, vocab_size)
    backpack_flops = backpack.flops_per_token(distinct_share=share)
    ratio = backpack_flops / transformer.flops_per_token()
    width, total, target = param_matched_width(shape, vocab_size)
    wide, non_embedding, target_non_embedding = param_matched_width(shape, vocab_size, "non_embedding")
    return {
        "transformer_tokens": {"max_iters": iters, "n_embd": shape.n_embd,
                               "why": f"same backbone and tokens ({iters} iterations)"},
        "transformer_flops": {"max_iters": round(iters * ratio), "n_embd": shape.n_embd,
                              "why": f"same backbone; iterations x {ratio:.3f}, the ratio of flops_per_token "
                                     f"({backpack_flops / 1e6:.1f}M / {transformer.flops_per_token() / 1e6:.1f}M; "
                                     f"the sense network on {share:.1%} of the positions, "
                                     f"{backpack.flops_per_token() / 1e6:.1f}M at every position)"},
        "transformer_params": {"max_iters": iters, "n_embd": width,
                               "why": f"width {width} instead of {shape.n_embd}: {total:,} parameters against the "
                                      f"Backpack's {target:,} ({total / target - 1:+.1%})"},
        "transformer_params_nonemb": {"max_iters": iters, "n_embd": wide,
                                      "why": f"width {wide}: {non_embedding:,} non-embedding parameters against the "
                                             f"Backpack's {target_non_embedding:,} "
                                             f"({non_embedding / target_non_embedding - 1:+.1%})"},
    }


# PROFILE=gpu (experiments/study.sh): a wider Backpack and larger batches for one GPU, trained for about
# GPU_MINUTES per unit at the throughput bench.py measures there, at most GPU_MAX_EPOCHS passes over the corpus
GPU_SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "n_senses": 16, "block_size": 256, "batch_size": 32}
GPU_MINUTES = 8
GPU_MAX_EPOCHS = 3


def gpu_iters(step_ms, train_tokens, minutes=GPU_MINUTES, max_epochs=GPU_MAX_EPOCHS, shape=GPU_SHAPE):
    """(Backpack iterations, why) for PROFILE=gpu: what `minutes` of training buys at the measured step
    time, capped at max_epochs of the training tokens, rounded down to a multiple of 100 (at least 300)."""
    per_iter = shape["batch_size"] * shape["block_size"]
    by_time = int(minutes * 60_000 / step_ms)
    by_data = int(max_epochs * train_tokens / per_iter)
    iters = max(300, min(by_time, by_data) // 100 * 100)
    limit = (f"{minutes} minutes at {step_ms:.0f} ms per step" if by_time <= by_data
             else f"{max_epochs} epochs of {train_tokens:,} training tokens")
    return iters, f"{iters} iterations of {per_iter:,} tokens: {limit}"


def standard_set(name, data_root, fetch):
    """(paths, None) of a standard set found in the layout (fetched when allowed), else (None, why not)."""
    try:
        return [resources.locate(rel, data_root, fetch) for rel in STANDARD_SETS[name]], None
    except resources.ResourceMissing as e:
        return None, str(e)
