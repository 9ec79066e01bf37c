"""experiments/profile_step.py: a profiled training step lists operators with their shares."""
import os
import re
import subprocess
import sys


def test_profile_lists_the_top_operators(repo_root):
    tiny = ['--n_layer=1', '--n_embd=32', '--n_head=2', '--n_senses=4', '--block_size=16', '--vocab_size=64',
            '--batch_size=2', '--steps=1', '--top=5']
    out = subprocess.run([sys.executable, 'experiments/profile_step.py', *tiny], cwd=repo_root, capture_output=True,
                         text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if re.search(r'%\s+[\d.]+ ms/step', line)]
    assert len(lines) == 5 and any(line.startswith('aten::mm') for line in lines)
    shares = [float(re.search(r'([\d.]+)%', line).group(1)) for line in lines]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100
