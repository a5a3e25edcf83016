"""End-to-end check of the training engine's GPU paths, in one short run (part of ``gpu_check.sh``).

On tiny synthetic data, through the real commands' ``main(argv)`` in this process:

1. pre-training in bf16 and in fp16 (with the gradient scaler), a few dozen iterations each;
2. a resume: the bf16 run continued from its middle checkpoint must end with the same weights as
   the straight run, compared under ``torch.use_deterministic_algorithms(True)`` (math attention);
3. fine-tuning (``--bf16`` and ``--fp16``) from the exported encoder, then testing.

Any non-finite loss, failed command or resume mismatch ends the check with exit status 1 and a
line saying which. ``--device cpu`` runs the same stages on the CPU (bf16 autocast only; fp16
needs a GPU), as a smoke test of this script. Everything it computes is from SYNTHETIC data.

    python benchmarks/gpu_engine_check.py --device cuda [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

# Deterministic cuBLAS needs this before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the environment above)

TINY = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
ITERATIONS = 40


class CheckFailed(Exception):
    """One stage of the check went wrong; the message says which and why."""


def call(name: str, main: Callable[[Sequence[str]], int], argv: Sequence[str]) -> None:
    """Run one command in this process; a non-zero exit fails the check."""
    started = time.perf_counter()
    code = main([str(a) for a in argv])
    if code != 0:
        raise CheckFailed(f"{name}: exit status {code}")
    print(f"  ok  {name} ({time.perf_counter() - started:.1f} s)", flush=True)


def scalars(log_dir: Path, tag: str) -> list[float]:
    """Every value of one TensorBoard scalar under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: list[float] = []
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values += [event.value for event in accumulator.Scalars(tag)]
    return values


def require_finite(name: str, values: list[float]) -> None:
    if not values:
        raise CheckFailed(f"{name}: no loss was logged")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise CheckFailed(f"{name}: non-finite loss {bad[0]} among {len(values)} logged values")
    print(f"      {name}: {len(values)} losses, first {values[0]:.4f}, last {values[-1]:.4f}", flush=True)


def model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    from refers.base.checkpoints import safe_load

    return safe_load(checkpoint)["model"]


def prepare_data(out: Path) -> dict[str, Path]:
    """Synthetic MIMIC-style studies and Shenzhen images, their lists and the report tokenizers."""
    from refers.cli.main import main as refers

    data, lists = out / "Data", out / "DataProcessed"
    common = ["--out", data, "--image-size", "64", "--seed", "0", "--workers", "2", "--no-progress"]
    call("synth mimic", refers, ["synth", *common, "--studies", "120", "--datasets", "mimic"])
    call("synth shenzhen", refers, ["synth", *common, "--studies", "200", "--datasets", "shenzhen"])
    call("prepare mimic", refers, ["prepare", "mimic", "--root", data / "MIMIC-CXR", "--out", lists / "MIMIC",
                                   "--short-side", "64", "--workers", "2"])
    call("prepare shenzhen", refers, ["prepare", "shenzhen", "--root", data / "Shenzhen_Tuberculosis",
                                      "--out", lists / "Shenzhen_Tuberculosis"])
    call("tokenizers", refers, ["tokenizer", "train", "--reports", lists / "MIMIC" / "train_studies.jsonl",
                                "--out", out / "tokenizer", "--vocab-size", "512", "--wordpiece-vocab-size", "400"])
    return {"mimic": lists / "MIMIC", "shenzhen": lists / "Shenzhen_Tuberculosis", "tokenizer": out / "tokenizer"}


