"""Text files a user names on the command line (prompts, sentences to translate, topic words, test
corpora): read as UTF-8, or one line that names the file and, for bytes that are not UTF-8, the line
they are on (the message data/europarl/prepare.py gives for a corpus)."""
from pathlib import Path


class TextFileError(ValueError):
    """A user's text file that is missing, unreadable or not UTF-8; the message is the one line to print."""


def read_utf8(path, what="file"):
    """The text of a UTF-8 file (a leading byte-order mark dropped), or TextFileError."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TextFileError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise TextFileError(f"{what} {path}: invalid UTF-8 on line {line} "
                            f"(byte 0x{data[e.start]:02x} at column {column})") from None
