"""The iteration-based REFERS pre-training loop (one process; DDP when the launcher made several).

Reads top to bottom as a story: build the parts, the optimiser and the data stream; resume if
asked; then step, log, validate and checkpoint until ``OPTIM.NUM_ITERATIONS``; finally export the
image encoder. The model is anything whose ``forward(batch)`` returns ``{"loss", "components"}``
and that has ``encode_images`` / ``encode_reports`` (see :class:`TrainParts`), so tests can drive
the same loop with a tiny stand-in model.

Steps never call ``.item()``: losses are summed on the device and read at log steps only, and
non-finite losses are detected there (and before every checkpoint, so a poisoned state is never
written).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from refers.engine import train_state as ts
from refers.engine.checkpoint_retention import prune_checkpoints
from refers.engine.distributed import DistInfo, barrier
from refers.engine.optim import OptimSettings, build_optimizer, build_scheduler
from refers.engine.pretrain_eval import evaluate, to_device
from refers.engine.sampling import DataPosition, ResumableBatchSampler, SeededDataset, cycle_batches

log = logging.getLogger("refers.pretrain")

EXPORT_NAME = "refers_checkpoint.pth"


@dataclass
class TrainParts:
    """What the loop trains: built by a factory ``(cfg, device) -> TrainParts``.

    Attributes:
        model: ``forward(batch) -> {"loss": scalar, "components": {name: scalar}}``;
            ``encode_images(images) -> [B, D]``; ``encode_reports(bert_input_ids, bert_attention_mask)
            -> [B, D]``; ``generate(images, max_length, beam_size) -> list of id lists``.
        train_dataset, val_dataset: map-style datasets of studies (val may be None).
        collate_fn: list of dataset items -> batch dict (tensors and lists).
        find_unused_parameters: DDP must look for parameters without gradient (e.g. a loss
            weight of 0 leaves a whole branch unused).
        decode: ids -> text, for ``--log-text`` samples (None: no samples).
        synthetic: the data carries the synthetic-data marker.
    """

    model: nn.Module
    train_dataset: Dataset
    val_dataset: Dataset | None
    collate_fn: Callable[[list[Any]], dict[str, Any]]
    find_unused_parameters: bool = False
    decode: Callable[[list[int]], str] | None = None
    synthetic: bool = False


@dataclass
class LoopOptions:
    """Run-level settings from the command line (the config holds the recipe)."""

    serialization_dir: Path
    checkpoint_every: int = 2000
    log_every: int = 20
    cpu_workers: int = 0
    resume_from: Path | None = None
    log_text: bool = False
    progress: bool = True
    export_at_end: bool = True
    compile: bool = False
    argv: list[str] = field(default_factory=list)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped without saving the poisoned state."""


class _StopSignal:
    """Remembers a SIGTERM/SIGINT so the loop can checkpoint at a step boundary, then exit."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignal":
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def autocast_context(device: torch.device, amp_dtype: str) -> contextlib.AbstractContextManager:
    """torch.amp autocast with ``amp_dtype`` on the run's device; "float32" turns it off."""
    if amp_dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, amp_dtype))


def run_dtype(cfg: Any, device: torch.device) -> str:
    """The autocast dtype of a run: ``AMP.DTYPE`` on GPU; on CPU float32 unless ``AMP.CPU_BFLOAT16``.

    CPU autocast supports bfloat16 only; float32 is the CPU default because it is the reference
    arithmetic (the tests compare runs bit for bit).
    """
    if device.type == "cuda":
        return cfg.AMP.DTYPE
    return "bfloat16" if cfg.AMP.CPU_BFLOAT16 else "float32"


