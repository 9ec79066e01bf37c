"""train_tiny_gpu.ipynb: valid nbformat, every step present, code cells compile, and every command it
runs matches the real CLIs (scripts exist, flags and values are accepted by the scripts' own parsers,
the out_dirs line up from training to comparison). Executed (slow): the code's setup, against a local
repository standing in for the remote, and the whole notebook by a kernel on the CPU."""
import ast
import contextlib
import importlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "experiments" / "train_tiny_gpu.ipynb"

# values the checks substitute for the notebook's {NAME} placeholders in shell commands
PLACEHOLDER_VALUES = {"DEVICE": "cpu", "DATA_DIR": "sample", "ROOT": "drive", "TRAIN_ARGS": "",
                      "GPU_DATA": "drive/data/europarl_gpt2_50k", "RUN_DIR": "drive/backpack_gpt2_europarl"}
GPU_HEADING = "## 8. On a GPU"  # the GPU section, after the tiny comparison of steps 1-7
CHECKED_SCRIPTS = ("train.py", "evaluate.py", "compare_models.py", "data/europarl/prepare.py")
PYTHON_COMMAND = re.compile(r"(?:^|&&|;|\|)\s*python3?\s+(-m\s+[\w.]+|\S+\.py)((?:(?!&&|;|\|).)*)")


@pytest.fixture(scope="module")
def nb():
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(nb):
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def gpu_section_start(nb):
    return next(i for i, cell in enumerate(nb.cells) if cell.source.startswith(GPU_HEADING))


def tiny_section(nb):
    """The notebook up to the GPU section: the tiny comparison (a notebook object, as the helpers take)."""
    return nbformat.v4.new_notebook(cells=nb.cells[:gpu_section_start(nb)])


def gpu_section(nb):
    return nbformat.v4.new_notebook(cells=nb.cells[gpu_section_start(nb):])


def strip_ipython(source):
    """Python source with each IPython line (`!shell`, `%magic`) replaced by `pass` at its indentation."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        lines.append(line[:len(line) - len(stripped)] + "pass" if stripped[:1] in ("!", "%") else line)
    return "\n".join(lines)


def shell_lines(nb):
    return [line.strip()[1:] for source in code_cells(nb) for line in source.splitlines()
            if line.strip().startswith("!")]


def python_commands(nb):
    """(script, argv) of every `python SCRIPT ...` in the notebook's shell lines, in order."""
    commands = []
    for line in shell_lines(nb):
        for match in PYTHON_COMMAND.finditer(line):
            script = match.group(1)
            if script.startswith("-m"):  # python -m data.europarl.prepare is data/europarl/prepare.py
                script = script[2:].strip().replace(".", "/") + ".py"
            commands.append((script, shlex.split(match.group(2))))
    return commands


def substituted(argv, values=PLACEHOLDER_VALUES):
    """argv with {NAME} placeholders replaced by the test values; a placeholder standing alone is split into
    arguments (none when empty), as the shell splits what IPython put in its place."""
    out = []
    for arg in argv:
        whole = re.fullmatch(r"\{(\w+)\}", arg)
        for name in re.findall(r"\{(\w+)\}", arg):
            assert name in values, f"placeholder {{{name}}} in {arg!r}: add a test value to PLACEHOLDER_VALUES"
            arg = arg.replace("{" + name + "}", values[name])
        out.extend(shlex.split(arg) if whole else [arg])
    return out


