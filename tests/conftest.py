"""Shared test fixtures. Nothing here downloads: the hub is switched off for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
