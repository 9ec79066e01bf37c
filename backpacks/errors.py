"""How every script stops on bad input: one line naming the problem and the way out, no traceback."""
import argparse


def fail(message):
    """Exit with status 1 after printing `error: message` to stderr."""
    raise SystemExit(f"error: {message}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line (status 2, as argparse), instead of the usage block and the
    error: the usage is one --help away."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
