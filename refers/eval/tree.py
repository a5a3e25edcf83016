"""Find the prediction files of a results tree and group them into runs.

Layout: ``<Dataset>/<fraction or task folder>/<METHOD>/[seed<k>/]<Class>.txt``, which covers
* what ``test.py`` writes: ``<results>/<Dataset>/data<volume>/<method>/seed<seed>/<Class>.txt``;
* the published ``Results_of_fine-tuning/``: spaces in folder names, an extra level
  (``VinBigData Chest X-ray/code/data1/REFERS/``), task folders for the binary datasets
  (``covid_others/``, ``bacterial_viral/``, ``tuberculosis/``).
Levels between the dataset and the fraction folder (``code/``) are ignored. The dataset is the
first folder whose name is a known dataset (spaces, ``_`` and ``-`` compare equal), so the tree may
also be given from inside a dataset folder; otherwise it is the first level under the root.
The tree is only read, never written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refers.base.errors import ListFormatError
from refers.base.json_files import parse_json
from refers.data.registry import DATASETS, FINETUNE_DATASETS
from refers.base.synthetic import SYNTHETIC_MARKER
from refers.eval.predictions import prediction_filename, read_prediction_file

# Text files in a run folder that are not prediction files (matched lower-case): markers, test.py's
# summary.txt, the original's result.txt, logs. Any other unreadable .txt is reported, not fatal.
NOT_PREDICTIONS = re.compile(r"^(synthetic|readme|notes?|summary|results?|log|args|config)\.txt$|_summary\.txt$")
SEED_FOLDER = re.compile(r"^seed[_-]?(\d+)$", re.IGNORECASE)
FRACTION_FOLDER = re.compile(r"^data[_-]?(\d+(?:\.\d+)?)$", re.IGNORECASE)

# The paper's column order, and long names for the legend.
PAPER_METHODS = ("ImageNet", "CR", "MG", "TransVW", "C2L", "REFERS")
METHOD_NAMES = {"CR": "Context Restoration", "MG": "Models Genesis", "C2L": "Comparing to Learn", "TransVW": "TransVW (transferable visual words)"}


@dataclass(eq=False)  # identity: runs hold arrays
class Run:
    """The prediction files of one method on one test set (one seed).

    Attributes:
        dataset: dataset folder name as written in the tree.
        group: fraction folder (``data1``) or task folder (``covid_others``).
        method: method folder name (``REFERS``).
        seed: from a ``seed<k>`` folder, None without one.
        folder: the folder holding the files.
        classes: class name (file stem) -> (labels [N], probabilities [N]), in class order.
        synthetic: whether a marker or run record says this run came from synthetic data.
    """

    dataset: str
    group: str
    method: str
    seed: int | None
    folder: Path
    classes: dict[str, tuple[np.ndarray, np.ndarray]]
    synthetic: bool = False

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def matrix(self, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(labels [N, C], probabilities [N, C]) for ``class_names`` (all files must have N rows)."""
        return (np.stack([self.classes[c][0] for c in class_names], axis=1), np.stack([self.classes[c][1] for c in class_names], axis=1))


@dataclass
class ResultsTree:
    """All runs found under ``root``, and the files that could not be read."""

    root: Path
    runs: list[Run] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        return any(run.synthetic for run in self.runs)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


_KNOWN = {_norm(alias): spec for spec in DATASETS.values() for alias in (spec.name, spec.processed, spec.alias)}
_KNOWN.update({_norm("Shenzhen TB"): DATASETS["Shenzhen_Tuberculosis"], _norm("COVID-19"): DATASETS["COVID-19_Image_Data_Collection"],
               _norm("VinBigData"): DATASETS["VinBigData_Chest_X-ray"], _norm("NIH"): DATASETS["NIH_ChestX-ray"]})


def dataset_key(name: str) -> tuple[int, str]:
    """Sort key: the paper's dataset order first, then by name."""
    spec = _KNOWN.get(_norm(name))
    return (FINETUNE_DATASETS.index(spec.name), name) if spec and spec.name in FINETUNE_DATASETS else (len(FINETUNE_DATASETS), name)


ZERO_SHOT_FOLDER = "zeroshot"  # refers zeroshot's task folder: no labels at all


def group_key(group: str) -> tuple[int, float, str]:
    """Sort key: zero-shot first, fractions by number (data1 < data10 < data100), then task folders by name."""
    match = FRACTION_FOLDER.match(group)
    if group.lower() == ZERO_SHOT_FOLDER:
        return (0, -1.0, group)
    return (0, float(match.group(1)), group) if match else (1, 0.0, group)


