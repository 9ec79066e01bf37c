"""Text files a user names on the command line (prompts, sentences to translate, topic words, test
corpora): read as UTF-8, or one line that names the file and, for bytes that are not UTF-8, the line
they are on (prepare.py reads its corpora through decode_utf8 too)."""
from pathlib import Path


class TextFileError(ValueError):
    """A user's text file that is missing, unreadable or not UTF-8; the message is the one line to print."""


def read_utf8(path, what="file"):
    """The text of a UTF-8 file (a leading byte-order mark dropped), or TextFileError."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TextFileError(f"cannot read {what} {path}: {e.strerror or e}") from None
    return decode_utf8(data, f"{what} {path}")


def decode_utf8(data, where):
    """bytes as UTF-8 text (a leading byte-order mark dropped), or TextFileError naming where, the line
    and the column of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise TextFileError(f"{where}: invalid UTF-8 on line {line} "
                            f"(byte 0x{data[e.start]:02x} at column {column})") from None
