"""The command line, for every script and `python -m` entry point: one line for a bad value (fail, an
argparse parser whose errors are one line), the checks of values that several scripts share, and
nanoGPT-style settings for train.py: defaults, then config files (executed Python), then --key=value
overrides, each parsed with ast.literal_eval and checked against the default's type.

    settings = parse_settings(sys.argv[1:], DEFAULTS, __doc__)   # {key: value} given explicitly
    fail("--beam must be >= 1")                                  # SystemExit('error: ...'), exit status 1
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


def fail(message):
    """Exit with status 1 after printing `error: message` to stderr."""
    raise SystemExit(f"error: {message}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line (status 2, as argparse), instead of the usage block and the
    error: the usage is one --help away."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


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


def check_writable(path, what):
    """path can be created or written: the nearest existing part of it is a writable directory."""
    existing = next(p for p in (Path(path), *Path(path).absolute().parents) if p.exists())
    if not existing.is_dir():
        fail(f"{what} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"{what} {path}: {existing} is not writable")


def check_directory_variable(name):
    """An environment variable that, when set, names a directory (existing or to be created)."""
    value = os.environ.get(name)
    if value and Path(value).exists() and not Path(value).is_dir():
        fail(f"environment variable {name}={value} is a file, not a directory")


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
    return explicit