def group_label(group: str) -> str:
    """``data10`` -> ``10%``, ``zeroshot`` -> ``zero-shot``; another task folder stays as it is."""
    match = FRACTION_FOLDER.match(group)
    if group.lower() == ZERO_SHOT_FOLDER:
        return "zero-shot"
    return f"{match.group(1)}%" if match else group


def method_key(method: str) -> tuple[int, str]:
    return (PAPER_METHODS.index(method), method) if method in PAPER_METHODS else (len(PAPER_METHODS), method.lower())


def _class_order(dataset: str, stems: list[str]) -> list[str]:
    """The registry's class order for a known dataset, other files by name after."""
    spec = _KNOWN.get(_norm(dataset))
    known = [Path(prediction_filename(c)).stem for c in spec.classes] if spec else []
    return [s for s in known if s in stems] + sorted(s for s in stems if s not in known)


def _says_synthetic(path: Path) -> bool:
    """A run record saying synthetic: a JSON with ``"synthetic": true`` or a text with the word SYNTHETIC."""
    try:
        if path.stat().st_size > 1_000_000:
            return False
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    if path.suffix == ".json":
        try:
            record = parse_json(text)
        except ValueError:
            return False
        return isinstance(record, dict) and bool(record.get("synthetic") or (isinstance(record.get("data"), dict) and record["data"].get("synthetic")))
    return "SYNTHETIC" in text


def _is_synthetic(folder: Path, root: Path, records: list[Path]) -> bool:
    for parent in (folder, *folder.parents):
        if (parent / SYNTHETIC_MARKER).is_file():
            return True
        if parent == root:
            break
    if any((parent / SYNTHETIC_MARKER).is_file() for parent in root.parents):
        return True
    return any(_says_synthetic(record) for record in records)


def _locate(parts: list[str], root: Path) -> tuple[str, str, str, int | None] | None:
    """(dataset, group, method, seed) of a run folder from its path parts below ``root``."""
    seed = None
    if parts and SEED_FOLDER.match(parts[-1]):
        seed = int(SEED_FOLDER.match(parts[-1]).group(1))
        parts = parts[:-1]
    # Folders above the root only count when the root itself is a dataset, fraction or method folder.
    reach = max(1, 3 - len(parts))
    full = [*root.parts[-reach:], *parts]
    if len(full) < 3:
        return None
    method, group, above = full[-1], full[-2], full[:-2]
    known = [name for name in above if _norm(name) in _KNOWN]
    if not known and len(parts) < 3:  # root inside a dataset folder (e.g. its code/ level): look further up
        known = [name for name in root.parts if _norm(name) in _KNOWN]
    return (known[-1] if known else above[0]), group, method, seed


def discover(root: str | Path) -> ResultsTree:
    """Read every run under ``root``.

    Unreadable ``.txt`` files are listed in ``problems`` (with file:line) and skipped, so one bad
    file does not hide the rest of the tree.

    Raises:
        FileNotFoundError / NotADirectoryError: for a missing ``root``.
    """
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"results folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    tree = ResultsTree(root)
    for folder in sorted({p.parent for p in root.rglob("*.txt")}):
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue  # hidden folders (.ipynb_checkpoints next to the original notebooks)
        files = sorted(p for p in folder.iterdir() if p.is_file())
        predictions = [p for p in files if p.suffix == ".txt" and not NOT_PREDICTIONS.search(p.name.lower()) and not p.name.startswith(".")]
        if not predictions:
            continue
        place = _locate(list(folder.relative_to(root).parts), root)
        if place is None:
            tree.problems.append(f"{folder}: prediction files outside a <Dataset>/<fraction>/<METHOD>/ folder, skipped")
            continue
        classes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for path in predictions:
            try:
                classes[path.stem] = read_prediction_file(path)
            except ListFormatError as error:
                tree.problems.append(f"skipped unreadable file {error}")
        if not classes:
            continue
        records = [p for p in files if p not in predictions and p.suffix in (".txt", ".json", ".md", ".yaml", ".csv")]
        if SEED_FOLDER.match(folder.name):
            records += [p for p in folder.parent.iterdir() if p.is_file() and p.suffix in (".txt", ".json", ".md")]
        dataset, group, method, seed = place
        order = _class_order(dataset, list(classes))
        tree.runs.append(Run(dataset, group, method, seed, folder, {c: classes[c] for c in order}, _is_synthetic(folder, root, records)))
    tree.runs.sort(key=lambda r: (dataset_key(r.dataset), group_key(r.group), method_key(r.method), -1 if r.seed is None else r.seed))
    return tree
