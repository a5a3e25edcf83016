"""The fine-tuning loop: SGD with warm-up and decay, DDP, validation, checkpoints, early stopping.

Per optimiser step: ``gradient_accumulation_steps`` micro-batches (DDP synchronises gradients only
on the last, ``no_sync`` before), the mean loss all-reduced (for the log and to stop on a non-finite
loss on every rank at once), clipping, ``optimizer.step()`` then ``scheduler.step()`` (the original
had them the other way round). Validation every ``--eval_every`` steps (default: once per epoch)
and after the last step; it saves ``{name}_bestauc_checkpoint.bin`` / ``{name}_bestloss_checkpoint.bin``
and the resume state ``{name}_last.pth`` (model, optimiser, schedule, scaler, early stopping, data
position and RNG states: a resumed run continues the same batches).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader

from refers.base.errors import UserError as UserError
from refers.data.device_transforms import to_model_input
from refers.base.errors import UnreadableImageError
from refers.base.checkpoints import atomic_torch_save, safe_load
from refers.engine.distributed import DistInfo
from refers.base.synthetic import mark_synthetic
from refers.engine.run_info import write_run_info
from refers.engine.sampling import DataPosition, ResumableBatchSampler, SeededDataset, cycle_batches
from refers.engine.train_state import capture_rng_state, restore_rng_state, seed_everything
from refers.eval.metrics import mean_auc, per_class_auc
from refers.finetune.config import to_plain
from refers.finetune.data import DataSetup, build_dataset, default_workers, fraction_file, resolve_data
from refers.finetune.early_stopping import Decision, EarlyStopping, decide
from refers.finetune.evaluate import evaluate
from refers.finetune.model import build_classifier, freeze_backbone, initialise, save_finetuned
from refers.finetune.precision import Precision, make_precision

logger = logging.getLogger(__name__)

STATE_FORMAT = "refers-finetune-state"
LOG_EVERY = 10  # steps between loss read-outs on a GPU (every step on a CPU, where reading is free)
CSV_FIELDS = ("step", "epoch", "train_loss", "lr", "val_loss", "val_mean_auc", "best_auc", "counter", "seconds")


@dataclass
class Outcome:
    """The end of a training run."""

    steps: int
    best_auc: float
    best_loss: float
    stopped_early: bool
    checkpoint: Path


def checkpoint_paths(args: argparse.Namespace) -> dict[str, Path]:
    out = Path(args.output_dir)
    return {"auc": out / f"{args.name}_bestauc_checkpoint.bin", "loss": out / f"{args.name}_bestloss_checkpoint.bin",
            "state": out / f"{args.name}_last.pth"}


def build_scheduler(optimizer: torch.optim.Optimizer, decay_type: str, warmup_steps: int, num_steps: int):
    """Linear warm-up then cosine (half a period) or linear decay to 0 at ``num_steps`` (ViT-pytorch's schedules)."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    make = get_cosine_schedule_with_warmup if decay_type == "cosine" else get_linear_schedule_with_warmup
    return make(optimizer, warmup_steps, num_steps)


def batch_sizes(args: argparse.Namespace, info: DistInfo) -> tuple[int, int]:
    """(training micro-batch, evaluation batch) per process: totals divided by world size (and accumulation)."""
    micro = args.train_batch_size // (info.world_size * args.gradient_accumulation_steps)
    if micro < 1:
        raise UserError(f"--train_batch_size {args.train_batch_size} is smaller than processes x "
                           f"--gradient_accumulation_steps ({info.world_size} x {args.gradient_accumulation_steps})", exit_code=2)
    return micro, max(1, args.eval_batch_size // info.world_size)


def metadata(args: argparse.Namespace, setup: DataSetup, img_size: int, step: int, **scores: float) -> dict[str, Any]:
    """Plain-data description of a fine-tuned checkpoint (see :mod:`refers.finetune.model`)."""
    return {"dataset": setup.dataset, "classes": list(setup.classes), "num_classes": setup.num_classes,
            "model_type": args.model_type, "img_size": img_size, "global_pool": args.global_pool,
            "data_volume": args.data_volume,
            "data_seed": args.data_seed, "seed": args.seed, "step": step, "synthetic": setup.synthetic,
            **scores, "config": to_plain(args)}


@dataclass
class Run:
    """What the steps of one training run share."""

    args: argparse.Namespace
    info: DistInfo
    setup: DataSetup
    precision: Precision
    paths: dict[str, Path]
    log: "RunLog"
    workers: int
    eval_batch: int


def train(args: argparse.Namespace, info: DistInfo, argv: Sequence[str] = ()) -> Outcome:
    """Fine-tune as ``args`` say; every rank calls this. Returns the same outcome on every rank.

    Args:
        argv: the command line, recorded in ``<log_dir>/command.txt``.
    """
    setup = resolve_data(args)  # args: frozen; img_size and the absolute folders are filled in by finetune.config.resolve
    train_file = fraction_file(setup.list_dir, "train", args.data_volume, args.data_seed)
    val_file = fraction_file(setup.list_dir, "val", args.val_volume, args.data_seed)
    train_set, _ = build_dataset(setup, train_file, args.img_size, True, args.skip_bad_images, args.packed_cache,
                                 args.min_crop_area)
    val_set, _ = build_dataset(setup, val_file, args.img_size, False, args.skip_bad_images, args.packed_cache)
    micro, eval_batch = batch_sizes(args, info)
    if setup.synthetic and info.is_main:
        logger.warning("SYNTHETIC data (%s carries SYNTHETIC.txt): numbers from this run say nothing about real X-rays", setup.list_dir)
    logger.info("%s: train %s (%d images), val %s (%d images), %d classes", setup.dataset, train_file, len(train_set),
                val_file, len(val_set), setup.num_classes)

    seed_everything(args.seed)  # same initial head on every rank (DDP also broadcasts rank 0's weights)
    model = build_classifier(args.model_type, args.img_size, setup.num_classes, args.global_pool)
    logger.info(initialise(model, args.init, args.pretrained_dir))
    if args.freeze_backbone:
        logger.info("--freeze_backbone: training the head only (%d parameters)", freeze_backbone(model))
    model.to(info.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.learning_rate, momentum=0.9, weight_decay=args.weight_decay)
    scheduler = build_scheduler(optimizer, args.decay_type, args.warmup_steps, args.num_steps)
    workers = default_workers(info.world_size) if args.num_workers is None else args.num_workers
    precision = make_precision(args.fp16, args.bf16, args.loss_scale, info.device, say=info.is_main,
                               default="fp32" if args.fp32 else "bf16")
    run = Run(args, info, setup, precision,
              checkpoint_paths(args), RunLog(args, info, fresh=not args.resume), workers, eval_batch)
    stopper, position, step = EarlyStopping(args.patience), DataPosition(), 0
    seed_everything(args.seed + info.rank)  # dropout differs between ranks, as their data does
    if args.resume:
        step = restore(run.paths["state"], model, optimizer, scheduler, run.precision, stopper, position, info)
        logger.info("resumed %s at step %d (epoch %d, batch %d)", run.paths["state"], step, position.epoch, position.batch)

    ddp = model
    if info.distributed:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if args.compile:  # in place: state-dict keys, and so checkpoints, stay as they are
        ddp.compile()
    sampler = ResumableBatchSampler(len(train_set), micro, info.rank, info.world_size, seed=args.seed, shuffle=True, drop_last=False)
    # Its own generator: starting an epoch's iterator then never draws from the global RNG (dropout),
    # so a resumed run continues the same random stream; augmentations are seeded per sample.
    loader = DataLoader(SeededDataset(train_set), batch_sampler=sampler, num_workers=workers, pin_memory=info.device.type == "cuda",
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(args.seed))
    batches = cycle_batches(loader, sampler, position)
    eval_every = args.eval_every or max(1, math.ceil(sampler.batches_per_epoch / args.gradient_accumulation_steps))
    logger.info("%d steps of %d x %d x %d images (processes x accumulation x micro-batch), validating every %d steps, %s",
                args.num_steps, info.world_size, args.gradient_accumulation_steps, micro, eval_every, run.precision.name)
    if info.is_main:
        write_run_info(args.log_dir, argv, yaml.safe_dump(to_plain(args), sort_keys=True), info.device, info.world_size, setup.synthetic)
        if setup.synthetic:  # the checkpoints' folder says so too
            mark_synthetic(args.output_dir, "Checkpoints here were trained on SYNTHETIC data.\n")

    from tqdm import tqdm

    stopped_early = False
    bar = tqdm(total=args.num_steps, initial=step, desc="Training", disable=not info.is_main, dynamic_ncols=True)
    try:
        while step < args.num_steps and not stopped_early:
            # Reading the loss waits for the GPU: there only every LOG_EVERY steps and at validations.
            read = info.device.type != "cuda" or (step + 1) % LOG_EVERY == 0 or (step + 1) % eval_every == 0 \
                or step + 1 == args.num_steps
            loss = train_step(ddp, params, batches, position, optimizer, scheduler, run.precision, args, info, read)
            step += 1
            lr = scheduler.get_last_lr()[0]
            bar.update()
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                run.log.scalar("train/loss", loss, step)
            run.log.scalar("train/lr", lr, step)
            if step % eval_every == 0 or step == args.num_steps:
                decision = validate(run, model, val_set, stopper, step, loss, lr, position.epoch)
                save_state(run.paths["state"], step, model, optimizer, run.precision, scheduler, stopper, position, args, info)
                if info.is_main:
                    bar.write(f"step {step}: mean AUC {decision.auc:.4f} (best {stopper.best_auc:.4f}, {decision.counter} in a row below it)")
                stopped_early = decision.stop
    except UnreadableImageError as error:  # from a DataLoader worker: the message's last line names the image
        message = str(error).strip().splitlines()[-1]
        raise UserError(message.split("UnreadableImageError: ", 1)[-1] + " (--skip_bad_images skips it)") from None
    finally:
        bar.close()
        run.log.close()
    if stopped_early:
        logger.info("early stop at step %d: %d validations in a row below the best mean AUC", step, stopper.counter)
    if info.is_main and not run.paths["auc"].is_file():
        raise UserError("no validation reached a defined mean AUC, so no best-AUC checkpoint was written "
                           "(does the validation list have both label values of some class?)")
    logger.info("best validation mean AUC %.4f, checkpoint %s", stopper.best_auc, run.paths["auc"])
    return Outcome(step, stopper.best_auc, stopper.best_loss, stopped_early, run.paths["auc"])


def validate(run: Run, model: nn.Module, val_set, stopper: EarlyStopping, step: int, train_loss: float, lr: float,
             epoch: int) -> Decision:
    """Score the validation list, decide (rank 0, broadcast), save the best checkpoints and log."""
    args, info = run.args, run.info
    result = evaluate(model, val_set, run.eval_batch, info, run.precision, run.workers, desc="Validating")
    # Rank 0 scores (and warns about one-valued classes) and decides for all ranks.
    auc = mean_auc(per_class_auc(result.labels, result.probs, run.setup.classes)) if info.is_main else math.nan
    decision = decide(stopper, auc, result.loss, info)
    if info.is_main:
        scores = {"val_mean_auc": auc if math.isfinite(auc) else None, "val_loss": result.loss}  # JSON has no NaN
        if decision.new_best_auc:
            save_finetuned(model, run.paths["auc"], metadata(args, run.setup, args.img_size, step, **scores))
        if decision.new_best_loss:
            save_finetuned(model, run.paths["loss"], metadata(args, run.setup, args.img_size, step, **scores))
        run.log.validation(step, epoch, train_loss, lr, result.loss, auc, stopper)
    return decision


def train_step(ddp: nn.Module, params: list, batches, position: DataPosition, optimizer, scheduler,
               precision: Precision, args: argparse.Namespace, info: DistInfo, read: bool = True) -> float | None:
    """One optimiser step over ``gradient_accumulation_steps`` micro-batches.

    Returns:
        The mean loss over ranks when ``read`` (and then stops on a non-finite loss), else None:
        reading it from a GPU waits for the step to finish, which leaves the GPU idle meanwhile.
    """
    ddp.train(not args.freeze_backbone)  # a linear probe keeps the encoder's dropout off
    accum = args.gradient_accumulation_steps
    total = torch.zeros((), dtype=torch.float64, device=info.device)
    for micro_step in range(accum):
        images, targets, _ = next(batches)
        position.batch += 1
        images, targets = to_model_input(images, info.device), targets.to(info.device, non_blocking=True)
        sync = not info.distributed or micro_step == accum - 1
        with (contextlib.nullcontext() if sync else ddp.no_sync()):
            with precision.autocast():
                logits = ddp(images)
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float().reshape(targets.shape), targets) / accum
            (precision.scaler.scale(loss) if precision.scaler else loss).backward()
        total += loss.detach().double()
    if info.distributed:
        dist.all_reduce(total)
        total /= info.world_size
    value = float(total) if read else None
    if value is not None and not math.isfinite(value):
        raise UserError(f"the training loss is {value} at step {scheduler.last_epoch + 1}; lower --learning_rate "
                           "or check the data (no checkpoint of this step was saved)")
    if precision.scaler:
        precision.scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(params, args.max_grad_norm)
    if precision.scaler:
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return value


def save_state(path: Path, step: int, model: nn.Module, optimizer, precision: Precision, scheduler,
               stopper: EarlyStopping, position: DataPosition, args: argparse.Namespace, info: DistInfo) -> None:
    """Write the resume state (rank 0), with every rank's RNG state."""
    rng = [capture_rng_state()]
    if info.distributed:
        rng = [None] * info.world_size
        dist.all_gather_object(rng, capture_rng_state())
    if not info.is_main:
        return
    atomic_torch_save({
        "format": STATE_FORMAT, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": precision.scaler.state_dict() if precision.scaler else {},
        "early_stopping": stopper.state_dict(), "data": position.state_dict(), "rng": rng, "config": to_plain(args),
    }, path)


def restore(path: Path, model: nn.Module, optimizer, scheduler, precision: Precision, stopper: EarlyStopping,
            position: DataPosition, info: DistInfo) -> int:
    """Load a resume state written by :func:`save_state`; returns its step."""
    if not path.is_file():
        raise UserError(f"--resume: no {path} to continue from (it is written at each validation)")
    state = safe_load(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"--resume: {path} is not a fine-tuning state of this project")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if precision.scaler and state.get("scaler"):
        precision.scaler.load_state_dict(state["scaler"])
    stopper.load_state_dict(state["early_stopping"])
    position.load_state_dict(state["data"])
    rng = state.get("rng") or []
    if rng:
        restore_rng_state(rng[info.rank] if info.rank < len(rng) else rng[0])
    return int(state["step"])


class RunLog:
    """TensorBoard scalars and a metrics CSV under ``--log_dir`` (rank 0 only; no-ops elsewhere)."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, fresh: bool):
        self.writer = None
        self.started = time.time()
        self.csv_path = Path(args.log_dir) / "metrics.csv"
        if not info.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=args.log_dir)
        if fresh or not self.csv_path.is_file():
            with open(self.csv_path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(CSV_FIELDS)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def validation(self, step: int, epoch: int, train_loss: float, lr: float, val_loss: float, auc: float,
                   stopper: EarlyStopping) -> None:
        self.scalar("valid/loss", val_loss, step)
        self.scalar("valid/mean_auc", auc, step)
        row = (step, epoch, f"{train_loss:.6f}", f"{lr:.6g}", f"{val_loss:.6f}", f"{auc:.6f}", f"{stopper.best_auc:.6f}",
               stopper.counter, f"{time.time() - self.started:.1f}")
        with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:  # one whole line per validation
            csv.writer(handle).writerow(row)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
