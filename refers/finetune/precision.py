"""Mixed precision with torch.amp, in place of the original's apex.

``--fp16``: fp16 autocast and a gradient scaler on a GPU. ``--loss_scale 0`` is apex's dynamic
scaling (the scaler's default behaviour); ``--loss_scale S > 0`` starts the scaler at ``S`` and never
grows it (it still backs off on an overflow, where apex's static scale would have skipped the step
forever). ``--bf16``: bfloat16 autocast, no scaler. ``--fp16_opt_level`` has no torch.amp
counterpart (autocast behaves like apex O1); it is accepted and recorded. On a CPU both run in fp32,
said in one log line: fp16 autocast on a CPU is slow and only partly supported.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

# growth_interval for a fixed scale: more steps than any run makes.
_NEVER = 2**31 - 1


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

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]


def make_precision(fp16: bool, bf16: bool, loss_scale: float, device: torch.device, say: bool = True,
                   default: str = "fp32") -> Precision:
    """The precision of a run from its flags and device (see the module docstring).

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
    if loss_scale > 0:
        scaler = torch.amp.GradScaler("cuda", init_scale=loss_scale, growth_interval=_NEVER)
    else:
        scaler = torch.amp.GradScaler("cuda")
    return Precision(torch.float16, "cuda", scaler)
