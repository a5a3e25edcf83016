"""Pre-training engine: optimiser groups, schedule, Lookahead state, exact resume, atomic checkpoints,
non-finite stop, SIGTERM, export, retrieval metrics, sharded resumable sampling.

The loop is driven with a tiny stand-in model (a 2-layer ViT at 16 px and a bag-of-words "BERT")
that has the interface of the REFERS model, so each run takes a second or two.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from refers.config import load_config
from refers.engine import train_state as ts
from refers.engine.distributed import DistInfo
from refers.engine.optim import OptimSettings, build_optimizer, build_scheduler, parameter_groups
from refers.engine.pretrain_loop import EXPORT_NAME, LoopOptions, TrainParts, run_pretraining
from refers.engine.sampling import ResumableBatchSampler
from refers.eval.retrieval import retrieval_recall
from refers.losses import convirt_loss
from refers.models.vit import build_vit

SIZE, VIEWS, WORDS = 16, 3, 24


class ToyStudies(Dataset):
    """Deterministic studies plus augmentation noise drawn from torch's global generator."""

    def __init__(self, n: int = 24):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        fixed = torch.Generator().manual_seed(index)
        images = torch.randn(VIEWS, 3, SIZE, SIZE, generator=fixed) + 0.3 * torch.randn(VIEWS, 3, SIZE, SIZE)
        ids = torch.randint(5, WORDS, (6,), generator=fixed)
        mask = torch.ones(6, dtype=torch.long)
        return {"images": images, "caption_ids": ids, "caption_mask": mask.bool(), "bert_input_ids": ids,
                "bert_attention_mask": mask, "study_id": str(index)}


def toy_collate(items: list[dict]) -> dict:
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0] if k != "study_id"}
    batch["study_ids"] = [item["study_id"] for item in items]
    return batch


