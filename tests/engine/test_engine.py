"""The one training engine (refers/engine/trainer.py, step.py, precision.py) against oracles.

* Gradient accumulation: a per-sample loss (additive over micro-batches, unlike the contrastive
  loss over in-batch negatives) accumulated as 2 x B/2 gives the gradients and, through the whole
  pre-training loop, the weights of 1 x B (to float tolerance: only the summation order differs).
* Under 2-process DDP, ``no_sync`` is in force on every micro-batch but the last of each step, and
  the gradient equals the one-process gradient of the whole global batch.
* Exactly one library module creates ``torch.autocast`` / ``GradScaler``, and apart from the bench's
  bare reference loop exactly one calls ``.backward(``.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from refers.base.errors import UserError
from refers.engine.distributed import DistInfo
from refers.engine.precision import Precision
from refers.engine.pretrain_loop import LoopOptions, TrainParts, run_pretraining
from refers.engine.step import OptimStep
from tests.engine.test_pretrain_engine import toy_config

PACKAGE = Path(__file__).resolve().parents[2] / "refers"
FP32 = Precision(None, "cpu", None)


# ----------------------------------------------------------------------------------------------
# A per-sample loss: mean squared error of a linear read-out (no dropout, no in-batch negatives).
# ----------------------------------------------------------------------------------------------
class Regression(Dataset):
    def __init__(self, n: int = 24):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        fixed = torch.Generator().manual_seed(index)
        return {"x": torch.randn(6, generator=fixed), "y": torch.randn(2, generator=fixed) + 0.1 * torch.randn(2)}


def stack(items: list[dict]) -> dict:
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


class PerSample(nn.Module):
    """``forward(batch)`` as the REFERS model's: {"loss": mean over samples, "components": ...}."""

    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, batch: dict) -> dict:
        loss = F.mse_loss(self.image_encoder(batch["x"]), batch["y"])
        return {"loss": loss, "components": {"mse": loss.detach()}}


def mse_loss(model: nn.Module, batch: dict, precision: Precision):
    out = model(batch)
    return out["loss"], out["components"]


