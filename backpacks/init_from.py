"""Where a training run's model starts: the checkpoint it resumes, a fresh model of the settings' size
(a preset or n_layer/n_head/...), the published backpack-gpt2 resized to a dataset (finetuning), or a
run of this repository (e.g. SENSIA adapting an English Backpack). Each refuses, in one line, a start
that does not fit the settings or the dataset.

    model = starting_model(cfg, explicit, meta, data_path, resume)
"""
import dataclasses
from pathlib import Path

from backpacks.checkpoint import ARCH_KEYS, CheckpointError, load_checkpoint, model_from_checkpoint
from backpacks.cli import fail
from backpacks.hf_format import PretrainedFormatError, load_backpack_gpt2
from model import PRESETS, BackpackLM, ModelConfig, build_model, check_model, preset_config

DEFAULT_PRETRAINED = 'stanfordnlp/backpack-gpt2'


def starting_model(cfg, explicit, meta, data_path, resume):
    """The model the run starts from: the checkpoint it resumes, backpack-gpt2, another run, or a fresh one."""
    if resume is not None:
        return model_from_checkpoint(resume)
    if cfg['init_from'] == 'backpack-gpt2':
        if cfg['model_type'] != 'backpack':
            fail("--init_from=backpack-gpt2 trains a backpack; remove --model_type=transformer")
        return pretrained_backpack(cfg, explicit, meta, data_path)
    if cfg['init_from'] != 'scratch':
        return model_from_run(cfg['init_from'], cfg, meta, data_path)
    return model_from_settings(cfg, explicit, meta['vocab_size'])


def resolve_model_type(cfg, explicit):
    """A preset implies its model_type; an explicit model_type that contradicts it is an error."""
    if cfg['preset']:
        preset_type = PRESETS[cfg['preset']][0]
        if 'model_type' in explicit and explicit['model_type'] != preset_type:
            fail(f"preset {cfg['preset']!r} is a {preset_type} but model_type is {explicit['model_type']!r}")
        cfg['model_type'] = preset_type


def fresh_model_config(cfg, explicit, vocab_size):
    """(model_type, ModelConfig) of a fresh model from a preset (explicit sizes override it) or from
    n_layer/n_head/...; one line if no model can have those sizes."""
    try:
        if cfg['preset']:
            preset_dims = PRESETS[cfg['preset']][1]
            sizes = {k: cfg[k] for k in ARCH_KEYS if k in explicit or k not in preset_dims}
            model_type, config = preset_config(cfg['preset'], vocab_size=vocab_size, **sizes)
        else:
            model_type = cfg['model_type']
            config = ModelConfig(vocab_size=vocab_size, **{k: cfg[k] for k in ARCH_KEYS})
        check_model(model_type, config)
    except ValueError as e:
        fail(f"invalid model size: {e}")
    return model_type, config


def model_from_settings(cfg, explicit, vocab_size):
    return build_model(*fresh_model_config(cfg, explicit, vocab_size))


def embedding_name(model):
    return next(name for name, p in model.named_parameters() if p is model.token_embeddings)


def pretrained_backpack(cfg, explicit, meta, data_path):
    """backpack-gpt2 weights resized to the dataset: embedding rows for ids beyond the pretrained
    vocabulary and for the tags set to the mean pretrained embedding, positions cropped to block_size."""
    kind = meta['tokenizer']['kind']
    if kind != 'gpt2':
        fail(f"--init_from=backpack-gpt2 needs a dataset made with the gpt2 tokenizer, but {data_path} "
             f"uses {kind!r}: prepare one with data/europarl/prepare.py --tokenizer gpt2")
    source = cfg['pretrained_path'] or DEFAULT_PRETRAINED
    try:
        pretrained = load_backpack_gpt2(source)
    except (PretrainedFormatError, OSError) as e:
        fail(f"cannot load pretrained Backpack {source}: {e}")
    base = pretrained.config
    for key in ('n_layer', 'n_head', 'n_embd', 'n_senses', 'bias'):
        if key in explicit and explicit[key] != getattr(base, key):
            fail(f"{key}={explicit[key]!r} was given but {source} has {key}={getattr(base, key)!r}; "
                 "a finetuned model keeps the pretrained size")
    if cfg['block_size'] > base.block_size:
        fail(f"block_size {cfg['block_size']} exceeds the {base.block_size} positions of {source}")
    config = dataclasses.replace(base, vocab_size=max(base.vocab_size, meta['vocab_size']),
                                 block_size=cfg['block_size'], dropout=cfg['dropout'])
    model = BackpackLM(config)
    target, emb = model.state_dict(), embedding_name(pretrained)
    state = {name: tensor[tuple(slice(0, n) for n in target[name].shape)]  # crops the position table
             for name, tensor in pretrained.state_dict().items()}
    old = pretrained.token_embeddings.detach()
    mean = old[:min(meta['tokenizer']['base_vocab_size'], len(old))].mean(dim=0)
    grown = mean.repeat(config.vocab_size, 1)
    grown[:len(old)] = old
    grown[[meta['special_tokens']['en'], meta['special_tokens']['fr']]] = mean
    state[emb] = grown
    model.load_state_dict(state)
    return model


def same_tokenizer(meta_a, meta_b):
    """The tokenizers' sha256 when both metas record it, else their kind and vocabulary size."""
    if meta_a.get('tokenizer_sha256') and meta_b.get('tokenizer_sha256'):
        return meta_a['tokenizer_sha256'] == meta_b['tokenizer_sha256']
    return (meta_a['tokenizer']['kind'], meta_a['vocab_size']) == (meta_b['tokenizer']['kind'], meta_b['vocab_size'])


def model_from_run(run_dir, cfg, meta, data_path):
    """The model of a run of this repository (best.pt, else ckpt.pt), on the dataset's tokenizer."""
    path = next((Path(run_dir) / name for name in ('best.pt', 'ckpt.pt') if (Path(run_dir) / name).is_file()), None)
    if path is None:
        fail(f"init_from={run_dir!r} has no best.pt or ckpt.pt to start from")
    try:
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt)
    except CheckpointError as e:
        fail(str(e))
    if cfg['objective'] == 'sensia' and model.model_type != 'backpack':
        fail(f"{path} is a {model.model_type}; objective 'sensia' adapts a Backpack's senses")
    if not same_tokenizer(ckpt['meta'], meta):
        fail(f"{path} was trained with another tokenizer ({ckpt['meta']['tokenizer']['kind']}, vocab "
             f"{ckpt['meta']['vocab_size']}) than {data_path} ({meta['tokenizer']['kind']}, vocab {meta['vocab_size']}); "
             "prepare the adaptation data with the starting model's tokenizer")
    return model
