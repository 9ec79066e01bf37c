"""experiments/bench_translation.py: its check of the KV cache accepts what rounding does (a near-tie decided
the other way included) and refuses a wrong cache; end to end, it runs, checks and reports the speed-up."""
import json
import random
import subprocess
import sys

import pytest
import torch

from experiments.bench_translation import CacheCheck, check_cache
from model import Cache
from tiny import tiny_translation_model

EN, FR, EOT = 0, 1, 2


class IdTokenizer:
    """Text is whitespace-separated token ids."""
    en_id, fr_id, eot_id = EN, FR, EOT

    def encode_batch(self, texts):
        return [[int(w) for w in t.split()] for t in texts]


def test_a_divergence_at_a_near_tie_is_accepted_and_reported():
    """Row 0: the two top logits are 2e-5 of the scale apart and the cache decides them the other way."""
    check = CacheCheck(torch.float32)
    check.add(torch.tensor([[10.0, 10.0 - 2e-4, -3.0], [1.0, 5.0, 2.0]]),
              torch.tensor([[10.0 - 2e-4, 10.0, -3.0], [1.0, 5.0, 2.0 + 1e-5]]))
    assert check.error() is None
    summary = check.summary()
    assert summary['cache_check'] == 'ok' and summary['dtype'] == 'float32' and summary['tolerance'] == 1e-4
    assert summary['predictions_compared'] == 2 and summary['divergences'] == summary['near_tie_divergences'] == 1
    assert summary['max_logit_diff'] == pytest.approx(2e-4, rel=0.01)
    assert summary['max_relative_logit_diff'] == pytest.approx(2e-5, rel=0.01)


def test_a_divergence_that_is_no_near_tie_is_refused():
    """Each logit within the tolerance (8e-5 of the scale), but the cache's choice leads by 1.5e-4."""
    check = CacheCheck(torch.float32)
    check.add(torch.tensor([[10.0, 9.9985, 0.0]]), torch.tensor([[9.9992, 9.9993, 0.0]]))
    assert check.max_rel < check.rtol
    assert check.error().startswith("cached and uncached greedy decoding choose different tokens at 1 prediction(s)")
    assert check.summary()['cache_check'] == 'FAIL' and check.summary()['near_tie_divergences'] == 0


@pytest.mark.parametrize('dtype, name, rtol', [(torch.float32, 'float32', 1e-4), (torch.bfloat16, 'bfloat16', 5e-2)])
def test_logits_beyond_the_dtype_tolerance_are_refused_even_without_divergence(dtype, name, rtol):
    check = CacheCheck(dtype)
    uncached = torch.tensor([[10.0, 2.0, 0.0]])
    check.add(uncached + torch.tensor([[0.0, 0.0, 10 * rtol * 1.5]]), uncached)
    assert check.error() == (f"the KV cache changes the next-token logits: the largest difference, {15 * rtol:.3g}, "
                             f"is {1.5 * rtol:.2g} of the logits' scale, above the {name} tolerance {rtol:g}")
    check = CacheCheck(dtype)
    check.add(uncached + torch.tensor([[0.0, 0.0, 10 * rtol * 0.5]]), uncached)
    assert check.error() is None


def sources(n=6, seed=0):
    rng = random.Random(seed)
    return [' '.join(str(rng.randrange(3, 64)) for _ in range(rng.randrange(1, 20))) for _ in range(n)]


@pytest.mark.parametrize('model_type', ['backpack', 'transformer'])
def test_the_check_passes_the_models_cache_and_refuses_a_corrupted_one(model_type, monkeypatch):
    """Greedy decoding of left-padded batches: the real cache agrees with the uncached forward at every step;
    a cache that loses what it keeps of the first position (keys and values of every layer, the senses) is
    refused."""
    model = tiny_translation_model(model_type)
    check = check_cache(model, IdTokenizer(), sources(), 'en-fr', batch_size=4)
    assert check.error() is None and check.compared > 20 and check.max_rel < 1e-5 and not check.gaps

    commit = Cache.commit
    forget = lambda t: t.index_fill(2, torch.tensor([0]), 0.0)

    def forgetful(cache):
        commit(cache)
        cache.layers = [(forget(k), forget(v)) for k, v in cache.layers]
        if cache.senses is not None:
            cache.senses = forget(cache.senses)
    monkeypatch.setattr(Cache, 'commit', forgetful)
    error = check_cache(model, IdTokenizer(), sources(), 'en-fr', batch_size=4).error()
    assert error and error.startswith("the KV cache changes the next-token logits")


@pytest.mark.slow
def test_bench_translation_reports_speedup(sample_dataset, tmp_path, repo_root, make_checkpoint):
    run = make_checkpoint(tmp_path / "run", sample_dataset, model_type="backpack")
    result = subprocess.run([sys.executable, "-m", "experiments.bench_translation", "--out_dir", str(run),
                             "--samples", "4"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    cached, uncached, check, speedup = lines
    assert cached["kv_cache"] and not uncached["kv_cache"]
    assert cached["sentences"] == uncached["sentences"] == 4
    assert check["cache_check"] == "ok" and check["dtype"] == "float32" and check["predictions_compared"] > 0
    assert check["max_relative_logit_diff"] <= check["tolerance"] == 1e-4
    assert check["divergences"] == check["near_tie_divergences"]
    # float32 on the CPU: no near-tie decided the other way here, so the translations are the same
    assert check["identical_translations"] == 4 and cached["tokens_generated"] == uncached["tokens_generated"]
    # the speed-up's value is a timing on a shared machine, too noisy on 4 sentences to assert (README
    # reports it measured on 500)
    assert set(speedup) == {"speedup_of_kv_cache"} and isinstance(speedup["speedup_of_kv_cache"], float)
