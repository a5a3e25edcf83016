"""The one key-rename table between the original (REFERS / ViT-pytorch / Google) naming and timm's.

The oracle is the original code's own key list, written out by hand from ViT-pytorch's
``modeling.py`` (the names in the released ``refers_checkpoint.pth``), not derived from the table.
"""

from __future__ import annotations

import torch

from refers.engine.export import encoder_state
from refers.models.vit import build_vit
from refers.models.weights import KEY_RENAMES, original_to_timm, timm_to_original

# The original's names of the embeddings, block 0 and the final norm (weight and bias each).
ORIGINAL_BLOCK0 = {
    "transformer.embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "transformer.embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "transformer.embeddings.position_embeddings": "pos_embed",
    "transformer.embeddings.cls_token": "cls_token",
    "transformer.encoder.layer.0.attention_norm.weight": "blocks.0.norm1.weight",
    "transformer.encoder.layer.0.attention_norm.bias": "blocks.0.norm1.bias",
    "transformer.encoder.layer.0.ffn_norm.weight": "blocks.0.norm2.weight",
    "transformer.encoder.layer.0.ffn_norm.bias": "blocks.0.norm2.bias",
    "transformer.encoder.layer.0.ffn.fc1.weight": "blocks.0.mlp.fc1.weight",
    "transformer.encoder.layer.0.ffn.fc1.bias": "blocks.0.mlp.fc1.bias",
    "transformer.encoder.layer.0.ffn.fc2.weight": "blocks.0.mlp.fc2.weight",
    "transformer.encoder.layer.0.ffn.fc2.bias": "blocks.0.mlp.fc2.bias",
    "transformer.encoder.layer.0.attn.out.weight": "blocks.0.attn.proj.weight",
    "transformer.encoder.layer.0.attn.out.bias": "blocks.0.attn.proj.bias",
    "transformer.encoder.encoder_norm.weight": "norm.weight",
    "transformer.encoder.encoder_norm.bias": "norm.bias",
}
QKV = [f"transformer.encoder.layer.0.attn.{p}.{k}" for p in ("query", "key", "value") for k in ("weight", "bias")]


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_vit("ViT-nano_8", img_size=32, num_classes=3).state_dict()


def test_both_directions_follow_the_original_names():
    state = _tiny_state()
    original = timm_to_original(state)
    for original_name, timm_name in ORIGINAL_BLOCK0.items():
        assert torch.equal(original[original_name], state[timm_name]), original_name
    dim = state["blocks.0.attn.qkv.weight"].shape[1]
    for i, part in enumerate(("query", "key", "value")):  # timm's qkv rows are q, then k, then v
        assert torch.equal(original[f"transformer.encoder.layer.0.attn.{part}.weight"], state["blocks.0.attn.qkv.weight"][i * dim:(i + 1) * dim])
        assert torch.equal(original[f"transformer.encoder.layer.0.attn.{part}.bias"], state["blocks.0.attn.qkv.bias"][i * dim:(i + 1) * dim])
    assert torch.equal(original["head.weight"], state["head.weight"])  # not in the table: kept
    back = original_to_timm({k: original[k] for k in [*ORIGINAL_BLOCK0, *QKV]})
    assert set(back) == {*ORIGINAL_BLOCK0.values(), "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"}
    for original_name, timm_name in ORIGINAL_BLOCK0.items():
        assert torch.equal(back[timm_name], original[original_name])
    assert torch.equal(back["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])


def test_multi_digit_blocks_and_whole_key_entries():
    value = torch.ones(1)
    assert set(original_to_timm({"transformer.encoder.layer.11.ffn.fc2.bias": value})) == {"blocks.11.mlp.fc2.bias"}
    assert set(timm_to_original({"blocks.11.mlp.fc2.bias": value})) == {"transformer.encoder.layer.11.ffn.fc2.bias"}
    # A whole-key entry renames only that key, not a longer one that starts with it.
    assert set(timm_to_original({"pos_embed_extra": value})) == {"pos_embed_extra"}


def test_export_uses_the_same_table():
    state = _tiny_state()
    exported = encoder_state({f"image_encoder.{k}": v for k, v in state.items()})
    assert set(exported) == set(timm_to_original({k: v for k, v in state.items() if not k.startswith("head.")}))
    assert set(ORIGINAL_BLOCK0) <= set(exported) and set(QKV) <= set(exported)
    assert len(KEY_RENAMES) == len({o for o, _ in KEY_RENAMES}) == len({t for _, t in KEY_RENAMES})
