"""Golden runs: today's training behaviour, recorded, that any rewrite of the training loops must reproduce.

Four tiny runs on the CPU in fp32 with fixed seeds, driven through the real commands (``main(argv)`` in
this process, ``torchrun ... -m refers ...`` with gloo for two processes):

* ``pretrain_1proc`` / ``pretrain_2proc``: ``refers pretrain``, 6 iterations, logging every iteration;
* ``finetune_1proc_accum2`` / ``finetune_2proc_accum2``: ``refers finetune``, 4 steps,
  ``--gradient_accumulation_steps 2`` (under DDP that exercises ``no_sync``).

What is compared is only what a user sees: every TensorBoard scalar of the run (per-step total loss and
loss components, learning rates, validation metrics; not timings), fine-tuning's ``metrics.csv`` (without
its seconds column) and a sha256 of the weights in the files the run leaves (pre-training: the last
``checkpoint_N.pth``'s model and the exported ``refers_checkpoint.pth``; fine-tuning: ``{name}_last.pth``'s
model and ``{name}_bestauc_checkpoint.bin``). The hash runs over the state dict's tensors in sorted key
order, each as name + dtype + shape + raw bytes.

The recorded values live in ``tests/golden/training_runs.json``, each run with the environment it was
recorded in (torch build, ``platform.machine()``, ATen's CPU capability, the CPU flags that pick MKL /
oneDNN kernels). In the same environment everything must be identical (floats exactly, hashes equal).
Elsewhere, losses, learning rates and metrics are compared with rtol 1e-5 and the test then skips,
saying so, instead of comparing the hashes (other kernels give other last bits).

Repeatability (checked when recording, in fresh folders and processes): kernels run on one thread (a
2-thread run differs in the last bits), and the pre-training runs use the fixed tokenizers of
``tests/golden/tokenizers/`` (recorded before tokenizer training was made reproducible; kept so
the records stay comparable, see ``data``).

A deliberate, documented change of training behaviour re-records the values::

    REFERS_UPDATE_GOLDEN=1 python -m pytest -q -p no:cacheprovider tests/engine/test_golden_runs.py

and the commit that does so says why (and the README, where a user would notice).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.finetune_helpers import make_dataset
from tests.finetune.test_finetune import common as finetune_common
from tests.finetune.test_finetune_ddp import env_for_children
from tests.cli.test_pretrain_cli import make_studies, pretrain_args

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "training_runs.json"
TOKENIZERS = GOLDEN.parent / "tokenizers"  # made by `make_studies`' reports; see the `data` fixture
UPDATE = os.environ.get("REFERS_UPDATE_GOLDEN") == "1"
RTOL = 1e-5
PRETRAIN_ITERATIONS = 6
FINETUNE_STEPS = ["--num_steps", "4", "--eval_every", "2", "--gradient_accumulation_steps", "2"]
DATASET = "Shenzhen_Tuberculosis"
# CPU features that choose MKL / oneDNN / ATen kernels, and so the last bits of fp32 results.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")
NOT_COMPARED = ("speed/", "gpu/")  # timings and memory vary from run to run


# ----------------------------------------------------------------------------------------------
# What a user sees, read back from the run's files.
# ----------------------------------------------------------------------------------------------
def state_sha256(state: dict[str, Any]) -> str:
    """sha256 over the tensors in sorted key order: name, dtype, shape, raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        assert isinstance(tensor, torch.Tensor), f"{name} is a {type(tensor).__name__}, not a tensor"
        tensor = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def scalars(folder: Path) -> dict[str, list[list[float]]]:
    """Every TensorBoard scalar under ``folder``: tag -> [[step, value], ...] in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [[event.step, float(event.value)] for event in sorted(events.Scalars(tag), key=lambda e: e.step)]
            for tag in sorted(events.Tags()["scalars"]) if not tag.startswith(NOT_COMPARED)}


def pretrain_record(run: Path) -> dict[str, Any]:
    last = max(run.glob("checkpoint_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    return {"scalars": scalars(run / "tensorboard"),
            "sha256": {f"{last.name}:model": state_sha256(load(last)["model"]),
                       "refers_checkpoint.pth": state_sha256(load(run / "refers_checkpoint.pth"))}}


def finetune_record(out: Path, name: str = "run") -> dict[str, Any]:
    logs = out / "logs" / name  # tests.finetune.test_finetune.common's --log_dir
    with open(logs / "metrics.csv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle)]
    return {"scalars": scalars(logs),
            "metrics_csv": [{k: v for k, v in row.items() if k != "seconds"} for row in rows],
            "sha256": {f"{name}_last.pth:model": state_sha256(load(out / "output" / f"{name}_last.pth")["model"]),
                       f"{name}_bestauc_checkpoint.bin": state_sha256(load(out / "output" / f"{name}_bestauc_checkpoint.bin"))}}


# ----------------------------------------------------------------------------------------------
# Comparison with the recorded values.
# ----------------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def differences(recorded: Any, observed: Any, rtol: float | None = None, where: str = "") -> list[str]:
    """Where ``observed`` differs from ``recorded``: exactly (``rtol`` None) or numbers within ``rtol``.

    Numbers in the metrics CSV are strings with 6 decimals, so they may also differ by their rounding.
    """
    if isinstance(recorded, dict) and isinstance(observed, dict):
        found = [f"{where}/{k}: missing" for k in recorded.keys() - observed.keys()]
        found += [f"{where}/{k}: not recorded" for k in observed.keys() - recorded.keys()]
        for key in sorted(recorded.keys() & observed.keys()):
            found += differences(recorded[key], observed[key], rtol, f"{where}/{key}")
        return found
    if isinstance(recorded, list) and isinstance(observed, list):
        if len(recorded) != len(observed):
            return [f"{where}: {len(observed)} entries, recorded {len(recorded)}"]
        return [d for i, (a, b) in enumerate(zip(recorded, observed)) for d in differences(a, b, rtol, f"{where}[{i}]")]
    if isinstance(recorded, float) and isinstance(observed, float) and math.isnan(recorded) and math.isnan(observed):
        return []
    same = recorded == observed and type(recorded) is type(observed)
    if not same and rtol is not None and not isinstance(recorded, bool):
        try:
            a, b = float(recorded), float(observed)
            same = math.isclose(a, b, rel_tol=rtol, abs_tol=1.5e-6 if isinstance(recorded, str) else 1e-12)
        except (TypeError, ValueError):
            pass
    return [] if same else [f"{where}: {observed!r}, recorded {recorded!r}"]


def check(name: str, observed: dict[str, Any]) -> None:
    """Compare run ``name`` with the recorded one (or record it under REFERS_UPDATE_GOLDEN=1)."""
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    here = environment()
    if UPDATE:
        golden[name] = {"environment": here, **observed}
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    assert name in golden, f"no recorded values for {name} in {GOLDEN}: record them with REFERS_UPDATE_GOLDEN=1"
    recorded = dict(golden[name])
    then = recorded.pop("environment")
    if then == here:  # the same kernels: every float and every hash exactly
        found = differences(recorded, observed)
        assert not found, f"{name} changed ({len(found)} differences from {GOLDEN.name}):\n" + "\n".join(found[:20])
        return
    found = differences(continuous(recorded), continuous(observed), RTOL)
    assert not found, f"{name}: beyond rtol {RTOL} of {GOLDEN.name} (recorded under {then}):\n" + "\n".join(found[:20])
    pytest.skip(f"{name}: losses, learning rates and metrics match within rtol {RTOL}; the weight hashes and the "
                f"retrieval recalls are not compared because they were recorded under {then} and this is {here} "
                "(other kernels, other last bits)")


def continuous(run: dict[str, Any]) -> dict[str, Any]:
    """A run without what other kernels may change by more than rounding: the weight hashes, and the
    retrieval recalls (ranks of a handful of near-tied similarities flip with the last bits)."""
    out = {k: v for k, v in run.items() if k != "sha256"}
    if isinstance(out.get("scalars"), dict):
        out["scalars"] = {tag: values for tag, values in out["scalars"].items() if "_R@" not in tag}
    return out


def test_differences_finds_every_change():
    recorded = {"scalars": {"train/loss": [[1, 0.5], [2, 0.25]]}, "metrics_csv": [{"lr": "0.0225"}], "sha256": {"a": "0f"}}
    assert differences(recorded, json.loads(json.dumps(recorded))) == []
    changed = {"scalars": {"train/loss": [[1, 0.5], [2, 0.25 * (1 + 1e-7)]]}, "metrics_csv": [{"lr": "0.0225"}], "sha256": {"a": "1f"}}
    assert differences(recorded, changed) == [f"/scalars/train/loss[1][1]: {0.25 * (1 + 1e-7)!r}, recorded 0.25", "/sha256/a: '1f', recorded '0f'"]
    assert differences(recorded["scalars"], changed["scalars"], RTOL) == []
    assert differences(recorded["scalars"], {"train/loss": [[1, 0.5], [2, 0.2500051]]}, RTOL) != []
    assert differences(recorded["scalars"], {"train/loss": [[1, 0.5]]}, RTOL) == ["/train/loss: 1 entries, recorded 2"]
    assert differences(recorded["metrics_csv"], [{"lr": "0.0225"}, {"lr": "0"}]) != []
    assert differences({"lr": "0.690150"}, {"lr": "0.690151"}, RTOL) == []  # the CSV's rounding
    assert differences({"steps": [1, 2]}, {"steps": [1.0, 2]}) != []  # exactly: a float step is a change


# ----------------------------------------------------------------------------------------------
# The runs.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Any]:
    """The synthetic studies (pre-training) and Shenzhen-format lists (fine-tuning) all four runs share."""
    root = tmp_path_factory.mktemp("golden")
    make_studies(root / "studies")
    # Fixed tokenizers where the pre-training runs look for them (see pretrain_args), so that the runs do
    # not train their own: trained on the fly from the same reports, the WordPiece vocabulary's ids differ
    # from one process to the next (seen with tokenizers 0.23.3), and so would every loss.
    shutil.copytree(TOKENIZERS, root / "pretrain" / "tok")
    return {"root": root, "studies": root / "studies", "datasets": {DATASET: make_dataset(root / "shenzhen", DATASET)}}


@pytest.fixture
def one_thread():
    """Single-threaded kernels in this process, like the children (OMP_NUM_THREADS=1): the same reduction
    order on every machine, whatever its core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_pretrain(data: dict[str, Any], run: Path) -> None:
    """``refers pretrain`` in this process; ``run`` lies under the shared folder whose ``tok/`` holds the tokenizers."""
    from refers.cli.pretrain import main

    assert main(pretrain_args(data["studies"], run, iterations=PRETRAIN_ITERATIONS)) == 0


