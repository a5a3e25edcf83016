"""The pre-training optimiser and learning-rate schedule of the REFERS recipe.

SGD (momentum 0.9) wrapped in timm's Lookahead (k = 5, alpha = 0.5). Parameter groups: weight
decay everywhere except parameters whose name matches ``OPTIM.NO_DECAY`` (norm or bias; matched
case-insensitively, so BERT's ``LayerNorm`` weights count too); the report encoder
(BERT) trains at its own, smaller learning rate. Linear warm-up then cosine decay to 0.

timm's Lookahead keeps its slow weights in the inner optimiser's per-parameter state
(``lookahead_slow_buff``) and its step counter in the parameter groups, so ``state_dict()``
carries both and a resumed run continues the same slow/fast cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from refers.config.choices import OPTIMIZERS

# The recipe's no-decay rule (OPTIM.NO_DECAY), matched case-insensitively anywhere in the name.
DEFAULT_NO_DECAY = ".*(norm.*|bias)"


@dataclass(frozen=True)
class OptimSettings:
    """The optimiser numbers of the recipe (``OPTIM.*`` of the config)."""

    lr: float = 3e-3
    bert_lr: float = 3e-4
    weight_decay: float = 1e-4
    no_decay: str = DEFAULT_NO_DECAY
    momentum: float = 0.9
    use_lookahead: bool = True
    lookahead_k: int = 5
    lookahead_alpha: float = 0.5
    warmup_steps: int = 10_000
    num_iterations: int = 400_000
    decay: str = "cosine"
    optimizer: str = "sgd"  # OPTIM.OPTIMIZER_NAME: "sgd" (the recipe) or "adamw"

    @classmethod
    def from_config(cls, cfg) -> "OptimSettings":
        """Read ``OPTIM.*`` of a :class:`refers.config.Config`."""
        optim = cfg.OPTIM
        return cls(
            lr=float(optim.LR),
            bert_lr=float(optim.BERT_LR),
            weight_decay=float(optim.WEIGHT_DECAY),
            no_decay=str(optim.NO_DECAY),
            momentum=float(optim.MOMENTUM),
            use_lookahead=bool(optim.LOOKAHEAD.USE),
            lookahead_k=int(optim.LOOKAHEAD.STEPS),
            lookahead_alpha=float(optim.LOOKAHEAD.ALPHA),
            warmup_steps=int(optim.WARMUP_STEPS),
            num_iterations=int(optim.NUM_ITERATIONS),
            decay=str(optim.LR_DECAY_NAME),
            optimizer=str(optim.OPTIMIZER_NAME),
        )


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    bert_lr: float,
    weight_decay: float,
    no_decay: str = DEFAULT_NO_DECAY,
    bert_prefixes: tuple[str, ...] = ("bert.",),
) -> list[dict]:
    """Split trainable parameters into up to four groups: {main, BERT} x {decay, no decay}.

    Args:
        named_parameters: ``model.named_parameters()`` of the unwrapped model (no ``module.``).
        no_decay: regular expression; parameters whose name it matches (case-insensitively,
            anywhere in the name) get no weight decay.
        bert_prefixes: name prefixes of the report encoder, trained at ``bert_lr``.

    Returns:
        Groups for ``torch.optim``; each carries a ``name`` ("main", "main_no_decay", "bert",
        "bert_no_decay") used in logs. Empty groups are left out.
    """
    pattern = re.compile(no_decay, re.IGNORECASE)
    groups: dict[str, dict] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        is_bert = name.startswith(bert_prefixes)
        skip_decay = bool(pattern.search(name))
        key = ("bert" if is_bert else "main") + ("_no_decay" if skip_decay else "")
        group = groups.setdefault(
            key, {"name": key, "params": [], "lr": bert_lr if is_bert else lr, "weight_decay": 0.0 if skip_decay else weight_decay}
        )
        group["params"].append(param)
    order = ["main", "main_no_decay", "bert", "bert_no_decay"]
    return [groups[key] for key in order if key in groups]


def make_optimizer(params: Iterable, name: str, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` with momentum (``name`` "sgd") or ``AdamW`` (betas 0.9/0.999) over ``params``
    (parameters, or parameter groups whose own ``weight_decay`` wins). Pre-training and fine-tuning
    both build theirs here."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: {' or '.join(OPTIMIZERS)}")


def build_optimizer(model: nn.Module, settings: OptimSettings) -> torch.optim.Optimizer:
    """SGD with momentum (or AdamW) in timm's Lookahead, with the recipe's parameter groups."""
    from timm.optim.lookahead import Lookahead

    groups = parameter_groups(
        model.named_parameters(), settings.lr, settings.bert_lr, settings.weight_decay, settings.no_decay
    )
    inner = make_optimizer(groups, settings.optimizer, settings.lr, momentum=settings.momentum)
    if not settings.use_lookahead:
        return inner
    return Lookahead(inner, alpha=settings.lookahead_alpha, k=settings.lookahead_k)


def warmup_schedule(optimizer: torch.optim.Optimizer, decay: str, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then decay to 0 at ``total_steps``.

    ``decay``: "cosine" (half a period, the recipe), "linear" or "none" (constant after warm-up);
    pre-training and fine-tuning both schedule through here (ViT-pytorch's schedules, via transformers).
    Call ``scheduler.step()`` once per iteration, after ``optimizer.step()``.
    """
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    if decay == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if decay == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if decay == "none":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    raise ValueError(f"the learning-rate decay must be cosine, linear or none, got {decay!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, settings: OptimSettings) -> torch.optim.lr_scheduler.LambdaLR:
    """Pre-training's schedule: ``OPTIM.LR_DECAY_NAME`` over ``num_iterations`` (see ``warmup_schedule``)."""
    return warmup_schedule(optimizer, settings.decay, settings.warmup_steps, settings.num_iterations)
