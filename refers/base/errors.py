"""The errors that mean "the input is wrong", not "the program is wrong".

Commands print these as one line (``prog: error: ...``) and exit with ``exit_code``, without a
traceback; the library raises them, the command line catches them (:mod:`refers.cli.common`).
"""

from __future__ import annotations

import os


class UserError(Exception):
    """An expected failure (bad input, missing file, bad flag): shown as one line, no traceback.

    Attributes:
        exit_code: 1 for bad data or state, 2 for bad usage or configuration (as argparse).
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ListFormatError(ValueError):
    """A list file line that cannot be read; the message names the file and line number."""

    def __init__(self, path: str | os.PathLike, line_number: int, reason: str):
        self.path = str(path)
        self.line_number = line_number
        super().__init__(f"{path}:{line_number}: {reason}")


class UnreadableImageError(OSError):
    """An image that exists but cannot be decoded; the message names the file."""