def flag_names(argv):
    return [arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")]


def load_script(script):
    """The module of a repository script (data/europarl/prepare.py included)."""
    return importlib.import_module(script[:-len(".py")].replace("/", "."))


def argparse_help(script):
    """The --help text of an argparse script, from its own parse_args (in-process: no second torch import)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        load_script(script).parse_args(["--help"])
    return out.getvalue()


def string_assignments(nb, name):
    """The string literals assigned to NAME at a cell's top level, in notebook order."""
    values = []
    for source in code_cells(nb):
        for node in ast.parse(strip_ipython(source)).body:
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                values.append(node.value.value)
    return values


def option(argv, name):
    """The value of --name VALUE or --name=VALUE in argv (None when absent)."""
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


# ----------------------------------------------------------------------------- structure

def test_notebook_is_valid_nbformat_with_colab_gpu_metadata(nb):
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.get("accelerator") == "GPU"
    assert "colab" in nb.metadata
    assert any(cell.cell_type == "markdown" for cell in nb.cells)


def test_strip_ipython_keeps_indentation():
    source = "if x:\n    !nvidia-smi\n    %cd repo\nelse:\n    y = 1"
    assert strip_ipython(source) == "if x:\n    pass\n    pass\nelse:\n    y = 1"
    compile(strip_ipython(source), "<cell>", "exec")


def test_every_code_cell_compiles(nb):
    cells = code_cells(nb)
    assert cells
    for i, source in enumerate(cells):
        compile(strip_ipython(source), f"<code cell {i}>", "exec")


@pytest.mark.parametrize("step, needle", [
    ("GPU check", "nvidia-smi"),
    ("GPU check", "torch.cuda.is_available()"),
    ("clone", "git clone -q {REPO_URL} {CODE}"),
    ("update", "git -C {CODE} fetch -q {REPO_URL} {REPO_REF} && git -C {CODE} reset -q --hard FETCH_HEAD"),
    ("install", "grep -v '^torch' requirements.txt > /tmp/req.txt && pip install -q -r /tmp/req.txt"),
    ("install", "pip install -q -r requirements.txt"),
    ("prepare", "python -m data.europarl.prepare --source local --corpus data/europarl/sample/parliament "
                "--name sample --vocab_size 512"),
    ("prepare from the hub", "python -m data.europarl.prepare --source europarl"),
    ("train Backpack", "python train.py config/train_sample_tiny.py"),
    ("train Transformer", "python train.py config/train_sample_tiny.py config/train_sample_tiny_transformer.py"),
    ("plot", "training_log.json"),
    ("plot", "plt."),
    ("evaluate", "python evaluate.py"),
    ("compare", "python compare_models.py"),
    ("show comparison", "comparison.md"),
    ("show comparison", "Markdown("),
    ("show comparison", "Image("),
])
def test_notebook_has_step(nb, step, needle):
    assert any(needle in source for source in code_cells(nb)), f"no {step} cell: {needle!r} not found"


def test_repo_url_is_a_marked_placeholder_variable(nb):
    urls = string_assignments(nb, "REPO_URL")
    assert len(urls) == 1 and "<you>" in urls[0]


# ----------------------------------------------------------------------------- the commands match the CLIs

def test_called_scripts_exist(nb):
    commands = python_commands(nb)
    assert {script for script, _ in commands} >= set(CHECKED_SCRIPTS)
    for script, argv in commands:
        assert (REPO_ROOT / script).is_file(), f"the notebook runs {script}, which is not in the repository"
        for arg in argv:
            if not arg.startswith("-") and arg.endswith(".py"):
                assert (REPO_ROOT / arg).is_file(), f"{script} is given {arg}, which is not in the repository"


def test_flags_are_known_to_each_script(nb):
    import train
    train_flags = set(train.DEFAULTS) | {"config", "help"}
    for script, argv in python_commands(nb):
        if script == "train.py":
            unknown = [f for f in flag_names(argv) if f not in train_flags]
        elif script in CHECKED_SCRIPTS:
            help_text = argparse_help(script)
            unknown = [f for f in flag_names(argv) if not re.search(rf"(?<![\w-])--{re.escape(f)}(?![\w-])", help_text)]
        else:
            continue
        assert not unknown, f"{script} does not accept {['--' + f for f in unknown]}"


def test_commands_parse_with_the_scripts_own_parsers(nb, tmp_path, monkeypatch):
    """Flag values too: types, choices, config files and required options, as each script checks them
    (in a folder holding a checkpoint where the notebook's earlier cells would have written one)."""
    import train
    from backpacks import settings
    monkeypatch.chdir(tmp_path)
    for script, argv in python_commands(nb):
        argv = substituted(argv)
        for option, value in zip(argv, argv[1:]):
            if option in ("--out_dir", "--backpack_dir", "--transformer_dir") and script != "train.py":
                (tmp_path / value).mkdir(parents=True, exist_ok=True)
                (tmp_path / value / "best.pt").touch()
        if script == "train.py":
            explicit = train.parse_args(argv)
            settings.validate({**train.DEFAULTS, **explicit})
        elif script in CHECKED_SCRIPTS:
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr):
                    load_script(script).parse_args(argv)
            except SystemExit as e:
                pytest.fail(f"python {script} {shlex.join(argv)}: rejected ({e}) {stderr.getvalue()}")


