"""configurator.py: a config file with an error is one line naming the file and the line."""
import pytest

import train


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
