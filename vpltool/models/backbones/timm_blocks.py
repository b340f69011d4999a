"""How a timm ViT block mixes its tokens, as timm computes it: a layer the ``clip`` family's timm towers (SigLIP 2,
PE-Core: :mod:`.timm_tower`) and the ``dino`` family's RoPE and register models (DINOv3, C-RADIOv3: :mod:`.dino`)
share.

timm's blocks (``vision_transformer.Block``: SigLIP 2, the NaFlexViT of C-RADIOv3; ``eva.EvaBlock``: PE-Core,
DINOv3) run ``x + s1 * attn(norm1(x))`` then ``x + s2 * mlp(norm2(x))`` (``s`` a ``LayerScale``: ``ls1`` / ``ls2``,
or Eva's ``gamma_1`` / ``gamma_2``). Their attention modules (``Attention``, ``EvaAttention``, ``AttentionRope``)
differ in what happens between the fused ``qkv`` product and ``softmax(q kᵀ · scale)``, and a method that reads q,
k or the attention map must read what the model computes, so :func:`heads_qkv` repeats it in timm's order
(``timm/models/eva.py`` ``EvaAttention.forward``, ``timm/layers/attention.py`` ``AttentionRope.forward``, timm
1.0.31):

1. ``qkv`` (Eva: the bias is ``cat(q_bias, 0, v_bias)`` when the q and v biases are separate parameters);
2. per-head ``q_norm`` / ``k_norm`` (identities unless the model has qk-norm);
3. RoPE (``apply_rot_embed_cat``, half-rotation as the module says) on the tokens **after** the
   ``num_prefix_tokens`` prefix (class token, registers keep their q and k), with the ``rope`` tensor the model's
   own forward hands the block (``Eva._pos_embed``, ``rope.get_embed(shape=grid)`` at a dynamic size).

A block's output is timm's own module forward (:func:`run_block`): the attention map, when asked for, is recomputed
beside it from :func:`heads_qkv` (the fused kernel returns none), so the tokens are timm's bit for bit.
tests/test_dino_rope.py checks every model kind against forward hooks on timm's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import VplError

# the block and attention classes whose arithmetic is the one above (by class name: timm imports only when a model
# is built); anything else (a post-norm Eva block, a gated or grouped-query attention) is refused in one line
BLOCKS = ("Block", "EvaBlock")
ATTENTIONS = ("Attention", "EvaAttention", "AttentionRope")


def check_blocks(blocks, name: str) -> None:
    """One line unless every block is a pre-norm timm ``Block`` / ``EvaBlock`` with a fused-``qkv`` attention whose
    arithmetic :func:`heads_qkv` repeats (no gate, no grouped-query heads)."""
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        kind = type(blk).__name__
        if kind not in BLOCKS or type(attn).__name__ not in ATTENTIONS:
            raise VplError(f"{name}: block {i} is a timm {kind} with {type(attn).__name__}; vpltool reads the tokens "
                           f"of pre-norm {' / '.join(BLOCKS)} blocks with {' / '.join(ATTENTIONS)} only")
        if getattr(attn, "qkv", None) is None or getattr(attn, "gate", None) is not None \
                or getattr(attn, "num_kv_groups", 1) != 1:
            raise VplError(f"{name}: block {i}'s attention has separate q/k/v projections, a gate or grouped "
                           "heads; vpltool reads fused-qkv attentions only")


def heads_qkv(attn, x: torch.Tensor, rope: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of timm attention module ``attn`` on its input ``x`` ``[B, N, C]`` (the block's ``norm1`` output),
    each ``[B, heads, N, head_dim]``, q and k after the module's norms and ``rope`` (the tensor the model's forward
    gives the block, or None), in timm's order (module docstring)."""
    b, n, _ = x.shape
    q_bias = getattr(attn, "q_bias", None)
    if q_bias is None:
        qkv = attn.qkv(x)
    else:  # Eva's separate biases (k has none)
        bias = torch.cat((q_bias, attn.k_bias, attn.v_bias))
        qkv = attn.qkv(x) + bias if getattr(attn, "qkv_bias_separate", False) else F.linear(x, attn.qkv.weight, bias)
    q, k, v = qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        from timm.layers import apply_rot_embed_cat

        npt, half = int(getattr(attn, "num_prefix_tokens", 0)), bool(getattr(attn, "rotate_half", False))
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
    return q, k, v


