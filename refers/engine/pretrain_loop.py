"""Pre-training as a task of the one training loop (:class:`refers.engine.trainer.Trainer`).

Reads top to bottom as a story: build the parts, the optimiser and the data stream; resume if
asked; then the trainer steps, logs, validates and checkpoints until ``OPTIM.NUM_ITERATIONS``;
finally the image encoder is exported. The model is anything whose ``forward(batch)`` returns
``{"loss", "components"}`` and that has ``encode_images`` / ``encode_reports`` (see
:class:`TrainParts`), so tests can drive the same loop with a tiny stand-in model.

``OPTIM.BATCH_SIZE`` studies per iteration are split over the processes and over
``OPTIM.ACCUMULATION_STEPS`` micro-batches. Steps never call ``.item()``: losses are summed on the
device and read at log and checkpoint steps only, where non-finite losses are detected (so a
poisoned state is never written).
"""

from __future__ import annotations

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

from refers.base.errors import UserError
from refers.config.engine import config_changes
from refers.engine import train_state as ts
from refers.engine.checkpoint_retention import prune_checkpoints
from refers.engine.distributed import DistInfo
from refers.engine.optim import OptimSettings, build_optimizer, build_scheduler
from refers.engine.precision import Precision, pretrain_precision
from refers.engine.pretrain_eval import evaluate, to_device
from refers.engine.run_log import RunLog
from refers.engine.sampling import DataPosition, ResumableBatchSampler, SeededDataset, cycle_batches
from refers.engine.step import StepResult
from refers.engine.trainer import Trainer

log = logging.getLogger("refers.pretrain")

EXPORT_NAME = "refers_checkpoint.pth"
TENSORBOARD_DIR = "tensorboard"
LOG_NAME = "log.txt"


def run_outputs(folder: Path) -> list[Path]:
    """What a pre-training run leaves in its folder that a new run would mix with (what ``--overwrite``
    replaces): its checkpoints, the export and its provenance, TensorBoard's folder. Each is written
    only after the processes' first barrier, so no process of the new run sees another's."""
    return [*(path for _, path in ts.list_checkpoints(folder)), folder / EXPORT_NAME, folder / f"{EXPORT_NAME}.json",
            folder / TENSORBOARD_DIR]


def run_leftovers(folder: Path) -> list[Path]:
    """Removed with the run by ``--overwrite``, never a reason to refuse: the log (rank 0 opens it
    before the first barrier, and a start that failed early leaves only it)."""
    return [folder / LOG_NAME]


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


