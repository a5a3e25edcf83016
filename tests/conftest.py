"""Shared test fixtures. Nothing here downloads: the hub is switched off for every test.

Running the tests:

    make test                                  # everything, slow tests included
    python -m pytest -q -m "not slow"          # the quick loop: leaves out the end-to-end runs
    python -m pytest -q -m slow                # only the slow ones

``@pytest.mark.slow`` (registered in pyproject.toml) marks end-to-end runs of a whole command or of
several processes: about 5 s or more each on an idle 2-core machine (the demo, DDP and torchrun
launches, multi-step pre-training runs).

Synthetic data that several files use (``refers synth`` output, the lists ``refers prepare`` makes
of it, tiny fine-tuning datasets and pre-training studies) is built once per session by the fixtures of
tests/shared_data.py and shared read-only; a test that changes it fails at teardown, so copy it
into ``tmp_path`` first (``copy_shared``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.shared_data import finetune_datasets, prepared_lists, pretrain_run, pretrain_studies, synth_root  # noqa: E402,F401 (fixtures)
from tests.slurm_cluster import slurm_cluster  # noqa: E402,F401 (fixture)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference"


def require_shared(relative: str) -> Path:
    """A path under ``../shared/reference``: skipped when absent, but a failure under CI.

    Under CI a missing folder means a wrong path, which must not skip a test forever.
    """
    path = SHARED_REFERENCE / relative
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"reference data missing under CI: {path}")
        pytest.skip(f"reference data not available: {path}")
    return path


@pytest.fixture
def shared_reference() -> Path:
    """The ``../shared/reference`` folder (see :func:`require_shared`)."""
    return require_shared("")
