"""Tiny timm image towers for open_clip configs (tests/assets/model_configs/vpl-test-sl2.json, vpl-test-pe.json):
a SigLIP-2-shaped ViT (no class token, attention-pooling head) and a PE-Core-shaped Eva (class token, RoPE,
pre-norm, attention-pooling head), each built by timm's own constructor of that model family with small sizes, and
registered in timm's registry under a test name, so that open_clip builds them through its own ``TimmModel``.
Imported by conftest (registration at import; ``register()`` is idempotent)."""

from __future__ import annotations

from functools import partial

SIGLIP2 = "vpl_test_siglip2_tower"
PE = "vpl_test_pe_tower"
default_cfgs: dict = {}


def _siglip2(pretrained: bool = False, **kwargs):
    from timm.models.vision_transformer import _create_vision_transformer

    # vit_base_patch16_siglip_224's arguments (class_token=False, global_pool='map') at a tiny size
    args = dict(img_size=64, patch_size=16, embed_dim=64, depth=3, num_heads=2, class_token=False, global_pool="map")
    return _create_vision_transformer(SIGLIP2, pretrained=pretrained, **dict(args, **kwargs))


def _pe(pretrained: bool = False, **kwargs):
    from timm.layers import LayerNorm
    from timm.models.eva import _create_eva

    # vit_pe_core_tiny_patch16_384's arguments (RoPE, pre-transformer norm, attention pool) at a tiny size
    args = dict(img_size=64, patch_size=16, embed_dim=64, depth=3, num_heads=2, mlp_ratio=4.0, global_pool="map",
                attn_type="rope", use_pre_transformer_norm=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
                rope_grid_offset=1.0, rope_grid_indexing="xy", attn_pool_num_heads=2, attn_pool_mlp_ratio=4.0,
                norm_layer=partial(LayerNorm, eps=1e-5))
    return _create_eva(PE, pretrained=pretrained, **dict(args, **kwargs))


def register() -> None:
    """Register both towers in timm (once), each with a default pretrained config (no weights: none to load)."""
    import timm
    from timm.models import generate_default_cfgs, register_model

    global default_cfgs  # timm's register_model reads its entry point's module's default_cfgs
    default_cfgs = generate_default_cfgs({SIGLIP2: {"num_classes": 0}, PE: {"num_classes": 0}})
    for name, fn in ((SIGLIP2, _siglip2), (PE, _pe)):
        if not timm.is_model(name):
            fn.__name__ = name  # timm registers an entry point under its function's name
            register_model(fn)


register()
