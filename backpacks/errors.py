"""How every script stops on bad input: one line naming the problem and the way out, no traceback."""


def fail(message):
    """Exit with status 1 after printing `error: message` to stderr."""
    raise SystemExit(f"error: {message}")
