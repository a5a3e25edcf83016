"""Every checkpoint format fine-tuning accepts loads, and gives the outputs of the model it came from.

(a) the original REFERS fine-tuning format (flat ``transformer.*`` keys, separate q/k/v, fp16),
checked against a forward pass of that naming written out by hand below; (b) the original
pre-training checkpoint; (c) this project's full checkpoints and fine-tuned checkpoints; (d) Google's
``.npz``; (e) timm state dicts (``.pth``, ``.safetensors``). A pickle with code is refused unexecuted.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refers.cli.predict import main as predict_main
from refers.base.checkpoints import UnsafeCheckpointError
from refers.finetune.model import load_finetuned, metadata_path, save_finetuned
from refers.models.vit import build_vit
from refers.models.weights import EncoderWeightsNotFound, load_encoder_weights, timm_to_original

HEADS, PATCH, WIDTH, DEPTH = 2, 8, 64, 2  # ViT-nano_8


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    """A ViT-nano_8 with 3 outputs and every tensor random (biases and norms included)."""
    torch.manual_seed(0)
    model = build_vit("ViT-nano_8", 32, num_classes=3).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.2 + (1.0 if param.ndim == 1 and param.shape[0] == WIDTH else 0.0))
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def fresh(num_classes: int = 3, img_size: int = 32) -> torch.nn.Module:
    torch.manual_seed(99)
    return build_vit("ViT-nano_8", img_size, num_classes=num_classes).eval()


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The original ViT-pytorch computation, from its own key names (q, k, v separate): logits [B, C]."""
    sd = {k: v.float() for k, v in sd.items()}
    emb = "transformer.embeddings."
    tokens = F.conv2d(x, sd[emb + "patch_embeddings.weight"], sd[emb + "patch_embeddings.bias"], stride=PATCH)
    tokens = tokens.flatten(2).transpose(1, 2)
    h = torch.cat([sd[emb + "cls_token"].expand(len(x), -1, -1), tokens], dim=1) + sd[emb + "position_embeddings"]
    batch, length, width = h.shape
    head_dim = width // HEADS
    for i in range(DEPTH):
        p = f"transformer.encoder.layer.{i}."
        y = F.layer_norm(h, (width,), sd[p + "attention_norm.weight"], sd[p + "attention_norm.bias"], eps=1e-6)

        def split(name: str) -> torch.Tensor:
            out = F.linear(y, sd[p + f"attn.{name}.weight"], sd[p + f"attn.{name}.bias"])
            return out.view(batch, length, HEADS, head_dim).transpose(1, 2)

        q, k, v = split("query"), split("key"), split("value")
        attention = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5, dim=-1)
        context = (attention @ v).transpose(1, 2).reshape(batch, length, width)
        h = h + F.linear(context, sd[p + "attn.out.weight"], sd[p + "attn.out.bias"])
        y = F.layer_norm(h, (width,), sd[p + "ffn_norm.weight"], sd[p + "ffn_norm.bias"], eps=1e-6)
        hidden = F.gelu(F.linear(y, sd[p + "ffn.fc1.weight"], sd[p + "ffn.fc1.bias"]))
        h = h + F.linear(hidden, sd[p + "ffn.fc2.weight"], sd[p + "ffn.fc2.bias"])
    h = F.layer_norm(h, (width,), sd["transformer.encoder.encoder_norm.weight"], sd["transformer.encoder.encoder_norm.bias"], eps=1e-6)
    return F.linear(h[:, 0], sd["head.weight"], sd["head.bias"])


@torch.no_grad()
def test_a_original_finetuning_format_fp16(source, images, tmp_path):
    original = {k: v.half() for k, v in timm_to_original(source.state_dict()).items()}
    assert "transformer.encoder.layer.0.attn.query.weight" in original
    path = tmp_path / "refers_checkpoint.pth"
    torch.save(original, path)
    model = fresh()
    report = load_encoder_weights(model, path, load_head=True)
    assert report.loaded == report.total == len(model.state_dict())
    expected = reference_forward(original, images)
    assert torch.allclose(model(images), expected, atol=1e-4)
    assert torch.allclose(model(images), source(images), atol=0.05)  # fp16 rounding only


@torch.no_grad()
def test_b_original_pretraining_checkpoint(source, images, tmp_path):
    encoder = {f"visual.vit.{k}": v for k, v in timm_to_original(source.state_dict()).items() if not k.startswith("head.")}
    path = tmp_path / "checkpoint_400000.pth"
    torch.save({"model": {**encoder, "textual.embedding.words.weight": torch.zeros(5, 4)}, "optimizer": {}}, path)
    model = fresh()
    load_encoder_weights(model, path)
    assert torch.equal(model.forward_features(images), source.forward_features(images))


