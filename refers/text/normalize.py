"""Report text normalisation and the left/right swap that goes with a horizontal flip."""

from __future__ import annotations

import re
import unicodedata

# Whole words only: "left" and "left-sided" swap, "leftward" and "cleft" do not.
_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def normalize_report(text: str) -> str:
    """Lower-case, NFKD-decompose, drop combining accents and collapse whitespace (as the original)."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACES.sub(" ", stripped).strip()


def _match_case(template: str, word: str) -> str:
    if template.isupper():
        return word.upper()
    if template[0].isupper():
        return word.capitalize()
    return word


def swap_left_right(text: str) -> str:
    """Swap the words ``left`` and ``right``, keeping each occurrence's case.

    A horizontally flipped frontal radiograph shows the patient's left on the image's left, so
    the report that supervises it must name the other side. ``"Left"`` -> ``"Right"``,
    ``"RIGHT"`` -> ``"LEFT"``; words that merely contain them (``"leftward"``) are untouched.
    """
    return _SIDE.sub(lambda m: _match_case(m.group(0), "right" if m.group(0).lower() == "left" else "left"), text)
