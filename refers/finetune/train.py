"""Fine-tuning as a task of the one training loop (:class:`refers.engine.trainer.Trainer`).

SGD with warm-up and decay. Per optimiser step: ``gradient_accumulation_steps`` micro-batches
(DDP synchronises gradients only on the last, ``no_sync`` before), clipping, ``optimizer.step()``
then ``scheduler.step()`` (the original had them the other way round). The loss is read (the mean
over ranks) every step on a CPU and every ``LOG_EVERY`` steps on a GPU, and at validations; a
non-finite one stops the run before its update. Validation every ``--eval_every`` steps (default:
once per epoch) and after the last step; it saves ``{name}_bestauc_checkpoint.bin`` /
``{name}_bestloss_checkpoint.bin`` and then the resume state ``{name}_last.pth`` (model, optimiser,
schedule, scaler, early stopping, data position and RNG states: a resumed run continues the same
batches). SIGTERM/SIGINT/SIGUSR2 save the resume state at the next step boundary and exit with 128 + signal;
``--resume`` then continues to the same weights as an uninterrupted run.

``args`` is never modified (the image size and absolute folders come resolved from
:mod:`refers.finetune.config`).
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from refers.base.atomic import check_output_dir
from refers.base.checkpoints import safe_load
from refers.base.earlier_runs import claim_run_folder
from refers.base.errors import UnreadableImageError, UserError
from refers.base.synthetic import mark_synthetic
from refers.data.device_transforms import to_model_input
from refers.engine.distributed import DistInfo
from refers.engine.optim import make_optimizer, warmup_schedule
from refers.engine.precision import Precision, make_precision
from refers.engine.run_info import write_run_info
from refers.engine.run_log import RunLog
from refers.engine.sampling import DataPosition, ResumableBatchSampler, SeededDataset, cycle_batches
from refers.engine.step import StepResult
from refers.engine.train_state import seed_everything
from refers.engine.trainer import Trainer
from refers.eval.metrics import mean_auc, per_class_auc
from refers.config.engine import config_changes
from refers.finetune.config import to_plain
from refers.finetune.data import DataSetup, build_dataset, default_workers, fraction_file, resolve_data
from refers.finetune.early_stopping import EarlyStopping, decide
from refers.finetune.evaluate import evaluate
from refers.finetune.model import build_classifier, freeze_backbone, initialise, save_finetuned
from refers.finetune.run_files import checkpoint_paths, metrics_path, run_leftovers, run_outputs

logger = logging.getLogger(__name__)

STATE_FORMAT = "refers-finetune-state"
LOG_EVERY = 10  # steps between loss read-outs on a GPU (every step on a CPU, where reading is free)
CSV_FIELDS = ("step", "epoch", "train_loss", "lr", "val_loss", "val_mean_auc", "best_auc", "counter", "seconds")


@dataclass
class Outcome:
    """The end of a training run (``exit_code`` 128 + signal when SIGTERM/SIGINT/SIGUSR2 stopped it)."""

    steps: int
    best_auc: float
    best_loss: float
    stopped_early: bool
    checkpoint: Path
    exit_code: int = 0


# Flags that may change at --resume without changing the run (the others are warned about).
RESUME_FREE_FLAGS = frozenset({"resume", "overwrite", "local_rank", "num_workers", "gpu", "skip_bad_images"})


def check_outputs(args: argparse.Namespace, info: DistInfo) -> None:
    """Before any work: the folders can be written, and a fresh run replaces no earlier one unless
    ``--overwrite`` (every rank checks; rank 0 removes)."""
    check_output_dir(args.output_dir, "--output_dir")
    check_output_dir(args.log_dir, "--log_dir")
    if args.resume:
        return
    removed = claim_run_folder(run_outputs(args.output_dir, args.name, args.log_dir),
                               where=f"--output_dir {args.output_dir} / --log_dir {args.log_dir} (--name {args.name})",
                               instead="continue it with --resume", overwrite=args.overwrite, remove=info.is_main,
                               leftovers=run_leftovers(args.log_dir))
    if removed and info.is_main:
        logger.warning("--overwrite: removed %d file(s) of the earlier run %s", len(removed), args.name)


def batch_sizes(args: argparse.Namespace, info: DistInfo) -> tuple[int, int]:
    """(training micro-batch, evaluation batch) per process: totals divided by world size (and accumulation)."""
    micro = args.train_batch_size // (info.world_size * args.gradient_accumulation_steps)
    if micro < 1:
        raise UserError(f"--train_batch_size {args.train_batch_size} is smaller than processes x "
                        f"--gradient_accumulation_steps ({info.world_size} x {args.gradient_accumulation_steps})", exit_code=2)
    return micro, max(1, args.eval_batch_size // info.world_size)


def metadata(config: dict[str, Any], setup: DataSetup, step: int, **scores: float) -> dict[str, Any]:
    """Plain-data description of a fine-tuned checkpoint (see :mod:`refers.finetune.model`)."""
    return {"dataset": setup.dataset, "classes": list(setup.classes), "num_classes": setup.num_classes,
            "model_type": config["model_type"], "img_size": config["img_size"], "global_pool": config["global_pool"],
            "data_volume": config["data_volume"],
            "data_seed": config["data_seed"], "seed": config["seed"], "step": step, "synthetic": setup.synthetic,
            **scores, "config": config}


def classification_loss(model: nn.Module, batch: Any, precision: Precision) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean binary cross-entropy of one ``(uint8 images, targets [B, C], indices)`` batch (the loss of a step)."""
    images, targets, _ = batch
    device = next(model.parameters()).device
    images, targets = to_model_input(images, device), targets.to(device, non_blocking=True)
    with precision.autocast():
        logits = model(images)
    return nn.functional.binary_cross_entropy_with_logits(logits.float().reshape(targets.shape), targets), {}


