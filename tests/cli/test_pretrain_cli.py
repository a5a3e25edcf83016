"""Pre-training commands end to end: `pretrain_refers.py` / `refers pretrain`, `refers export`,
`refers generate`, and a 2-process gloo run under torchrun.

The data is a handful of tiny studies in the original caption-list format
(``{split}_img_caption_patients.txt``: study folder <TAB> report), made here in a second; the
model is the tiny CPU preset shrunk further (ViT-nano at 32 px, 1-layer BERT).

Run as a script (``python -m torch.distributed.run --nproc_per_node 2 tests/cli/test_pretrain_cli.py
worker DIR``), this file is the torchrun worker of :func:`test_torchrun_two_processes`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
SECRET_WORD = "zebrafinding"  # appears in every report, must not appear in logs without --log-text


def make_studies(root: Path, n_train: int = 12, n_val: int = 6) -> None:
    """Tiny studies (1-3 PNG views, 40 px) whose reports say where a bright blob is."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "lists").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(count):
            folder = f"files/p10/p1000{i:04d}/s5{split == 'val'}{i:06d}"
            side = ["left", "right"][i % 2]
            for view in range(1 + i % 3):
                pixels = rng.integers(0, 80, (40, 40)).astype(np.uint8)
                pixels[10:20, (5 if side == "left" else 25):(15 if side == "left" else 35)] = 230
                (root / "images" / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / "images" / folder / f"view{view}.png")
            lines.append(f"{folder}/\tFINDINGS: {SECRET_WORD} opacity in the {side} lung. no effusion.")
        (root / "lists" / f"{split}_img_caption_patients.txt").write_text("\n".join(lines) + "\n")
    (root / "images" / "SYNTHETIC.txt").write_text("synthetic test studies\n")


def overrides(root: Path, tok: Path, iterations: int = 4, batch: int = 4) -> list[str]:
    return [
        "DATA.IMAGE_ROOT", str(root / "images"),
        "DATA.TRAIN_LIST", str(root / "lists" / "train_img_caption_patients.txt"),
        "DATA.VAL_LIST", str(root / "lists" / "val_img_caption_patients.txt"),
        "DATA.TOKENIZER_MODEL", str(tok / "reports_bpe.model"),
        "DATA.BERT_TOKENIZER_DIR", str(tok / "wordpiece"),
        "DATA.IMAGE_CROP_SIZE", "32", "DATA.IMAGE_MIN_SIDE", "32", "DATA.VOCAB_SIZE", "128",
        "MODEL.VISUAL.NAME", "ViT-nano_8",
        "MODEL.TEXTUAL.NAME", "transformer_postnorm::L1_H32_A2_F64",
        "MODEL.TEXTUAL.BERT_VOCAB_SIZE", "120", "MODEL.TEXTUAL.BERT_LAYERS", "1", "MODEL.TEXTUAL.BERT_HIDDEN", "32",
        "MODEL.TEXTUAL.BERT_HEADS", "2", "MODEL.TEXTUAL.BERT_INTERMEDIATE", "64",
        "OPTIM.BATCH_SIZE", str(batch), "OPTIM.NUM_ITERATIONS", str(iterations), "OPTIM.WARMUP_STEPS", "1",
    ]


def pretrain_args(root: Path, run: Path, *extra: str, iterations: int = 4, gpus: int = 0) -> list[str]:
    """Arguments of a run in folder ``run``; its tokenizers go to ``run``'s parent (trained on first use)."""
    tok = run.parent / "tok"
    return ["--config", str(TINY), "--config-override", *overrides(root, tok, iterations), "--serialization-dir", str(run),
            "--num-gpus-per-machine", str(gpus), "--checkpoint-every", "2", "--log-every", "1", "--no-progress", *extra]


@pytest.fixture
def studies(pretrain_studies) -> Path:
    """The session's shared studies made by :func:`make_studies` (tests/shared_data.py); read-only."""
    return pretrain_studies


# ----------------------------------------------------------------------------------------------
def test_asking_for_missing_gpus_exits_2_and_says_what_to_pass(studies, tmp_path, capsys, monkeypatch):
    from refers.cli.pretrain import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on GPU machines too
    assert main(pretrain_args(studies, tmp_path / "run", gpus=2)) == 2
    assert "--num-gpus-per-machine 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # stopped before doing anything