class ToyModel(nn.Module):
    """The REFERS model interface: ``image_encoder`` (timm ViT), ``bert.*``, ConVIRT on CLS tokens."""

    def __init__(self, nan_at_call: int | None = None, signal_at_call: int | None = None):
        super().__init__()
        self.image_encoder = build_vit("ViT-nano_8", img_size=SIZE, dropout=0.1)
        self.bert = nn.ModuleDict({"embeddings": nn.Embedding(WORDS, 16), "LayerNorm": nn.LayerNorm(16)})
        self.text_projection = nn.Linear(16, VIEWS * self.image_encoder.embed_dim)
        self.nan_at_call, self.signal_at_call, self.calls = nan_at_call, signal_at_call, 0

    def _cls(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.image_encoder.forward_features(images.flatten(0, 1))
        return tokens[:, 0].reshape(images.shape[0], -1)

    def _text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = (self.bert["embeddings"](ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.text_projection(self.bert["LayerNorm"](pooled))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._cls(images), dim=-1)

    def encode_reports(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._text(ids, mask), dim=-1)

    def forward(self, batch: dict) -> dict:
        self.calls += 1 if self.training else 0
        if self.training and self.calls == self.signal_at_call:
            os.kill(os.getpid(), signal.SIGTERM)
        loss, i2t, t2i = convirt_loss(self._cls(batch["images"]), self._text(batch["bert_input_ids"], batch["bert_attention_mask"]))
        if self.training and self.calls == self.nan_at_call:
            loss = loss * float("nan")
        return {"loss": loss, "components": {"contrast_i2t": i2t.detach(), "contrast_t2i": t2i.detach()}}

    def generate(self, images: torch.Tensor, max_length: int = 10, beam_size: int = 1) -> list[list[int]]:
        return [[5, 6] for _ in range(images.shape[0])]


def toy_config(iterations: int = 8, batch: int = 4, **extra: str):
    overrides = ["OPTIM.NUM_ITERATIONS", str(iterations), "OPTIM.WARMUP_STEPS", "2", "OPTIM.BATCH_SIZE", str(batch),
                 "OPTIM.LR", "0.05", "OPTIM.BERT_LR", "0.01", "OPTIM.LOOKAHEAD.STEPS", "3", "DATA.NUM_VIEWS", str(VIEWS)]
    for key, value in extra.items():
        overrides += [key.replace("__", "."), value]
    return load_config(None, overrides)


def toy_parts(**model_kwargs):
    def build(cfg, device):
        return TrainParts(model=ToyModel(**model_kwargs), train_dataset=ToyStudies(24), val_dataset=ToyStudies(10),
                          collate_fn=toy_collate, decode=lambda ids: " ".join(map(str, ids)))
    return build


def run(folder: Path, cfg, resume: Path | None = None, workers: int = 0, every: int = 4, log_text: bool = False,
        **model_kwargs) -> int:
    options = LoopOptions(serialization_dir=folder, checkpoint_every=every, log_every=2, cpu_workers=workers,
                          resume_from=resume, progress=False, log_text=log_text)
    return run_pretraining(cfg, options, DistInfo(), toy_parts(**model_kwargs))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------
def test_parameter_groups_exclude_norm_and_bias_case_insensitively():
    model = ToyModel()
    groups = parameter_groups(model.named_parameters(), lr=0.1, bert_lr=0.01, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert "bert.LayerNorm.weight" in members["bert_no_decay"]  # capital N: still no decay
    assert "bert.embeddings.weight" in members["bert"]
    assert "image_encoder.blocks.0.attn.qkv.weight" in members["main"]
    assert {"image_encoder.norm.weight", "text_projection.bias"} <= members["main_no_decay"]
    assert sum(len(m) for m in members.values()) == len(list(model.parameters()))
    for name, group in by_name.items():
        assert group["weight_decay"] == (0.0 if name.endswith("no_decay") else 1e-4)
        assert group["lr"] == (0.01 if name.startswith("bert") else 0.1)
        for param_name in members[name]:
            assert name.endswith("no_decay") == any(w in param_name.lower() for w in ("norm", "bias"))


def test_warmup_cosine_schedule_shape():
    param = nn.Parameter(torch.zeros(1))
    settings = OptimSettings(lr=1.0, warmup_steps=10, num_iterations=110, use_lookahead=True)
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, settings)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    for step in (0, 5, 10, 35, 60, 85, 110):
        expected = step / 10 if step < 10 else 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
        assert lrs[step] == pytest.approx(expected, abs=1e-9)
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_lookahead_slow_weights_are_in_the_state_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    settings = OptimSettings(lr=0.1, weight_decay=0.0, lookahead_k=5, lookahead_alpha=0.5)
    optimizer = build_optimizer(model, settings)
    data = torch.randn(8, 4)

    def step(m, opt):
        opt.zero_grad()
        m(data).pow(2).sum().backward()
        opt.step()

    # The oracle: the inner optimiser alone (SGD, momentum 0.9), from the same start, on a copy.
    reference = nn.Linear(4, 2)
    reference.load_state_dict(model.state_dict())
    plain = torch.optim.SGD(reference.parameters(), lr=settings.lr, momentum=settings.momentum)
    start = model.weight.detach().clone()
    for _ in range(5):
        step(model, optimizer)
        step(reference, plain)
    # At step k the slow weights are initialised from the fast ones at that step (timm's Lookahead),
    # so the first sync moves nothing: after k steps the weights are exactly k plain SGD steps.
    slow = optimizer.state_dict()["state"][0]["lookahead_slow_buff"]
    assert torch.equal(slow, model.weight.detach()) and torch.equal(model.weight, reference.weight)
    assert not torch.equal(slow, start)
    slow_at_k = slow.clone()
    ts.atomic_torch_save({"optimizer": optimizer.state_dict(), "model": model.state_dict()}, tmp_path / "s.pth")
    saved = load(tmp_path / "s.pth")
    clone = nn.Linear(4, 2)
    clone.load_state_dict(saved["model"])
    clone_optimizer = build_optimizer(clone, settings)
    clone_optimizer.load_state_dict(saved["optimizer"])
    assert clone_optimizer.param_groups[0]["lookahead_step"] == 5
    for i in range(7):  # crosses the next slow update at step 10
        step(model, optimizer)
        step(clone, clone_optimizer)
        step(reference, plain)  # the fast weights' path: the same SGD steps and momentum, no sync
        if i == 4:  # step 10 = 2k: the slow weights absorb alpha of the fast weights' move since step k
            expected = slow_at_k + settings.lookahead_alpha * (reference.weight.detach() - slow_at_k)
            torch.testing.assert_close(model.weight.detach(), expected, rtol=1e-6, atol=1e-7)
            assert not torch.allclose(model.weight, reference.weight)  # the sync pulled the weights back
            torch.testing.assert_close(optimizer.state_dict()["state"][0]["lookahead_slow_buff"], expected,
                                       rtol=1e-6, atol=1e-7)
    assert torch.equal(model.weight, clone.weight)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly(tmp_path, workers):
    cfg = toy_config(iterations=8)
    assert run(tmp_path / "straight", cfg, workers=workers) == 0
    half = tmp_path / "straight" / "checkpoint_4.pth"
    assert run(tmp_path / "resumed", cfg, resume=half, workers=workers) == 0
    straight, resumed = load(tmp_path / "straight" / "checkpoint_8.pth"), load(tmp_path / "resumed" / "checkpoint_8.pth")
    assert straight["model"].keys() == resumed["model"].keys()
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    slow = [s["lookahead_slow_buff"] for s in straight["optimizer"]["state"].values()]
    slow_resumed = [s["lookahead_slow_buff"] for s in resumed["optimizer"]["state"].values()]
    assert slow and all(torch.equal(a, b) for a, b in zip(slow, slow_resumed))
    assert straight["data"] == resumed["data"] == {"epoch": 1, "batch": 2}  # 6 batches per epoch
    # And the run really trained: weights moved away from the initial ones.
    first = ToyModel()
    assert not torch.equal(first.state_dict()["text_projection.weight"], straight["model"]["text_projection.weight"])


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "avx2-only"])
def test_cpu_bfloat16_autocast_only_when_asked_and_native(tmp_path, monkeypatch, caplog, native):
    """AMP.CPU_BFLOAT16 autocasts where the CPU has native bfloat16; an AVX2-only CPU (where
    bfloat16 matrix products run ~20x slower) trains in float32 and says so in one line."""
    import refers.engine.precision as precision

    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: native)
    seen = []

    class Recording(ToyModel):
        def forward(self, batch: dict) -> dict:
            if self.training:
                seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return super().forward(batch)

    def build(cfg, device):
        return TrainParts(model=Recording(), train_dataset=ToyStudies(24), val_dataset=ToyStudies(10),
                          collate_fn=toy_collate, decode=lambda ids: " ".join(map(str, ids)))

    for flag, expected in (("false", None), ("true", torch.bfloat16 if native else None)):
        seen.clear()
        caplog.clear()
        options = LoopOptions(serialization_dir=tmp_path / flag, checkpoint_every=2, log_every=1, cpu_workers=0, progress=False)
        with caplog.at_level("WARNING", logger="refers.engine.precision"):
            assert run_pretraining(toy_config(iterations=2, AMP__CPU_BFLOAT16=flag), options, DistInfo(), build) == 0
        assert seen == [expected, expected]
        assert (tmp_path / flag / "checkpoint_2.pth").is_file()
        warned = [r.getMessage() for r in caplog.records if "no native bfloat16" in r.getMessage()]
        assert len(warned) == (1 if flag == "true" and not native else 0), warned