def test_runs_line_up_from_training_to_comparison(nb):
    """Both model types are trained; their out_dirs are the ones evaluated, compared and plotted;
    the prepared dataset's name is the DATA_DIR the training uses (steps 1-7)."""
    import train
    nb = tiny_section(nb)
    trained = {}
    for script, argv in python_commands(nb):
        if script == "train.py":
            argv = substituted(argv)
            cfg = {**train.DEFAULTS, **train.parse_args(argv)}
            trained[cfg["model_type"]] = cfg["out_dir"]
    assert set(trained) == {"backpack", "transformer"}

    commands = python_commands(nb)
    evaluated = {option(argv, "out_dir") for script, argv in commands if script == "evaluate.py"}
    assert evaluated == set(trained.values()), f"evaluate.py runs on {evaluated}, training wrote {trained}"
    compares = [argv for script, argv in commands if script == "compare_models.py"]
    assert compares and all(option(argv, "backpack_dir") == trained["backpack"]
                            and option(argv, "transformer_dir") == trained["transformer"] for argv in compares), \
        f"compare_models.py is not given the trained out_dirs {trained}"
    assert any("--reuse" in argv for argv in compares), "compare_models.py should reuse the evaluations of step 6"
    source = "\n".join(code_cells(nb))
    for out_dir in trained.values():
        assert source.count(f"'{out_dir}'") >= 1, f"{out_dir} is not plotted"

    local = [argv for script, argv in commands if script == "data/europarl/prepare.py"
             and option(argv, "source") == "local"]
    assert local and string_assignments(nb, "DATA_DIR")[0] == option(local[0], "name"), \
        "DATA_DIR must name the dataset the local prepare.py command writes"


def test_field_and_file_names_match_the_scripts(nb):
    """The loss fields the plot reads are written by train.py; the files shown are written by compare_models.py."""
    source = "\n".join(code_cells(nb))
    train_source = (REPO_ROOT / "train.py").read_text()
    compare_source = (REPO_ROOT / "compare_models.py").read_text()
    for field in ("iter", "train_loss", "val_loss"):
        assert f"['{field}']" in source and f"'{field}'" in train_source
    assert "training_log.json" in train_source
    for name in ("comparison.md", "loss_curves.png"):
        assert name in compare_source
    assert "comparison.md" in source and ".png" in source
    compare_out = {option(argv, "output_dir") for script, argv in python_commands(nb) if script == "compare_models.py"}
    assert all(f"Path('{d}')" in source for d in compare_out)


# the notebook's prose names these settings; each number it gives must be the configs' value
PROSE_SETTINGS = {"n_layer": r"(\d+) layers", "n_head": r"(\d+) heads", "n_embd": r"(\d+) dimensions",
                  "block_size": r"(\d+)-token context", "max_iters": r"([\d,]+) iterations",
                  "eval_interval": r"evaluation every\s+(\d+)", "n_senses": r"(\d+) senses"}


