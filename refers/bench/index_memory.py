"""Memory and load time of the pre-training study index at MIMIC-CXR's size.

A generated ``train_studies.jsonl`` with 227,835 studies, 377,110 images and report text (the
format ``refers prepare mimic`` writes; texts drawn from a pool of synthetic reports of about 70
words, like MIMIC's findings + impression) is loaded in a fresh Python process, which reports:
the load time (first load: parsing; second: from the cache file), the resident memory the index
adds, and how much private memory each forked data-loader worker gains when it reads every
study (private dirty memory: pages copied on write). The same measurement of the plain list of ``Study`` objects
(:func:`refers.data.mimic_lists.read_study_index`) can be asked for as a baseline.

Run as a module for one measurement::

    python -m refers.bench.index_memory INDEX IMAGE_ROOT [--baseline] [--workers 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MIMIC_STUDIES = 227_835
MIMIC_IMAGES = 377_110
VIEWS = ("PA", "AP", "LATERAL", "LL", "")
_WORDS = ("the", "lungs", "are", "clear", "there", "is", "no", "focal", "consolidation", "pleural", "effusion",
          "or", "pneumothorax", "heart", "size", "normal", "mediastinal", "contours", "unremarkable", "mild",
          "bibasilar", "atelectasis", "left", "right", "lower", "lobe", "opacity", "may", "reflect", "pneumonia",
          "in", "appropriate", "clinical", "setting", "stable", "cardiomegaly", "pulmonary", "vascular",
          "congestion", "interval", "improvement", "of", "small", "bilateral", "effusions", "with", "and",
          "compared", "to", "prior", "study", "support", "devices", "unchanged", "position", "endotracheal", "tube")


def write_index(path: Path, studies: int = MIMIC_STUDIES, images: int = MIMIC_IMAGES, mean_words: int = 70,
                seed: int = 0) -> Path:
    """Write a generated study index of the given size (same fields as ``refers prepare mimic``)."""
    if images < studies:
        raise ValueError("every study needs an image")
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(2000):
        words = rng.choice(_WORDS, size=max(5, int(rng.poisson(mean_words))))
        cut = max(1, len(words) * 3 // 4)
        findings, impression = " ".join(words[:cut]) + ".", " ".join(words[cut:]) + "."
        pool.append((findings, impression, f"{findings} {impression}"))
    per_study = 1 + np.bincount(rng.integers(0, studies, images - studies), minlength=studies)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for i in range(studies):
            subject, study = 10_000_000 + i // 2, 50_000_000 + i
            folder = f"files/p{str(subject)[:2]}/p{subject}/s{study}"
            count = int(per_study[i])
            findings, impression, text = pool[int(rng.integers(len(pool)))]
            record = {
                "study_id": str(study), "subject_id": str(subject), "split": "train", "folder": folder,
                "images": [f"{folder}/{dicom_id(rng, i * 8 + k)}.jpg" for k in range(count)],
                "views": [VIEWS[int(v)] for v in rng.integers(0, len(VIEWS), count)],
                "findings": findings, "impression": impression, "text": text,
                "labels": [None if v > 1 else float(v) for v in rng.integers(-1, 3, 14)],
            }
            handle.write(json.dumps(record) + "\n")
    os.replace(tmp, path)
    return path


def dicom_id(rng: np.random.Generator, serial: int) -> str:
    """A MIMIC-style image name: five groups of eight hex digits (44 characters), unique by ``serial``."""
    a, b, c, d = (int(v) for v in rng.integers(0, 1 << 32, 4))
    return f"{a:08x}-{b:08x}-{c:08x}-{d:08x}-{serial:08x}"


def _memory_kb(field: str, path: str = "/proc/self/status") -> int:
    with open(path, encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def private_mb() -> float:
    """This process's private dirty memory, MB.

    In a forked worker this grows by every page it copies on write (Python objects whose reference
    counts it touches) and everything it writes; file pages it only reads through a memory map stay
    clean page cache, shared with every other process, and are not counted.
    """
    return _memory_kb("Private_Dirty", "/proc/self/smaps_rollup") / 1024


def rss_mb() -> float:
    return _memory_kb("VmRSS") / 1024


def _read_all(studies: Any, table: bool) -> int:
    """Read every study's text and images, as an epoch does (every 50th table study fully:
    building a Study resolves its paths, the slow part, and adds nothing to memory)."""
    total = 0
    for i in range(len(studies)):
        if table:
            total += len(studies.text(i))
            if i % 50 == 0:
                total += len(studies[i].images)
        else:
            study = studies[i]
            total += len(study.text) + len(study.images)
    return total


def _worker(studies: Any, table: bool, queue: Any) -> None:
    """A forked reader: reports how much private memory reading everything cost it."""
    before = private_mb()
    _read_all(studies, table)
    queue.put(private_mb() - before)


def measure(index: Path, image_root: Path, baseline: bool, workers: int, use_cache: bool) -> dict[str, Any]:
    """Load the index in this process and fork ``workers`` readers; see the module docstring."""
    from refers.data.mimic_lists import read_study_index
    from refers.data.study_table import load_study_table

    gc.collect()
    before = rss_mb()
    start = time.perf_counter()
    if baseline:
        studies: Any = read_study_index(index, image_root, require_images=False)
    else:
        studies = load_study_table(index, image_root, use_cache=use_cache, require_images=False)
    seconds = time.perf_counter() - start
    gc.collect()
    added = rss_mb() - before
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    # Keep the workers' garbage collector off the parent's objects (a full collection writes to every
    # object header, copying all their pages): the same for both kinds, so only the index differs.
    gc.freeze()
    procs = [context.Process(target=_worker, args=(studies, not baseline, queue)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    growth = [queue.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    _read_all(studies, not baseline)  # now every page of the index is resident here too
    return {"kind": "list of Study" if baseline else "StudyTable", "studies": len(studies), "load_s": seconds,
            "rss_added_mb": added, "rss_added_after_reading_all_mb": rss_mb() - before, "worker_growth_mb": growth,
            "table_mb": None if baseline else studies.nbytes() / 2**20}


def measure_in_subprocess(index: Path, image_root: Path, baseline: bool = False, workers: int = 2,
                          use_cache: bool = True, timeout: float = 900) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter (so the memory figures are this index's alone)."""
    argv = [sys.executable, "-m", "refers.bench.index_memory", str(index), str(image_root), "--workers", str(workers)]
    argv += ["--baseline"] if baseline else []
    argv += [] if use_cache else ["--no-cache"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"index measurement failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def index_benchmark(cache: Path, scale: float = 1.0, workers: int = 2) -> dict[str, Any]:
    """Generate (once) and measure the index at ``scale`` x MIMIC's size.

    Returns:
        The two measurements (first load: parsing and writing the cache; then a load from the
        cache, as every later run does) and the summary: ``parse_s``, ``load_s`` (from the cache),
        ``rss_added_mb`` (after reading every study, the larger of the two) and
        ``worker_growth_mb`` (the most any worker gained).
    """
    studies, images = max(10, int(MIMIC_STUDIES * scale)), max(10, int(MIMIC_IMAGES * scale))
    index = cache / f"index_{studies}" / "train_studies.jsonl"
    if not index.is_file():
        write_index(index, studies, images)
    from refers.data.study_table import cache_path

    shutil.rmtree(cache_path(index), ignore_errors=True)  # the first load parses
    first = measure_in_subprocess(index, index.parent, workers=workers)
    cached = measure_in_subprocess(index, index.parent, workers=workers)
    return {"studies": studies, "images": images, "index_mb": index.stat().st_size / 2**20,
            "first_load": first, "cached_load": cached,
            "parse_s": first["load_s"], "load_s": cached["load_s"],
            "rss_added_mb": max(r["rss_added_after_reading_all_mb"] for r in (first, cached)),
            "worker_growth_mb": max(first["worker_growth_mb"] + cached["worker_growth_mb"])}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refers.bench.index_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path)
    parser.add_argument("image_root", type=Path)
    parser.add_argument("--baseline", action="store_true", help="measure the list of Study objects instead")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-cache", action="store_true", help="always parse the index")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.index, args.image_root, args.baseline, args.workers, not args.no_cache)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
