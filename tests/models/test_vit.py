

def test_micro_16_has_vit_b16s_patch_on_the_meta_device():
    """ViT-micro_16: the micro width and depth with ViT-B/16's patch, so 16 tokens (+ CLS) at 64 px."""
    from refers.models.vit import build_vit

    model = build_vit("ViT-micro_16", img_size=64, device="meta")
    assert model.patch_embed.proj.kernel_size == (16, 16) and model.pos_embed.shape == (1, 17, 128)
    assert len(model.blocks) == 4
