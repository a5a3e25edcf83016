"""Sections of free-text radiology reports (MIMIC-CXR ``sSTUDY.txt``): FINDINGS, IMPRESSION, ...

Real reports vary: headers in upper or mixed case, text on the header's line or below it, spelling
variants (``IMPRESSIONS``, ``CONCLUSION``), a combined ``FINDINGS AND IMPRESSION:``, a ``FINAL
REPORT`` banner, addenda, reports with no section header at all. Only a line starting with a known
section name (the MIMIC-CXR set and the variants MIT-LCP's section parser normalises, in any case)
followed by ``:`` opens a section; any other word before a colon stays in the text, since wrapped
report lines often begin with one (``XXXX: XXXX single view ...`` after de-identification, ``PA: ...``).
Sections with the same canonical name are concatenated. When a report has neither findings nor
impression, its last paragraph stands in for the impression (as MIMIC-CXR's own section parser does).
"""

from __future__ import annotations

import re

# Spelling variants -> canonical section name.
_ALIASES = {
    "findings": "findings", "finding": "findings", "findngs": "findings", "findins": "findings",
    "impression": "impression", "impressions": "impression", "impresion": "impression",
    "impresssion": "impression", "conclusion": "impression", "conclusions": "impression",
    "summary": "impression", "opinion": "impression",
    "indication": "indication", "indications": "indication", "history": "indication",
    "clinical history": "indication", "clinical information": "indication", "reason for exam": "indication",
    "reason for examination": "indication", "clinical indication": "indication", "indication for exam": "indication",
    "history/indication": "indication", "indication/history": "indication", "clinical data": "indication",
    "examination": "examination", "exam": "examination", "study": "examination", "procedure": "examination",
    "type of examination": "examination", "exam requested": "examination",
    "technique": "technique", "techniques": "technique",
    "comparison": "comparison", "comparisons": "comparison", "comparison exam": "comparison",
    "comparison study": "comparison", "prior": "comparison", "priors": "comparison",
    "recommendation": "recommendation", "recommendations": "recommendation", "recommendation(s)": "recommendation",
    "notification": "notification", "notifications": "notification", "communication": "notification",
    "addendum": "addendum", "final addendum": "addendum",
    "wet read": "wet read", "final report": "final report", "findings and impression": "findings and impression",
    "impression and findings": "findings and impression", "findings/impression": "findings and impression",
}

# Section names --sections may ask for.
SECTION_NAMES = tuple(sorted(set(_ALIASES.values()) - {"findings and impression", "final report"}))

_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z /&,()'-]{1,60}?)[ \t]*:[ \t]*(.*)$")
_BANNER = re.compile(r"^[ \t]*(FINAL REPORT|PRELIMINARY REPORT|ADDENDUM)[ \t]*$", re.IGNORECASE)


def _canonical(header: str) -> str | None:
    """The canonical name of a known section header, else None (the line is ordinary text)."""
    return _ALIASES.get(" ".join(header.lower().replace("_", " ").split()))


def split_sections(report: str) -> dict[str, str]:
    """Split a report into ``{canonical section name: text}``; text before any header goes to ``""``.

    Text is kept with single spaces (line breaks and tabs collapsed, hyphen-wrapped words rejoined).
    """
    sections: dict[str, list[str]] = {}
    current = ""
    for line in report.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _BANNER.match(line):
            current = "final report"
            continue
        match = _HEADER.match(line)
        name = _canonical(match.group(1)) if match else None
        if name is not None:
            current = name
            line = match.group(2)
        sections.setdefault(current, []).append(line)
    joined = {name: _join_lines(lines) for name, lines in sections.items()}
    return {name: text for name, text in joined.items() if text}


def _join_lines(lines: list[str]) -> str:
    """Wrapped lines as one line; a word broken after a hyphen (``ill-`` / ``defined``) is rejoined."""
    text = ""
    for line in (line.strip() for line in lines):
        if not line:
            continue
        glue = "" if re.search(r"[A-Za-z]-$", text) else " "
        text = f"{text}{glue}{line}" if text else line
    return " ".join(text.split())


def _last_paragraph(report: str) -> str:
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", report.replace("\r\n", "\n")) if p.strip()]
    if not paragraphs:
        return ""
    last = paragraphs[-1]
    match = _HEADER.match(last.strip().split("\n")[0])
    if match and _canonical(match.group(1)):  # a last "NOTIFICATION:" paragraph etc. is not a finding
        return ""
    return " ".join(last.split())


def extract_sections(report: str, wanted: tuple[str, ...] = ("findings", "impression")) -> dict[str, str]:
    """The requested sections of a report (``""`` when absent).

    A combined ``FINDINGS AND IMPRESSION:`` section fills ``findings``, and ``impression`` too when
    the report has no separate one (:func:`report_text` then uses it once). Without findings and impression the last paragraph becomes the
    impression.
    """
    sections = split_sections(report)
    combined = sections.pop("findings and impression", "")
    if combined:
        sections["findings"] = " ".join(filter(None, [sections.get("findings", ""), combined]))
        sections.setdefault("impression", combined)
    if not sections.get("findings") and not sections.get("impression"):
        sections["impression"] = _last_paragraph(report)
    return {name: sections.get(name, "") for name in wanted}


def report_text(sections: dict[str, str], wanted: tuple[str, ...] = ("findings", "impression")) -> str:
    """The training text: the wanted sections in order, each once, joined by a space."""
    parts: list[str] = []
    for name in wanted:
        text = sections.get(name, "")
        if text and text not in parts:
            parts.append(text)
    return " ".join(parts)
