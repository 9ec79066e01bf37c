"""experiments/visualize_senses.py on a tiny checkpoint: PNG figures and one self-contained HTML page."""
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_writes_pngs_and_self_contained_html(sample_dataset, tmp_path, make_checkpoint, repo_root):
    run = make_checkpoint(tmp_path / 'run', sample_dataset)
    result = subprocess.run([sys.executable, '-m', 'experiments.visualize_senses', '--out_dir', str(run), '--words', 'vote',
                             '+commission-committee', '--sentence', 'The vote.', '--translation', 'Le vote.', '--top', '3'],
                            cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    pngs = sorted(p.name for p in (run / 'senses').glob('*.png'))
    assert pngs == ['alpha_pair.png', 'senses_0_vote.png', 'senses_1_commissioncommittee.png']
    assert all((run / 'senses' / p).read_bytes().startswith(b'\x89PNG') for p in pngs)
    page = (run / 'senses' / 'senses.html').read_text()
    assert page.count('data:image/png;base64,') == 3 and 'src="http' not in page and '<table>' in page


@pytest.mark.slow
def test_transformer_gets_one_clear_line(sample_dataset, tmp_path, make_checkpoint, repo_root):
    run = make_checkpoint(tmp_path / 'run', sample_dataset, model_type='transformer')
    result = subprocess.run([sys.executable, '-m', 'experiments.visualize_senses', '--out_dir', str(run), '--words', 'vote',
                             '--sentence', 'The vote.'], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stderr.strip().startswith('error:') and 'needs a Backpack' in result.stderr
    assert result.stderr.strip().count('\n') == 0
