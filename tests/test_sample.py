"""sample.py end to end on a tiny checkpoint saved as train.py saves one (conftest.py's make_checkpoint), on the
sample dataset."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import sample
from backpacks.checkpoint import load_trained_model
from backpacks.generation import translate
from backpacks.tokenizer import load_tokenizer


@pytest.fixture(scope='module')
def tiny_run(sample_dataset, tmp_path_factory, make_checkpoint):
    return make_checkpoint(tmp_path_factory.mktemp('run'), sample_dataset)


def run_main(capsys, *argv):
    sample.main([str(a) for a in argv])
    return capsys.readouterr().out


@pytest.mark.slow
def test_cli_samples_end_to_end(tiny_run, repo_root):
    result = subprocess.run([sys.executable, 'sample.py', '--out_dir', str(tiny_run), '--start', '<EN> The Parliament',
                             '--num_samples', '2', '--max_new_tokens', '12', '--device', 'cpu'],
                            cwd=repo_root, capture_output=True, text=True, timeout=120,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stderr
    samples = [s.strip() for s in result.stdout.split('---------------') if s.strip()]
    assert len(samples) == 2
    assert all(s.startswith('<EN> The Parliament') for s in samples)


def test_sampling_is_reproducible_and_greedy_is_deterministic(tiny_run, capsys):
    args = ('--out_dir', tiny_run, '--start', '<FR> Le', '--num_samples', '1', '--max_new_tokens', '8')
    assert run_main(capsys, *args, '--seed', '3') == run_main(capsys, *args, '--seed', '3')
    greedy = ('--temperature', '0', '--num_samples', '2')
    first, second = run_main(capsys, *args, *greedy).split('---------------')[:2]
    assert first.strip() == second.strip()


def test_start_from_file(tiny_run, tmp_path, capsys):
    prompt = tmp_path / 'prompt.txt'
    prompt.write_text('<EN> The vote', encoding='utf-8')
    out = run_main(capsys, '--out_dir', tiny_run, '--start', f'FILE:{prompt}', '--num_samples', '1',
                   '--max_new_tokens', '4')
    assert out.startswith('<EN> The vote')


def test_translate_prints_what_generation_translates(tiny_run, capsys):
    sources = ['The committee adopted the report.', 'The vote will take place tomorrow.']
    out = run_main(capsys, '--out_dir', tiny_run, '--translate', '\n'.join(sources), '--direction', 'en-fr',
                   '--beam', '2')
    model, ckpt = load_trained_model(tiny_run)
    tok = load_tokenizer(ckpt['meta'], ckpt['data_dir'])
    assert out.split('\n')[:-1] == translate(model, tok, sources, 'en-fr', beam=2, progress=False)  # not splitlines: random models emit control characters


def test_translate_honours_max_new_tokens_and_says_when_a_source_is_cut(tiny_run, capsys):
    model, ckpt = load_trained_model(tiny_run)
    tok = load_tokenizer(ckpt['meta'], ckpt['data_dir'])
    source = 'The committee adopted the report.'
    short = translate(model, tok, [source], 'en-fr', max_new_tokens=2, progress=False)
    assert short != translate(model, tok, [source], 'en-fr', progress=False)  # the option changes the output
    sample.main(['--out_dir', str(tiny_run), '--translate', source, '--max_new_tokens', '2'])
    out, err = capsys.readouterr()
    assert out.split('\n')[:-1] == short and 'lost their first tokens' not in err
    sample.main(['--out_dir', str(tiny_run), '--translate', ' '.join([source] * 20)])  # beyond the 64-token context
    assert '1 of 1 source(s) lost their first tokens to fit the 64-token context' in capsys.readouterr().err


def test_tags_round_trip(sample_dataset):
    tok = load_tokenizer(json.loads((sample_dataset / 'meta.json').read_text()), sample_dataset)
    ids = sample.encode_with_tags(tok, '<EN> The vote <FR> Le vote')
    assert ids == [tok.en_id] + tok.encode('The vote') + [tok.fr_id] + tok.encode('Le vote')
    assert sample.decode_with_tags(tok, ids + [tok.eot_id]) == f'<EN> The vote <FR> Le vote {tok.token_str(tok.eot_id)}'


@pytest.mark.parametrize('argv, message', [
    (['--out_dir', '{missing}'], 'no checkpoint'),
    (['--out_dir', '{run}', '--start', 'FILE:{missing}/prompt.txt'], 'cannot read --start file'),
    (['--out_dir', '{run}', '--translate', ' \n '], '--translate has no text'),
    (['--out_dir', '{run}', '--translate', 'x', '--beam', '0'], '--beam must be >= 1'),
    (['--out_dir', '{run}', '--data_dir', '{missing}'], 'not found'),
])
def test_bad_input_gives_one_clear_error(tiny_run, tmp_path, argv, message):
    argv = [a.format(run=tiny_run, missing=tmp_path / 'missing') for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        sample.main(argv)
    assert str(exit_info.value).startswith('error: ') and message in str(exit_info.value)


def test_refuses_a_dataset_with_another_tokenizer(tiny_run, other_sample_dataset, sample_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit, match="its tokenizer differs"):
        sample.main(['--out_dir', str(tiny_run), '--data_dir', str(other_sample_dataset), '--max_new_tokens', '2'])
    # other token data made with the same tokenizer: sampling needs only the tokenizer
    same_tokenizer = tmp_path / 'same_tokenizer'
    shutil.copytree(sample_dataset, same_tokenizer)
    meta = json.loads((same_tokenizer / 'meta.json').read_text())
    (same_tokenizer / 'meta.json').write_text(json.dumps(dict(meta, data_sha256='0' * 64)))
    assert run_main(capsys, '--out_dir', tiny_run, '--data_dir', same_tokenizer, '--num_samples', '1',
                    '--max_new_tokens', '2').count('---------------') == 1


def test_a_start_longer_than_the_context_is_said_to_be_cropped(tiny_run, capsys):
    run_main(capsys, '--out_dir', tiny_run, '--start', 'The vote. ' * 5, '--num_samples', '1', '--max_new_tokens', '2')
    assert 'more than' not in capsys.readouterr().err
    sample.main(['--out_dir', str(tiny_run), '--start', 'The vote. ' * 40, '--num_samples', '1', '--max_new_tokens', '2'])
    err = capsys.readouterr().err
    assert 'tokens, more than the 64-token context: the model sees only its last 64' in err
