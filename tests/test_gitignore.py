""".gitignore keeps every run folder the configs and scripts write, prepared data and checkpoints out of
`git add -A`: each out_dir a config, a script default, a recipe or the notebook names is ignored."""
import re
import shutil
import subprocess

import nbformat
import pytest

import compare_models
import train

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def ignored(repo_root, path):
    """Whether git would ignore path (tracked or not: --no-index asks the ignore rules alone)."""
    result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=repo_root)
    if result.returncode == 128:
        pytest.skip("not a git checkout")
    return result.returncode == 0


def config_out_dirs(repo_root):
    return {train.parse_args([str(path)])["out_dir"] for path in sorted((repo_root / "config").glob("*.py"))}


def recipe_out_dirs(repo_root):
    """The run folders the shell recipes and the notebook name: --out_dir / --output_dir values and
    OUT=${OUT:-default}, with their variables filled in."""
    texts = [path.read_text() for path in sorted((repo_root / "experiments").glob("*.sh"))]
    notebook = nbformat.read(repo_root / "experiments" / "train_tiny_gpu.ipynb", as_version=4)
    texts += [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    found = set()
    for text in texts:
        found |= set(re.findall(r"--out(?:put)?_dir[= ]\"?([\w${}./-]+)", text))
        found |= set(re.findall(r"\$\{OUT:-([^}]+)\}", text))
    # a folder given by a variable alone ($OUT/..., {RUN_DIR}: covered by OUT's default, or outside the
    # repository) is left out; variables inside a literal path are filled in
    return {re.sub(r"\$\{?\w+\}?|\{\w+\}", "x", d) for d in found if not d.startswith(("$", "{", "/"))}


@pytest.mark.slow  # git check-ignore
def test_every_run_folder_is_ignored(repo_root):
    defaults = {train.DEFAULTS["out_dir"], compare_models.DEFAULT_OUTPUT_DIR}
    folders = config_out_dirs(repo_root) | recipe_out_dirs(repo_root) | defaults
    assert {"out-europarl-tiny", "out/comparison", "experiments/out/sensia_tiny", "experiments/out/gpu_check"} <= folders
    for folder in sorted(folders):
        for name in ("ckpt.pt", "training_log.json", "eval/results.json"):
            assert ignored(repo_root, f"{folder}/{name}"), f"git would commit {folder}/{name}"


@pytest.mark.slow  # git check-ignore
def test_prepared_data_and_checkpoints_are_ignored_and_the_sources_are_not(repo_root):
    for path in ("data/europarl_en_fr/train.bin", "data/sample/meta.json", "elsewhere/run/best.pt", "wandb/run-1/files"):
        assert ignored(repo_root, path), path
    for path in ("train.py", "config/train_sample_tiny.py", "data/europarl/prepare.py",
                 "data/europarl/sample/parliament.en", "experiments/gpu_check.sh", "tests/test_gitignore.py"):
        assert not ignored(repo_root, path), path
