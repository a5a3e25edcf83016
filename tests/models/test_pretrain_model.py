"""The pre-training configuration, the REFERS model (fusion, decoder, report encoder) and its losses."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from refers.config import Config, ConfigError, load_config, parse_decoder_name
from refers.losses import caption_loss, convirt_loss
from refers.models.fusion import ViewFusion
from refers.models.refers_model import build_refers_model
from refers.models.report_decoder import ReportDecoder
from tests.conftest import REPO_ROOT

PRESETS = REPO_ROOT / "configs" / "pretrain"

TINY = [
    "MODEL.VISUAL.NAME", "ViT-nano_8", "MODEL.VISUAL.PRETRAINED", "", "DATA.IMAGE_CROP_SIZE", "32",
    "MODEL.TEXTUAL.NAME", "transformer_postnorm::L1_H32_A2_F64", "DATA.VOCAB_SIZE", "50",
    "DATA.MAX_CAPTION_LENGTH", "12", "MODEL.TEXTUAL.BERT_VOCAB_SIZE", "60", "MODEL.TEXTUAL.BERT_LAYERS", "1",
    "MODEL.TEXTUAL.BERT_HIDDEN", "32", "MODEL.TEXTUAL.BERT_HEADS", "2", "MODEL.TEXTUAL.BERT_INTERMEDIATE", "64",
]


def tiny_batch(batch: int = 4, caption_length: int = 10, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = [caption_length - (i % 3) for i in range(batch)]
    ids = torch.full((batch, caption_length), 4, dtype=torch.long)
    mask = torch.zeros(batch, caption_length, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, 50, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 1, 2
        mask[i, :n] = True
    return {
        "images": torch.randn(batch, 3, 3, 32, 32, generator=g),
        "caption_ids": ids,
        "caption_mask": mask,
        "bert_input_ids": torch.randint(0, 60, (batch, 8), generator=g),
        "bert_attention_mask": torch.ones(batch, 8, dtype=torch.long),
        "study_ids": [str(i) for i in range(batch)],
    }


@pytest.fixture(scope="module")
def _pristine_tiny_model():
    """Built once per module and never handed to a test: tests get a deep copy (:func:`tiny_model`)."""
    torch.manual_seed(0)
    return build_refers_model(load_config(None, TINY))


@pytest.fixture
def tiny_model(_pristine_tiny_model):
    """A fresh tiny REFERS model for each test, so that one test's edits (weights, gradients, train or
    eval mode) never reach another; a copy costs far less than a build."""
    return copy.deepcopy(_pristine_tiny_model)


# ---------------------------------------------------------------------------------- configuration


def test_overrides_are_parsed_by_the_type_of_the_default():
    cfg = load_config(None, [
        "OPTIM.NUM_ITERATIONS", "20", "OPTIM.BATCH_SIZE", "4", "OPTIM.LR", "3e-2", "LOSS.TAU", "1",
        "DATA.HORIZONTAL_FLIP", "false", "DATA.CROP_SCALE", "[0.3, 1]", "DATA.CROP_RATIO", "0.5,0.9",
        "MODEL.TEXTUAL.BERT_DIR", "x/y",
    ])
    assert cfg.OPTIM.NUM_ITERATIONS == 20 and cfg.OPTIM.BATCH_SIZE == 4
    assert cfg.OPTIM.LR == pytest.approx(0.03) and isinstance(cfg.LOSS.TAU, float)
    assert cfg.DATA.HORIZONTAL_FLIP is False and cfg.DATA.CROP_SCALE == [0.3, 1.0] and cfg.DATA.CROP_RATIO == [0.5, 0.9]
    assert cfg["MODEL.TEXTUAL.BERT_DIR"] == "x/y"
    # The original's spellings of moved keys still work.
    cfg = load_config(None, ["OPTIM.SGD_MOMENTUM", "0.5", "OPTIM.LOOKAHEAD_STEPS", "7", "DATA.ROOT", "/data"])
    assert (cfg.OPTIM.MOMENTUM, cfg.OPTIM.LOOKAHEAD.STEPS, cfg.DATA.IMAGE_ROOT) == (0.5, 7, "/data")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["OPTIM.LRR", "1"], r"unknown config key 'OPTIM.LRR' \(did you mean 'OPTIM.LR'\?\)"),
        (["OPTIM.BATCH_SIZE", "1.5"], "OPTIM.BATCH_SIZE must be int"),
        (["OPTIM.BATCH_SIZE"], "KEY VALUE pairs"),
        (["DATA.HORIZONTAL_FLIP", "maybe"], "true or false"),
        (["OPTIM.LOOKAHEAD", "3"], "group of keys"),
        (["DATA.CROP_SCALE", "0.5"], "list of 2 numbers"),
        (["DATA.CROP_SCALE", "[0, 1]"], "CROP_SCALE"),
        (["MODEL.TEXTUAL.NAME", "lstm"], "transformer_postnorm"),
        (["DATA.PAD_INDEX", "2"], "distinct"),
        (["AMP.DTYPE", "fp8"], "AMP.DTYPE"),
        (["OPTIM.OPTIMIZER_NAME", "adam"], r"OPTIM.OPTIMIZER_NAME must be 'sgd' or 'adamw', got 'adam' \(did you mean 'adamw'\?\)"),
        (["MODEL.VISUAL.CONTRAST_POOLING", "max"], "CONTRAST_POOLING"),
        (["MODEL.TEXTUAL.CONTRAST_POOLING", "cls"], "'pooler' or 'mean'"),
    ],
)
def test_bad_overrides_are_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_yaml_base_inheritance_and_errors(tmp_path):
    (tmp_path / "base.yaml").write_text("OPTIM:\n  LR: 0.5\n  BATCH_SIZE: 8\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nOPTIM:\n  BATCH_SIZE: 16\n")
    cfg = load_config(tmp_path / "child.yaml", ["OPTIM.BATCH_SIZE", "32"])
    assert (cfg.OPTIM.LR, cfg.OPTIM.BATCH_SIZE, cfg.OPTIM.WARMUP_STEPS) == (0.5, 32, 10000)
    (tmp_path / "bad.yaml").write_text("OPTIM:\n  LEARNING_RATE: 0.5\n")
    with pytest.raises(ConfigError, match="unknown config key 'OPTIM.LEARNING_RATE'"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("_BASE_: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "none.yaml")


def test_config_is_read_only_plain_data_and_round_trips(tmp_path):
    cfg = load_config(None, TINY)
    with pytest.raises(AttributeError):
        cfg.OPTIM.LR = 1.0
    data = cfg.to_dict()
    data["OPTIM"]["LR"] = 9.0  # a copy: the config is unchanged
    assert cfg.OPTIM.LR == 3e-3
    assert Config.from_dict(cfg.to_dict()) == cfg
    cfg.dump(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_presets():
    recipe = load_config(PRESETS / "refers_vitb16.yaml")
    assert recipe == load_config(None)  # the preset is the default
    assert (recipe.OPTIM.BATCH_SIZE, recipe.OPTIM.LR, recipe.OPTIM.BERT_LR) == (2, 3e-3, 3e-4)
    assert (recipe.OPTIM.NUM_ITERATIONS, recipe.OPTIM.WARMUP_STEPS, recipe.DATA.VOCAB_SIZE) == (400000, 10000, 10000)
    large = load_config(PRESETS / "refers_vitb16_large_batch.yaml")
    assert large.OPTIM.BATCH_SIZE > 2 and large.LOSS.GATHER_NEGATIVES and large.MODEL.VISUAL.NAME == "ViT-B_16"
    tiny = load_config(PRESETS / "tiny_cpu.yaml")
    assert (tiny.DATA.IMAGE_CROP_SIZE, tiny.MODEL.VISUAL.NAME, tiny.MODEL.TEXTUAL.BERT_LAYERS) == (64, "ViT-micro_8", 2)
    assert (recipe.OPTIM.OPTIMIZER_NAME, tiny.OPTIM.OPTIMIZER_NAME) == ("sgd", "adamw")


def test_decoder_names():
    assert parse_decoder_name("transformer_postnorm::L1_H1024_A16_F4096") == {
        "norm_first": False, "layers": 1, "hidden": 1024, "heads": 16, "ffn": 4096}
    with pytest.raises(ConfigError, match="multiple"):
        parse_decoder_name("transformer_postnorm::L1_H100_A16_F400")


# ---------------------------------------------------------------------------------- losses


def test_caption_loss_against_an_explicit_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g)
    targets = torch.tensor([[3, 1, 2, 4, 4], [5, 6, 2, 0, 4]])
    expected, count = 0.0, 0
    for b in range(2):
        for t in range(5):
            if targets[b, t] == 4:
                continue
            row = logits[b, t].double().numpy()
            expected += -(row[targets[b, t]] - math.log(np.exp(row).sum()))
            count += 1
    assert caption_loss(logits, targets, pad_id=4).item() == pytest.approx(expected / count, rel=1e-5)


def _infonce_numpy(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    """Mean over rows i of -log(exp(cos(a_i, b_i)/tau) / sum_j exp(cos(a_i, b_j)/tau))."""
    total = 0.0
    for i in range(len(a)):
        sims = [a[i] @ b[j] / (np.linalg.norm(a[i]) * np.linalg.norm(b[j])) / tau for j in range(len(b))]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return total / len(a)


def test_convirt_loss_against_its_definition():
    g = torch.Generator().manual_seed(2)
    image, text = torch.randn(5, 12, generator=g) * 3, torch.randn(5, 12, generator=g)
    loss, i2t, t2i = convirt_loss(image, text, tau=0.1, lam=0.75)
    want_i2t = _infonce_numpy(image.double().numpy(), text.double().numpy(), 0.1)
    want_t2i = _infonce_numpy(text.double().numpy(), image.double().numpy(), 0.1)
    assert i2t.item() == pytest.approx(want_i2t, rel=1e-4)
    assert t2i.item() == pytest.approx(want_t2i, rel=1e-4)
    assert loss.item() == pytest.approx(0.75 * want_i2t + 0.25 * want_t2i, rel=1e-4)
    # Without a process group, gathering is the local batch.
    assert convirt_loss(image, text, gather=True)[0].item() == pytest.approx(loss.item())


def test_both_contrastive_directions_carry_gradient():
    g = torch.Generator().manual_seed(3)
    image = torch.randn(4, 6, generator=g, requires_grad=True)
    text = torch.randn(4, 6, generator=g, requires_grad=True)
    loss, i2t, t2i = convirt_loss(image, text, tau=0.1, lam=0.75)
    g_i2t = torch.autograd.grad(i2t, (image, text), retain_graph=True)
    g_t2i = torch.autograd.grad(t2i, (image, text), retain_graph=True)
    g_loss = torch.autograd.grad(loss, (image, text))
    for part in (*g_i2t, *g_t2i):
        assert part.abs().sum() > 1e-4
    for total, a, b in zip(g_loss, g_i2t, g_t2i):
        torch.testing.assert_close(total, 0.75 * a + 0.25 * b)
    # The original's bug (.item() on t2i) would leave lam=0 without any gradient.
    only_t2i = convirt_loss(image, text, lam=0.0)[0]
    assert torch.autograd.grad(only_t2i, image)[0].abs().sum() > 1e-4


# ---------------------------------------------------------------------------------- fusion and decoder


def test_fusion_shapes_and_gates():
    torch.manual_seed(0)
    fusion = ViewFusion(dim=8, num_views=3)
    patches = torch.randn(2, 3, 5, 8)
    memory, weights = fusion(patches)
    assert memory.shape == (2, 15, 8) and weights.shape == (2, 3, 5)
    x = patches.permute(0, 2, 1, 3).reshape(2, 5, 24)
    for k in range(3):  # independent gates, each computed from all views at a grid position
        w = torch.sigmoid(x @ fusion.gates[k].weight.t() + fusion.gates[k].bias)[..., 0]
        torch.testing.assert_close(memory[:, 5 * k: 5 * (k + 1)], patches[:, k] * w[..., None])
    assert len({id(g.weight) for g in fusion.gates}) == 3
    with torch.no_grad():
        fusion.gates[1].weight.zero_()
        fusion.gates[1].bias.fill_(-1e4)  # gate 2 closed: view 2 gives nothing to the memory
        fusion.gates[2].weight.zero_()
        fusion.gates[2].bias.fill_(1e4)  # gate 3 open: view 3 passes unchanged
    memory, _ = fusion(patches)
    assert torch.all(memory[:, 5:10] == 0)
    torch.testing.assert_close(memory[:, 10:], patches[:, 2])
    with pytest.raises(ValueError, match="3 views"):
        fusion(patches[:, :2])


def test_decoder_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    decoder = ReportDecoder(vocab_size=20, visual_dim=8, hidden=16, heads=2, ffn=32, max_length=10, dropout=0.0).eval()
    memory = torch.randn(2, 6, 8)
    tokens = torch.randint(5, 20, (2, 7))
    logits = decoder(memory, tokens)
    changed = tokens.clone()
    changed[:, 4:] = 7
    torch.testing.assert_close(decoder(memory, changed)[:, :4], logits[:, :4])
    assert decoder.output.weight is decoder.word_embedding.weight
    assert torch.all(decoder.word_embedding.weight[4] == 0)  # the padding row
    with pytest.raises(ValueError, match="positions"):
        decoder(memory, torch.ones(2, 11, dtype=torch.long))


class ScriptedDecoder(ReportDecoder):
    """Next-token probabilities fixed by the last token, to check the search itself.

    After [SOS]: A=5 (0.6), B=6 (0.4). After A: EOS (0.25) or four others (0.1875 each). After B:
    EOS (1.0). Greedy takes A (best 0.6 * 0.25 = 0.15); the best sequence is B EOS (0.4).
    """

    def forward(self, memory, tokens, token_mask=None):
        probs = torch.full((tokens.shape[0], tokens.shape[1], 12), 1e-9)
        last = tokens[:, -1]
        for row, token in enumerate(last.tolist()):
            if token == 1:
                probs[row, -1, 5], probs[row, -1, 6] = 0.6, 0.4
            elif token == 5:
                probs[row, -1, [7, 8, 9, 10]] = 0.1875
                probs[row, -1, 2] = 0.25
            else:
                probs[row, -1, 2] = 1.0
        return probs.log()


def test_greedy_and_beam_search():
    decoder = ScriptedDecoder(vocab_size=12, visual_dim=4, hidden=8, heads=2, ffn=8, max_length=6)
    memory = torch.zeros(3, 2, 4)
    greedy = decoder.generate(memory, beam_size=1)
    assert greedy == [[5]] * 3  # A then EOS
    assert decoder.generate(memory, beam_size=3) == [[6]] * 3


def test_generation_respects_length_and_eos(tiny_model):
    tiny_model.eval()
    images = tiny_batch(2)["images"]
    with torch.no_grad():
        tiny_model.decoder.output.bias.zero_()
        tiny_model.decoder.output.bias[7] = 1e4  # always token 7: runs to max_length
        assert tiny_model.generate(images, max_length=6) == [[7] * 5] * 2
        assert tiny_model.generate(images, max_length=6, beam_size=2) == [[7] * 5] * 2
        tiny_model.decoder.output.bias[2] = 2e4  # EOS first: empty reports
        assert tiny_model.generate(images, max_length=6, beam_size=2) == [[], []]
        tiny_model.decoder.output.bias.zero_()


# ---------------------------------------------------------------------------------- the whole model


def test_full_recipe_builds_on_meta_with_the_published_shapes():
    model = build_refers_model(load_config(PRESETS / "refers_vitb16.yaml"), device="meta")
    assert sum(p.numel() for p in model.image_encoder.parameters()) == 85_798_656
    assert all(k.startswith(("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")) for k in model.image_encoder.state_dict())
    assert model.image_encoder.patch_embed.num_patches * 3 == 588  # decoder memory tokens
    assert [tuple(g.weight.shape) for g in model.fusion.gates] == [(1, 2304)] * 3
    layer = model.decoder.transformer.layers[0]
    assert len(model.decoder.transformer.layers) == 1 and not layer.norm_first
    assert (layer.self_attn.num_heads, layer.linear1.out_features, layer.self_attn.embed_dim) == (16, 4096, 1024)
    assert tuple(model.decoder.visual_projection.weight.shape) == (1024, 768)
    assert tuple(model.decoder.word_embedding.weight.shape) == (10000, 1024)
    assert tuple(model.decoder.position_embedding.weight.shape) == (100, 1024)
    assert tuple(model.text_projection.weight.shape) == (2304, 768)
    assert model.bert.config.num_hidden_layers == 12


def test_forward_losses_and_gradients(tiny_model):
    tiny_model.train()
    batch = tiny_batch()
    out = tiny_model(batch)
    parts = out["components"]
    assert set(parts) == {"caption", "contrast", "contrast_i2t", "contrast_t2i"}
    assert out["loss"].item() == pytest.approx(parts["caption"].item() + parts["contrast"].item(), rel=1e-5)
    assert parts["contrast"].item() == pytest.approx(0.75 * parts["contrast_i2t"].item() + 0.25 * parts["contrast_t2i"].item(), rel=1e-5)
    assert 0 < parts["caption"].item() < 2 * math.log(50)
    tiny_model.zero_grad()
    out["loss"].backward()
    for name in ("image_encoder.blocks.0.attn.qkv.weight", "fusion.gates.2.weight", "decoder.transformer.layers.0.linear1.weight",
                 "decoder.word_embedding.weight", "bert.encoder.layer.0.attention.self.query.weight", "bert.pooler.dense.weight",
                 "text_projection.weight"):
        grad = dict(tiny_model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_caption_padding_does_not_change_the_loss(tiny_model):
    tiny_model.eval()
    batch = tiny_batch()
    with torch.no_grad():
        first = tiny_model(batch)["components"]["caption"]
        batch["caption_ids"] = batch["caption_ids"].masked_fill(~batch["caption_mask"], 9)  # junk under the mask
        assert tiny_model(batch)["components"]["caption"].item() == pytest.approx(first.item(), rel=1e-6)


def test_tiny_model_is_a_fresh_copy_for_every_test(tiny_model):
    # Runs after tests that change the weights (the decoder's output bias), train it (gradients) and
    # switch its mode: none of that may be visible here. The oracle is a model built from scratch.
    torch.manual_seed(0)
    built = build_refers_model(load_config(None, TINY))
    assert tiny_model.training == built.training
    assert all(module.training == built.training for module in tiny_model.modules())
    assert all(p.grad is None for p in tiny_model.parameters())
    assert tiny_model.state_dict().keys() == built.state_dict().keys()
    for key, value in built.state_dict().items():
        assert torch.equal(tiny_model.state_dict()[key], value), key


def test_retrieval_vectors_are_normalised(tiny_model):
    tiny_model.eval()
    batch = tiny_batch()
    with torch.no_grad():
        images = tiny_model.encode_images(batch["images"])
        reports = tiny_model.encode_reports(batch["bert_input_ids"], batch["bert_attention_mask"])
    assert images.shape == reports.shape == (4, 3 * 64)
    torch.testing.assert_close(images.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(reports.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="3 views"):
        tiny_model.encode_images(batch["images"][:, :2])


def test_contrast_pooling_picks_the_cls_token_or_the_mean_patch_token():
    torch.manual_seed(0)
    model = build_refers_model(load_config(None, TINY + ["MODEL.VISUAL.CONTRAST_POOLING", "mean"])).eval()
    batch = tiny_batch()
    with torch.no_grad():
        tokens = model.encode_views(batch["images"])  # [B, V, 1 + P, D]
        expected_mean = torch.nn.functional.normalize(tokens[:, :, 1:].mean(dim=2).flatten(1), dim=-1)
        torch.testing.assert_close(model.encode_images(batch["images"]), expected_mean)
        model.contrast_pooling = "cls"
        expected_cls = torch.nn.functional.normalize(tokens[:, :, 0].flatten(1), dim=-1)
        torch.testing.assert_close(model.encode_images(batch["images"]), expected_cls)
    # The loss uses the same vectors: its contrast term is the ConVIRT loss of them.
    model.contrast_pooling = "mean"
    with torch.no_grad():
        reports = model._report_vectors(batch["bert_input_ids"], batch["bert_attention_mask"])
        expected = convirt_loss(tokens[:, :, 1:].mean(dim=2).flatten(1), reports, model.tau, model.lam)[0]
        assert model(batch)["components"]["contrast"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_report_pooling_reads_the_pooler_or_the_mean_token_state():
    torch.manual_seed(0)
    batch = tiny_batch()
    ids, mask = batch["bert_input_ids"], batch["bert_attention_mask"].clone()
    mask[0, 3:] = 0  # a shorter report: its padding must not count
    pooled = build_refers_model(load_config(None, TINY)).eval()
    assert pooled.bert.pooler is not None
    mean = build_refers_model(load_config(None, TINY + ["MODEL.TEXTUAL.CONTRAST_POOLING", "mean"])).eval()
    assert mean.bert.pooler is None  # no parameters left without gradient (DDP would refuse them)
    with torch.no_grad():
        states = mean.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        by_hand = torch.stack([states[i, mask[i].bool()].mean(0) for i in range(len(ids))])
        torch.testing.assert_close(mean._report_vectors(ids, mask), mean.text_projection(by_hand))
        out = pooled.bert(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(pooled._report_vectors(ids, mask), pooled.text_projection(out.pooler_output))
    loss = mean(batch)["loss"]
    loss.backward()
    assert all(p.grad is not None for p in mean.bert.parameters())


def test_initial_weights_load_into_the_image_encoder(tmp_path):
    from refers.models.vit import build_vit

    source = build_vit("ViT-nano_8", img_size=32)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    model = build_refers_model(load_config(None, TINY + ["MODEL.VISUAL.PRETRAINED", str(tmp_path / "vit.pth")]))
    for key, value in source.state_dict().items():
        assert torch.equal(model.image_encoder.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="MODEL.VISUAL.PRETRAINED"):
        build_refers_model(load_config(None, TINY + ["MODEL.VISUAL.PRETRAINED", str(tmp_path / "none.npz")]))
