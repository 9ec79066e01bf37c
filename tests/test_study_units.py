"""The study's units (backpacks/study/units.py, experiments/study.py units/collect/status): their order and
settings, the results folder's plan that refuses incomparable units, what a unit's record keeps, and the
status line's estimate."""
import json

import pytest
import torch

from backpacks.study import units
from experiments import study as study_cli

PLAN = {"settings": {"n_embd": 32, "batch_size": 4, "block_size": 16}, "iters": 600, "vocab_size": 64,
        "data_sha256": "d", "tokenizer_sha256": "t", "data_dir": "/data",
        "matched": {"transformer_flops": {"max_iters": 840, "n_embd": 32}, "transformer_tokens": {"max_iters": 600, "n_embd": 32},
                    "transformer_params": {"max_iters": 600, "n_embd": 48},
                    "transformer_params_nonemb": {"max_iters": 600, "n_embd": 56}}}


def test_the_decisive_pair_runs_first_seed_by_seed():
    names = [u.name for u in units.planned_units(PLAN, seeds=3, other_seeds=1)]
    assert names[:6] == ["backpack_seed1337", "transformer_flops_seed1337", "backpack_seed2337",
                         "transformer_flops_seed2337", "backpack_seed3337", "transformer_flops_seed3337"]
    assert names[6:] == ["transformer_tokens_seed1337", "transformer_params_seed1337", "transformer_params_nonemb_seed1337"]
    assert [u.name for u in units.planned_units(PLAN, seeds=1, other_seeds=0)] == ["backpack_seed1337",
                                                                                  "transformer_flops_seed1337"]


def test_a_units_settings_carry_its_matching_seed_and_snapshots():
    unit = units.planned_units(PLAN)[1]
    settings = unit.train_settings("/data")
    assert unit.model_type == "transformer"
    for expected in ("--max_iters=840", "--warmup_iters=84", "--seed=1337", "--n_embd=32", "--data_dir=/data",
                     f"--snapshot_interval={units.SNAPSHOT_INTERVAL}"):
        assert expected in settings


def test_a_plan_that_differs_is_refused():
    assert units.plan_disagreement(PLAN, dict(PLAN, data_dir="/elsewhere")) is None  # a new machine's paths
    why = units.plan_disagreement(PLAN, dict(PLAN, data_sha256="other", iters=300))
    assert "iters, data_sha256" in why and "not be comparable" in why


def test_per_item_lists_are_kept_for_the_last_snapshot_only():
    results = {"loss": {"all": {"loss": 4.123456789}, "windows": {"all": {"tokens": list(range(100))}}}}
    assert units.compact(results, per_item=False) == {"loss": {"all": {"loss": 4.12346}, "windows": {"all": {}}}}
    assert len(units.compact(results, per_item=True)["loss"]["windows"]["all"]["tokens"]) == 100


def snapshot(run_dir, iteration, evaluated=True, elapsed=120.0):
    path = run_dir / "snapshots" / f"iter_{iteration:06d}"
    path.mkdir(parents=True)
    torch.save({"model": {}, "dtype": "float32", "elapsed_s": elapsed, "config": {"seed": 1337},
                "training_log": [{"iter": iteration}]}, path / "ckpt.pt")
    if evaluated:
        (path / "eval").mkdir()
        (path / "eval" / "results.json").write_text(json.dumps({"loss": {"all": {"loss": 5.0 - iteration / 1000}}}))


def test_collect_needs_every_snapshot_evaluated_to_the_last_iteration(tmp_path):
    unit = units.planned_units(PLAN)[0]  # the Backpack: 600 iterations
    snapshot(tmp_path, 300)
    with pytest.raises(ValueError, match="needs every snapshot to iteration 600"):
        units.collect(unit, tmp_path, PLAN, "a machine")
    snapshot(tmp_path, 600, evaluated=False)
    with pytest.raises(ValueError, match=r"not evaluated: \[600\]"):
        units.collect(unit, tmp_path, PLAN, "a machine")
    (tmp_path / "snapshots" / "iter_000600" / "eval").mkdir()
    (tmp_path / "snapshots" / "iter_000600" / "eval" / "results.json").write_text('{"loss": {"all": {"loss": 4.4}}}')
    record = units.collect(unit, tmp_path, PLAN, "a machine")
    assert sorted(record["snapshots"]) == ["300", "600"] and record["dtype"] == "float32"
    assert record["plan"]["data_sha256"] == "d" and record["train_seconds"] == 120.0


def test_status_says_what_is_done_left_and_how_long(tmp_path):
    planned = units.planned_units(PLAN, seeds=2, other_seeds=0)
    records = {"backpack_seed1337": {"model_type": "backpack", "max_iters": 600, "train_seconds": 600},
               "transformer_flops_seed1337": {"model_type": "transformer", "max_iters": 840, "train_seconds": 420}}
    lines = units.status_lines(planned, records)
    assert lines[0] == "  done: backpack_seed1337, transformer_flops_seed1337"
    assert lines[1] == "  left: backpack_seed2337, transformer_flops_seed2337"
    assert "0.3 hours" in lines[2]  # 600 x 1 s + 840 x 0.5 s = 1020 s
    assert "none yet" in units.status_lines(planned, {})[2]


def test_the_cli_lists_the_units_not_done_and_collects_one(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "plan.json").write_text(json.dumps(PLAN))
    (results / "backpack_seed1337.json").write_text(json.dumps({"unit": "backpack_seed1337"}))
    study_cli.main(["units", "--results", str(results), "--seeds", "1", "--other_seeds", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("transformer_flops_seed1337 transformer --model_type=transformer")
    with pytest.raises(SystemExit, match="not a unit of the plan"):
        study_cli.main(["collect", "--results", str(results), "--unit", "backpack_seed9", "--run_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs every snapshot"):
        study_cli.main(["collect", "--results", str(results), "--unit", "transformer_flops_seed1337",
                        "--run_dir", str(tmp_path)])


def test_the_gpu_profile_trains_about_eight_minutes_within_three_epochs():
    from backpacks.study import plan
    per_iter = plan.GPU_SHAPE["batch_size"] * plan.GPU_SHAPE["block_size"]
    iters, why = plan.gpu_iters(step_ms=100, train_tokens=10**9)
    assert iters == 4800 and "8 minutes at 100 ms per step" in why
    iters, why = plan.gpu_iters(step_ms=10, train_tokens=8_500_000)
    assert iters == 3 * 8_500_000 // per_iter // 100 * 100 and "3 epochs" in why
    assert plan.gpu_iters(step_ms=10**6, train_tokens=10**9)[0] == 300  # never fewer than one snapshot's worth