def test_accumulated_gradients_equal_the_whole_batch():
    torch.manual_seed(0)
    data = stack([Regression()[i] for i in range(8)])
    whole, halves = PerSample(), PerSample()
    halves.load_state_dict(whole.state_dict())
    grads = {}
    for name, model, n in (("whole", whole, 1), ("halves", halves, 2)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        step = OptimStep(model, mse_loss, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                         FP32, list(model.parameters()), clip_norm=None, accumulation=n)
        size = 8 // n
        micro = iter([{k: v[i * size:(i + 1) * size] for k, v in data.items()} for i in range(n)])
        result = step.accumulate(micro)
        grads[name] = [p.grad.clone() for p in model.parameters()]
        assert step.position.batch == n
        assert result.loss.dtype == torch.float64
        grads[name + "_loss"] = result.loss
    # Oracle: the gradient of the mean over all 8 samples, computed directly.
    oracle = PerSample()
    oracle.load_state_dict(whole.state_dict())
    torch.autograd.backward(F.mse_loss(oracle.image_encoder(data["x"]), data["y"]))
    for a, b, c in zip(grads["whole"], grads["halves"], [p.grad for p in oracle.parameters()]):
        assert torch.allclose(a, c, rtol=1e-6, atol=1e-7) and torch.allclose(b, c, rtol=1e-6, atol=1e-7)
    assert torch.allclose(grads["whole_loss"], grads["halves_loss"], rtol=1e-6)


def test_pretraining_accumulation_2_x_half_batch_equals_1_x_batch(tmp_path):
    weights = {}
    for n in (1, 2):
        def build(cfg, device):
            return TrainParts(model=PerSample(), train_dataset=Regression(24), val_dataset=None, collate_fn=stack)

        cfg = toy_config(iterations=8, batch=4, OPTIM__ACCUMULATION_STEPS=str(n))
        folder = tmp_path / f"accum{n}"
        options = LoopOptions(serialization_dir=folder, checkpoint_every=4, log_every=2, progress=False, export_at_end=False)
        assert run_pretraining(cfg, options, DistInfo(), build) == 0
        state = torch.load(folder / "checkpoint_8.pth", weights_only=True)
        assert state["data"] == {"epoch": 1, "batch": 2 * n}  # 6 steps an epoch; the position counts micro-batches
        weights[n] = state["model"]
    assert weights[1].keys() == weights[2].keys()
    for key in weights[1]:
        assert torch.allclose(weights[1][key], weights[2][key], rtol=1e-5, atol=1e-6), key


def test_batch_not_divisible_by_accumulation_is_refused(tmp_path):
    cfg = toy_config(iterations=2, batch=4, OPTIM__ACCUMULATION_STEPS="3")
    with pytest.raises(UserError, match="ACCUMULATION_STEPS 3"):
        run_pretraining(cfg, LoopOptions(serialization_dir=tmp_path), DistInfo(), lambda c, d: None)


# ----------------------------------------------------------------------------------------------
# 2-process DDP: no_sync on all but the last micro-batch, gradient of the whole global batch.
# ----------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = PerSample()
        data = stack([Regression()[i] for i in range(12)])  # 2 ranks x 3 micro-batches x 2 samples
        ddp = nn.parallel.DistributedDataParallel(model)
        synced: list[bool] = []

        def recording_loss(module: nn.Module, batch: dict, precision: Precision):
            synced.append(bool(module.require_backward_grad_sync))  # False inside no_sync
            return mse_loss(module, batch, precision)

        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        step = OptimStep(ddp, recording_loss, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                         FP32, list(model.parameters()), clip_norm=None, accumulation=3, distributed=True)
        mine = [slice(6 * rank + 2 * i, 6 * rank + 2 * i + 2) for i in range(3)]
        step.accumulate(iter([{k: v[s] for k, v in data.items()} for s in mine]))
        torch.save({"synced": synced, "grads": [p.grad.clone() for p in model.parameters()]}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_accumulation_uses_no_sync_on_all_but_the_last_micro_batch(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "result")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    torch.manual_seed(0)
    oracle = PerSample()
    data = stack([Regression()[i] for i in range(12)])
    # DDP averages over ranks; each rank's loss is the mean of its 3 micro-batch means: so the
    # oracle is the mean over all 12 samples.
    torch.autograd.backward(F.mse_loss(oracle.image_encoder(data["x"]), data["y"]))
    for rank in range(2):
        result = torch.load(f"{out}.{rank}", weights_only=True)
        assert result["synced"] == [False, False, True]
        for grad, expected in zip(result["grads"], [p.grad for p in oracle.parameters()]):
            assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# One module for precision, one for backward.
# ----------------------------------------------------------------------------------------------
def _code(path: Path) -> str:
    """A module's text without comments and docstrings (which may name what they do not call)."""
    code = "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
    return re.sub(r'"""[\s\S]*?"""', "", code)


def _calling(pattern: str) -> list[str]:
    return [str(path.relative_to(PACKAGE.parent)) for path in sorted(PACKAGE.rglob("*.py")) if re.search(pattern, _code(path))]


def test_one_module_creates_autocast_and_grad_scalers():
    assert _calling(r"torch\.autocast\(|(?<![.\w])autocast\(|GradScaler\(") == ["refers/engine/precision.py"]


def test_one_library_file_calls_backward_besides_the_bench_bare_loop():
    assert _calling(r"\.backward\(") == ["refers/bench/steps.py", "refers/engine/step.py"]
    bench = _code(PACKAGE / "bench" / "steps.py")
    assert bench.count(".backward(") == 1 and "class BareLoop" in bench  # the bare reference loop's
    assert _code(PACKAGE / "engine" / "step.py").count(".backward(") == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2], ids=["TERM", "INT", "USR2"])
def test_stop_signal_remembers_slurms_pre_timeout_signal_too(signum):
    """SIGUSR2 (what Slurm sends before a job's time limit) stops the loop like SIGTERM: remembered
    for the next step boundary instead of killing the process; the previous handler comes back."""
    from refers.engine.trainer import StopSignal

    before = signal.getsignal(signum)
    with StopSignal() as stop:
        os.kill(os.getpid(), signum)
        assert stop.signum == signum
    assert signal.getsignal(signum) == before