def torchrun(args: list[str], cwd: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "refers", *args]
    done = subprocess.run(command, cwd=cwd, env=env_for_children(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def finetune_args(data: dict[str, Any], out: Path) -> list[str]:
    return [*finetune_common(data["datasets"], DATASET, out), "--stage", "train", "--num_classes", "1", "--init", "scratch",
            "--device", "cpu", "--fp32", *FINETUNE_STEPS]


def test_pretrain_one_process(data, one_thread):
    run = data["root"] / "pretrain" / "one"
    run_pretrain(data, run)
    check("pretrain_1proc", pretrain_record(run))


@pytest.mark.slow
def test_pretrain_two_processes(data):
    run = data["root"] / "pretrain" / "two"
    torchrun(["pretrain", *pretrain_args(data["studies"], run, iterations=PRETRAIN_ITERATIONS)], data["root"])
    check("pretrain_2proc", pretrain_record(run))


def test_finetune_one_process_accumulating(data, one_thread):
    from refers.cli.finetune import main

    out = data["root"] / "finetune" / "one"
    assert main(finetune_args(data, out)) == 0
    check("finetune_1proc_accum2", finetune_record(out))


@pytest.mark.slow
def test_finetune_two_processes_accumulating(data):
    out = data["root"] / "finetune" / "two"
    torchrun(["finetune", *finetune_args(data, out)], data["root"])
    check("finetune_2proc_accum2", finetune_record(out))
