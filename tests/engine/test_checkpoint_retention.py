"""Checkpoint retention: pre-training keeps the last K ``checkpoint_{N}.pth`` (plus milestones), never the
one it resumed from, and only after the new one is on disk; fine-tuning keeps its own few files.

The rule is checked against a brute-force oracle over many settings, then end to end through
``refers pretrain`` (the tiny CPU model of tests/cli/test_pretrain_cli.py, 20 iterations).
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import pytest
import torch

from refers.config import ConfigError, load_config
from refers.engine import checkpoint_retention as retention
from refers.engine.checkpoint_retention import checkpoints_to_delete, prune_checkpoints
from tests.cli.test_pretrain_cli import make_studies, pretrain_args


def oracle_deleted(iterations: set[int], keep_last: int, keep_every: int, current: int, protected: set[int]) -> set[int]:
    """Brute force, file by file: is it deleted?"""
    deleted = set()
    for i in iterations:
        newer = sum(1 for j in iterations if i < j <= current)  # kept ones newer than i, up to the one just saved
        kept = (keep_last == 0 or i > current or i == current or i in protected or newer < keep_last
                or (keep_every > 0 and i % keep_every == 0))
        if not kept:
            deleted.add(i)
    return deleted


def test_rule_matches_the_brute_force_oracle():
    rng = random.Random(0)
    cases = 0
    for keep_last in range(0, 6):
        for keep_every in range(0, 8):
            for _ in range(60):
                iterations = set(rng.sample(range(1, 41), rng.randint(0, 15)))
                current = rng.choice(sorted(iterations)) if iterations and rng.random() < 0.7 else rng.randint(1, 45)
                iterations.add(current)
                protected = set(rng.sample(sorted(iterations), rng.randint(0, min(2, len(iterations)))))
                got = checkpoints_to_delete(iterations, keep_last=keep_last, keep_every=keep_every, current=current,
                                            protected=protected)
                assert got == sorted(got) and len(set(got)) == len(got)
                assert set(got) == oracle_deleted(iterations, keep_last, keep_every, current, protected), (
                    sorted(iterations), keep_last, keep_every, current, protected)
                cases += 1
    assert cases == 6 * 8 * 60


def saves_of(total: int, every: int) -> list[int]:
    """The iterations a run checkpoints at: every ``every``, and the last one."""
    return sorted({i for i in range(every, total + 1, every)} | {total})


@pytest.mark.parametrize("every", [1, 2, 3])
def test_pruning_after_each_save_leaves_what_the_rule_says_at_the_end(tmp_path, monkeypatch, every):
    """Incremental pruning on real files == the closed form: the last K saves, the multiples of N, the resumed-from one."""
    monkeypatch.setattr(retention, "_flush_to_disk", lambda path: None)  # thousands of fsyncs: tested below
    for keep_last in range(0, 5):
        for keep_every in range(0, 6):
            for resume_at in (None, 2 * every, 3 * every):
                folder = tmp_path / f"{keep_last}_{keep_every}_{resume_at}"
                folder.mkdir()
                resumed_from = None
                if resume_at is not None:  # an earlier run's checkpoint, copied in and resumed from
                    resumed_from = folder / f"checkpoint_{resume_at}.pth"
                    resumed_from.write_bytes(b"old run")
                saves = [s for s in saves_of(13, every) if resume_at is None or s > resume_at]
                for iteration in saves:
                    saved = folder / f"checkpoint_{iteration}.pth"
                    saved.write_bytes(b"state")
                    prune_checkpoints(folder, keep_last, keep_every, saved=saved, protect=[resumed_from])
                written = set(saves) | ({resume_at} if resume_at else set())
                expected = written if keep_last == 0 else (
                    set(saves[-keep_last:]) | {s for s in written if keep_every and s % keep_every == 0}
                    | ({resume_at} if resume_at else set())
                )
                left = {int(p.stem.split("_")[1]) for p in folder.iterdir()}
                assert left == expected, (keep_last, keep_every, resume_at, sorted(left))


def test_only_checkpoint_files_are_candidates_and_deletions_are_logged(tmp_path, caplog):
    for i in (2, 4, 6, 8, 10):
        (tmp_path / f"checkpoint_{i}.pth").write_bytes(b"x")
    bystanders = ["refers_checkpoint.pth", "config.yaml", ".checkpoint_2.pth.k3j2.tmp", "checkpoint_2.pth.bak",
                  "checkpoint_x.pth", "checkpoint_-1.pth", "my_checkpoint_2.pth", "run_last.pth"]
    for name in bystanders:
        (tmp_path / name).write_bytes(b"keep me")
    (tmp_path / "checkpoint_1.pth").mkdir()  # a folder with a checkpoint's name is not a checkpoint
    (tmp_path / "checkpoint_12.pth").write_bytes(b"a later run's")  # after the one just saved: left alone
    with caplog.at_level(logging.INFO, logger="refers.pretrain"):
        deleted = prune_checkpoints(tmp_path, 2, 0, saved=tmp_path / "checkpoint_10.pth",
                                    protect=[Path("does/not/exist.pth"), None])
    assert deleted == [tmp_path / f"checkpoint_{i}.pth" for i in (2, 4, 6)]
    remaining = {p.name for p in tmp_path.iterdir()}
    assert remaining == {"checkpoint_8.pth", "checkpoint_10.pth", "checkpoint_12.pth", "checkpoint_1.pth", *bystanders}
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert messages == [f"retention: deleted checkpoint_{i}.pth (keeping the last 2 checkpoints)" for i in (2, 4, 6)]


def test_the_new_checkpoint_is_flushed_to_disk_before_anything_is_deleted(tmp_path, monkeypatch):
    for i in (1, 2, 3):
        (tmp_path / f"checkpoint_{i}.pth").write_bytes(b"x")
    events: list[str] = []
    real_flush, real_unlink = retention._flush_to_disk, Path.unlink
    monkeypatch.setattr(retention, "_flush_to_disk", lambda path: (events.append(f"flush {path.name}"), real_flush(path)))
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: (events.append(f"delete {self.name}"), real_unlink(self, *a, **k)))
    prune_checkpoints(tmp_path, 1, 0, saved=tmp_path / "checkpoint_3.pth")
    assert events == ["flush checkpoint_3.pth", "delete checkpoint_1.pth", "delete checkpoint_2.pth"]
    events.clear()
    prune_checkpoints(tmp_path, 1, 0, saved=tmp_path / "checkpoint_3.pth")
    assert events == []  # nothing to delete: no flush either


def test_protection_matches_a_relative_path_and_nothing_is_deleted_for_a_foreign_saved_file(tmp_path, monkeypatch):
    for i in (1, 2, 3, 4):
        (tmp_path / f"checkpoint_{i}.pth").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert prune_checkpoints(tmp_path, 1, 0, saved=tmp_path / "checkpoint_4.pth", protect=["checkpoint_2.pth"]) == [
        tmp_path / "checkpoint_1.pth", tmp_path / "checkpoint_3.pth"]
    with pytest.raises(ValueError, match="not a checkpoint"):
        prune_checkpoints(tmp_path, 1, 0, saved=tmp_path / "elsewhere.pth")
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint_2.pth", "checkpoint_4.pth"}


def test_a_file_that_cannot_be_deleted_is_a_warning_not_a_crash(tmp_path, monkeypatch, caplog):
    for i in (1, 2, 3):
        (tmp_path / f"checkpoint_{i}.pth").write_bytes(b"x")
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self.name == "checkpoint_1.pth":
            raise PermissionError("read-only")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    with caplog.at_level(logging.INFO, logger="refers.pretrain"):
        assert prune_checkpoints(tmp_path, 1, 0, saved=tmp_path / "checkpoint_3.pth") == [tmp_path / "checkpoint_2.pth"]
    assert any(r.levelno == logging.WARNING and "could not delete" in r.getMessage() for r in caplog.records)
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint_1.pth", "checkpoint_3.pth"}


def test_config_keys_defaults_and_range():
    cfg = load_config(None)
    assert (cfg.CHECKPOINT.KEEP_LAST, cfg.CHECKPOINT.KEEP_EVERY) == (3, 0)
    cfg = load_config(None, ["CHECKPOINT.KEEP_LAST", "0", "CHECKPOINT.KEEP_EVERY", "10"])
    assert (cfg.CHECKPOINT.KEEP_LAST, cfg.CHECKPOINT.KEEP_EVERY) == (0, 10)
    for key, value, message in (("CHECKPOINT.KEEP_LAST", "-1", "must be >= 0"), ("CHECKPOINT.KEEP_EVERY", "-3", "must be >= 0"),
                                ("CHECKPOINT.KEEP_LAST", "2.5", "must be int"), ("CHECKPOINT.KEEP_EVRY", "1", "did you mean")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [key, value])
    with pytest.raises(ValueError):
        checkpoints_to_delete([1], keep_last=-1, keep_every=0, current=1)


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Studies, and one folder whose ``tok`` the runs share (the tokenizers are trained once)."""
    root = tmp_path_factory.mktemp("retention")
    make_studies(root / "studies", n_train=8, n_val=2)  # few: every checkpoint validates
    return root