@torch.no_grad()
def test_c_our_full_and_finetuned_checkpoints(source, images, tmp_path):
    path = tmp_path / "checkpoint_10.pth"
    full = {f"image_encoder.{k}": v for k, v in source.state_dict().items() if not k.startswith("head.")}
    torch.save({"format": "refers-pretrain-state", "iteration": 10, "model": {**full, "bert.embeddings.weight": torch.ones(3, 2)}}, path)
    model = fresh()
    load_encoder_weights(model, path)
    assert torch.equal(model.forward_features(images), source.forward_features(images))

    finetuned = save_finetuned(source, tmp_path / "run_bestauc_checkpoint.bin", {"classes": ["a", "b", "c"], "img_size": 32,
                                                                                  "model_type": "ViT-nano_8", "num_classes": 3})
    rebuilt, settings = load_finetuned(finetuned, None, None, None)
    assert settings["metadata"]["classes"] == ["a", "b", "c"]
    assert torch.equal(rebuilt(images), source(images))
    metadata_path(finetuned).unlink()  # like a released checkpoint: the architecture comes from the shapes
    rebuilt, settings = load_finetuned(finetuned, None, None, None)
    assert (settings["model_type"], settings["img_size"], settings["num_classes"]) == ("ViT-nano_8", 32, 3)
    assert torch.equal(rebuilt(images), source(images))


def google_npz(model: torch.nn.Module, path) -> None:
    """Write ``model`` in the naming and layout of Google's ViT ``.npz`` files (what timm reads)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"],
    }
    for i in range(DEPTH):
        b, src = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = b + "MultiHeadDotProductAttention_1/"
        for j, name in enumerate(("query", "key", "value")):
            weight = np.split(sd[src + "attn.qkv.weight"], 3)[j]
            out[mha + f"{name}/kernel"] = weight.T.reshape(WIDTH, HEADS, WIDTH // HEADS)
            out[mha + f"{name}/bias"] = np.split(sd[src + "attn.qkv.bias"], 3)[j].reshape(HEADS, WIDTH // HEADS)
        out[mha + "out/kernel"] = sd[src + "attn.proj.weight"].reshape(WIDTH, HEADS, WIDTH // HEADS).transpose(1, 2, 0)
        out[mha + "out/bias"] = sd[src + "attn.proj.bias"]
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[b + f"{ln}/scale"], out[b + f"{ln}/bias"] = sd[src + f"{norm}.weight"], sd[src + f"{norm}.bias"]
        for r in range(2):
            out[b + f"MlpBlock_3/Dense_{r}/kernel"] = sd[src + f"mlp.fc{r + 1}.weight"].T
            out[b + f"MlpBlock_3/Dense_{r}/bias"] = sd[src + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **out)


@torch.no_grad()
def test_d_google_npz(source, images, tmp_path):
    path = tmp_path / "ViT-nano_8.npz"
    google_npz(source, path)
    model = fresh()
    report = load_encoder_weights(model, path)
    assert report.loaded == len(model.state_dict())
    assert torch.allclose(model(images), source(images), atol=1e-5)


@torch.no_grad()
def test_e_timm_state_dicts_and_resized_positions(source, images, tmp_path):
    from safetensors.torch import save_file

    pth, safetensors = tmp_path / "timm.pth", tmp_path / "timm.safetensors"
    torch.save(source.state_dict(), pth)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(safetensors))
    for path in (pth, safetensors):
        model = fresh()
        load_encoder_weights(model, path, load_head=True)
        assert torch.equal(model(images), source(images))
    bigger = fresh(img_size=64)  # 8x8 patches instead of 4x4: position embeddings resampled
    report = load_encoder_weights(bigger, pth, load_head=True)
    assert report.loaded == report.total and bigger.pos_embed.shape == (1, 65, WIDTH)
    assert torch.equal(bigger.pos_embed[0, 0], source.pos_embed[0, 0])  # the class token's is kept


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    torch.save({"head.weight": torch.zeros(1, 64), "payload": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError):
        load_encoder_weights(fresh(), path)
    assert predict_main(["--checkpoint", str(path), "--images", str(tmp_path)]) == 1
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_file_without_encoder_weights_is_an_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(EncoderWeightsNotFound, match="--init scratch"):
        load_encoder_weights(fresh(), path)
    with pytest.raises(FileNotFoundError, match="--init scratch"):
        load_encoder_weights(fresh(), tmp_path / "missing.pth")
