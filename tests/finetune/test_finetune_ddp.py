"""Two-process (gloo, CPU) checks: evaluation scores every image exactly once in list order, ranks
take the same early-stopping decisions, and the original README command runs under
``python3 -m torch.distributed.launch --nproc_per_node=2``, followed by ``test.py``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.finetune_helpers import make_dataset

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from refers.engine.distributed import init_distributed
    from refers.finetune.data import DataSetup, build_dataset
    from refers.finetune.early_stopping import EarlyStopping, decide
    from refers.finetune.evaluate import evaluate
    from refers.engine.precision import make_precision
    from refers.models.vit import build_vit

    list_file, data_root, out = sys.argv[1:4]
    info = init_distributed(device="cpu")
    try:
        setup = DataSetup("Shenzhen_Tuberculosis", ("Tuberculosis",), os.path.dirname(list_file), (data_root,), 2, (1,), True)
        dataset, _ = build_dataset(setup, list_file, 32, train=False, skip_bad=False)
        torch.manual_seed(0)
        model = build_vit("ViT-nano_8", 32, num_classes=1).eval()
        result = evaluate(model, dataset, 2, info, make_precision(False, False, 0, info.device), progress=False)
        stopper = EarlyStopping(patience=1)
        aucs = [[0.6, 0.5, 0.5], [0.1, 0.9, 0.9]][info.rank]  # ranks disagree; rank 0 decides
        decisions = [vars(decide(stopper, auc, 1.0, info)) for auc in aucs]
        with open(f"{out}/rank{info.rank}.json", "w") as handle:
            json.dump({"indices": result.indices.tolist(), "probs": result.probs[:, 0].tolist(), "loss": result.loss,
                       "decisions": decisions}, handle)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)
""")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def env_for_children() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.fixture
def shenzhen(finetune_datasets) -> tuple[Path, Path]:
    """The session's shared tiny Shenzhen dataset (tests/shared_data.py); read-only."""
    return finetune_datasets["Shenzhen_Tuberculosis"]


@pytest.mark.slow
def test_ddp_eval_exactly_once_and_shared_stopping(shenzhen, tmp_path):
    lists, data = shenzhen
    odd = tmp_path / "lists" / "test.txt"  # 11 images: the shards differ in size, nothing is padded
    odd.parent.mkdir()
    odd.write_text("\n".join((lists / "test.txt").read_text().splitlines()[:11]) + "\n")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    workers = [
        subprocess.Popen([sys.executable, str(script), str(odd), str(data), str(tmp_path)], cwd=tmp_path,
                         env={**env_for_children(), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=180)[0] for w in workers]
    finally:
        for worker in workers:  # never leave a hung rank behind
            if worker.poll() is None:
                worker.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    # The same single-process evaluation, for reference.
    from refers.engine.distributed import DistInfo
    from refers.finetune.data import DataSetup, build_dataset
    from refers.finetune.evaluate import evaluate
    from refers.engine.precision import make_precision
    from refers.models.vit import build_vit

    setup = DataSetup("Shenzhen_Tuberculosis", ("Tuberculosis",), odd.parent, (data,), 2, (1,), True)
    dataset, _ = build_dataset(setup, odd, 32, train=False, skip_bad=False)
    torch.manual_seed(0)
    model = build_vit("ViT-nano_8", 32, num_classes=1).eval()
    single = evaluate(model, dataset, 4, DistInfo(), make_precision(False, False, 0, torch.device("cpu")), progress=False)
    for rank in ranks:
        assert rank["indices"] == list(range(11))  # every image once, in list order, on every rank
        assert np.allclose(rank["probs"], single.probs[:, 0], atol=1e-6)
        assert rank["loss"] == pytest.approx(single.loss, abs=1e-6)
    assert ranks[0]["decisions"] == ranks[1]["decisions"]
    assert [d["stop"] for d in ranks[0]["decisions"]] == [False, False, True]  # counter 2 > patience 1


def original_checkpoint(path: Path) -> None:
    """A released-style REFERS checkpoint: flat ``transformer.*`` keys, fp16, with a head."""
    from refers.models.vit import build_vit
    from refers.models.weights import timm_to_original

    torch.manual_seed(3)
    state = timm_to_original(build_vit("ViT-nano_8", 32, num_classes=1).state_dict())
    path.parent.mkdir(parents=True)
    torch.save({k: v.half() for k, v in state.items()}, path)


@pytest.mark.slow
def test_readme_command_under_distributed_launch(shenzhen, tmp_path):
    """The COVID README command verbatim (steps, batch sizes, image size and model scaled down) then test.py."""
    lists, data = make_dataset(tmp_path / "covid", "COVID-19_Image_Data_Collection")
    original_checkpoint(tmp_path / "Fine-tune" / "checkpoint" / "refers_checkpoint.pth")
    run_dir = tmp_path / "Fine-tune" / "COVID-19_Image_Data_Collection"
    run_dir.mkdir()
    script = ROOT / "Fine-tune" / "COVID-19_Image_Data_Collection"
    command = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "--master_addr", "127.0.0.2",
               "--master_port", str(free_port("127.0.0.2")), str(script / "train.py"),
               "--name", "caption_100", "--stage", "train", "--model_type", "ViT-nano_8", "--num_classes", "1",
               "--pretrained_dir", "../checkpoint/refers_checkpoint.pth", "--output_dir", "./output/", "--data_volume", "100",
               "--num_steps", "4", "--eval_batch_size", "8", "--img_size", "32", "--learning_rate", "3e-2", "--warmup_steps", "1",
               "--fp16", "--fp16_opt_level", "O2", "--train_batch_size", "8",
               "--list_dir", str(lists), "--data_root", str(data), "--num_workers", "0"]
    done = subprocess.run(command, cwd=run_dir, env=env_for_children(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "loaded 30 of 32 tensors (original REFERS/ViT-pytorch naming" in done.stderr  # the encoder, not the head
    assert (run_dir / "output" / "caption_100_bestauc_checkpoint.bin").is_file()
    rows = (run_dir / "logs" / "caption_100" / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["3", "4"]  # each epoch (24 images / 8) and after the last step

    # test.py with no arguments but where to put results (the rest comes from the checkpoint's metadata).
    done = subprocess.run([sys.executable, str(script / "test.py"), "--results_dir", str(tmp_path / "results")],
                          cwd=run_dir, env=env_for_children(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = tmp_path / "results" / "COVID-19_Image_Data_Collection" / "data100" / "REFERS" / "seed42"
    lines = (folder / "COVID-19.txt").read_text().splitlines()
    expected = [line.split()[2] for line in (lists / "test.txt").read_text().splitlines()]
    assert [line.split()[0] for line in lines] == [f"{float(v):.1f}" for v in expected]
    assert "SYNTHETIC" in (folder / "summary.txt").read_text()
