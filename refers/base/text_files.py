"""Reading the project's line-based text files (image lists, prediction files) the same way everywhere.

UTF-8 with an optional byte-order mark (Windows editors write one), any line ending (``\\n``,
``\\r\\n``, ``\\r``); a byte that is not UTF-8 is reported with the file, the line and the column,
instead of a ``UnicodeDecodeError`` that names neither.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Iterator

from refers.base.errors import ListFormatError


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of ``path`` (1-based, without the line end).

    Raises:
        FileNotFoundError: the file does not exist.
        ListFormatError: a line is not valid UTF-8 (file, line and column in the message).
    """
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    for number, raw in enumerate(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"), start=1):
        yield number, decode_line(raw, path, number)


def decode_line(raw: bytes, path: str | os.PathLike, number: int) -> str:
    """One line's bytes as text, for readers that go line by line.

    Raises:
        ListFormatError: not valid UTF-8 (file, line and column in the message).
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ListFormatError(path, number, f"byte 0x{raw[error.start]:02x} at column {error.start + 1} is not UTF-8; "
                                            "save the file as UTF-8") from None
