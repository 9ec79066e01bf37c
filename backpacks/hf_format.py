"""The Hugging Face format of the published Backpack, stanfordnlp/backpack-gpt2: config.json and the
tensors, read and written without ever running the hub's code.

    model = load_backpack_gpt2('stanfordnlp/backpack-gpt2')   # or a local directory; a model.BackpackLM
    save_backpack_gpt2(model, 'out/my_backpack_hf')          # config.json and pytorch_model.bin

Our parameter names follow the checkpoint's, so converting is a rename and a transpose of GPT-2's
Conv1D weights. Any directory that is not a usable checkpoint is one PretrainedFormatError line.
"""
import json
from pathlib import Path

import torch

from backpacks.atomic import atomic_write, atomic_write_text
from model import BackpackLM, ModelConfig

HF_PREFIX = 'backpack.gpt2_model.'
HF_CONFIG_KEYS = ('vocab_size', 'n_positions', 'n_layer', 'n_head', 'n_embd', 'num_senses', 'sense_intermediate_scale')
# GPT-2's Conv1D stores (in, out): these are transposed relative to nn.Linear (the sense
# MLPs are Conv1D too; only sense_weight_net.c_attn is a plain Linear)
CONV1D_SUFFIXES = ('attn.c_attn.weight', 'c_proj.weight', 'c_fc.weight')
# duplicates of tied or derived tensors in the HF file
HF_ALIASES = ('backpack.word_embeddings.weight', 'backpack.position_embeddings.weight', 'lm_head.weight')


class PretrainedFormatError(ValueError):
    """A directory that is not a usable backpack-gpt2 checkpoint."""


def load_backpack_gpt2(name_or_path, dropout=0.0):
    """A BackpackLM with the weights of a backpack-gpt2-format local directory or hub id.
    Only config.json and the tensors are read: no remote code is ever run."""
    directory = pretrained_directory(name_or_path)
    hf_config = read_hf_config(directory)
    config = ModelConfig(
        vocab_size=hf_config['vocab_size'], block_size=hf_config['n_positions'],
        n_layer=hf_config['n_layer'], n_head=hf_config['n_head'], n_embd=hf_config['n_embd'],
        n_senses=hf_config['num_senses'], sense_intermediate_scale=hf_config['sense_intermediate_scale'],
        dropout=dropout, bias=True, layer_norm_epsilon=hf_config.get('layer_norm_epsilon', 1e-5),
        scale_attn_by_inverse_layer_idx=hf_config.get('scale_attn_by_inverse_layer_idx', False))
    model = BackpackLM(config)
    model.load_state_dict(state_dict_from_hf(read_hf_tensors(directory), model))
    return model


def save_backpack_gpt2(model, directory):
    """Write model's config.json and pytorch_model.bin in the backpack-gpt2 format (atomically)."""
    if model.sense_input is not None:
        raise ValueError("the backpack-gpt2 format has no place for the frozen copy of E the senses read")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / 'config.json', json.dumps(hf_config_of(model.config), indent=2))
    tensors = state_dict_to_hf(model)
    atomic_write(directory / 'pytorch_model.bin', lambda f: torch.save(tensors, f))


def hf_config_of(c):
    """The config.json of a ModelConfig, as the reference code writes it."""
    return {
        'model_type': 'backpack-gpt2', 'architectures': ['BackpackGPT2LMHeadModel'],
        'auto_map': {'AutoConfig': 'configuration_backpack_gpt2.BackpackGPT2Config',
                     'AutoModelForCausalLM': 'modeling_backpack_gpt2.BackpackGPT2LMHeadModel'},
        'activation_function': 'gelu_new', 'vocab_size': c.vocab_size, 'n_positions': c.block_size,
        'n_embd': c.n_embd, 'n_layer': c.n_layer, 'n_head': c.n_head, 'n_inner': None,
        'num_senses': c.n_senses, 'sense_intermediate_scale': c.sense_intermediate_scale,
        'resid_pdrop': c.dropout, 'embd_pdrop': c.dropout, 'attn_pdrop': c.dropout,
        'layer_norm_epsilon': c.layer_norm_epsilon, 'initializer_range': 0.02,
        'scale_attn_weights': True, 'scale_attn_by_inverse_layer_idx': c.scale_attn_by_inverse_layer_idx,
        'reorder_and_upcast_attn': False, 'bos_token_id': 50256, 'eos_token_id': 50256,
    }