def test_prose_numbers_come_from_the_configs(nb):
    """Every setting the markdown mentions is the value both tiny configs set (n_senses: the Backpack's)."""
    import train
    configs = [train.parse_args(["config/train_sample_tiny.py", *overlay]) for overlay in
               ([], ["config/train_sample_tiny_transformer.py"])]
    prose = "\n".join(cell.source for cell in tiny_section(nb).cells if cell.cell_type == "markdown")
    checked = set()
    for key, pattern in PROSE_SETTINGS.items():
        for match in re.finditer(pattern, prose):
            value = int(match.group(1).replace(",", ""))
            expected = {c[key] for c in configs if key != "n_senses" or c["model_type"] == "backpack"}
            assert expected == {value}, f"the notebook says {match.group(0)!r}; the configs have {key}={expected}"
            checked.add(key)
    assert checked == set(PROSE_SETTINGS)  # the training step states every one of them
    assert any("runpy.run_path(path)" in source and "config/train_sample_tiny_transformer.py" in source for source in code_cells(nb))


# ----------------------------------------------------------------------------- the GPU section

def gpu_train_settings(nb):
    """{what: settings} of the GPU section's train.py commands: 'resume', 'finetune' and 'fallback'."""
    import train
    found = {}
    for script, argv in python_commands(gpu_section(nb)):
        if script == "train.py":
            cfg = {**train.DEFAULTS, **train.parse_args(substituted(argv))}
            kind = ("resume" if cfg["init_from"] == "resume" else
                    "finetune" if cfg["init_from"] == "backpack-gpt2" else "fallback")
            found[kind] = cfg
    return found


def test_gpu_section_finetunes_backpack_gpt2_on_a_europarl_subsample_with_auto_dtype(nb):
    runs = gpu_train_settings(nb)
    finetune, fallback = runs["finetune"], runs["fallback"]
    assert finetune["data_dir"] == PLACEHOLDER_VALUES["GPU_DATA"] and finetune["out_dir"] == PLACEHOLDER_VALUES["RUN_DIR"]
    assert finetune["dtype"] == fallback["dtype"] == "auto"  # float16 + GradScaler on a T4, bf16 from 8.0
    assert finetune["checkpoint_interval"] <= 250 and finetune["max_iters"] <= 2000  # one Colab session
    prepares = [argv for script, argv in python_commands(gpu_section(nb)) if script == "data/europarl/prepare.py"]
    hub = next(argv for argv in prepares if option(argv, "source") == "europarl")
    assert option(hub, "tokenizer") == "gpt2" and option(hub, "max_pairs") and option(hub, "out_root") == "{ROOT}/data"
    assert PLACEHOLDER_VALUES["GPU_DATA"].endswith("/" + option(hub, "name"))
    source = "\n".join(code_cells(gpu_section(nb)))
    assert f"{{ROOT}}/data/{option(hub, 'name')}" in source


def test_the_gpu_cell_resumes_from_drive_with_the_current_code(nb):
    """After step 2's cell (the code, brought up to date), the training cell does all a reconnected runtime
    needs: it mounts Drive, reinstalls, sets every variable its commands use, and resumes from RUN_DIR/ckpt.pt
    on Drive when there is one. Only data and runs are on Drive: the code runs from the checkout it starts in
    (no copy of it on Drive, which a fix pulled later would never reach)."""
    cell = next(source for source in code_cells(gpu_section(nb)) if "train.py" in source)
    assert "drive.mount('/content/drive')" in cell and "ROOT = '/content/drive/MyDrive/" in cell
    assert "pip install -q -r /tmp/req.txt" in cell
    assert "if not os.path.isfile('train.py'):" in cell and "run step 2's first cell" in cell
    assert not re.search(r"^\s*%cd", cell, re.M) and "copytree" not in cell and "CODE" not in cell
    assigned = {target.id for node in ast.walk(ast.parse(strip_ipython(cell))) if isinstance(node, ast.Assign)
                for t in node.targets for target in (t.elts if isinstance(t, ast.Tuple) else [t])}
    used = {name for line in cell.splitlines() if line.strip().startswith(("!", "%"))
            for name in re.findall(r"\{(\w+)\}", line)}
    assert used and used <= assigned, f"the cell uses {used - assigned} from other cells"
    resume = gpu_train_settings(nb)["resume"]
    assert resume["out_dir"] == PLACEHOLDER_VALUES["RUN_DIR"]
    assert "if os.path.isfile(f'{RUN_DIR}/ckpt.pt'):" in cell
    assert re.search(r"GPU_DATA, RUN_DIR = f'\{ROOT\}/", cell)  # data and run on Drive