def pretrain_argv(paths: dict[str, Path], run: Path, dtype: str, gpus: int, *extra: str) -> list[str]:
    overrides = {
        "DATA.TRAIN_LIST": paths["mimic"] / "train_studies.jsonl",
        "DATA.VAL_LIST": paths["mimic"] / "val_studies.jsonl",
        "DATA.TOKENIZER_MODEL": paths["tokenizer"] / "reports_bpe.model",
        "DATA.BERT_TOKENIZER_DIR": paths["tokenizer"] / "wordpiece",
        "OPTIM.BATCH_SIZE": 16, "OPTIM.NUM_ITERATIONS": ITERATIONS, "OPTIM.WARMUP_STEPS": 4,
        "AMP.DTYPE": dtype, "AMP.CPU_BFLOAT16": str(dtype == "bfloat16").lower(),
    }
    pairs = [str(item) for pair in overrides.items() for item in pair]
    return ["--config", TINY, "--config-override", *pairs, "--serialization-dir", run,
            "--num-gpus-per-machine", str(gpus), "--checkpoint-every", str(ITERATIONS // 2), "--log-every", "5",
            "--no-progress", *extra]


def check_pretraining(paths: dict[str, Path], out: Path, device: str) -> Path:
    """bf16 and fp16 runs, then the resume comparison; returns the bf16 run's folder."""
    from refers.cli.pretrain import main as pretrain

    gpus = 1 if device == "cuda" else 0
    dtypes = ["bfloat16", "float16"] if device == "cuda" else ["bfloat16"]
    for dtype in dtypes:
        run = out / "pretrain" / dtype
        call(f"pre-training {dtype}", pretrain, pretrain_argv(paths, run, dtype, gpus))
        require_finite(f"pre-training {dtype}", scalars(run / "tensorboard", "train/loss"))

    straight = out / "pretrain" / "bfloat16"
    resumed = out / "pretrain" / "bfloat16-resumed"
    resumed.mkdir(parents=True)
    middle = resumed / f"checkpoint_{ITERATIONS // 2}.pth"
    shutil.copy2(straight / middle.name, middle)
    call("pre-training bf16, resumed at the middle", pretrain,
         pretrain_argv(paths, resumed, "bfloat16", gpus, "--resume-from", middle, "--no-export"))
    a, b = model_state(straight / f"checkpoint_{ITERATIONS}.pth"), model_state(resumed / f"checkpoint_{ITERATIONS}.pth")
    differing = [key for key in a if not torch.equal(a[key], b[key])]
    if differing or a.keys() != b.keys():
        worst = max((float((a[k].float() - b[k].float()).abs().max()) for k in differing), default=0.0)
        raise CheckFailed(f"resume mismatch: {len(differing)} of {len(a)} tensors differ (largest difference {worst:.3g}), "
                          f"e.g. {differing[:3]}")
    print(f"  ok  resume: all {len(a)} tensors of checkpoint_{ITERATIONS} equal the straight run's", flush=True)
    return straight


def check_finetuning(paths: dict[str, Path], pretrained: Path, out: Path, device: str) -> None:
    from refers.cli.finetune import main as finetune
    from refers.cli.test import main as test

    flags = ["--bf16", "--fp16"] if device == "cuda" else ["--bf16"]
    for flag in flags:
        name = f"ft{flag.lstrip('-')}"
        common = ["--name", name, "--dataset", "Shenzhen_Tuberculosis", "--list_dir", paths["shenzhen"],
                  "--output_dir", out / "finetune", "--log_dir", out / "logs" / name, "--model_type", "ViT-micro_8",
                  "--img_size", "64", "--global_pool", "avg", "--device", device, "--num_workers", "2"]
        call(f"fine-tuning {flag}", finetune, [*common, "--stage", "train", "--num_classes", "1",
                                               "--pretrained_dir", pretrained / "refers_checkpoint.pth",
                                               "--train_batch_size", "32", "--eval_batch_size", "64", "--num_steps", "30",
                                               "--eval_every", "10", "--warmup_steps", "3", "--learning_rate", "0.03",
                                               flag])
        require_finite(f"fine-tuning {flag}", scalars(out / "logs" / name, "train/loss"))
        checkpoint = out / "finetune" / f"{name}_bestauc_checkpoint.bin"
        call(f"testing {flag}", test, ["--pretrained_dir", checkpoint, "--results_dir", out / "results",
                                       "--method", name, "--device", device, "--num_workers", "2", flag])
        import json

        summary = next((out / "results").rglob(f"{name}/**/summary.json"))
        auc = json.loads(summary.read_text())["mean_auc"]
        if auc is None or not math.isfinite(auc):
            raise CheckFailed(f"testing {flag}: mean AUC {auc} in {summary}")
        print(f"      testing {flag}: test mean AUC {auc:.3f} (SYNTHETIC data, tiny model, 30 steps)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_engine_check: PyTorch sees no GPU (use --device cpu for a smoke test)", file=sys.stderr)
        return 1
    torch.use_deterministic_algorithms(True)
    if args.device == "cuda":  # the fused attention kernels' backward passes are not deterministic
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cudnn.benchmark = False
    out = Path(args.out or tempfile.mkdtemp(prefix="refers-engine-check-"))
    started = time.perf_counter()
    print(f"engine check on {args.device} in {out} (SYNTHETIC data)", flush=True)
    try:
        paths = prepare_data(out)
        pretrained = check_pretraining(paths, out, args.device)
        check_finetuning(paths, pretrained, out, args.device)
    except CheckFailed as failure:
        print(f"gpu_engine_check: FAILED: {failure} (work folder kept: {out})", file=sys.stderr)
        return 1
    if not (args.keep or args.out):
        shutil.rmtree(out, ignore_errors=True)
    print(f"gpu_engine_check: every engine path passed on {args.device} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
