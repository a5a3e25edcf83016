"""``refers bench``: training-step throughput, framework overhead, data loading, evaluation, index memory.

  refers bench                                   # CPU here: ratios against the original's ways
  refers bench --device cuda --precision bf16    # GPU: ViT-B/16 throughput and MFU
  refers bench --quick --out /tmp/b              # seconds: tiny models, small images

Writes ``<out>/results.json`` (the device's slot; a CPU run keeps the GPU figures) and
``<out>/RESULTS.md``. Benchmark data (synthetic images, a generated MIMIC-sized study index) are
made once under ``<out>/.cache/``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command

if TYPE_CHECKING:
    import torch

PROG = "refers bench"
PARTS = ("finetune", "pretrain", "loader", "eval", "index")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--preset", choices=("tiny", "cpu", "vitb16"), default=None,
                        help="model sizes: tiny (tests), cpu (ViT-micro_8 at 64 px, the CPU default), "
                             "vitb16 (ViT-B/16 at 224 px, the GPU default)")
    parser.add_argument("--batch-size", type=int, default=None, help="fine-tuning images per step (default: the preset's)")
    parser.add_argument("--pretrain-batch-size", type=int, default=None, help="pre-training studies per step (default: the preset's)")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default=None,
                        help="default: bf16 on GPUs that support it, else fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (GPU)")
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes: tiny models, small images, fewer repeats")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=None, help="run only these parts (default: all)")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="data-loader worker counts to compare (default: 0, 2, ... up to the CPU count)")
    parser.add_argument("--index-scale", type=float, default=None,
                        help="size of the generated study index as a fraction of MIMIC-CXR's (default 1; --quick 0.01)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of the timed model steps (default: 1 on a CPU, where threads contending "
                             "with other processes on a shared machine swamp the ratios; PyTorch's default on a GPU machine)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: the project's benchmarks/)")
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Sizes and repeats of this run."""
    if args.quick:
        return {"steps": 2, "repeats": 3, "pretrain_steps": 1, "pretrain_repeats": 1, "png": 128, "jpeg": 256,
                "loader_items": 8, "loader_repeats": 1, "eval_images": 64, "bootstrap": 20, "index_scale": 0.01}
    return {"steps": 4, "repeats": 9, "pretrain_steps": 2, "pretrain_repeats": 3, "png": 1024, "jpeg": 2048,
            "loader_items": 32, "loader_repeats": 3, "eval_images": 512, "bootstrap": 200, "index_scale": 1.0}


def say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


def _run(args: argparse.Namespace, device: "torch.device", out: Path) -> dict[str, Any]:
    """Run the parts asked for on ``device``; returns the run's record for :mod:`refers.bench.report`."""
    import torch

    from refers.bench import evaluation, index_memory, loader, steps
    from refers.bench.peaks import device_name

    device_type = device.type
    preset_name = args.preset or ("tiny" if args.quick else "vitb16" if device_type == "cuda" else "cpu")
    preset = steps.PRESETS[preset_name]
    precision = steps.resolve_precision(args.precision, device)
    settings = _settings(args)
    parts = args.only or list(PARTS)
    cache = out / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / ".gitignore").write_text("*\n", encoding="utf-8")
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 parts (optimiser, losses) on tensor cores
        torch.backends.cudnn.allow_tf32 = True

    run: dict[str, Any] = {
        "device": device_name(device), "device_type": device_type, "torch": torch.__version__,
        "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preset": preset_name, "precision": precision, "compile": args.compile, "quick": args.quick,
    }
    if "finetune" in parts:
        say(f"fine-tuning step: {preset.model_type} at {preset.img_size} px, {precision}")
        run["finetune"] = steps.finetune_benchmark(preset, device, precision, args.batch_size, settings["steps"],
                                                   settings["repeats"], compile_model=args.compile)
        say(f"  {run['finetune']['images_per_s']:.1f} images/s, overhead ratio {run['finetune']['overhead_ratio']:.3f}")
    if "pretrain" in parts:
        say(f"pre-training step: configs/pretrain/{preset.pretrain_config}.yaml, {precision}")
        run["pretrain"] = steps.pretrain_benchmark(preset, device, precision, args.pretrain_batch_size,
                                                   settings["pretrain_steps"], settings["pretrain_repeats"],
                                                   compile_model=args.compile)
        say(f"  {run['pretrain']['studies_per_s']:.2f} studies/s")
    if "loader" in parts:
        say(f"data loading: {settings['png']} px PNGs, {settings['jpeg']} px JPEGs (synthetic)")
        data = loader.make_bench_data(cache, settings["png"], settings["jpeg"])
        workers = args.workers or ([1] if args.quick else loader.default_workers_list())
        pack = cache / f"pack_{settings['png']}"
        run["loader"] = loader.loader_benchmark(data, workers, device, img_size=224, length=settings["loader_items"],
                                                repeats=settings["loader_repeats"], pack_dir=pack)
        say(f"  speed-up PNG {run['loader']['png']['speedup']:.2f}x, JPEG {run['loader']['jpeg']['speedup']:.2f}x")
    if "eval" in parts:
        say("evaluation and AUC")
        run["eval"] = evaluation.eval_benchmark(preset, device, precision, args.batch_size or 4 * preset.batch_size,
                                                settings["eval_images"])
        run["auc"] = evaluation.auc_benchmark(bootstrap=settings["bootstrap"])
    if "index" in parts:
        scale = args.index_scale if args.index_scale is not None else settings["index_scale"]
        say(f"pre-training index at {scale:g} x MIMIC-CXR's size")
        run["index"] = index_memory.index_benchmark(cache, scale)
        say(f"  load {run['index']['load_s']:.3f} s (first {run['index']['parse_s']:.2f} s), "
            f"+{run['index']['rss_added_mb']:.0f} MB, workers +{run['index']['worker_growth_mb']:.1f} MB")
    return run


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch-size must be at least 1", exit_code=2)
    if args.workers is not None and any(w < 0 for w in args.workers):
        raise UserError("--workers must be 0 or more", exit_code=2)
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1", exit_code=2)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from refers.bench.report import RESULTS_JSON, RESULTS_MD, write_results
    from refers.base.paths import project_root

    out = args.out or project_root() / "benchmarks"
    import torch

    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no GPU is visible to PyTorch (use --device cpu)", exit_code=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or (1 if device_type == "cpu" else threads))
    try:
        run = _run(args, torch.device(device_type), out)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another process (tests)
    document = write_results(out, run)
    shown = {k: document[k] for k in ("device", "overhead_ratio", "loader_speedup_png", "loader_speedup_jpeg")}
    print(f"[bench] {shown}")
    if document.get("targets_met"):
        met = document["targets_met"]
        print("[bench] CPU targets: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in met.items() if ok is not None))
    print(f"[bench] wrote {out / RESULTS_JSON} and {out / RESULTS_MD}")
    return 0
