"""Shared helpers of the command-line entry points: clear errors instead of tracebacks.

The handling itself lives in :mod:`refers.base.errors`, so that the apps running a command's work
in their own process (sweep, bench) report errors exactly as the command does.
"""

from __future__ import annotations

from refers.base.errors import EXPECTED_ERRORS, reporting_errors

__all__ = ["EXPECTED_ERRORS", "command"]

# Decorate a ``main(argv)`` so that expected errors print ``prog: error: ...`` and return a code.
command = reporting_errors
