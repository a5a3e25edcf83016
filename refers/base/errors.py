"""The errors that mean "the input is wrong", not "the program is wrong".

Commands print these as one line (``prog: error: ...``) and exit with ``exit_code``, without a
traceback; the library raises them, and :func:`reporting_errors` turns them into that line and
code, for the commands (:mod:`refers.cli.common`) and for the apps that run a command's work in
their own process (the sweep's in-process runs, the bench's data).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Sequence

from refers.base.host import end_launched_worker


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


# Errors that mean "the input is wrong", not "the program is wrong".
EXPECTED_ERRORS = (UserError, ListFormatError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def reporting_errors(prog: str) -> Callable[[Callable[[Sequence[str] | None], int]], Callable[[Sequence[str] | None], int]]:
    """Decorate a ``main(argv)`` so that expected errors print ``prog: error: ...`` and return a code.

    An expected error returns its ``exit_code`` (1 when it has none); Ctrl-C prints ``prog: interrupted``
    and returns 130. In a worker of a multi-process launch the process ends there, with that code
    (:func:`refers.base.host.end_launched_worker`).
    """

    def wrap(func: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(func)
        def main(argv: Sequence[str] | None = None) -> int:
            try:
                code = int(func(argv) or 0)
            except EXPECTED_ERRORS as error:
                code = getattr(error, "exit_code", 1)
                print(f"{prog}: error: {error}", file=sys.stderr)
            except KeyboardInterrupt:
                code = 130
                print(f"{prog}: interrupted", file=sys.stderr)
            end_launched_worker(code)
            return code

        return main

    return wrap
