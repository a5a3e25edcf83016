"""Synthetic data built once per test session and shared, read-only, by every test file that needs it.

``synth_root``         ``refers synth --studies 60 --image-size 64`` (all five datasets, default seed)
``prepared_lists``     every ``refers prepare`` command run on ``synth_root`` (lists + resized images)
``finetune_datasets``  tiny fine-tuning datasets in the original list formats (tests/finetune_helpers.py)
``pretrain_studies``   tiny pre-training studies in the original caption-list format (tests/cli/test_pretrain_cli.py)

Read-only is checked, not trusted: each fixture records a hash of every file it made and, when
the session ends, fails (an error at teardown) if a test changed, added or removed a file. A test
that needs to change shared data copies it first: ``copy_shared(synth_root / "NIH_ChestX-ray",
tmp_path)``. (Permission bits would not do: the tests may run as root.)
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.finetune_helpers import make_dataset

SYNTH_ARGS = ("--studies", "60", "--image-size", "64")

# `refers prepare` on the synthetic datasets: folder under synth_root, extra flags (small images).
PREPARE_COMMANDS = {
    "mimic": ("MIMIC-CXR", ["--short-side", "40", "--workers", "2"]),
    "nih": ("NIH_ChestX-ray", ["--workers", "1"]),
    "shenzhen": ("Shenzhen_Tuberculosis", []),
    "covid": ("COVID-19_Image_Data_Collection", []),
    "vinbig": ("VinBigData_Chest_X-ray", ["--scale", "0.5", "--workers", "2"]),
}


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    changed = [f"changed {k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return changed + [f"removed {k}" for k in sorted(before.keys() - after.keys())] + \
        [f"added {k}" for k in sorted(after.keys() - before.keys())]


def _shared(root: Path, what: str) -> Iterator[Path]:
    """Yield ``root``, then fail if any test modified it."""
    before = tree_digest(root)
    yield root
    changes = _changes(before, tree_digest(root))
    assert not changes, (f"a test modified the shared {what} under {root} (copy it into tmp_path first, "
                         f"see tests/shared_data.py): " + "; ".join(changes[:10]))


def copy_shared(source: Path, destination: Path) -> Path:
    """A private, writable copy of shared data: ``destination / source.name``."""
    return Path(shutil.copytree(source, destination / source.name))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Iterator[Path]:
    """The output folder of one ``refers synth`` run (``MIMIC-CXR/``, ``NIH_ChestX-ray/``, ...)."""
    from refers.cli.synth import main as synth_main

    out = tmp_path_factory.mktemp("shared_synth")
    assert synth_main(["--out", str(out), *SYNTH_ARGS, "--no-progress"]) == 0
    yield from _shared(out, "refers synth output")


@pytest.fixture(scope="session")
def prepared_lists(synth_root, tmp_path_factory) -> Iterator[Path]:
    """Lists of every dataset (``<out>/<dataset folder>/``), made with the defaults plus small image sizes;
    resized images of MIMIC and VinBigData under ``<out>/images/<dataset folder>/``."""
    from refers.cli.prepare import main as prepare_main

    out = tmp_path_factory.mktemp("shared_prepared")
    for command, (folder, extra) in PREPARE_COMMANDS.items():
        args = [command, "--root", str(synth_root / folder), "--out", str(out / folder), *extra]
        if command in ("mimic", "vinbig"):
            args += ["--images-out", str(out / "images" / folder)]
        assert prepare_main(args) == 0, command
    yield from _shared(out, "prepared lists")


@pytest.fixture(scope="session")
def finetune_datasets(tmp_path_factory) -> Iterator[dict[str, tuple[Path, Path]]]:
    """Dataset name -> (list_dir, data_root) of tiny fine-tuning datasets (see tests/finetune_helpers.py)."""
    root = tmp_path_factory.mktemp("shared_finetune")
    datasets = {
        "Shenzhen_Tuberculosis": make_dataset(root / "shenzhen", "Shenzhen_Tuberculosis"),
        "VinBigData_Chest_X-ray": make_dataset(root / "vinbig", "VinBigData_Chest_X-ray", seed=1),
        "NIH_ChestX-ray": make_dataset(root / "nih", "NIH_ChestX-ray", nested=True, seed=2),
    }
    for _ in _shared(root, "fine-tuning datasets"):
        yield datasets


@pytest.fixture(scope="session")
def pretrain_studies(tmp_path_factory) -> Iterator[Path]:
    """A folder with ``lists/{train,val}_img_caption_patients.txt`` and ``images/`` (see ``make_studies``)."""
    from tests.cli.test_pretrain_cli import make_studies

    root = tmp_path_factory.mktemp("shared_studies")
    make_studies(root)
    yield from _shared(root, "pre-training studies")


@pytest.fixture(scope="session")
def pretrain_run(pretrain_studies, tmp_path_factory) -> Iterator[Path]:
    """A 4-iteration pre-training run on :func:`pretrain_studies` (tiny preset: ViT-nano at 32 px,
    1-layer BERT): its folder holds ``checkpoint_4.pth``, its tokenizers lie in ``../tok``."""
    from refers.cli.pretrain import main as pretrain_main
    from tests.cli.test_pretrain_cli import pretrain_args

    root = tmp_path_factory.mktemp("shared_pretrain_run")
    assert pretrain_main(pretrain_args(pretrain_studies, root / "run", "--no-export")) == 0
    for _ in _shared(root, "pre-training run"):
        yield root / "run"