class FinetuneRun:
    """One fine-tuning run in this process (a :class:`~refers.engine.trainer.Task`)."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, argv: Sequence[str] = ()):
        self.args, self.info, self.argv = args, info, list(argv)
        # args: frozen; img_size and the absolute folders are filled in by finetune.config.resolve
        self.config = to_plain(args)
        self.img_size = args.img_size
        check_outputs(args, info)
        self.paths = checkpoint_paths(args.output_dir, args.name)
        self._build_data()
        self._build_model()
        self.trainer = Trainer(self, info)
        self.stopper = EarlyStopping(args.patience)
        self.runlog: RunLog | None = None
        self.started = time.time()
        self.train_loss, self.lr = math.nan, math.nan
        self.total_steps, self.accumulation = args.num_steps, args.gradient_accumulation_steps
        self.clip_norm, self.find_unused_parameters = args.max_grad_norm, False
        self.progress_options = {"desc": "Training"}
        self.loss = classification_loss

    def _build_data(self) -> None:
        args, info = self.args, self.info
        self.setup = setup = resolve_data(args)
        train_file = fraction_file(setup.list_dir, "train", args.data_volume, args.data_seed)
        val_file = fraction_file(setup.list_dir, "val", args.val_volume, args.data_seed)
        self.train_set, _ = build_dataset(setup, train_file, self.img_size, True, args.skip_bad_images, args.packed_cache,
                                          args.min_crop_area)
        self.val_set, _ = build_dataset(setup, val_file, self.img_size, False, args.skip_bad_images, args.packed_cache)
        self.micro, self.eval_batch = batch_sizes(args, info)
        if setup.synthetic and info.is_main:
            logger.warning("SYNTHETIC data (%s carries SYNTHETIC.txt): numbers from this run say nothing about real X-rays", setup.list_dir)
        logger.info("%s: train %s (%d images), val %s (%d images), %d classes", setup.dataset, train_file, len(self.train_set),
                    val_file, len(self.val_set), setup.num_classes)
        self.workers = default_workers(info.world_size) if args.num_workers is None else args.num_workers
        self.sampler = ResumableBatchSampler(len(self.train_set), self.micro, info.rank, info.world_size, seed=args.seed,
                                             shuffle=True, drop_last=False)
        # Its own generator: starting an epoch's iterator then never draws from the global RNG (dropout),
        # so a resumed run continues the same random stream; augmentations are seeded per sample.
        self.loader = DataLoader(SeededDataset(self.train_set), batch_sampler=self.sampler, num_workers=self.workers,
                                 pin_memory=info.device.type == "cuda", persistent_workers=self.workers > 0,
                                 generator=torch.Generator().manual_seed(args.seed))
        self.eval_every = args.eval_every or max(1, math.ceil(self.sampler.batches_per_epoch / args.gradient_accumulation_steps))

    def _build_model(self) -> None:
        args, info = self.args, self.info
        seed_everything(args.seed)  # same initial head on every rank (DDP also broadcasts rank 0's weights)
        self.model = build_classifier(args.model_type, self.img_size, self.setup.num_classes, args.global_pool)
        logger.info(initialise(self.model, args.init, args.pretrained_dir))
        if args.freeze_backbone:
            logger.info("--freeze_backbone: training the head only (%d parameters)", freeze_backbone(self.model))
        self.model.to(info.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, args.optimizer, args.learning_rate, args.weight_decay)
        self.scheduler = warmup_schedule(self.optimizer, args.decay_type, args.warmup_steps, args.num_steps)
        self.precision = make_precision(args.fp16, args.bf16, args.loss_scale, info.device, say=info.is_main,
                                        default="fp32" if args.fp32 else "bf16")

    # ---------------------------------------------------------------------- what the trainer calls
    def train_mode(self, model: nn.Module) -> None:
        model.train(not self.args.freeze_backbone)  # a linear probe keeps the encoder's dropout off

    def compile(self, model: nn.Module) -> None:  # in place: state-dict keys, and so checkpoints, stay as they are
        model.compile()

    def batches(self, position: DataPosition) -> Iterator[Any]:
        return cycle_batches(self.loader, self.sampler, position)

    def reads_loss(self, step: int) -> bool:
        # Reading the loss waits for the GPU: there only every LOG_EVERY steps (and at validations).
        return self.info.device.type != "cuda" or step % LOG_EVERY == 0

    def checkpoint_due(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.total_steps

    def after_step(self, step: int, result: StepResult, reading: float | None, progress: Any) -> None:
        self.lr = self.scheduler.get_last_lr()[0]
        if reading is not None:
            self.train_loss = reading
            progress.set_postfix(loss=f"{reading:.4f}", lr=f"{self.lr:.2e}")
            self.runlog.scalar("train/loss", reading, step)
        self.runlog.scalar("train/lr", self.lr, step)

    def validate(self, step: int, progress: Any) -> bool:
        """Score the validation list, decide (rank 0, broadcast), save the best checkpoints and log."""
        info = self.info
        result = evaluate(self.model, self.val_set, self.eval_batch, info, self.precision, self.workers, desc="Validating")
        # Rank 0 scores (and warns about one-valued classes) and decides for all ranks.
        auc = mean_auc(per_class_auc(result.labels, result.probs, self.setup.classes)) if info.is_main else math.nan
        decision = decide(self.stopper, auc, result.loss, info)
        if info.is_main:
            scores = {"val_mean_auc": auc if math.isfinite(auc) else None, "val_loss": result.loss}  # JSON has no NaN
            for kind, new_best in (("auc", decision.new_best_auc), ("loss", decision.new_best_loss)):
                if new_best:
                    save_finetuned(self.model, self.paths[kind], metadata(self.config, self.setup, step, **scores))
            self._log_validation(step, result.loss, auc)
            progress.write(f"step {step}: mean AUC {decision.auc:.4f} (best {self.stopper.best_auc:.4f}, "
                           f"{decision.counter} in a row below it)")
        return decision.stop

    def _log_validation(self, step: int, val_loss: float, auc: float) -> None:
        stopper, runlog = self.stopper, self.runlog
        runlog.scalar("valid/loss", val_loss, step)
        runlog.scalar("valid/mean_auc", auc, step)
        runlog.row((step, self.trainer.position.epoch, f"{self.train_loss:.6f}", f"{self.lr:.6g}", f"{val_loss:.6f}",
                    f"{auc:.6f}", f"{stopper.best_auc:.6f}", stopper.counter, f"{time.time() - self.started:.1f}"))
        runlog.flush()

    def pack_state(self, step: int, position: DataPosition, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "step": step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.precision.scaler_state(), "early_stopping": self.stopper.state_dict(),
                "data": position.state_dict(), "rng": rng, "config": self.config}

    def state_path(self, step: int) -> Path:
        return self.paths["state"]

    def saved(self, path: Path) -> None:
        pass

    def load_state(self, path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise UserError(f"--resume: no {path} to continue from (it is written at each validation)")
        state = safe_load(path)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError(f"--resume: {path} is not a fine-tuning state of this project")
        saved = {k: v for k, v in (state.get("config") or {}).items() if k not in RESUME_FREE_FLAGS}
        changed = config_changes(saved, {k: v for k, v in self.config.items() if k not in RESUME_FREE_FLAGS})
        if changed and self.info.is_main:
            logger.warning("--resume: flags differ from the interrupted run's: %s", ", ".join(changed[:8]))
        return state

    def restore_extra(self, state: dict[str, Any]) -> int:
        self.stopper.load_state_dict(state["early_stopping"])
        logger.info("resumed %s at step %d (epoch %d, batch %d)", self.paths["state"], int(state["step"]),
                    state["data"]["epoch"], state["data"]["batch"])
        return int(state["step"])

    def non_finite(self, step: int, value: float) -> int:
        raise UserError(f"the training loss is {value} at step {step}; lower --learning_rate "
                        "or check the data (no checkpoint of this step was saved)")

    def signalled(self, signum: int, step: int) -> None:
        logger.warning("%s received: resume state %s saved at step %d; continue with --resume",
                       signal.Signals(signum).name, self.paths["state"], step)

    # ------------------------------------------------------------------------------------------
    def _write_run_info(self) -> None:
        args, info = self.args, self.info
        logger.info("%d steps of %d x %d x %d images (processes x accumulation x micro-batch), validating every %d steps, %s",
                    args.num_steps, info.world_size, args.gradient_accumulation_steps, self.micro, self.eval_every,
                    self.precision.name)
        if info.is_main:
            write_run_info(args.log_dir, self.argv, yaml.safe_dump(self.config, sort_keys=True), info.device,
                           info.world_size, self.setup.synthetic)
            if self.setup.synthetic:  # the checkpoints' folder says so too
                mark_synthetic(args.output_dir, "Checkpoints here were trained on SYNTHETIC data.\n")

    def run(self) -> Outcome:
        """Train (or resume) to the end; returns the same outcome on every rank."""
        args = self.args
        self.started = time.time()
        self.runlog = RunLog(args.log_dir, self.info.is_main, metrics_path(args.log_dir), CSV_FIELDS,
                             fresh=not args.resume)
        seed_everything(args.seed + self.info.rank)  # dropout differs between ranks, as their data does
        if args.resume:
            self.trainer.resume(self.paths["state"])
        self._write_run_info()
        try:
            # A state saved when early stopping ended the run has nothing left to train.
            code = 0 if self.stopper.stopped else self.trainer.run(compile_model=args.compile)
        except UnreadableImageError as error:  # from a DataLoader worker: the message's last line names the image
            message = str(error).strip().splitlines()[-1]
            raise UserError(message.split("UnreadableImageError: ", 1)[-1] + " (--skip_bad_images skips it)") from None
        finally:
            self.runlog.close()
        return self._outcome(code)

    def _outcome(self, code: int) -> Outcome:
        step, stopper = self.trainer.step, self.stopper
        stopped_early = code == 0 and self.stopper.stopped and step < self.total_steps
        if stopped_early:
            logger.info("early stop at step %d: %d validations in a row below the best mean AUC", step, stopper.counter)
        if code == 0 and self.info.is_main and not self.paths["auc"].is_file():
            raise UserError("no validation reached a defined mean AUC, so no best-AUC checkpoint was written "
                            "(does the validation list have both label values of some class?)")
        if code == 0:
            logger.info("best validation mean AUC %.4f, checkpoint %s", stopper.best_auc, self.paths["auc"])
        return Outcome(step, stopper.best_auc, stopper.best_loss, stopped_early, self.paths["auc"], code)


def train(args: argparse.Namespace, info: DistInfo, argv: Sequence[str] = ()) -> Outcome:
    """Fine-tune as ``args`` say; every rank calls this. Returns the same outcome on every rank.

    Args:
        args: the parsed fine-tuning flags (never modified).
        argv: the command line, recorded in ``<log_dir>/command.txt``.
    """
    return FinetuneRun(args, info, argv).run()
