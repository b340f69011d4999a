"""Tiny timm models under test names, each built by timm's own constructor of its model family with small sizes and
registered in timm's registry (at import; ``register()`` is idempotent), so that the real loading paths build them:

* towers for open_clip configs (tests/assets/model_configs/vpl-test-sl2.json, vpl-test-pe.json), which open_clip
  builds through its own ``TimmModel``: a SigLIP-2-shaped ViT (no class token, attention-pooling head) and a
  PE-Core-shaped Eva (class token, RoPE, pre-norm, attention-pooling head);
* DINO-family models for ``--proxy-model`` / ``--dino-model``: DINOv3 (``vit_small_patch16_dinov3``: RoPE, 4
  registers) and C-RADIOv3 (``naflexvit_base_patch16_radio_v3``: NaFlexViT, 7 registers), 2 blocks of width 64.
"""

from __future__ import annotations

from functools import partial

SIGLIP2 = "vpl_test_siglip2_tower"
PE = "vpl_test_pe_tower"
DINOV3 = "vpl_test_dinov3"
RADIO = "vpl_test_radio_v3"
SMALL = dict(depth=2, embed_dim=64, num_heads=2)
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


def _dinov3(pretrained: bool = False, **kwargs):
    from timm.models.eva import vit_small_patch16_dinov3

    return vit_small_patch16_dinov3(pretrained=pretrained, **dict(SMALL, **kwargs))


def _radio(pretrained: bool = False, **kwargs):
    from timm.models.naflexvit import naflexvit_base_patch16_radio_v3

    return naflexvit_base_patch16_radio_v3(pretrained=pretrained, **dict(SMALL, **kwargs))


def register() -> None:
    """Register both towers in timm (once), each with a default pretrained config (no weights: none to load)."""
    import timm
    from timm.models import generate_default_cfgs, register_model

    global default_cfgs  # timm's register_model reads its entry point's module's default_cfgs
    default_cfgs = generate_default_cfgs({name: {"num_classes": 0} for name in (SIGLIP2, PE, DINOV3, RADIO)})
    for name, fn in ((SIGLIP2, _siglip2), (PE, _pe), (DINOV3, _dinov3), (RADIO, _radio)):
        if not timm.is_model(name):
            fn.__name__ = name  # timm registers an entry point under its function's name
            register_model(fn)


register()
