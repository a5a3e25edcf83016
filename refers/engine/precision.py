"""Mixed precision with torch.amp: the one module that creates ``torch.autocast`` and ``GradScaler``.

Training (both stages), validation, testing, prediction and the benchmarks take a
:class:`Precision` from here.

Fine-tuning's flags (the original's apex flags): ``--fp16`` is fp16 autocast and a gradient scaler
on a GPU. ``--loss_scale 0`` is apex's dynamic scaling (the scaler's default behaviour);
``--loss_scale S > 0`` starts the scaler at ``S`` and never grows it (it still backs off on an
overflow, where apex's static scale would have skipped the step forever). ``--bf16``: bfloat16
autocast, no scaler. ``--fp16_opt_level`` has no torch.amp counterpart (autocast behaves like apex
O1); it is accepted and recorded. On a CPU both run in fp32, said in one log line: fp16 autocast on
a CPU is slow and only partly supported.

Pre-training's ``AMP.DTYPE`` ("bfloat16", "float16" with a scaler, "float32") applies on a GPU; on a
CPU it runs float32 unless ``AMP.CPU_BFLOAT16`` (CPU autocast supports bfloat16 only; float32 is
the reference arithmetic the tests compare bit for bit) and the CPU computes in bfloat16 natively
(AVX-512 or AMX: oneDNN's bfloat16 kernels). Without that (an AVX2-only CPU) bfloat16 matrix
products fall back to a reference loop about 20 times slower than float32 (a demo step: 11.4 s
instead of 0.5 s, measured on an AVX2 AMD EPYC), so such a run trains in float32 and says so.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

# growth_interval for a fixed scale: more steps than any run makes.
_NEVER = 2**31 - 1
_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Precision:
    """How forward passes run and how gradients are scaled.

    Attributes:
        dtype: autocast dtype, or None for fp32.
        device_type: "cuda" or "cpu".
        scaler: the gradient scaler (fp16 only), else None.
    """

    dtype: torch.dtype | None
    device_type: str
    scaler: "torch.amp.GradScaler | None"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    def scaler_state(self) -> dict[str, Any]:
        """The scaler's state for a checkpoint ({} without a scaler)."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_scaler_state(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _fp16(device_type: str, loss_scale: float = 0.0) -> Precision:
    if loss_scale > 0:
        scaler = torch.amp.GradScaler(device_type, init_scale=loss_scale, growth_interval=_NEVER)
    else:
        scaler = torch.amp.GradScaler(device_type)
    return Precision(torch.float16, device_type, scaler)


def make_precision(fp16: bool, bf16: bool, loss_scale: float, device: torch.device, say: bool = True,
                   default: str = "fp32") -> Precision:
    """The precision of a fine-tuning run from its flags and device (see the module docstring).

    Args:
        say: log the one-line note that a CPU run ignores ``--fp16``/``--bf16`` (rank 0 only).
        default: precision on a GPU when neither flag is given: "fp32", or "bf16" (training's
            default, used where the GPU supports it: tensor cores at full rate, no scaler).
    """
    if device.type != "cuda":
        if (fp16 or bf16) and say:
            logger.warning("--%s: no GPU, so this run is fp32 on the CPU", "fp16" if fp16 else "bf16")
        return Precision(None, device.type, None)
    if bf16 or (not fp16 and default == "bf16" and torch.cuda.is_bf16_supported()):
        return Precision(torch.bfloat16, "cuda", None)
    if not fp16:
        return Precision(None, "cuda", None)
    return _fp16("cuda", loss_scale)


def named_precision(name: str, device: torch.device) -> Precision:
    """``"fp32" | "bf16" | "fp16"`` on ``device`` (the benchmarks' names; fp16 has a dynamic scaler)."""
    return make_precision(name == "fp16", name == "bf16", 0.0, device, say=False)


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (oneDNN's check: AVX-512 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def pretrain_dtype(cfg: Any, device: torch.device, say: bool = True) -> str:
    """The autocast dtype of a pre-training run: ``AMP.DTYPE`` on a GPU; on a CPU float32 unless
    ``AMP.CPU_BFLOAT16`` and the CPU has native bfloat16 (else one warning line, ``say``)."""
    if device.type == "cuda":
        return cfg.AMP.DTYPE
    if not cfg.AMP.CPU_BFLOAT16:
        return "float32"
    if cpu_has_fast_bfloat16():
        return "bfloat16"
    if say:
        logger.warning("AMP.CPU_BFLOAT16: this CPU has no native bfloat16 (no AVX-512/AMX), where bfloat16 runs "
                       "about 20 times slower than float32; training in float32")
    return "float32"


def dtype_precision(amp_dtype: str, device: torch.device) -> Precision:
    """Autocast in ``amp_dtype`` ("float32" turns it off); "float16" on a GPU gets a dynamic scaler."""
    dtype = _DTYPES[amp_dtype]
    if dtype is torch.float16 and device.type == "cuda":
        return _fp16("cuda")
    return Precision(dtype, device.type, None)


def pretrain_precision(cfg: Any, device: torch.device, say: bool = True) -> Precision:
    """The precision of a pre-training run (see :func:`pretrain_dtype`)."""
    return dtype_precision(pretrain_dtype(cfg, device, say), device)