def test_without_gpu_it_moves_on_and_without_the_hub_it_trains_on_the_sample(nb):
    """Without a GPU both cells of the section say so and run nothing (run_notebook executes that); on a GPU
    without the hub the training cell trains the tiny Backpack on the sample corpus."""
    cell, after = [source for source in code_cells(gpu_section(nb)) if "train.py" in source or "evaluate.py" in source]
    assert "if not GPU:" in cell and "no CUDA GPU" in cell and "the Hugging Face hub is not reachable" in cell
    assert after.startswith("if GPU:") and "no CUDA GPU" in after
    fallback = gpu_train_settings(nb)["fallback"]
    import train
    assert fallback == {**train.DEFAULTS, **train.parse_args(["config/train_sample_tiny.py", "--dtype=auto",
                        f"--data_dir={fallback['data_dir']}", f"--out_dir={fallback['out_dir']}"])}
    local = [argv for script, argv in python_commands(gpu_section(nb))
             if script == "data/europarl/prepare.py" and option(argv, "source") == "local"]
    assert local and option(local[0], "corpus") == "data/europarl/sample/parliament"


# ----------------------------------------------------------------------------- the code that runs is current

def setup_cell(nb):
    return next(source for source in code_cells(nb) if "REPO_URL = " in source)


def with_assignments(source, **values):
    """source with each top-level NAME = ... line replaced by NAME = value."""
    for name, value in values.items():
        source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.M)
        assert count == 1, f"the cell assigns {name} {count} times"
    return source


def run_like_ipython(source):
    """Run a code cell as IPython does for the two magics the setup uses: `!COMMAND` runs COMMAND in bash with
    each {NAME} replaced by the value of NAME, `%cd DIR` changes the directory. Asserts every command succeeds."""
    namespace = {}
    expand = lambda text: re.sub(r"\{(\w+)\}", lambda m: str(namespace[m.group(1)]), text)

    def shell(command):
        assert "$" not in command, f"IPython expands the $ of {command!r}, and this emulation does not"
        done = subprocess.run(["bash", "-c", expand(command)], capture_output=True, text=True)
        assert done.returncode == 0, f"!{command} failed: {done.stderr.strip()}"

    lines = []
    for line in source.splitlines():
        code = line.lstrip()
        indent = line[:len(line) - len(code)]
        if code.startswith("!"):
            lines.append(f"{indent}_shell({code[1:]!r})")
        elif code.startswith("%"):
            magic, _, argument = code[1:].partition(" ")
            assert magic == "cd", f"run_like_ipython does not know %{magic}"
            lines.append(f"{indent}_chdir(_expand({argument!r}))")
        else:
            lines.append(line)
    namespace.update(_shell=shell, _chdir=os.chdir, _expand=expand)
    exec(compile("\n".join(lines), "<setup cell>", "exec"), namespace)


