"""The study's plan (backpacks/study/plan.py, experiments/study.py) and, slow, the whole study at toy size
(SMOKE=1 bash experiments/study.sh)."""
import json
import os
import shutil
import sys
import subprocess

import pytest

from backpacks.eval import resources
from backpacks.study import plan
from experiments import study as study_cli

SHAPE = plan.Shape(n_layer=2, n_head=2, n_embd=32, n_senses=4, block_size=64)


def test_flops_matched_iterations_spend_the_backpacks_training_flops():
    runs = plan.matched_runs(SHAPE, 512, 100)
    backpack, transformer = plan.build("backpack", SHAPE, 512), plan.build("transformer", SHAPE, 512)
    flops = runs["transformer_flops"]["max_iters"] * transformer.flops_per_token()
    assert flops == pytest.approx(100 * backpack.flops_per_token(), rel=0.01)
    assert runs["transformer_tokens"] == {**runs["transformer_tokens"], "max_iters": 100, "n_embd": 32}


def test_flops_matched_iterations_count_the_sense_network_once_per_distinct_token():
    """At a sense share below 1 the Backpack spends fewer FLOPs per token, so its FLOP-matched
    Transformer trains fewer iterations: as many as spend the Backpack's FLOPs at that share."""
    runs = plan.matched_runs(SHAPE, 512, 100, share=0.5)
    backpack, transformer = plan.build("backpack", SHAPE, 512), plan.build("transformer", SHAPE, 512)
    flops = runs["transformer_flops"]["max_iters"] * transformer.flops_per_token()
    assert flops == pytest.approx(100 * backpack.flops_per_token(distinct_share=0.5), rel=0.01)
    assert runs["transformer_flops"]["max_iters"] < plan.matched_runs(SHAPE, 512, 100)["transformer_flops"]["max_iters"]
    assert "50.0% of the positions" in runs["transformer_flops"]["why"]


def test_sense_share_is_the_distinct_share_of_training_batches(sample_dataset):
    from backpacks.dataset import BatchSampler
    share = plan.sense_share(SHAPE, sample_dataset, 4, batches=3, seed=5)
    sampler = BatchSampler(sample_dataset, seed=5)
    x = [sampler.get_batch("train", 4, SHAPE.block_size)[0] for _ in range(3)]
    assert share == pytest.approx(sum(b.unique().numel() / b.numel() for b in x) / 3)
    assert 0 < share < 0.9  # text repeats tokens; a 512 BPE more so


def test_parameter_matched_width_is_the_nearest_total():
    width, total, target = plan.param_matched_width(SHAPE, 512)
    assert width > SHAPE.n_embd and width % (2 * SHAPE.n_head) == 0
    step = 2 * SHAPE.n_head
    for other in (width - step, width + step):  # the neighbouring widths are further from the Backpack
        count = plan.build("transformer", SHAPE, 512, n_embd=other).param_counts()["total"]
        assert abs(count - target) >= abs(total - target)
    assert plan.matched_runs(SHAPE, 512, 100)["transformer_params"]["n_embd"] == width


