"""Write the five synthetic datasets: plan each one, write its tables, render its images in batches.

Rendering is the cost, so batches go to a process pool when ``workers > 1``. Every batch has its
own seed (dataset, batch index), so the bytes written do not depend on the number of workers or
on the order batches finish in.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Callable, Sequence

from refers.base.errors import UserError
from refers.base.host import usable_cores
from refers.base.synthetic import mark_synthetic
from refers.data.synth import covid, iu, mimic, nih, shenzhen, vinbig
from refers.data.synth.io import NotSyntheticError, check_writable, finish_partial, marker_text, start_partial, write_gzip_text, write_text
from refers.data.synth.plan import DatasetPlan, ImageJob, SynthConfig
from refers.data.synth.render import batch_size, render_views

# Dataset folder name -> planner, in the order they are written.
BUILDERS: dict[str, Callable[[SynthConfig], DatasetPlan]] = {
    mimic.NAME: mimic.build,
    nih.NAME: nih.build,
    shenzhen.NAME: shenzhen.build,
    covid.NAME: covid.build,
    vinbig.NAME: vinbig.build,
    iu.NAME: iu.build,  # not among the defaults: ask for it with --datasets iu
}
# What `refers synth` writes unless --datasets says otherwise: the datasets of the paper.
DEFAULT_DATASETS = (mimic.NAME, nih.NAME, shenzhen.NAME, covid.NAME, vinbig.NAME)


def _render_batch(task: tuple[str, list[ImageJob], int, SynthConfig, str, int]) -> int:
    """Render and write one batch of images (runs in a worker process)."""
    root, jobs, size, cfg, dataset, batch_index = task
    seed = int(cfg.rng(dataset, 1_000_003, batch_index).integers(2**62))
    images = render_views([job.patient for job in jobs], [job.view for job in jobs], size, seed)
    for job, image in zip(jobs, images):
        job.writer(Path(root) / job.path, image, job.options)
    return len(jobs)


def _keep_freed_memory() -> None:
    """Let glibc reuse freed numpy temporaries instead of returning them to the kernel.

    A rendering batch's temporaries are a few hundred KB each, above glibc's default mmap
    threshold, so every one would be mapped and unmapped again: that costs as much system time as
    the rendering itself. Raising the thresholds halves the run time; elsewhere this is a no-op.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def default_workers() -> int:
    """Two processes where two cores are available: rendering is CPU-bound numpy."""
    return max(1, min(2, usable_cores()))


def generate(out: str | os.PathLike, studies: int, seed: int = 0, image_size: int = 128,
             datasets: Sequence[str] = DEFAULT_DATASETS, workers: int | None = None,
             progress: bool = True) -> dict[str, dict[str, int]]:
    """Write ``out/<dataset>/`` for each dataset; returns what was written (counts per dataset).

    Raises:
        refers.data.synth.io.NotSyntheticError: a target folder is non-empty and not synthetic
            (checked for every dataset before anything is written).
    """
    from tqdm import tqdm

    _keep_freed_memory()
    out = Path(out)
    cfg = SynthConfig(studies=studies, seed=seed, image_size=image_size)
    for name in datasets:
        check_writable(out / name)
    plans = [BUILDERS[name](cfg) for name in datasets]
    workers = default_workers() if workers is None else workers
    step = batch_size(image_size)
    total = sum(len(plan.images) for plan in plans)
    pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(workers) if workers > 1 else None
    summary: dict[str, dict[str, int]] = {}
    try:
        with tqdm(total=total, desc="refers synth", unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for plan in plans:
                bar.set_postfix_str(plan.name)
                folder = out / plan.name
                partial = start_partial(folder)
                for rel, text in plan.texts.items():
                    write_text(partial / rel, text)
                for rel, text in plan.gz_texts.items():
                    write_gzip_text(partial / rel, text)
                for parent in sorted({(partial / job.path).parent for job in plan.images}):
                    parent.mkdir(parents=True, exist_ok=True)
                tasks = [(str(partial), plan.images[i:i + step], image_size, cfg, plan.name, i // step)
                         for i in range(0, len(plan.images), step)]
                results = pool.imap_unordered(_render_batch, tasks) if pool else map(_render_batch, tasks)
                for done in results:
                    bar.update(done)
                mark_synthetic(partial, marker_text(plan.name, seed, studies, image_size, plan.counts))
                finish_partial(partial, folder)
                summary[plan.name] = plan.counts
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return summary


def synthesise(out: str | os.PathLike, studies: int, seed: int = 0, image_size: int = 128,
               datasets: Sequence[str] = DEFAULT_DATASETS, workers: int | None = None, progress: bool = True) -> None:
    """What ``refers synth`` does once its flags are read: check, :func:`generate`, one line per dataset.

    Raises:
        refers.base.errors.UserError: ``out`` is a file (exit 2), VinBigData without pydicom, or a
            target folder holds real data (exit 1).
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a folder", exit_code=2)
    if vinbig.NAME in datasets:
        try:
            import pydicom  # noqa: F401
        except ImportError:
            raise UserError("VinBigData needs pydicom to write DICOM files: pip install pydicom "
                            "(or leave it out with --datasets)") from None
    try:
        summary = generate(out, studies=studies, seed=seed, image_size=image_size, datasets=datasets, workers=workers,
                           progress=progress)
    except NotSyntheticError as error:
        raise UserError(str(error), exit_code=1) from None
    for name, counts in summary.items():
        details = ", ".join(f"{key} {value}" for key, value in counts.items())
        print(f"{out}/{name}: {details} (SYNTHETIC)")