# Smaller still than tests/cli/test_pretrain_cli.py's runs: retention needs many checkpoints, not a big model.
CHEAPER = ["--config-override", "OPTIM.BATCH_SIZE", "2", "DATA.NUM_VIEWS", "1", "DATA.MAX_CAPTION_LENGTH", "16",
           "DATA.BERT_MAX_LENGTH", "16"]


def pretrain(work: Path, name: str, *extra: str, iterations: int = 20) -> int:
    from refers.cli.pretrain import main

    return main(pretrain_args(work / "studies", work / name, "--no-export", *CHEAPER, *extra, iterations=iterations))


def kept(folder: Path) -> list[str]:
    return sorted((p.name for p in folder.glob("checkpoint_*.pth")), key=lambda n: int(n[len("checkpoint_"):-4]))


@pytest.fixture(scope="module")
def straight(work) -> Path:
    """20 iterations, a checkpoint every 2, the key saying keep all and the flag (which wins) saying 3."""
    assert pretrain(work, "straight", "--config-override", "CHECKPOINT.KEEP_LAST", "0", "--keep-checkpoints", "3") == 0
    return work / "straight"


@pytest.mark.slow
def test_keep_three_leaves_the_last_three(straight):
    assert kept(straight) == ["checkpoint_16.pth", "checkpoint_18.pth", "checkpoint_20.pth"]
    log = (straight / "log.txt").read_text()
    assert [f"retention: deleted checkpoint_{i}.pth" in log for i in range(2, 16, 2)] == [True] * 7
    assert not list(straight.glob(".checkpoint_*"))  # no temporary file left either