def attention_weights(attn, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, heads, N, N]`` float32 ``softmax(q kᵀ · scale)`` of ``attn`` on ``x`` (:func:`heads_qkv`), rows
    summing to 1: the map timm's fused kernel applies and does not return."""
    q, k, _ = heads_qkv(attn, x, rope)
    return ((q.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(-1)


def attention_output(attn, mixed: torch.Tensor) -> torch.Tensor:
    """The attention module's tail on mixed values ``[B, heads, N, head_dim]`` (``weights @ v``, or any mixing of
    the values): heads joined, the module's ``norm`` (identity unless scale-norm), ``proj`` -> ``[B, N, C]``."""
    b, _, n, _ = mixed.shape
    return attn.proj(attn.norm(mixed.transpose(1, 2).reshape(b, n, -1)))


def scale_1(blk, a: torch.Tensor) -> torch.Tensor:
    """The block's layer scale on its attention branch (``ls1``, or Eva's ``gamma_1``; none: unchanged)."""
    gamma = getattr(blk, "gamma_1", None)
    if gamma is not None:
        return gamma * a
    ls = getattr(blk, "ls1", None)
    return a if ls is None else ls(a)


def scale_2(blk, a: torch.Tensor) -> torch.Tensor:
    """The block's layer scale on its MLP branch (``ls2`` / ``gamma_2``)."""
    gamma = getattr(blk, "gamma_2", None)
    if gamma is not None:
        return gamma * a
    ls = getattr(blk, "ls2", None)
    return a if ls is None else ls(a)


def run_block(blk, x: torch.Tensor, rope: torch.Tensor | None = None, need_weights: bool = False,
              keep_norm1: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Block ``blk`` on ``[B, N, C]``: timm's own arithmetic (its attention module's forward, fused), split at
    ``norm1`` so that GradCAM can take the gradient there.

    Returns:
        (``[B, N, C]`` the block's output, ``[B, N, N]`` the head-mean attention (float32, recomputed by
        :func:`attention_weights`) or None, the ``norm1`` output or None).
    """
    h = blk.norm1(x)
    a = blk.attn(h) if rope is None else blk.attn(h, rope=rope)
    x = x + scale_1(blk, a)
    x = x + scale_2(blk, blk.mlp(blk.norm2(x)))
    weights = attention_weights(blk.attn, h, rope).mean(1) if need_weights else None
    return x, weights, (h if keep_norm1 else None)


class _Stop(Exception):
    """Raised by :func:`forward_capturing`'s hook to end timm's forward once what was wanted is kept."""


def forward_capturing(model, pixels: torch.Tensor, wanted, stop: bool = False
                      ) -> tuple[torch.Tensor | None, dict[int, tuple]]:
    """timm's own ``model.forward_features(pixels)``, keeping what blocks ``wanted`` (indices) were given: their
    input tokens and the ``rope`` tensor (a forward pre-hook with keyword arguments: exactly what the model's forward
    passed, at the input's own size). Returns (the final tokens ``[B, N, C]``, ``{i: (x_i, rope_i)}``). ``stop``:
    the forward ends as the last of ``wanted`` is given its input (that block and the ones after it are not run)
    and the final tokens are None: for a caller that reads a block's input alone."""
    seen: dict[int, tuple] = {}
    wanted = list(wanted)
    final = max(wanted) if stop and wanted else None

    def keep(i):
        def hook(_m, args, kwargs):
            seen[i] = (args[0], kwargs.get("rope"))
            if i == final:
                raise _Stop

        return hook

    hooks = [model.blocks[i].register_forward_pre_hook(keep(i), with_kwargs=True) for i in wanted]
    try:
        out = model.forward_features(pixels)
    except _Stop:
        out = None
    finally:
        for hook in hooks:
            hook.remove()
    return out, seen


def timm_forward(model) -> bool:
    """Whether a timm DINO runs timm's own forward, not vpltool's (RoPE: DINOv3; its own embedding: C-RADIOv3's
    NaFlexViT): :attr:`vpltool.models.backbones.dino.DinoBackbone.own_forward`."""
    return getattr(model, "rope", None) is not None or not hasattr(model, "patch_embed")


__all__ = ["timm_forward", "forward_capturing", "BLOCKS", "ATTENTIONS", "check_blocks", "heads_qkv",
           "attention_weights", "attention_output", "scale_1", "scale_2", "run_block"]
