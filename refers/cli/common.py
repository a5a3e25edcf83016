"""Shared helpers of the command-line entry points: clear errors instead of tracebacks."""

from __future__ import annotations

import functools
import sys
from typing import Callable, Sequence

from refers.base.errors import ListFormatError, UserError


# Errors that mean "the input is wrong", not "the program is wrong".
EXPECTED_ERRORS = (UserError, ListFormatError, FileNotFoundError, NotADirectoryError, PermissionError)


def command(prog: str) -> Callable[[Callable[[Sequence[str] | None], int]], Callable[[Sequence[str] | None], int]]:
    """Decorate a ``main(argv)`` so that expected errors print ``prog: error: ...`` and return a code."""

    def wrap(func: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(func)
        def main(argv: Sequence[str] | None = None) -> int:
            try:
                return int(func(argv) or 0)
            except EXPECTED_ERRORS as error:
                code = getattr(error, "exit_code", 1)
                print(f"{prog}: error: {error}", file=sys.stderr)
                return code
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130

        return main

    return wrap