@pytest.mark.slow
def test_resume_from_the_oldest_kept_is_bit_exact_and_keeps_it(work, straight):
    """Resume from checkpoint_16 (copied into a new run folder) with --keep-checkpoints 1: the run
    ends on the straight run's weights bit for bit, and checkpoint_16 survives although K = 1."""
    folder = work / "resumed"
    folder.mkdir()
    shutil.copy2(straight / "checkpoint_16.pth", folder / "checkpoint_16.pth")
    assert pretrain(work, "resumed", "--resume-from", str(folder / "checkpoint_16.pth"), "--keep-checkpoints", "1") == 0
    assert kept(folder) == ["checkpoint_16.pth", "checkpoint_20.pth"]
    assert "resumed from" in (folder / "log.txt").read_text()
    a = torch.load(straight / "checkpoint_20.pth", weights_only=True)
    b = torch.load(folder / "checkpoint_20.pth", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    states = [[s for _, s in sorted(x["optimizer"]["state"].items())] for x in (a, b)]
    assert len(states[0]) == len(states[1]) > 0
    for sa, sb in zip(*states):  # the optimiser's moments and Lookahead's slow weights too
        assert sa.keys() == sb.keys() and "lookahead_slow_buff" in sa and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["data"] == b["data"] and a["iteration"] == b["iteration"] == 20
    start = torch.load(folder / "checkpoint_16.pth", weights_only=True)["model"]
    assert any(not torch.equal(start[k], a["model"][k]) for k in start)  # iterations 17-20 trained


@pytest.mark.slow
def test_keep_zero_keeps_all(work):
    assert pretrain(work, "all", "--keep-checkpoints", "0", iterations=10) == 0  # 5 checkpoints: 2 more than the default keeps
    assert kept(work / "all") == [f"checkpoint_{i}.pth" for i in range(2, 11, 2)]
    assert "retention: deleted" not in (work / "all" / "log.txt").read_text()


@pytest.mark.slow
def test_keep_every_keeps_milestones_besides_the_last_three(work):
    assert pretrain(work, "milestones", "--keep-every", "10") == 0  # default K = 3
    assert kept(work / "milestones") == ["checkpoint_10.pth", "checkpoint_16.pth", "checkpoint_18.pth", "checkpoint_20.pth"]
    assert "retention: deleted checkpoint_12.pth (keeping the last 3 checkpoints and every multiple of 10)" in (
        work / "milestones" / "log.txt").read_text()


@pytest.mark.parametrize("bad, message", [
    (["--keep-checkpoints", "-1"], "--keep-checkpoints must be a non-negative integer"),
    (["--keep-every", "-2"], "--keep-every must be a non-negative integer"),
    (["--config-override", "CHECKPOINT.KEEP_EVERY", "-1"], "CHECKPOINT.KEEP_EVERY must be >= 0"),
    (["--config-override", "CHECKPOINT.KEEP_LAST", "1.5"], "CHECKPOINT.KEEP_LAST must be int"),
])
def test_bad_retention_values_exit_2_with_one_line(work, tmp_path, capsys, bad, message):
    from refers.cli.pretrain import main

    assert main(pretrain_args(work / "studies", tmp_path / "run", *bad)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- fine-tuning
def test_finetuning_keeps_its_last_state_and_best_files(tmp_path):
    """Fine-tuning writes one ``{name}_last.pth`` (overwritten at each validation) and its two best
    checkpoints; nothing of another run in the same folder is touched (no pre-training retention there)."""
    from refers.cli.finetune import main as finetune_main
    from tests.finetune_helpers import make_dataset

    lists, data = make_dataset(tmp_path / "data", "Shenzhen_Tuberculosis")
    out = tmp_path / "output"
    out.mkdir()
    for name in ("checkpoint_2.pth", "other_last.pth", "other_bestauc_checkpoint.bin"):
        (out / name).write_bytes(b"someone else's")
    args = ["--dataset", "Shenzhen_Tuberculosis", "--list_dir", str(lists), "--data_root", str(data),
            "--output_dir", str(out), "--log_dir", str(tmp_path / "logs"), "--results_dir", str(tmp_path / "results"),
            "--model_type", "ViT-nano_8", "--img_size", "32", "--train_batch_size", "8", "--eval_batch_size", "16",
            "--num_workers", "0", "--warmup_steps", "1", "--learning_rate", "0.03", "--init", "scratch"]
    assert finetune_main(["--name", "run", *args, "--num_steps", "6", "--eval_every", "2"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"run_last.pth", "run_bestauc_checkpoint.bin", "run_bestauc_checkpoint.bin.json",
                     "run_bestloss_checkpoint.bin", "run_bestloss_checkpoint.bin.json",
                     "SYNTHETIC.txt", "checkpoint_2.pth", "other_last.pth", "other_bestauc_checkpoint.bin"}
    assert torch.load(out / "run_last.pth", weights_only=True)["step"] == 6  # the one state, of the last validation
    assert all((out / n).read_bytes() == b"someone else's" for n in ("checkpoint_2.pth", "other_last.pth"))


def test_documented_checkpoint_size_is_the_recipe_models():
    """The module docstring's figure: 3 float32 copies (weights, momentum, Lookahead's slow weights) of the recipe model."""
    from refers.models.refers_model import build_refers_model

    root = Path(__file__).resolve().parents[2]
    model = build_refers_model(load_config(root / "configs" / "pretrain" / "refers_vitb16.yaml"), device="meta")
    params = list(model.parameters())  # tied weights once, as torch.save stores them
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params)
    count = sum(p.numel() for p in params)
    assert count == 224_998_163
    assert not any(k in model.state_dict() for k, _ in model.named_buffers())  # no stored buffers
    doc = " ".join(retention.__doc__.split())
    assert f"{count:,} parameters" in doc and f"3 x {count:,} x 4 = {3 * count * 4:,} bytes" in doc
