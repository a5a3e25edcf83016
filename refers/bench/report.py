"""``benchmarks/results.json`` and ``benchmarks/RESULTS.md``: one section per device kind.

``results.json`` keeps the latest run of each device kind under ``runs`` (``cpu``, ``cuda``), so a
CPU run never replaces GPU figures, and puts the headline figures of the run just made at the top
level (``device``, ``overhead_ratio``, ``loader_speedup_png``, ``loader_speedup_jpeg``, ...).
``RESULTS.md`` is rebuilt from ``runs`` every time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refers.base.atomic import atomic_write_text
from refers.base.json_files import read_json

RESULTS_JSON, RESULTS_MD = "results.json", "RESULTS.md"

# CPU targets of the performance issue (ratios measured in one run on the machine at hand).
TARGETS = {"overhead_ratio": ("<=", 1.05), "loader_speedup_png": (">=", 2.0), "loader_speedup_jpeg": (">=", 2.0),
           "index_load_s": ("<", 5.0), "index_rss_added_mb": ("<", 200.0)}


def headline(run: dict[str, Any]) -> dict[str, Any]:
    """The figures quoted at the top level of ``results.json`` (None where not measured)."""
    loader, index = run.get("loader") or {}, run.get("index") or {}
    return {
        "device": run["device"],
        "overhead_ratio": (run.get("finetune") or {}).get("overhead_ratio"),
        "loader_speedup_png": (loader.get("png") or {}).get("speedup"),
        "loader_speedup_jpeg": (loader.get("jpeg") or {}).get("speedup"),
        "loader_speedup_packed_png": (loader.get("png") or {}).get("speedup_packed"),
        "finetune_images_per_s": (run.get("finetune") or {}).get("images_per_s"),
        "finetune_mfu": (run.get("finetune") or {}).get("mfu"),
        "pretrain_studies_per_s": (run.get("pretrain") or {}).get("studies_per_s"),
        "pretrain_mfu": (run.get("pretrain") or {}).get("mfu"),
        "index_load_s": index.get("load_s"),
        "index_parse_s": index.get("parse_s"),
        "index_rss_added_mb": index.get("rss_added_mb"),
        "index_worker_growth_mb": index.get("worker_growth_mb"),
        "auc_s": (run.get("auc") or {}).get("auc_s"),
    }


def check_targets(figures: dict[str, Any]) -> dict[str, bool | None]:
    """Whether each CPU target is met (None: not measured)."""
    results: dict[str, bool | None] = {}
    for key, (op, bound) in TARGETS.items():
        value = figures.get(key)
        results[key] = None if value is None else {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]
    return results


def write_results(out: Path, run: dict[str, Any]) -> dict[str, Any]:
    """Merge ``run`` into ``out/results.json`` (its device kind's slot) and rewrite ``RESULTS.md``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_JSON
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = read_json(path)
        except ValueError:  # not JSON, not UTF-8, nested too deeply: started again
            previous = {}
        if not isinstance(previous, dict):
            previous = {}
    runs = dict(previous.get("runs") or {})
    runs[run["device_type"]] = run
    figures = headline(run)
    document = {**figures, "targets_met": check_targets(figures) if run["device_type"] == "cpu" else None,
                "synthetic_data": True, "runs": runs}
    atomic_write_text(path, json.dumps(document, indent=2, default=float) + "\n")
    atomic_write_text(out / RESULTS_MD, markdown(runs))
    return document


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _section(title: str, run: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", "", f"Device: **{run['device']}**; torch {run.get('torch', '?')}; {run.get('date', '')}; "
             f"preset `{run.get('preset')}`, precision {run.get('precision')}"
             + (", `--quick`" if run.get("quick") else "") + (", `--compile`" if run.get("compile") else "") + ".", ""]
    if run.get("device_type") == "cpu":
        lines += [f"Model steps and evaluation are timed in this process's CPU time with {run.get('threads', 1)} intra-op "
                  "thread(s), so other processes on a shared machine do not skew them; data loading in wall time.", ""]
    ft, pt = run.get("finetune"), run.get("pretrain")
    if ft or pt:
        lines += ["| training step | model | batch | images/s | GFLOPs/image | TFLOP/s | MFU |",
                  "|---|---|---|---|---|---|---|"]
        if ft:
            lines.append(f"| fine-tuning (ours) | {ft['model_type']} @ {ft['img_size']} px | {ft['batch_size']} | "
                         f"{_fmt(ft['images_per_s'])} | {_fmt(ft['gflops_per_image'])} | {_fmt(ft['tflops_per_s'])} | "
                         f"{_percent(ft['mfu'])} |")
            lines.append(f"| fine-tuning (bare loop) | same | {ft['batch_size']} | {_fmt(ft['bare_images_per_s'])} | | | |")
        if pt:
            lines.append(f"| pre-training | {pt['image_encoder']} @ {pt['img_size']} px, {pt['views']} views | "
                         f"{pt['studies_per_step']} studies | {_fmt(pt['images_per_s'])} ({_fmt(pt['studies_per_s'])} studies/s) | "
                         f"{_fmt(pt['gflops_per_image'])} | {_fmt(pt['tflops_per_s'])} | {_percent(pt['mfu'])} |")
        lines.append("")
        parts = (("fine-tuning (ours and the bare loop's model resident)", ft), ("pre-training", pt))
        memory = [f"{what} {part['max_memory_gib']:.1f} GiB" for what, part in parts
                  if part and part.get("max_memory_gib") is not None]
        if memory:
            lines += [f"Peak GPU memory: {', '.join(memory)}.", ""]
        if ft:
            lines += [f"Framework overhead (our fine-tuning step / bare loop, median of {len(ft['overhead_ratios'])} "
                      f"interleaved blocks): **{ft['overhead_ratio']:.3f}** (loader hands over {ft['loader_dtype']}).", ""]
    loader = run.get("loader")
    if loader:
        lines += ["| data path | source | workers | original tensors/s | ours tensors/s | speed-up | packed tensors/s "
                  "| packed speed-up |",
                  "|---|---|---|---|---|---|---|---|"]
        for kind, name in (("png", "NIH"), ("jpeg", "MIMIC")):
            block = loader.get(kind)
            if not block:
                continue
            for row in block["rows"]:
                packed = row.get("packed") or {}
                lines.append(f"| {name} | {block['source']} | {row['workers']} | {_fmt(row['original']['tensors_per_s'])} | "
                             f"{_fmt(row['ours']['tensors_per_s'])} | {_fmt(row['speedup_ours'])}x | "
                             f"{_fmt(packed.get('tensors_per_s'))} | {_fmt(row.get('speedup_packed'))}{'x' if packed else ''} |")
        png, jpeg = loader.get("png") or {}, loader.get("jpeg") or {}
        lines += ["", f"Median speed-up of our default path: **{_fmt(png.get('speedup'))}x** on PNGs, "
                      f"**{_fmt(jpeg.get('speedup'))}x** on JPEGs; packed cache {_fmt(png.get('speedup_packed'))}x on PNGs.", ""]
    ev, auc = run.get("eval"), run.get("auc")
    if ev or auc:
        if ev:
            lines.append(f"- Evaluation ({ev['model_type']} @ {ev['img_size']} px, batch {ev['batch_size']}): "
                         f"{_fmt(ev['images_per_s'])} images/s.")
        if auc:
            lines.append(f"- AUC of {auc['images']:,} x {auc['classes']} (per-class + mean): {auc['auc_s']:.3f} s; "
                         f"bootstrap CI with {auc['bootstrap_resamples']} resamples: {auc['bootstrap_s']:.1f} s.")
        lines.append("")
    index = run.get("index")
    if index:
        lines += [f"- Pre-training index, {index['studies']:,} studies / {index['images']:,} images "
                  f"({index['index_mb']:.0f} MB of JSON lines): first load (parse + cache) {index['parse_s']:.2f} s, "
                  f"later loads {index['load_s']:.3f} s; resident memory added after reading every study "
                  f"{index['rss_added_mb']:.0f} MB; each forked worker gains at most {index['worker_growth_mb']:.1f} MB.", ""]
    return lines


def markdown(runs: dict[str, Any]) -> str:
    """The Markdown summary of the latest run of each device kind."""
    lines = ["# Benchmark results", "",
             "Written by `refers bench` (see `benchmarks/README.md`). All data are SYNTHETIC (generated by "
             "`refers synth`); throughput does not depend on what the pixels show, but nothing here is a model-quality "
             "figure. A CPU run rewrites only the CPU section.", ""]
    gpu = runs.get("cuda")
    lines += _section("GPU", gpu) if gpu else ["## GPU", "", "Not measured yet: run `benchmarks/gpu_check.sh` on a GPU machine.", ""]
    cpu = runs.get("cpu")
    lines += _section("CPU", cpu) if cpu else ["## CPU", "", "Not measured yet: `make bench`.", ""]
    return "\n".join(lines).rstrip() + "\n"