def study_loss(model: nn.Module, batch: dict[str, Any], precision: Precision,
               device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch of studies: ``model(batch)``'s ``"loss"`` [] and ``"components"``, under autocast."""
    batch = to_device(batch, device)
    with precision.autocast():
        output = model(batch)
    return output["loss"], output.get("components", {})


class PretrainRun:
    """One pre-training run in this process (a :class:`~refers.engine.trainer.Task`); :meth:`run`
    returns the exit code."""

    def __init__(self, cfg: Any, options: LoopOptions, info: DistInfo, build_parts: Callable[[Any, torch.device], TrainParts]):
        self.cfg, self.options, self.info = cfg, options, info
        self.folder = Path(options.serialization_dir)
        self.device = info.device
        world, self.accumulation = info.world_size, int(cfg.OPTIM.ACCUMULATION_STEPS)
        if cfg.OPTIM.BATCH_SIZE % (world * self.accumulation):
            raise UserError(f"OPTIM.BATCH_SIZE {cfg.OPTIM.BATCH_SIZE} is not divisible by the {world} processes "
                            f"x OPTIM.ACCUMULATION_STEPS {self.accumulation}", 2)
        self.batch_per_rank = cfg.OPTIM.BATCH_SIZE // world
        micro = self.batch_per_rank // self.accumulation

        # Same initial weights on every rank (DDP also broadcasts rank 0's), then per-rank streams.
        ts.seed_everything(cfg.RANDOM_SEED)
        self.parts = build_parts(cfg, self.device)
        self.model = self.parts.model.to(self.device)
        ts.seed_everything(cfg.RANDOM_SEED + info.rank)
        self.settings = OptimSettings.from_config(cfg)
        self.optimizer = build_optimizer(self.model, self.settings)
        self.scheduler = build_scheduler(self.optimizer, self.settings)
        self.precision: Precision = pretrain_precision(cfg, self.device, say=info.is_main)
        self.params = list(self.model.parameters())
        self.clip_norm = cfg.OPTIM.CLIP_GRAD_NORM if cfg.OPTIM.CLIP_GRAD_NORM > 0 else None
        self.total_steps = self.settings.num_iterations
        self.find_unused_parameters = self.parts.find_unused_parameters
        self.progress_options = {"desc": "pre-training", "unit": "it", "mininterval": 2.0}

        self.sampler = ResumableBatchSampler(
            len(self.parts.train_dataset), micro, info.rank, world, cfg.RANDOM_SEED, shuffle=True
        )
        self.loader = self._loader(self.parts.train_dataset, self.sampler)
        self.val_sampler = None
        if self.parts.val_dataset is not None and len(self.parts.val_dataset) > 0:
            self.val_sampler = ResumableBatchSampler(
                len(self.parts.val_dataset), self.batch_per_rank, info.rank, world, cfg.RANDOM_SEED, shuffle=False, drop_last=False
            )
            self.val_loader = self._loader(self.parts.val_dataset, self.val_sampler, persistent=False)
        self.trainer = Trainer(self, info, progress=options.progress)
        self.runlog: RunLog | None = None
        self._sums: dict[str, torch.Tensor] = {}
        self._tick, self._steps_since = time.perf_counter(), 0

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

    @property
    def iteration(self) -> int:
        return self.trainer.step

    # ---------------------------------------------------------------------- what the trainer calls
    def loss(self, model: nn.Module, batch: dict[str, Any], precision: Precision) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return study_loss(model, batch, precision, self.device)

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def compile(self, model: nn.Module) -> None:  # in place: state-dict keys, checkpoints and the export stay as they are
        getattr(self.model, "image_encoder", self.model).compile()

    def batches(self, position: DataPosition) -> Iterator[dict[str, Any]]:
        return cycle_batches(self.loader, self.sampler, position)

    def reads_loss(self, step: int) -> bool:
        return step % self.options.log_every == 0 or step == self.total_steps

    def checkpoint_due(self, step: int) -> bool:
        return step % self.options.checkpoint_every == 0 or step == self.total_steps

    def after_step(self, step: int, result: StepResult, reading: float | None, progress: Any) -> None:
        self._steps_since += 1
        for name, value in {"loss": result.loss.float(), **result.components}.items():
            self._sums[name] = self._sums.get(name, 0) + value
        if self.reads_loss(step):
            self._log_train(self._sums, self._steps_since, time.perf_counter() - self._tick)
            self._sums, self._tick, self._steps_since = {}, time.perf_counter(), 0

    def pack_state(self, step: int, position: DataPosition, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return ts.build_state(
            iteration=step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            scaler=self.precision.scaler, data_position=position.state_dict(), config=self.cfg.to_dict(), rng_states=rng,
        )

    def state_path(self, step: int) -> Path:
        return ts.checkpoint_path(self.folder, step)

    def saved(self, path: Path) -> None:
        log.info("saved %s", path)
        # Only now that the new file is complete; never the checkpoint this run resumed from.
        prune_checkpoints(self.folder, self.cfg.CHECKPOINT.KEEP_LAST, self.cfg.CHECKPOINT.KEEP_EVERY,
                          saved=path, protect=[self.options.resume_from])

    def load_state(self, path: Path) -> dict[str, Any]:
        state = ts.load_state(path)
        self._resumed_from = path
        saved_world = len(state.get("rng") or [])
        if saved_world and saved_world != self.info.world_size:
            log.warning("checkpoint was written by %d processes, resuming with %d: data order and RNG differ", saved_world, self.info.world_size)
        changed = config_changes(state.get("config") or {}, self.cfg.to_dict())
        if changed:
            log.warning("configuration differs from the checkpoint's: %s", ", ".join(changed[:8]))
        return state

    def restore_extra(self, state: dict[str, Any]) -> int:
        position = state["data"]
        log.info("resumed from %s at iteration %d (epoch %d, batch %d)", self._resumed_from, int(state["iteration"]),
                 position["epoch"], position["batch"])
        return int(state["iteration"])

    def non_finite(self, step: int, value: float) -> int:
        good = ts.list_checkpoints(self.folder)
        where = f"the last good checkpoint is {good[-1][1]}" if good else "no checkpoint was written yet"
        log.error(
            "non-finite loss at or before iteration %d: stopping without saving; %s. "
            "Lower OPTIM.LR, check the data, or use AMP.DTYPE bfloat16/float32, then --resume-from that checkpoint.",
            step, where,
        )
        return 1

    def signalled(self, signum: int, step: int) -> None:
        name = signal.Signals(signum).name
        log.info("%s received: checkpoint saved at iteration %d; continue with --resume-from auto", name, step)

    # ------------------------------------------------------------------------------------------
    def run(self) -> int:
        if self.options.resume_from is not None:
            self.trainer.resume(self.options.resume_from)
        self.runlog = RunLog(self.folder / TENSORBOARD_DIR, self.info.is_main)
        self._tick = time.perf_counter()
        try:
            code = self.trainer.run(compile_model=self.options.compile)
        finally:
            self.runlog.close()
        if code == 0 and self.options.export_at_end and self.info.is_main:
            self._export()
        return code

    # ------------------------------------------------------------------------------------------
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
            self.runlog.scalar(f"train/{name}", value, self.iteration)
        for name, lr in lrs.items():
            self.runlog.scalar(f"lr/{name}", lr, self.iteration)
        self.runlog.scalar("speed/images_per_s", images_per_s, self.iteration)
        if memory is not None:
            self.runlog.scalar("gpu/max_memory_GiB", memory, self.iteration)

    def validate(self, step: int, progress: Any) -> bool:
        """Retrieval and losses on the validation studies (pre-training never stops early)."""
        if self.val_sampler is None:
            return False
        metrics, sample = evaluate(
            self.model, self.val_loader, self.val_sampler, self.info, self.precision,
            decode=self.parts.decode if self.options.log_text else None,
            max_length=self.cfg.DATA.MAX_CAPTION_LENGTH,
        )
        if not self.info.is_main:
            return False
        log.info("val iter %d | %s", self.iteration, " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        for name, value in metrics.items():
            self.runlog.scalar(f"val/{name}", value, self.iteration)
        if sample is not None:  # only with --log-text: reports may fall under data-use agreements
            log.info("val sample | generated: %s | reference: %s", *sample)
            self.runlog.text("val/sample", f"generated: {sample[0]}\n\nreference: {sample[1]}", self.iteration)
        self.runlog.flush()
        return False

    def _export(self) -> None:
        from refers.engine.export import encoder_state, save_encoder

        out = self.folder / EXPORT_NAME
        provenance = {"iteration": self.iteration, "key_naming": "original REFERS (transformer.*)",
                      "image_encoder": self.cfg.MODEL.VISUAL.NAME, "synthetic_data": self.parts.synthetic}
        save_encoder(encoder_state(self.model.state_dict()), out, "pth", provenance)
        log.info("exported the image encoder to %s (original key naming, for Fine-tune/)", out)


def run_pretraining(
    cfg: Any, options: LoopOptions, info: DistInfo, build_parts: Callable[[Any, torch.device], TrainParts]
) -> int:
    """Train (or resume) one run in this process; returns 0, 1 (non-finite loss) or 128 + signal."""
    return PretrainRun(cfg, options, info, build_parts).run()
