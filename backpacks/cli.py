"""The command line, for every script, `python -m` entry point and bash recipe: one line for a bad value
(fail, an argparse parser whose errors are one line), the environment variables the project reads, checked
before any work (check_environment: ArgumentParser and parse_settings call it once the arguments are
parsed; the recipes run `python -m backpacks.cli` first), the checks of values that several scripts share,
and nanoGPT-style settings for train.py: defaults, then config files (executed Python), then --key=value
overrides, each parsed with ast.literal_eval and checked against the default's type.

    settings = parse_settings(sys.argv[1:], DEFAULTS, __doc__)   # {key: value} given explicitly
    fail("--beam must be >= 1")                                  # SystemExit('error: ...'), exit status 1
    python -m backpacks.cli --writable OUT="$OUT" --count ITERS="$ITERS"   # a recipe's first step
"""
import argparse
import ast
import builtins
import difflib
import os
import traceback
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes no more, torch's no more than 2**64 - 1

# The environment variables the project, or a library it drives, reads, by what they must name. This module
# imports nothing outside the standard library, so that a recipe can check them before installing anything.
READ_DIRECTORIES = ('ENFR_DATA',)  # the evaluation resources: absent when the folder is missing (as CI hides them)
CACHE_VARIABLE = 'BACKPACK_CACHE'  # resources.py's downloads
WRITTEN_DIRECTORIES = (CACHE_VARIABLE, 'HF_HOME', 'WANDB_DIR')  # created when missing
THREAD_COUNTS = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')
OFFLINE_VARIABLES = ('BACKPACK_OFFLINE', 'HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'TRANSFORMERS_OFFLINE')
SWITCH_VALUES = {'off': ('', '0', 'false', 'no', 'off'), 'on': ('1', 'true', 'yes', 'on')}  # as huggingface_hub reads them
VERIFY_VARIABLE, VERIFY_MODES = 'BACKPACK_VERIFY_DATA', ('auto', 'full', 'size')
URL_VARIABLES = ('HF_ENDPOINT',)


def fail(message):
    """Exit with status 1 after printing `error: message` to stderr."""
    raise SystemExit(f"error: {message}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line (status 2, as argparse), instead of the usage block and the
    error: the usage is one --help away."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        """The arguments, then the environment: every entry point checks both before any work."""
        parsed = super().parse_known_args(args, namespace)
        check_environment()
        return parsed


# ----------------------------------------------------------------------------- the environment

def environment_value(name):
    return os.environ.get(name, '').strip()


def positive_integer(text):
    return text.isdigit() and int(text) >= 1


def switched_on(name):
    """An on/off variable is on: set to anything but an off value (check_environment refuses the others)."""
    return environment_value(name).lower() not in SWITCH_VALUES['off']


def check_environment():
    """Every variable above that is set names the right kind of thing, else one line naming it."""
    def bad(name, why):
        fail(f"environment variable {name}={os.environ[name]!r}: {why}")
    for name in READ_DIRECTORIES:
        if environment_value(name) and Path(os.environ[name]).exists() and not Path(os.environ[name]).is_dir():
            bad(name, "a file, not a folder; point it at the folder or unset it")
    for name in WRITTEN_DIRECTORIES:
        why = environment_value(name) and unwritable_reason(os.environ[name])
        if why:
            bad(name, f"cannot be written ({why}); point it at a writable folder or unset it")
    for name in THREAD_COUNTS:
        if environment_value(name) and not positive_integer(environment_value(name)):
            bad(name, "not a positive integer; set a thread count such as 4, or unset it")
    for name in OFFLINE_VARIABLES:
        if environment_value(name).lower() not in SWITCH_VALUES['off'] + SWITCH_VALUES['on']:
            bad(name, f"neither on ({', '.join(SWITCH_VALUES['on'])}) nor off ({', '.join(SWITCH_VALUES['off'][1:])})")
    if environment_value(VERIFY_VARIABLE).lower() not in ('', *VERIFY_MODES):
        bad(VERIFY_VARIABLE, f"use {', '.join(VERIFY_MODES)}")
    for name in URL_VARIABLES:
        if environment_value(name) and not environment_value(name).startswith(('http://', 'https://')):
            bad(name, "not an http:// or https:// address; fix it or unset it")


# ----------------------------------------------------------------------------- shared checks

def check_at_least(args, minimum, names):
    """Every option in names that is set (not None) is an integer >= minimum."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            fail(f"--{name} must be >= {minimum}, got {value}")


def check_seed(seed):
    if not 0 <= seed <= MAX_SEED:
        fail(f"--seed must be within [0, {MAX_SEED}], got {seed}")


def check_directory(path, what):
    if not Path(path).is_dir():
        fail(f"{what} {path} is not a directory")


def unwritable_reason(path):
    """Why path cannot be created or written ('' when it can): the nearest existing part of it must be a
    writable directory."""
    existing = next(p for p in (Path(path), *Path(path).absolute().parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    return '' if os.access(existing, os.W_OK | os.X_OK) else f"{existing} is not writable"


def check_writable(path, what):
    why = unwritable_reason(path)
    if why:
        fail(f"{what} {path}: {why}; give a folder that can be written")


def check_file(path, what):
    if not Path(path).is_file():
        fail(f"{what} {path} is not a file" + ("" if Path(path).exists() else " (it does not exist)"))


# ----------------------------------------------------------------------------- settings (train.py)

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


def parse_settings(argv, defaults, doc):
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
    check_environment()
    return explicit


# ----------------------------------------------------------------------------- the recipes' first step

def main(argv=None):
    """Check the environment and a recipe's own settings: the folders it writes and its counts."""
    p = ArgumentParser(prog='python -m backpacks.cli', description=main.__doc__)
    p.add_argument('--writable', nargs='*', default=[], metavar='NAME=PATH', help="a folder the recipe writes")
    p.add_argument('--count', nargs='*', default=[], metavar='NAME=N', help="a setting that is a positive integer")
    args = p.parse_args(argv)
    for name, _, path in (spec.partition('=') for spec in args.writable):
        why = unwritable_reason(path or '.')
        if why:
            fail(f"{name}={path!r} cannot be written ({why}); set {name} to a writable folder")
    for name, _, value in (spec.partition('=') for spec in args.count):
        if not positive_integer(value):
            fail(f"{name}={value!r} is not a positive integer")


if __name__ == '__main__':
    main()
