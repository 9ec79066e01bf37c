"""nanoGPT-style settings: a script's defaults, then config files (executed Python), then
--key=value overrides, each parsed with ast.literal_eval and checked against the default's type;
and the environment torchrun sets for a distributed run, checked."""
import ast
import builtins
import difflib
import os
import traceback
import types
from pathlib import Path

from backpacks.errors import fail

REPO_ROOT = Path(__file__).resolve().parent


def unknown_key(key, source, defaults):
    close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join('--' + c for c in close)}?" if close else "see python train.py --help"
    fail(f"unknown setting {key!r} in {source}; {hint}")


def parse_literal(text, default):
    """A command-line string as a Python value; strings need no quotes (--out_dir=out-tiny)."""
    if isinstance(default, bool) and text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return text if isinstance(default, str) and not isinstance(value, str) else value


def checked(key, value, source, defaults):
    """value if it has the type of key's default (an int is accepted for a float)."""
    if key not in defaults:
        unknown_key(key, source, defaults)
    default = defaults[key]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        fail(f"{key} must be a {type(default).__name__} (default {default!r}), got {value!r} in {source}")
    return value


def config_file(name):
    """The config file for a path, or NAME / NAME.py under config/."""
    candidates = [Path(name), REPO_ROOT / name, REPO_ROOT / 'config' / name, REPO_ROOT / 'config' / f'{name}.py']
    for path in candidates:
        if path.is_file():
            return path
    available = ', '.join(sorted(p.stem for p in (REPO_ROOT / 'config').glob('*.py')))
    fail(f"config file {name!r} not found; config/ has: {available}")


def read_config_file(path, defaults):
    """The settings a config file assigns (it is executed, as in nanoGPT); an error in it is one
    line with the file and the line."""
    namespace = {}
    try:
        source = path.read_text(encoding='utf-8')
        code = builtins.compile(source, str(path), 'exec')  # the setting `compile` shadows the builtin
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read config file {path}: {e}")
    except SyntaxError as e:
        fail(f"{path}, line {e.lineno}: {type(e).__name__}: {e.msg}")
    try:
        exec(code, namespace)
    except Exception as e:  # whatever the config's own code raises
        line = next((frame.lineno for frame in reversed(traceback.extract_tb(e.__traceback__))
                     if frame.filename == str(path)), '?')
        fail(f"{path}, line {line}: {type(e).__name__}: {e}")
    return {k: checked(k, v, path, defaults) for k, v in namespace.items()
            if not k.startswith('_') and not isinstance(v, types.ModuleType)}


def print_help(defaults, doc):
    print(doc.strip())
    print("\nsettings (type, default):")
    for key, value in defaults.items():
        print(f"  --{key:<28} {type(value).__name__:<6} {value!r}")


def parse_args(argv, defaults, doc):
    """Config files and overrides -> {key: value} of every setting given explicitly, config files first."""
    files, overrides, args = [], {}, list(argv)
    while args:
        arg = args.pop(0)
        if arg in ('-h', '--help'):
            print_help(defaults, doc)
            raise SystemExit(0)
        if not arg.startswith('--'):
            if arg.startswith('-'):
                fail(f"unknown option {arg!r}; settings are given as --key=value")
            files.append(config_file(arg))
            continue
        key, has_value, value = arg[2:].partition('=')
        if key != 'config' and key not in defaults:
            unknown_key(key, 'the command line', defaults)
        if not has_value:
            if key != 'config' and isinstance(defaults[key], bool) and not (args and args[0].lower() in ('true', 'false')):
                value = 'True'  # a bare flag such as --compile
            elif not args or args[0].startswith('--'):
                fail(f"--{key} needs a value")
            else:
                value = args.pop(0)
        if key == 'config':
            files.append(config_file(value))
        else:
            overrides[key] = checked(key, parse_literal(value, defaults[key]), 'the command line', defaults)
    explicit = {}
    for path in files:
        explicit.update(read_config_file(path, defaults))
    explicit.update(overrides)
    return explicit


def torchrun_environment():
    """(ddp, rank, local_rank, world_size) from the variables torchrun sets (one process when RANK is
    unset); one line for values torchrun would never set."""
    if 'RANK' not in os.environ:
        return False, 0, 0, 1
    values = {}
    for name in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_PORT'):
        text = os.environ.get(name, '')
        if not text.isdigit():
            fail(f"environment variable {name}={text!r} is not a non-negative integer; RANK is set, so this "
                 "is a distributed run: start it with torchrun, which sets RANK, LOCAL_RANK, WORLD_SIZE and MASTER_*")
        values[name] = int(text)
    if not max(values['RANK'], values['LOCAL_RANK']) < values['WORLD_SIZE']:
        fail(f"RANK ({values['RANK']}) and LOCAL_RANK ({values['LOCAL_RANK']}) must be below WORLD_SIZE "
             f"({values['WORLD_SIZE']}); start distributed runs with torchrun")
    if not os.environ.get('MASTER_ADDR'):
        fail("RANK is set but MASTER_ADDR is not: start distributed runs with torchrun")
    return True, values['RANK'], values['LOCAL_RANK'], values['WORLD_SIZE']