def test_missing_bert_folder_and_bad_override_exit_2(studies, tmp_path, capsys):
    from refers.cli.pretrain import main

    args = pretrain_args(studies, tmp_path)
    at = args.index("--serialization-dir")
    assert main(args[:at] + ["MODEL.TEXTUAL.BERT_DIR", str(tmp_path / "no_bert")] + args[at:]) == 2
    assert "MODEL.TEXTUAL.BERT_DIR ''" in capsys.readouterr().err
    assert main(args[:at] + ["OPTIM.LRR", "1"] + args[at:]) == 2
    assert "did you mean 'OPTIM.LR'" in capsys.readouterr().err


@pytest.mark.slow
def test_pretrain_resume_export_and_generate(studies, tmp_path, capsys):
    from refers.cli import main as refers_main
    from refers.cli.pretrain import main
    from refers.config import load_config
    from refers.models.vit import build_vit
    from refers.models.weights import load_encoder_weights

    run = tmp_path / "run"
    assert main(pretrain_args(studies, run)) == 0
    err = capsys.readouterr().err
    assert "training the report tokenizer" in err and "training the BERT tokenizer" in err
    assert (tmp_path / "tok" / "reports_bpe.model").is_file()
    names = {p.name for p in run.iterdir()}
    assert {"checkpoint_2.pth", "checkpoint_4.pth", "refers_checkpoint.pth", "config.yaml", "command.txt",
            "run_info.json", "log.txt", "SYNTHETIC.txt", "tensorboard"} <= names
    saved = load_config(run / "config.yaml")
    assert saved.OPTIM.NUM_ITERATIONS == 4 and saved.MODEL.VISUAL.NAME == "ViT-nano_8"  # overrides applied
    info = json.loads((run / "run_info.json").read_text())
    assert info["synthetic_data"] is True and torch.__version__.startswith(info["packages"]["torch"])
    assert info["git_commit"] and info["device"]["device"] == "cpu"
    log = (run / "log.txt").read_text()
    assert "iter 4/4" in log and "image_to_report_R@5" in log and "contrast_t2i" in log
    events = b"".join(p.read_bytes() for p in (run / "tensorboard").iterdir())
    assert b"val/report_to_image_R@1" in events and b"lr/bert" in events
    assert SECRET_WORD not in log and SECRET_WORD.encode() not in events

    # --resume auto continues from the latest checkpoint with a longer schedule; --log-text shows reports.
    assert main(pretrain_args(studies, run, "--resume", "auto", "--log-text", iterations=6)) == 0
    assert (run / "checkpoint_6.pth").is_file()
    log = (run / "log.txt").read_text()
    assert "resumed from" in log and "val sample | generated: " in log and SECRET_WORD in log
    state = torch.load(run / "checkpoint_6.pth", weights_only=True)
    assert state["iteration"] == 6

    # refers export: original naming, safetensors, copied where Fine-tune/ expects it.
    out = tmp_path / "enc.safetensors"
    dest = tmp_path / "Fine-tune" / "checkpoint"
    assert refers_main.main(["export", str(run / "checkpoint_6.pth"), "--out", str(out), "--format", "safetensors",
                             "--to", str(dest)]) == 0
    from safetensors.torch import load_file

    exported = load_file(str(out))
    assert all(k.startswith("transformer.") for k in exported) and "transformer.encoder.layer.1.attn.value.bias" in exported
    assert (dest / "refers_checkpoint.safetensors").is_file()
    vit = build_vit("ViT-nano_8", img_size=32)
    assert load_encoder_weights(vit, out).loaded == len(vit.state_dict())
    expected = {k[len("image_encoder."):]: v for k, v in state["model"].items() if k.startswith("image_encoder.")}
    assert all(torch.equal(vit.state_dict()[k], v) for k, v in expected.items())

    # refers generate: a report for a study folder from the fused views.
    study = next((studies / "images" / "files").glob("*/*/*"))
    capsys.readouterr()
    assert refers_main.main(["generate", "--checkpoint", str(run / "checkpoint_6.pth"), "--study", str(study),
                             "--max-length", "12"]) == 0
    text = capsys.readouterr().out
    assert "SYNTHETIC" in text and text.strip()
    assert refers_main.main(["generate", "--checkpoint", str(run / "checkpoint_6.pth"), "--study", str(study),
                             "--beam-size", "2", "--max-length", "12"]) == 0


