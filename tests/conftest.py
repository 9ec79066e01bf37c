"""Shared fixtures: repository paths, the offline English-French data, a tiny prepared dataset, a synthetic one.

tiny_model() (tests/tiny.py) is the one tiny model every test builds, given overrides only for a shape the test depends on;
TINY_TRAIN_ARGS (tests/tiny.py) is the one list of train.py arguments of a tiny run, its variants built by train_args()."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

pytest.register_assert_rewrite("tiny")
from tiny import tiny_model, write_synthetic_dataset  # noqa: E402 (after the rewrite hook, so its asserts explain)

REPO_ROOT = Path(__file__).resolve().parent.parent
# Tests never download: evaluate.py's automatic fetching is off (tests of the download path
# serve their files from 127.0.0.1 and call resources.py directly).
os.environ["BACKPACK_OFFLINE"] = "1"


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda run only where there is a CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (bash experiments/gpu_check.sh runs these on one)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session", autouse=True)
def resource_cache(tmp_path_factory):
    """An empty resources.py cache per session, so that the user's cache neither helps nor changes."""
    os.environ["BACKPACK_CACHE"] = str(tmp_path_factory.mktemp("resource_cache"))
    return Path(os.environ["BACKPACK_CACHE"])


@pytest.fixture(scope="session")
def enfr_data_root():
    """The offline English-French data folder; tests that need it are skipped without it."""
    root = Path(os.environ.get("ENFR_DATA", REPO_ROOT.parent / "shared" / "data" / "en-fr"))
    if not root.is_dir() or not any(root.iterdir()):  # CI hides it: a folder that does not exist
        pytest.skip(f"needs the offline English-French data: set ENFR_DATA (not found at {root})")
    return root


@pytest.fixture(scope="session")
def reference_tiny_dir(enfr_data_root):
    """The tiny backpack-gpt2 reference checkpoint kept beside the offline data."""
    path = enfr_data_root.parent.parent / "reference" / "backpack-gpt2-tiny"
    if not path.is_dir():
        pytest.skip(f"needs the reference checkpoint {path} (beside ENFR_DATA)")
    return path


def prepare_sample(out_root, *options):
    """The sample corpus prepared in-process (no subprocess, so fast tests may use it) with a small BPE."""
    from data.europarl import prepare
    prepare.main(["--source", "local", "--corpus", str(REPO_ROOT / "data/europarl/sample/parliament"),
                  "--name", "sample", "--out_root", str(out_root), "--vocab_size", "512", *options])
    return out_root / "sample"


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """The project's sample corpus prepared with a small BPE vocabulary (built once per session)."""
    return prepare_sample(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory):
    """tiny.write_synthetic_dataset's gpt2-kind dataset (vocabulary 98), written once per test module."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data")


@pytest.fixture(scope="session")
def other_sample_dataset(tmp_path_factory):
    """The sample corpus prepared as sample_dataset but with another seed: another split, so another
    BPE of the same size (512) and other token streams. A run of one must refuse the other."""
    return prepare_sample(tmp_path_factory.mktemp("other_data"), "--seed", "2")


# what starts another process: scripts (subprocess) and workers (multiprocessing's spawn calls
# fork_exec directly, so patching Popen alone would miss it)
PROCESS_STARTERS = [(subprocess.Popen, "__init__")] + (
    [(__import__("_posixsubprocess"), "fork_exec")] if os.name == "posix" else [])


def _guard_fast_test(item):
    """In a test not marked slow, starting a process fails: the fast loop (pytest -m "not slow") stays
    fast only if every test that runs a script or a worker process says so."""
    if item.get_closest_marker("slow") is not None:
        yield
        return

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{item.nodeid} starts a process; mark it @pytest.mark.slow")
    originals = [(owner, name, getattr(owner, name)) for owner, name in PROCESS_STARTERS]
    for owner, name, _ in originals:
        setattr(owner, name, refuse)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _guard_fast_test(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _guard_fast_test(item)


def native_on_this_cpu(dtype):
    """A skip marker for tests that compute in dtype, unless this CPU multiplies it natively: emulated
    half precision is about 100x slower than float32 (bfloat16 without AMX/AVX512-BF16; float16 without
    AMX-FP16)."""
    from backpacks.devices import emulation_warning
    return pytest.mark.skipif(bool(emulation_warning(dtype, "cpu")), reason=f"this CPU only emulates {dtype}")


@pytest.fixture(autouse=True)
def one_thread():
    """Every in-process test runs torch on one thread: tiny models gain nothing from intra-op threads,
    which thrash on a busy 2-core machine, and results then do not depend on the machine's core count.
    (Scripts started by slow tests use the threads their environment gives them.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def make_checkpoint():
    """make_checkpoint(out_dir, data_dir, model_type='backpack', block_size=64): the tiny model, untrained,
    of the dataset's vocabulary, saved as train.py saves its checkpoints (best.pt, built by the same
    training_checkpoint), for tests of the scripts that read them. A block of 64: a sentence of the sample
    corpus is about 35 tokens, more than the factory's 32."""
    from backpacks.checkpoint import rng_state, save_checkpoint, training_checkpoint
    from backpacks.dataset import BatchSampler

    def make(out_dir, data_dir, model_type="backpack", block_size=64):
        meta = json.loads((data_dir / "meta.json").read_text())
        model = tiny_model(model_type, vocab_size=meta["vocab_size"], block_size=block_size)
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = training_checkpoint(
            model, optimizer, torch.amp.GradScaler("cpu", enabled=False), cfg={"data_dir": str(data_dir)},
            dtype="float32", meta=meta, data_path=data_dir.resolve(), iter_num=0, best_val_loss=10.0,
            selection_key="val_loss", rngs=[rng_state("cpu")], samplers=[BatchSampler(data_dir).state_dict()],
            training_log=[], elapsed_s=0.0)
        save_checkpoint(ckpt, out_dir / "best.pt")
        return out_dir

    return make


@pytest.fixture
def fake_gpu():
    """One CUDA GPU stood in for by the CPU (tests/cuda_standin.py): an A100 unless the test configures
    another. The lines that run only on a GPU run here, under the contracts of torch.cuda's real entry points."""
    from cuda_standin import fake_cuda
    with fake_cuda() as gpu:
        yield gpu