def pretrained_directory(name_or_path):
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).count('/') != 1:
        raise PretrainedFormatError(f"{name_or_path} is not a directory nor a hub id like 'stanfordnlp/backpack-gpt2'")
    from huggingface_hub import snapshot_download  # only for hub ids; fetches config and tensors, never code
    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=['config.json', '*.safetensors', 'pytorch_model.bin']))
    except Exception as e:
        raise PretrainedFormatError(
            f"could not download {name_or_path} from the Hugging Face hub ({type(e).__name__}); "
            "download it elsewhere and pass the local directory") from None


def read_hf_config(directory):
    path = directory / 'config.json'
    if not path.is_file():
        raise PretrainedFormatError(f"{directory} has no config.json: not a Hugging Face checkpoint directory")
    try:
        hf_config = json.loads(path.read_text(encoding='utf-8'))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PretrainedFormatError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(hf_config, dict):
        raise PretrainedFormatError(f"{path} is not a JSON object")
    missing = [k for k in HF_CONFIG_KEYS if not isinstance(hf_config.get(k), (int, float))]
    if missing:
        raise PretrainedFormatError(f"{path} lacks the number(s) {', '.join(missing)}: not a backpack-gpt2 config")
    if hf_config.get('model_type') != 'backpack-gpt2':
        raise PretrainedFormatError(f"{path}: model_type is {hf_config.get('model_type')!r}, expected 'backpack-gpt2'")
    if hf_config.get('activation_function', 'gelu_new') != 'gelu_new' or hf_config.get('n_inner') not in (None, 4 * hf_config['n_embd']):
        raise PretrainedFormatError(f"{path}: only gelu_new and n_inner = 4 n_embd are supported")
    return hf_config


def read_hf_tensors(directory):
    safetensors, pickled = directory / 'model.safetensors', directory / 'pytorch_model.bin'
    try:
        if safetensors.is_file():
            from safetensors.torch import load_file
            return load_file(safetensors)
        if pickled.is_file():
            return torch.load(pickled, map_location='cpu', weights_only=True)
    except Exception:  # truncated files, pickles of code (refused by weights_only): never PyTorch's advice
        raise PretrainedFormatError(
            f"{safetensors if safetensors.is_file() else pickled} is not a readable weights file "
            "(truncated, or holding objects other than tensors, which are not loaded since that could run code)") from None
    raise PretrainedFormatError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def hf_name(name):
    """Our parameter name -> its name in the backpack-gpt2 checkpoint."""
    if name.startswith('backbone.'):
        return HF_PREFIX + name[len('backbone.'):]
    return 'backpack.' + name


def state_dict_from_hf(hf_tensors, model):
    state = {}
    for name, param in model.state_dict().items():
        theirs = hf_name(name)
        if theirs not in hf_tensors:
            raise PretrainedFormatError(f"checkpoint lacks tensor {theirs}")
        tensor = hf_tensors[theirs]
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        if tensor.shape != param.shape:
            raise PretrainedFormatError(
                f"tensor {theirs} has shape {tuple(tensor.shape)} but config.json implies {tuple(param.shape)}")
        state[name] = tensor.to(param.dtype)
    return state


def state_dict_to_hf(model):
    hf = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        hf[hf_name(name)] = tensor.detach().contiguous().clone()
    for alias, source in zip(HF_ALIASES, ('wte', 'wpe', 'wte')):
        hf[alias] = hf[f'{HF_PREFIX}{source}.weight']
    n = model.config.block_size
    for i in range(model.config.n_layer):  # GPT-2's causal-mask buffers, kept for format fidelity
        hf[f'{HF_PREFIX}h.{i}.attn.bias'] = torch.ones(n, n, dtype=torch.bool).tril().view(1, 1, n, n)
        hf[f'{HF_PREFIX}h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
    return hf