def test_spawned_processes_get_global_ranks_across_machines(monkeypatch):
    """Machine 1 of 2, 2 GPUs each: its local rank 1 is global rank 3 (the original used the local rank)."""
    from refers.cli import pretrain
    from refers.engine import distributed

    seen = {}

    def fake_init(local_rank=None, device=None):
        seen.update({k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")})
        return distributed.DistInfo(rank=int(os.environ["RANK"]), world_size=4)

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so that what _worker sets is undone after the test
        monkeypatch.delenv(key)
    monkeypatch.setattr(distributed, "init_distributed", fake_init)
    monkeypatch.setattr(pretrain, "_train_process", lambda launch, info: 0)
    launch = {"gpus": 2, "args": {"num_machines": 2, "machine_rank": 1, "dist_url": "tcp://10.0.0.5:12345"}}
    assert pretrain._worker(1, launch) == 0
    assert seen == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "12345"}


# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_processes(studies, tmp_path):
    """Under torchrun (gloo): gathered ConVIRT negatives give the 1-process loss and gradients, and
    after DDP training steps both ranks hold identical weights."""
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, "worker", str(studies), str(run)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((run / "gather_check.json").read_text())
    assert report["loss_gap"] < 1e-5 and report["grad_gap"] < 1e-5, report
    rank0, rank1 = (torch.load(run / f"weights_rank{r}.pth", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    initial = torch.load(run / "checkpoint_2.pth", weights_only=True)["model"]
    assert any(not torch.equal(initial[k], rank0[k]) for k in rank0)  # steps 3-4 changed the weights
    assert (run / "refers_checkpoint.pth").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("weight, frozen, absent", [("LOSS.CAPTION_WEIGHT", ("decoder.", "fusion."), "caption "),
                                                    ("LOSS.CONTRAST_WEIGHT", ("bert.", "text_projection."), "contrast ")])
def test_a_loss_of_weight_zero_is_not_computed_and_trains_under_two_processes(studies, tmp_path, weight, frozen, absent):
    """The ablations caption_only / contrast_only under torchrun (gloo): DDP does not wait for the
    frozen branch, both ranks end equal, the branch's weights never move and its loss is not logged."""
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, "worker", str(studies), str(run), weight, "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(run / f"weights_rank{r}.pth", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    initial = torch.load(run / "checkpoint_2.pth", weights_only=True)["model"]
    moved = {k for k in rank0 if not torch.equal(initial[k], rank0[k])}
    assert moved and not any(k.startswith(frozen) for k in moved)
    assert any(k.startswith("image_encoder.") for k in moved)
    train_lines = [line for line in (run / "log.txt").read_text().splitlines() if " iter " in line and "val iter" not in line]
    assert train_lines and all(f" {absent}" not in line for line in train_lines)


def test_both_loss_weights_zero_is_refused():
    from refers.config import load_config
    from refers.models.refers_model import RefersModel

    cfg = load_config(TINY, ["LOSS.CAPTION_WEIGHT", "0", "LOSS.CONTRAST_WEIGHT", "0"])
    with pytest.raises(ValueError, match="both 0"):
        RefersModel(cfg)


def _gather_check(rank: int, world: int) -> dict[str, float]:
    """ConVIRT with negatives gathered from 2 processes (batch 2 each) vs one process (batch 4)."""
    import torch.distributed as dist

    from refers.losses import convirt_loss

    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    images, texts = torch.randn(4, 6), torch.randn(4, 5)
    full_loss, _, _ = convirt_loss(layer(images), texts, 0.1, 0.75)
    full_grad = torch.autograd.grad(full_loss, layer.weight)[0]
    mine = slice(rank * 2, rank * 2 + 2)
    local_loss, _, _ = convirt_loss(layer(images[mine]), texts[mine], 0.1, 0.75, gather=True)
    grad = torch.autograd.grad(local_loss, layer.weight)[0]
    dist.all_reduce(grad)  # what DDP does (sum, then / world)
    loss = local_loss.detach().clone()
    dist.all_reduce(loss)
    return {"loss_gap": abs(loss.item() / world - full_loss.item()), "grad_gap": (grad / world - full_grad).abs().max().item()}


def _worker(studies: Path, run: Path, extra: list[str]) -> None:
    import torch.distributed as dist

    from refers.cli.pretrain import main
    from refers.engine import pretrain_loop

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    check = _gather_check(rank, world)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        (run / "gather_check.json").write_text(json.dumps(check))

    original_run = pretrain_loop.PretrainRun.run

    def run_and_dump(self):  # each rank's final weights, to compare across ranks
        code = original_run(self)
        torch.save(self.model.state_dict(), run / f"weights_rank{self.info.rank}.pth")
        return code

    pretrain_loop.PretrainRun.run = run_and_dump
    code = main(pretrain_args(studies, run, "--config-override", "LOSS.GATHER_NEGATIVES", "true", *extra))
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(code)


if __name__ == "__main__" and len(sys.argv) >= 4 and sys.argv[1] == "worker":
    _worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])  # extra overrides: KEY VALUE ...
