"""Export the image encoder of a pre-training checkpoint for fine-tuning.

The export is a flat state dict in the original REFERS naming (``transformer.embeddings...``,
separate q/k/v), the format of the released ``refers_checkpoint.pth``, so both this project
(:func:`refers.models.weights.load_encoder_weights`) and the original fine-tuning code load it.
A JSON file beside it records where it came from (checkpoint, iteration, synthetic data or not).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from refers.base.atomic import atomic_output, atomic_write_text
from refers.base.checkpoints import atomic_torch_save, safe_load
from refers.base.json_files import parse_json
from refers.models.weights import timm_to_original

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "image_encoder."
EXPORT_FORMATS = ("pth", "safetensors")


def encoder_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image encoder's tensors of a full-model state dict, renamed to the original naming.

    Args:
        model_state: keys ``image_encoder.<timm key>`` (other modules' keys are ignored).

    Raises:
        ValueError: no ``image_encoder.`` keys.
    """
    timm_state = {k[len(ENCODER_PREFIX):]: v for k, v in model_state.items() if k.startswith(ENCODER_PREFIX)}
    if not timm_state:
        raise ValueError("the checkpoint holds no image-encoder weights (no 'image_encoder.' keys)")
    timm_state = {k: v for k, v in timm_state.items() if not k.startswith("head.")}
    return {k: v.detach().cpu().contiguous().clone() for k, v in timm_to_original(timm_state).items()}


def save_encoder(
    state: dict[str, torch.Tensor], out: str | os.PathLike, fmt: str = "pth", provenance: dict[str, Any] | None = None
) -> Path:
    """Write ``state`` atomically as ``.pth`` (torch) or ``.safetensors``, plus ``<out>.json`` provenance."""
    out = Path(out)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if fmt == "pth":
        atomic_torch_save(state, out)
    else:
        from safetensors.torch import save_file

        metadata = {k: str(v) for k, v in (provenance or {}).items()}
        with atomic_output(out) as tmp:
            save_file(state, str(tmp), metadata=metadata)
    if provenance is not None:
        atomic_write_text(out.with_name(out.name + ".json"), json.dumps(provenance, indent=2) + "\n")
    return out


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "pth") -> Path:
    """Read a pre-training checkpoint (weights_only) and write its image encoder to ``out``."""
    from refers.base.synthetic import is_synthetic

    raw = safe_load(checkpoint)
    model_state = raw.get("model") if isinstance(raw, dict) and isinstance(raw.get("model"), dict) else raw
    if not isinstance(model_state, dict):
        raise ValueError(f"{checkpoint} does not hold a model state dict")
    provenance = {
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "iteration": raw.get("iteration") if isinstance(raw, dict) else None,
        "image_encoder": ((raw.get("config") or {}).get("MODEL", {}).get("VISUAL", {}).get("NAME") if isinstance(raw, dict) else None),
        "key_naming": "original REFERS (transformer.*)",
        "synthetic_data": is_synthetic(Path(checkpoint).parent),
    }
    return save_encoder(encoder_state(model_state), out, fmt, provenance)


def _training_data(cfg: dict[str, Any]) -> dict[str, Any]:
    """The training list a pre-training configuration names, with its dataset.yaml's name and licence."""
    from refers.data.image_roots import read_dataset_yaml

    listed = (cfg.get("DATA") or {}).get("TRAIN_LIST") or ""
    info = read_dataset_yaml(Path(listed).parent) if listed and Path(listed).parent.is_dir() else {}
    return {"train_list": listed, "dataset": info.get("dataset"), "license": info.get("license")}


def _run_file(folder: Path, name: str) -> str | None:
    path = folder / name
    return path.read_text(encoding="utf-8", errors="replace").strip() if path.is_file() else None


def _run_info(folder: Path) -> dict[str, Any]:
    """The pre-training run's ``run_info.json`` beside the checkpoint (``{}``, with a warning, if unreadable)."""
    try:
        info = parse_json(_run_file(folder, "run_info.json") or "{}")
    except ValueError as error:
        info = None
        logger.warning("%s: unreadable (%s); the export's provenance leaves it out", folder / "run_info.json", error)
    return info if isinstance(info, dict) else {}


def model_card(provenance: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` of an exported dual encoder, from its provenance."""
    data = provenance["training_data"]
    synthetic = provenance["synthetic_data"]
    lines = ["# REFERS dual encoder", ""]
    if synthetic:
        lines += ["**Trained on SYNTHETIC data** (`refers synth`): it says nothing about real radiographs.", ""]
    lines += [
        "An image encoder and a report encoder whose L2-normalised outputs share the space of REFERS's report "
        "contrast. Load it with `refers.load_dual_encoder(folder)`.", "",
        f"- Image encoder: {provenance['image_encoder']} at {provenance['image_size']} px, {provenance['num_views']} view(s) "
        "per study",
        f"- Training data: {data['dataset'] or 'unnamed'} (`{data['train_list']}`)",
        f"- Licence of the training data: {data['license'] or 'not recorded; check the data source'}",
        f"- Pre-training iterations: {provenance['iteration']}",
        f"- Source checkpoint: `{provenance['source_checkpoint']}`",
        f"- Commit: {provenance['git_commit'] or 'unknown'}",
    ]
    if provenance.get("command"):
        lines += ["", "Command:", "", "```", provenance["command"], "```"]
    return "\n".join(lines) + "\n"


def export_dual_encoder(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a pre-training checkpoint's dual encoder (both encoders, projection, tokenizer) to the
    folder ``out`` (:mod:`refers.engine.dual_encoder_folder`), with its model card."""
    from refers.base.synthetic import is_synthetic
    from refers.engine.run_info import git_commit
    from refers.models.dual_encoder import dual_encoder_from_checkpoint
    from refers.engine.dual_encoder_folder import save_dual_encoder

    checkpoint = Path(checkpoint)
    encoder = dual_encoder_from_checkpoint(checkpoint)
    cfg = encoder.pretrain_config  # type: ignore[attr-defined]
    info = _run_info(checkpoint.parent)
    spec = encoder.spec
    provenance = {
        "source_checkpoint": str(checkpoint.resolve()), "iteration": encoder.iteration,  # type: ignore[attr-defined]
        "image_encoder": spec.image_encoder, "image_size": spec.image_size, "num_views": spec.num_views,
        "synthetic_data": is_synthetic(checkpoint.parent), "training_data": _training_data(cfg),
        "command": _run_file(checkpoint.parent, "command.txt"), "git_commit": info.get("git_commit") or git_commit(),
    }
    return save_dual_encoder(encoder, out, provenance, model_card(provenance))