def _agree(flag: bool | torch.Tensor, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank (a collective when distributed)."""
    value = flag.detach().float().reshape(()) if isinstance(flag, torch.Tensor) else torch.tensor(float(flag))
    if info.distributed:
        value = value.to(info.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    mine = ts.capture_rng_state()
    if not info.distributed:
        return [mine]
    every: list[Any] = [None] * info.world_size
    dist.all_gather_object(every, mine)
    return every


class PretrainRun:
    """One pre-training run in this process; :meth:`run` returns the exit code."""

    def __init__(self, cfg: Any, options: LoopOptions, info: DistInfo, build_parts: Callable[[Any, torch.device], TrainParts]):
        self.cfg, self.options, self.info = cfg, options, info
        self.folder = Path(options.serialization_dir)
        self.device = info.device
        world = info.world_size
        if cfg.OPTIM.BATCH_SIZE % world:
            raise ValueError(f"OPTIM.BATCH_SIZE {cfg.OPTIM.BATCH_SIZE} is not divisible by the {world} processes")
        self.batch_per_rank = cfg.OPTIM.BATCH_SIZE // world

        # Same initial weights on every rank (DDP also broadcasts rank 0's), then per-rank streams.
        ts.seed_everything(cfg.RANDOM_SEED)
        self.parts = build_parts(cfg, self.device)
        self.model = self.parts.model.to(self.device)
        if options.compile:  # in place: state-dict keys, checkpoints and the export stay as they are
            getattr(self.model, "image_encoder", self.model).compile()
        ts.seed_everything(cfg.RANDOM_SEED + info.rank)
        self.train_model: nn.Module = self.model
        if info.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.parts.find_unused_parameters,
            )
        self.settings = OptimSettings.from_config(cfg)
        self.optimizer = build_optimizer(self.model, self.settings)
        self.scheduler = build_scheduler(self.optimizer, self.settings)
        self.amp_dtype = run_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == "float16")

        self.sampler = ResumableBatchSampler(
            len(self.parts.train_dataset), self.batch_per_rank, info.rank, world, cfg.RANDOM_SEED, shuffle=True
        )
        self.loader = self._loader(self.parts.train_dataset, self.sampler)
        self.val_sampler = None
        if self.parts.val_dataset is not None and len(self.parts.val_dataset) > 0:
            self.val_sampler = ResumableBatchSampler(
                len(self.parts.val_dataset), self.batch_per_rank, info.rank, world, cfg.RANDOM_SEED, shuffle=False, drop_last=False
            )
            self.val_loader = self._loader(self.parts.val_dataset, self.val_sampler, persistent=False)
        self.position = DataPosition()
        self.iteration = 0
        self.writer = None

    def _loader(self, dataset: Dataset, sampler: ResumableBatchSampler, persistent: bool = True) -> DataLoader:
        workers = self.options.cpu_workers
        return DataLoader(
            SeededDataset(dataset),
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=self.parts.collate_fn,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and workers > 0,
            # An explicit generator keeps worker start-up from drawing on the training RNG.
            generator=torch.Generator().manual_seed(self.cfg.RANDOM_SEED),
        )

    # ------------------------------------------------------------------------------------------
    def resume(self, path: Path) -> None:
        state = ts.load_state(path)
        saved_world = len(state.get("rng") or [])
        if saved_world and saved_world != self.info.world_size:
            log.warning("checkpoint was written by %d processes, resuming with %d: data order and RNG differ", saved_world, self.info.world_size)
        changed = _config_changes(state.get("config") or {}, self.cfg.to_dict())
        if changed:
            log.warning("configuration differs from the checkpoint's: %s", ", ".join(changed[:8]))
        ts.restore_state(state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler, rank=self.info.rank)
        self.iteration = int(state["iteration"])
        self.position.load_state_dict(state["data"])
        log.info("resumed from %s at iteration %d (epoch %d, batch %d)", path, self.iteration, self.position.epoch, self.position.batch)

    def save(self) -> Path | None:
        """Checkpoint the current iteration (collective: every rank must call it)."""
        rng = _gather_rng(self.info)
        path = None
        if self.info.is_main:
            state = ts.build_state(
                iteration=self.iteration, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                scaler=self.scaler, data_position=self.position.state_dict(), config=self.cfg.to_dict(), rng_states=rng,
            )
            path = ts.save_state(state, self.folder)
            log.info("saved %s", path)
            # Only now that the new file is complete; never the checkpoint this run resumed from.
            prune_checkpoints(self.folder, self.cfg.CHECKPOINT.KEEP_LAST, self.cfg.CHECKPOINT.KEEP_EVERY,
                              saved=path, protect=[self.options.resume_from])
        barrier(self.info)
        return path

    # ------------------------------------------------------------------------------------------
    def run(self) -> int:
        if self.options.resume_from is not None:
            self.resume(self.options.resume_from)
        if self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder / "tensorboard"))
        try:
            with _StopSignal() as stop:
                code = self._train(stop)
        finally:
            if self.writer is not None:
                self.writer.close()
        if code == 0 and self.options.export_at_end and self.info.is_main:
            self._export()
        return code

    def _train(self, stop: _StopSignal) -> int:
        batches: Iterator[dict[str, Any]] = cycle_batches(self.loader, self.sampler, self.position)
        progress = _progress(self.iteration, self.settings.num_iterations, self.info.is_main and self.options.progress)
        try:
            return self._steps(stop, batches, progress)
        finally:
            progress.close()

    def _steps(self, stop: _StopSignal, batches: Iterator[dict[str, Any]], progress: Any) -> int:
        total, opts = self.settings.num_iterations, self.options
        sums: dict[str, torch.Tensor] = {}
        non_finite = torch.zeros((), dtype=torch.bool, device=self.device)
        tick, steps_since = time.perf_counter(), 0
        self.train_model.train()
        while self.iteration < total:
            try:
                batch = to_device(next(batches), self.device)
            except RuntimeError:
                if not stop.signum or self.info.distributed:
                    raise
                # Ctrl-C also reached the loader's workers; the state is still that of a step boundary.
                self.save()
                return 128 + stop.signum
            with autocast_context(self.device, self.amp_dtype):
                output = self.train_model(batch)
            loss = output["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.OPTIM.CLIP_GRAD_NORM > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.OPTIM.CLIP_GRAD_NORM)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.iteration += 1
            self.position.batch += 1
            steps_since += 1
            progress.update(1)

            non_finite |= ~torch.isfinite(loss.detach())
            for name, value in {"loss": loss, **output.get("components", {})}.items():
                sums[name] = sums.get(name, 0) + value.detach().float()

            last = self.iteration == total
            if self.iteration % opts.log_every == 0 or last:
                if _agree(non_finite, self.info):
                    return self._stop_non_finite()
                elapsed = time.perf_counter() - tick
                self._log_train(sums, steps_since, elapsed)
                sums, tick, steps_since = {}, time.perf_counter(), 0
            # Single process: react at once; several: agree at log steps (a collective).
            signalled = stop.signum != 0 if not self.info.distributed else (
                self.iteration % opts.log_every == 0 and _agree(stop.signum != 0, self.info)
            )
            if self.iteration % opts.checkpoint_every == 0 or last or signalled:
                if _agree(non_finite, self.info):
                    return self._stop_non_finite()
                self.save()
                if not signalled:
                    self._validate()
                    self.train_model.train()
            if signalled:
                name = signal.Signals(stop.signum or signal.SIGTERM).name
                log.info("%s received: checkpoint saved at iteration %d; continue with --resume-from auto", name, self.iteration)
                return 128 + int(stop.signum or signal.SIGTERM)
        return 0

    # ------------------------------------------------------------------------------------------
    def _stop_non_finite(self) -> int:
        good = ts.list_checkpoints(self.folder)
        where = f"the last good checkpoint is {good[-1][1]}" if good else "no checkpoint was written yet"
        log.error(
            "non-finite loss at or before iteration %d: stopping without saving; %s. "
            "Lower OPTIM.LR, check the data, or use AMP.DTYPE bfloat16/float32, then --resume-from that checkpoint.",
            self.iteration, where,
        )
        return 1

    def _log_train(self, sums: dict[str, torch.Tensor], steps: int, elapsed: float) -> None:
        means = {k: v / steps for k, v in sums.items()}
        if self.info.distributed:
            names = sorted(means)
            stacked = torch.stack([means[k] for k in names]).to(self.device)
            dist.all_reduce(stacked)
            means = dict(zip(names, stacked / self.info.world_size))
        if not self.info.is_main:
            return
        values = {k: float(v) for k, v in means.items()}
        studies_per_s = steps * self.cfg.OPTIM.BATCH_SIZE / max(elapsed, 1e-9)
        images_per_s = studies_per_s * self.cfg.DATA.NUM_VIEWS
        lrs = {group.get("name", str(i)): group["lr"] for i, group in enumerate(self.optimizer.param_groups)}
        memory = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        line = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        line += f" | lr {lrs.get('main', next(iter(lrs.values()))):.3g} | {images_per_s:.1f} img/s"
        line += f" | gpu {memory:.2f} GiB" if memory is not None else ""
        log.info("iter %d/%d | %s", self.iteration, self.settings.num_iterations, line)
        for name, value in values.items():
            self.writer.add_scalar(f"train/{name}", value, self.iteration)
        for name, lr in lrs.items():
            self.writer.add_scalar(f"lr/{name}", lr, self.iteration)
        self.writer.add_scalar("speed/images_per_s", images_per_s, self.iteration)
        if memory is not None:
            self.writer.add_scalar("gpu/max_memory_GiB", memory, self.iteration)

    def _validate(self) -> None:
        if self.val_sampler is None:
            return
        metrics, sample = evaluate(
            self.model, self.val_loader, self.val_sampler, self.info,
            lambda: autocast_context(self.device, self.amp_dtype),
            decode=self.parts.decode if self.options.log_text else None,
            max_length=self.cfg.DATA.MAX_CAPTION_LENGTH,
        )
        if not self.info.is_main:
            return
        log.info("val iter %d | %s", self.iteration, " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        for name, value in metrics.items():
            self.writer.add_scalar(f"val/{name}", value, self.iteration)
        if sample is not None:  # only with --log-text: reports may fall under data-use agreements
            log.info("val sample | generated: %s | reference: %s", *sample)
            self.writer.add_text("val/sample", f"generated: {sample[0]}\n\nreference: {sample[1]}", self.iteration)
        self.writer.flush()

    def _export(self) -> None:
        from refers.engine.export import encoder_state, save_encoder

        out = self.folder / EXPORT_NAME
        provenance = {"iteration": self.iteration, "key_naming": "original REFERS (transformer.*)",
                      "image_encoder": self.cfg.MODEL.VISUAL.NAME, "synthetic_data": self.parts.synthetic}
        save_encoder(encoder_state(self.model.state_dict()), out, "pth", provenance)
        log.info("exported the image encoder to %s (original key naming, for Fine-tune/)", out)


def _progress(initial: int, total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="pre-training", unit="it", dynamic_ncols=True, mininterval=2.0)


def _config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes


def run_pretraining(
    cfg: Any, options: LoopOptions, info: DistInfo, build_parts: Callable[[Any, torch.device], TrainParts]
) -> int:
    """Train (or resume) one run in this process; returns 0, 1 (non-finite loss) or 128 + signal."""
    return PretrainRun(cfg, options, info, build_parts).run()