@pytest.mark.slow
def test_the_setup_cell_brings_the_code_to_the_newest_commit_on_every_run(nb, tmp_path, monkeypatch):
    """The setup cell, executed, with a local repository standing in for REPO_URL and a temporary folder for the
    runtime's disk. Each run after a commit to the remote runs that commit: a re-run in the clone, and a run from
    the runtime's start folder once the clone exists (a reconnect). A checkout of your own is left as it is."""
    ref = string_assignments(nb, "REPO_REF")[0]
    remote, code, start, own = (tmp_path / name for name in ("remote", "disk/multilingual-backpack", "content", "own"))

    def git(*args, cwd=remote):
        return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd,
                              check=True, capture_output=True, text=True).stdout.strip()

    def push(version):  # a commit on the remote's REPO_REF
        (remote / "train.py").write_text(f"VERSION = {version}\n")
        git("add", "train.py")
        git("commit", "-q", "-m", f"version {version}")
        return git("rev-parse", "HEAD")

    for folder in (remote, start, own / "experiments"):
        folder.mkdir(parents=True)
    git("init", "-q", "-b", ref)
    cell = with_assignments(setup_cell(nb), REPO_URL=str(remote), CODE=str(code))

    monkeypatch.chdir(start)
    for version, where in ((1, start), (2, code), (3, start)):  # first run, re-run in the clone, reconnect
        head = push(version)
        monkeypatch.chdir(where)
        run_like_ipython(cell)
        assert Path.cwd() == code and git("rev-parse", "HEAD", cwd=code) == head
        assert (code / "train.py").read_text() == f"VERSION = {version}\n"

    (own / "train.py").write_text("VERSION = 'mine'\n")  # opened from experiments/ of your own checkout
    git("init", "-q", cwd=own)
    git("add", "train.py", cwd=own)
    git("commit", "-q", "-m", "mine", cwd=own)
    (own / "train.py").write_text("VERSION = 'mine, edited'\n")
    monkeypatch.chdir(own / "experiments")
    run_like_ipython(cell)
    assert Path.cwd() == own and (own / "train.py").read_text() == "VERSION = 'mine, edited'\n"
    assert git("rev-parse", "HEAD", cwd=code) == head


DTYPE_NAMES = re.compile(r"\b(float32|fp32|tf32|float16|fp16|half|bfloat16|bf16)\b", re.I)


def test_what_the_notebook_says_a_t4_trains_in_is_what_auto_picks(nb, monkeypatch):
    """--dtype=auto on a T4 (compute capability 7.5) trains in float16 with a GradScaler (backpacks/devices.py):
    every clause of the notebook, prose or code, that names a T4 and a dtype names that one (not float32)."""
    import torch
    from backpacks.devices import resolve_dtype
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (7, 5))
    t4 = resolve_dtype("auto", "cuda")[0]
    stated = []
    for cell in nb.cells:
        for clause in re.split(r"[;,()\n]|\.(?!\d)", cell.source):  # 8.0 is a number, not a full stop
            if re.search(r"\bT4\b", clause):
                named = {name.lower() for name in DTYPE_NAMES.findall(clause)}
                assert named <= {t4}, f"the notebook says {clause.strip()!r}; --dtype=auto gives {t4} on a T4"
                stated += named
    assert stated, "the notebook never says what a T4 trains in"


# ----------------------------------------------------------------------------- on a (stand-in) Colab T4

def test_the_tiny_sections_commands_run_on_a_t4(nb, fake_gpu, sample_dataset, tmp_path, monkeypatch, capsys):
    """The notebook's train.py and evaluate.py commands, with DEVICE='cuda', run in-process on a stand-in T4
    (tests/cuda_standin.py): float16 with a GradScaler, every CUDA-only line of the start and first steps
    executed. Shortened (--max_iters and friends appended) and pointed at the sample dataset and tmp_path."""
    import evaluate
    import train
    fake_gpu.configure(name='Tesla T4', capability=(7, 5))
    monkeypatch.chdir(tmp_path)
    values = {**PLACEHOLDER_VALUES, "DEVICE": "cuda", "DATA_DIR": str(sample_dataset)}
    short = {"train.py": ["--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--batch_size=4"],
             "evaluate.py": ["--tasks", "loss", "--loss_batches", "1", "--no-fetch"]}
    ran = []
    for script, argv in python_commands(tiny_section(nb)):
        if script in short:
            main = train.main if script == "train.py" else evaluate.main
            main([*substituted(argv, values), *short[script]])
            ran.append(script)
    assert ran == ["train.py", "train.py", "evaluate.py", "evaluate.py"]
    assert capsys.readouterr().out.count("on cuda:0, float16") == 2 and fake_gpu.math_fallbacks() == 0


