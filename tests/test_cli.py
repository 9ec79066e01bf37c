"""backpacks/cli.py, train.py's settings: config files in order, each overriding the ones before it, then
--key=value; a config file with an error is one line naming the file and the line."""
import pytest

import train
from backpacks import cli


@pytest.mark.parametrize('text, expected', [
    ("max_iters = 10\nlearning_rate = (\n", ", line 2: SyntaxError: "),
    ("max_iters = 10\nbatch_size = 8\nlearning_rate = 1 / 0\n", ", line 3: ZeroDivisionError: division by zero"),
    ("n_layer = undefined_name\n", ", line 1: NameError: name 'undefined_name' is not defined"),
    (b"out_dir = 'caf\xe9'\n", "cannot read config file"),
])
def test_config_file_errors_name_file_and_line(tmp_path, text, expected):
    path = tmp_path / 'my_config.py'
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SystemExit) as e:
        train.parse_args([str(path)])
    message = str(e.value)
    assert message.startswith("error: ") and str(path) in message and expected in message and '\n' not in message


def test_a_later_config_file_overrides_an_earlier_one_and_the_command_line_both(tmp_path):
    """An overlay (config/adapt_lm_only.py after config/adapt_sensia_tiny.py, say) changes what it assigns
    and keeps the rest."""
    base, overlay = tmp_path / 'base.py', tmp_path / 'overlay.py'
    base.write_text("out_dir = 'out-base'\nmax_iters = 10\nn_senses = 4\n")
    overlay.write_text("out_dir = 'out-overlay'\nn_senses = 16\n")
    assert train.parse_args([str(base), str(overlay)]) == {'out_dir': 'out-overlay', 'max_iters': 10, 'n_senses': 16}
    assert train.parse_args([str(overlay), str(base), '--max_iters=3']) == {'out_dir': 'out-base', 'max_iters': 3,
                                                                           'n_senses': 4}


def test_a_recipes_first_step_checks_its_folders_and_counts(tmp_path):
    cli.main(['--writable', f'OUT={tmp_path}/new', '--count', 'ITERS=12'])
    with pytest.raises(SystemExit, match="ITERS='0' is not a positive integer"):
        cli.main(['--writable', f'OUT={tmp_path}', '--count', 'ITERS=0'])
    with pytest.raises(SystemExit, match="ITERS='1e3' is not a positive integer"):
        cli.main(['--count', 'ITERS=1e3'])
    (tmp_path / 'file').write_text('')
    with pytest.raises(SystemExit, match="OUT=.* cannot be written .*is a file, not a directory"):
        cli.main(['--writable', f'OUT={tmp_path}/file/out'])
