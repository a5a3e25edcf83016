"""Zero-shot prompt files (``configs/prompts/*.yaml``): a positive and a negative prompt set per class.

A file names its dataset and maps each class either to a finding of its ``_BASE_`` file
(``configs/prompts/findings.yaml``: ``findings: {name: {positive: [...], negative: [...]}}``) or to
its own ``{positive: [...], negative: [...]}``. Every class of the dataset must be there; an
unknown class name is an error with the nearest known one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from refers.base.paths import project_root
from refers.config.engine import ConfigError, read_yaml, unknown_key

# Dataset (registry name) -> its default prompt file under configs/prompts/.
DEFAULT_PROMPT_FILES = {
    "NIH_ChestX-ray": "nih.yaml", "VinBigData_Chest_X-ray": "vinbig.yaml", "Shenzhen_Tuberculosis": "shenzhen.yaml",
    "COVID-19_Image_Data_Collection": "covid.yaml", "MIMIC-CXR": "chexpert.yaml", "IU_X-ray": "chexpert.yaml",
}


@dataclass(frozen=True)
class ClassPrompts:
    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]


def default_prompt_file(dataset: str) -> Path | None:
    """``configs/prompts/<file>`` of a known dataset, None for others."""
    name = DEFAULT_PROMPT_FILES.get(dataset)
    return project_root() / "configs" / "prompts" / name if name else None


def _prompt_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where} must be a non-empty list of non-empty sentences, got {value!r}")
    return tuple(v.strip() for v in value)


def _class_prompts(name: str, value: Any, findings: dict[str, Any], path: Path) -> ClassPrompts:
    where = f"{path}: class {name!r}"
    if isinstance(value, str):
        if value not in findings:
            raise unknown_key(where, value, findings, noun="finding")
        where = f"{path}: finding {value!r}"
        value = findings[value]
    if not isinstance(value, dict) or set(value) != {"positive", "negative"}:
        raise ConfigError(f"{where} must name a finding or be {{positive: [...], negative: [...]}}, got {value!r}")
    return ClassPrompts(name, _prompt_list(value["positive"], f"{where}: positive"),
                        _prompt_list(value["negative"], f"{where}: negative"))


def prompts_digest(prompts: Sequence[ClassPrompts]) -> str:
    """sha256 of the prompts as read: the same for the same prompts, whichever files they came from."""
    table = [[p.name, list(p.positive), list(p.negative)] for p in prompts]
    return hashlib.sha256(json.dumps(table, ensure_ascii=False).encode("utf-8")).hexdigest()


def read_prompts(path: str | os.PathLike, classes: Sequence[str]) -> list[ClassPrompts]:
    """The prompts of ``classes`` (in that order) from a prompt file.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: not valid YAML, a class missing or unknown, a finding that does not exist, an
            empty prompt set; the message names the file.
    """
    path = Path(path)
    data = read_yaml(path, "prompt file")
    table = data.get("classes")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{path}: needs 'classes:', a mapping of class name -> finding or {{positive, negative}}")
    findings = data.get("findings") or {}
    for name in table:
        if name not in classes:
            raise unknown_key(str(path), name, classes, noun="class")
    missing = [c for c in classes if c not in table]
    if missing:
        raise ConfigError(f"{path}: no prompts for class(es) {', '.join(missing)}")
    return [_class_prompts(c, table[c], findings, path) for c in classes]
