"""What a run folder records about how it was made: command line, code version, packages, device.

Written once by rank 0 at the start of a run, so that any result can be traced back to the exact
command, commit and software that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from refers.base.atomic import atomic_write_text
from refers.base.synthetic import mark_synthetic
from refers.base.paths import project_root

PACKAGES = ("torch", "torchvision", "timm", "transformers", "tokenizers", "sentencepiece", "numpy", "pillow", "refers")


def git_commit(root: str | os.PathLike | None = None) -> str:
    """The checkout's commit (``+dirty`` when it has uncommitted changes), or ``unknown``."""
    root = Path(root or project_root())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description(device: Any, world_size: int) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device), "world_size": world_size, "host": platform.node(),
                            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def write_run_info(
    folder: str | os.PathLike,
    argv: Sequence[str],
    config_yaml: str,
    device: Any,
    world_size: int,
    synthetic: bool,
) -> None:
    """Write ``config.yaml``, ``command.txt`` and ``run_info.json`` (and ``SYNTHETIC.txt``) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", config_yaml)
    command = shlex.join([Path(sys.argv[0]).name, *argv])
    atomic_write_text(folder / "command.txt", f"cd {shlex.quote(os.getcwd())}\n{command}\n")
    info = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": device_description(device, world_size),
        "synthetic_data": synthetic,
    }
    atomic_write_text(folder / "run_info.json", json.dumps(info, indent=2) + "\n")
    if synthetic:
        mark_synthetic(folder, "This run was trained on SYNTHETIC data; its numbers say nothing about real X-rays.\n")
