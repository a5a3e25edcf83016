"""Peak dense tensor-core throughput of common accelerators, for model-FLOPs utilisation (MFU).

Figures are the vendors' dense (no sparsity) peaks in TFLOP/s. ``fp32`` is plain FP32 (not TF32).
MFU = model FLOPs per second / peak; unknown devices (and CPUs) get None rather than a guess.
"""

from __future__ import annotations

import os
import platform

import torch

# name fragment (lower case, matched in order) -> {precision: TFLOP/s}
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("h100 pcie", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("h100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),  # SXM
    ("gh200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("b200", {"bf16": 2250.0, "fp16": 2250.0, "fp32": 80.0}),
    ("a100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("a10g", {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2}),
    ("a10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("l40s", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("l40", {"bf16": 181.0, "fp16": 181.0, "fp32": 90.5}),
    ("l4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("rtx 4090", {"bf16": 165.0, "fp16": 165.0, "fp32": 82.6}),
    ("rtx 3090", {"bf16": 71.0, "fp16": 71.0, "fp32": 35.6}),
    ("v100", {"fp16": 125.0, "fp32": 15.7}),
    ("t4", {"fp16": 65.0, "fp32": 8.1}),
)


def device_name(device: torch.device) -> str:
    """The accelerator's marketing name, or "cpu: <model> (N cores)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu: {model} ({os.cpu_count()} cores)"


def peak_tflops(name: str, precision: str) -> float | None:
    """Peak TFLOP/s of the device called ``name`` at ``precision`` ("bf16", "fp16", "fp32"), or None."""
    lowered = name.lower()
    if lowered.startswith("cpu"):  # no table for CPUs: MFU stays None
        return None
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in lowered:
            return peaks.get(precision)
    return None


def mfu(flops_per_second: float, name: str, precision: str) -> float | None:
    """Model-FLOPs utilisation in [0, 1], or None when the peak is unknown."""
    peak = peak_tflops(name, precision)
    return None if peak is None else flops_per_second / (peak * 1e12)
