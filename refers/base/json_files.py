"""Reading the JSON files the project writes (records, selections, metadata) the same way everywhere.

Every way such a file can be broken is a ``ValueError``: not JSON, a byte that is not UTF-8
(``UnicodeDecodeError`` is one), and nesting too deep for the parser (which raises
``RecursionError`` otherwise, a traceback instead of the caller's one-line message).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike) -> Any:
    """The content of the JSON file ``path``.

    Raises:
        OSError: the file cannot be read (missing, a folder, no permission).
        ValueError: it is not UTF-8 JSON, or nests too deeply to parse.
    """
    return parse_json(Path(path).read_text(encoding="utf-8"))


def parse_json(text: str) -> Any:
    """``json.loads``, with nesting too deep for the parser a ``ValueError`` too."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None