def test_checkpoint_holds_the_full_state_and_loads_weights_only(tmp_path):
    cfg = toy_config(iterations=4)
    assert run(tmp_path, cfg) == 0
    state = load(tmp_path / "checkpoint_4.pth")
    assert state["iteration"] == 4 and state["format"] == ts.FORMAT
    assert state["config"]["OPTIM"]["NUM_ITERATIONS"] == 4
    assert state["scheduler"]["last_epoch"] == 4
    assert set(state["rng"][0]) >= {"python", "numpy", "torch"}
    assert all(isinstance(v, torch.Tensor) for v in state["rng"][0].values())
    assert ts.resolve_resume("auto", tmp_path) == tmp_path / "checkpoint_4.pth"
    assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").iterdir())


def test_interrupted_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    model = nn.Linear(3, 3)
    good = {"format": ts.FORMAT, "iteration": 5, "model": model.state_dict()}
    path = ts.save_state(good, tmp_path)
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:  # half-written file, then the "crash"
            handle.truncate(10)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ts.save_state({**good, "model": nn.Linear(3, 3).state_dict()}, tmp_path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_5.pth"]  # no temporary file left
    assert torch.equal(load(path)["model"]["weight"], model.weight)


def logged(call) -> tuple[object, list[str]]:
    """Run ``call()`` and return its result and the messages of the pre-training logger."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("refers.pretrain")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        return call(), messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.slow
def test_report_text_is_logged_only_with_log_text(tmp_path):
    code, quiet = logged(lambda: run(tmp_path / "quiet", toy_config(iterations=4)))
    assert code == 0 and any("val iter 4" in m for m in quiet) and not any("generated" in m for m in quiet)
    code, loud = logged(lambda: run(tmp_path / "loud", toy_config(iterations=4), log_text=True))
    assert code == 0 and any(m.startswith("val sample | generated: 5 6 | reference: ") for m in loud), loud


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    code, messages = logged(lambda: run(tmp_path, toy_config(iterations=8), nan_at_call=6))
    assert code == 1
    assert [p.name for p in tmp_path.glob("checkpoint_*.pth")] == ["checkpoint_4.pth"]
    assert not (tmp_path / EXPORT_NAME).exists()
    assert any("non-finite loss" in m and "checkpoint_4.pth" in m for m in messages), messages


def test_sigterm_saves_a_checkpoint_then_exits(tmp_path):
    code = run(tmp_path, toy_config(iterations=8), every=100, signal_at_call=3)
    assert code == 128 + signal.SIGTERM
    assert [p.name for p in tmp_path.glob("checkpoint_*.pth")] == ["checkpoint_3.pth"]
    assert load(tmp_path / "checkpoint_3.pth")["iteration"] == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored


def test_export_is_in_original_naming_and_loads_with_identical_outputs(tmp_path):
    from refers.models.weights import load_encoder_weights

    assert run(tmp_path, toy_config(iterations=4)) == 0
    exported = load(tmp_path / EXPORT_NAME)
    assert all(k.startswith("transformer.") for k in exported)
    assert "transformer.encoder.layer.0.attn.query.weight" in exported
    assert "transformer.embeddings.position_embeddings" in exported
    state = load(tmp_path / "checkpoint_4.pth")["model"]
    trained = build_vit("ViT-nano_8", img_size=SIZE)
    trained.load_state_dict({k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")})
    fresh = build_vit("ViT-nano_8", img_size=SIZE)
    report = load_encoder_weights(fresh, tmp_path / EXPORT_NAME)
    assert report.loaded == len(fresh.state_dict())
    images = torch.randn(2, 3, SIZE, SIZE)
    assert torch.equal(trained.eval()(images), fresh.eval()(images))


def test_retrieval_recall_matches_hand_counts():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    reports = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    # Cosines, image rows x report columns: [[.995, 1, 0], [.0995, 0, 1], [.774, .707, .707]].
    # Image -> report, partner's rank: image 0: 1 (report 1 higher); image 1: 2; image 2: 2 (report 0
    # higher, report 1 ties: ties count against the query).
    metrics = retrieval_recall(images, reports, ks=(1, 2, 3))
    assert metrics["image_to_report_R@1"] == pytest.approx(0.0)
    assert metrics["image_to_report_R@2"] == pytest.approx(1 / 3)
    assert metrics["image_to_report_R@3"] == pytest.approx(1.0)
    # Report -> image (columns): report 0: rank 0; report 1: 2 (images 0, 2 higher); report 2: 1.
    assert metrics["report_to_image_R@1"] == pytest.approx(1 / 3)
    assert metrics["report_to_image_R@2"] == pytest.approx(2 / 3)


def test_sampler_shards_and_resumes():
    full = [b for b in ResumableBatchSampler(10, 2, 0, 1, seed=3)]
    ranks = [[b for b in ResumableBatchSampler(10, 1, r, 2, seed=3)] for r in (0, 1)]
    assert len(full) == 5 and all(len(b) == 1 for b in ranks[0])
    for step, batch in enumerate(full):  # rank r takes its slice of each global batch, same seeds
        assert batch == ranks[0][step] + ranks[1][step]
    sampler = ResumableBatchSampler(10, 2, 0, 1, seed=3)
    sampler.set_position(0, 3)
    assert list(sampler) == full[3:]
    sampler.set_position(1, 0)
    assert list(sampler) != full
    # Evaluation: 7 studies, 2 per rank on 2 ranks; the last 3 are shared 2 + 2 with one repeat.
    shards = [[[i for i, _ in b] for b in ResumableBatchSampler(7, 2, r, 2, seed=0, shuffle=False, drop_last=False)]
              for r in (0, 1)]
    assert shards == [[[0, 1], [4, 5]], [[2, 3], [6, 0]]]
    single = ResumableBatchSampler(7, 4, 0, 1, seed=0, shuffle=False, drop_last=False)
    assert [[i for i, _ in b] for b in single] == [[0, 1, 2, 3], [4, 5, 6]]  # one process: no repeats