# ----------------------------------------------------------------------------- run, top to bottom, by a kernel

def test_committed_outputs_are_cleared(nb):
    """The notebook is committed as a Colab user opens it: no outputs, no execution counts."""
    assert all(not cell.outputs and cell.execution_count is None for cell in nb.cells if cell.cell_type == "code")


def snapshot_repository(remote, ref):
    """A repository at remote whose REPO_REF holds this checkout's files as they are now (changes not yet
    committed included), standing in for your copy on GitHub."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO_ROOT / name).is_file():  # not a tracked file deleted since
            (remote / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, remote / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for args in (["init", "-q", "-b", ref], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(git + args, cwd=remote, check=True, capture_output=True)


def cell_text(cell):
    """What a code cell showed: its streams, and the text and Markdown of what it displayed."""
    return "".join(out.get("text", "") if out.output_type == "stream" else
                   out.get("data", {}).get("text/markdown", "") + out.get("data", {}).get("text/plain", "")
                   for out in cell.outputs)


QUICK = "--max_iters=8 --eval_interval=4 --eval_iters=2 --log_interval=4"  # TRAIN_ARGS of the run below


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_on_a_cpu(nb, tmp_path):
    """The whole notebook, executed by a kernel (nbclient, ipykernel) on a runtime without a GPU or internet: step
    2 clones a local repository standing in for REPO_URL (this checkout, snapshot), TRAIN_ARGS shortens the runs,
    pip may install nothing (PIP_NO_INDEX: the requirements are already there). Every step shows what it shows a
    Colab user; the GPU section says there is no GPU and moves on."""
    from nbclient import NotebookClient
    ref = string_assignments(nb, "REPO_REF")[0]
    remote, code, start = tmp_path / "remote", tmp_path / "disk" / "multilingual-backpack", tmp_path / "content"
    for folder in (remote, start):
        folder.mkdir(parents=True)
    snapshot_repository(remote, ref)
    nb = nbformat.from_dict(nb)  # a copy: the committed notebook stays as it is
    setup = next(cell for cell in nb.cells if "REPO_URL = " in cell.source)
    setup.source = with_assignments(setup.source, REPO_URL=str(remote), CODE=str(code))
    quick = next(cell for cell in nb.cells if cell.source.startswith("import runpy"))
    quick.source = with_assignments(quick.source, TRAIN_ARGS=QUICK)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # its `python`
           "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1", "OMP_NUM_THREADS": "2"}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(start)}}).execute(env=env)

    cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert not [out for cell in cells for out in cell.outputs if out.output_type == "error"]
    text = "\n".join(map(cell_text, cells))
    failed = re.search(r"(?s).{0,2000}(Traceback|error:).{0,1000}", text)  # a failed `!command` raises nothing
    assert not failed, failed.group(0)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=remote, capture_output=True, text=True).stdout
    assert f"running commit {head.strip()} " in text and "nvidia-smi not found" in text and "DEVICE=cpu" in text
    assert re.search(r"max_iters: Backpack 8 +Transformer 8\n", text)
    assert re.findall(r"done: 8 iterations, best val loss \d\.\d+; checkpoints in out/tiny_(\w+)", text) == \
        ["backpack", "transformer"]  # each training's last line
    assert text.count("wrote out/tiny_backpack/eval/results.json") == 1
    assert text.count("wrote out/tiny_transformer/eval/results.json") == 1
    assert "| test loss (all) |" in cell_text(next(c for c in cells if "Markdown(" in c.source))  # the table, its plots
    images = [cell.source.splitlines()[0] for cell in cells for out in cell.outputs if "image/png" in out.get("data", {})]
    assert images.count("import json") == 1 and images.count("from pathlib import Path") >= 2
    assert "no CUDA GPU: finetuning a 170M-parameter Backpack needs one" in text
    assert "no CUDA GPU: this section trained nothing" in text and not (code / "out" / "gpu_section").exists()