def test_standard_sets_are_used_when_present_and_replaced_with_a_reason_when_not(tmp_path, monkeypatch):
    monkeypatch.setenv(resources.CACHE_VARIABLE, str(tmp_path / "empty cache"))  # other tests fill the session's
    paths, why = plan.standard_set("flores200", tmp_path, fetch=False)
    assert paths is None and "fetching is off" in why
    for rel in plan.STANDARD_SETS["flores200"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("a sentence\n")
    paths, why = plan.standard_set("flores200", tmp_path, fetch=False)
    assert why is None and [p.name for p in paths] == ["flores200-devtest.en", "flores200-devtest.fr"]


def test_plan_writes_the_settings_study_sh_sources(sample_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study_cli.main(["plan", "--out", str(tmp_path), "--results", str(tmp_path / "results"), "--data_dir", str(sample_dataset), "--iters", "40",
                    "--n_layer=2", "--n_head=2", "--n_embd=32", "--n_senses=4", "--block_size=64"])
    env = dict(line.split("=", 1) for line in (tmp_path / "plan.env").read_text().splitlines())
    assert env["TRANSFORMER_TOKENS_MAX_ITERS"] == "40" and int(env["TRANSFORMER_FLOPS_MAX_ITERS"]) > 40
    assert env["TRANSFORMER_PARAMS_N_EMBD"] == str(plan.param_matched_width(SHAPE, 512)[0])
    assert "transformer_flops" in capsys.readouterr().out
    written = json.loads((tmp_path / "plan.json").read_text())
    assert 0 < written["sense_share"] < 1 and \
        f"{written['sense_share']:.1%} of the positions" in written["matched"]["transformer_flops"]["why"]


def test_plan_refuses_an_unknown_setting(sample_dataset, tmp_path):
    with pytest.raises(SystemExit, match="unknown setting 'n_embed'"):
        study_cli.main(["plan", "--out", str(tmp_path), "--results", str(tmp_path), "--data_dir", str(sample_dataset),
                        "--iters", "4", "--n_embed=8"])


def test_gpu_profile_sizes_the_study_from_benchs_backpack_step(sample_dataset, monkeypatch, capsys):
    monkeypatch.setattr(study_cli.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        study_cli.main(["gpu_profile", "--data_dir", str(sample_dataset)])
    monkeypatch.setattr(study_cli.torch.cuda, "is_available", lambda: True)
    commands = []

    def bench(command, **kwargs):  # bench.py's JSON lines, as on a GPU
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, stderr="", stdout='{"model": "transformer", "step_ms": 9.0}\n'
                                                                        '{"model": "backpack", "step_ms": 50.0}\n')
    monkeypatch.setattr(study_cli.subprocess, "run", bench)
    monkeypatch.setattr(study_cli, "load_meta", lambda data_dir: {"splits": {"train": {"tokens": 10**10}}})
    study_cli.main(["gpu_profile", "--data_dir", str(sample_dataset)])
    shape, iters = capsys.readouterr().out.splitlines()
    assert "--device=cuda" in commands[0] and shape == " ".join(f"--{k}={v}" for k, v in plan.GPU_SHAPE.items())
    assert int(iters) == plan.gpu_iters(50.0, 10**10)[0] == 9600  # 8 minutes of 50 ms steps


@pytest.fixture(scope="module")
def smoke_study(repo_root, tmp_path_factory):
    """SMOKE=1 bash experiments/study.sh, run once for the tests below: (its directory, env, the run)."""
    tmp_path = tmp_path_factory.mktemp("smoke_study")
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "study"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2",
           "PYTHON": sys.executable}  # the interpreter running the tests, activated or not
    done = subprocess.run(["bash", "experiments/study.sh"], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=600)
    return tmp_path, env, done


@pytest.mark.slow
@pytest.mark.smoke
def test_smoke_study_runs_every_step_and_reports_every_section(smoke_study):
    from backpacks.study.report import SECTIONS
    tmp_path, env, done = smoke_study
    assert done.returncode == 0, done.stderr[-3000:]
    report = tmp_path / "study" / "study.md"
    assert done.stdout.strip().splitlines()[-1] == str(report)
    text = report.read_text()
    for section in SECTIONS:
        assert f"## {section}" in text
    for figure in ("curves_tokens.png", "curves_flops.png", "sensia_curves.png", "topic_control.png"):
        assert (tmp_path / "study" / figure).stat().st_size > 1000 and f"]({figure})" in text
    assert "no per-item data" not in text and "(2 seeds)" in text  # the paired tests ran, over seeds
    results = sorted(p.name for p in (tmp_path / "study" / "results").iterdir())
    assert "plan.json" in results and "backpack_seed2337.json" in results and "interventions.json" in results
    assert len([r for r in results if "_seed" in r]) == 7 and not [r for r in results if r.endswith(".pt")]
    assert "left: none" in done.stdout


@pytest.mark.slow
def test_smoke_study_resumes_from_its_results_and_refuses_another_corpus(smoke_study, repo_root):
    tmp_path, env, done = smoke_study
    assert done.returncode == 0, done.stderr[-3000:]
    # a second run reuses every step: nothing is prepared, trained or evaluated again
    times = (tmp_path / "study" / "steps" / "times.tsv").read_text()
    again = subprocess.run(["bash", "experiments/study.sh"], cwd=repo_root, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "study" / "steps" / "times.tsv").read_text() == times
    assert "reusing the finished run" not in again.stdout and "SENSIA: its results are in" in again.stdout
    assert "] unit " not in again.stdout  # the done units do not run at all
    # another machine, given the results folder without one unit, runs that unit alone
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "study" / "results", moved / "results")
    (moved / "results" / "backpack_seed2337.json").unlink()
    elsewhere = subprocess.run(["bash", "experiments/study.sh"], cwd=repo_root, capture_output=True, text=True,
                               env={**env, "OUT": str(tmp_path / "elsewhere"), "RESULTS": str(moved / "results")},
                               timeout=300)
    assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
    assert [line.split("]")[1] for line in elsewhere.stdout.splitlines() if "] unit " in line] == \
        [f" unit backpack_seed2337: train, evaluate its snapshots, write {moved / 'results' / 'backpack_seed2337.json'}"]
    assert "SENSIA: its results are in" in elsewhere.stdout and (moved / "study.md").is_file()
    # another corpus for the same study directory is refused, not mixed in
    other = subprocess.run(["bash", "experiments/study.sh", "--corpus", "data/europarl/sample/parliament.tsv"],
                           cwd=repo_root, env=env, capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and "prepared from another corpus" in other.stderr
