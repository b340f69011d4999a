"""GroupViT's / PGSeg's text encoder: CLIP's causal text transformer (``text_encoder`` in their checkpoints).

Token ids ``[N, L]`` int64 (``L`` = the context length, 77; EOT the highest id of a row, as CLIP's BPE numbers it)
-> the EOT token's feature ``[N, width]`` after the final LayerNorm (no projection here: the model's
``text_projector`` MLP follows). Attribute names are the reference's (``transformer.resblocks.N.attn`` is
``nn.MultiheadAttention``), so the checkpoints load unrenamed.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .npr import Gather, TextNPR


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """CLIP's block on ``[L, N, C]`` (sequence first, as ``nn.MultiheadAttention`` defaults)."""

    def __init__(self, width: int, heads: int, attn_mask: torch.Tensor):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.register_buffer("attn_mask", attn_mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask.to(x.dtype))[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])
        proj_std, attn_std, fc_std = (width ** -0.5) * ((2 * layers) ** -0.5), width ** -0.5, (2 * width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class TextTransformer(nn.Module):
    """``width // 64`` heads, causal mask; ``npr``: PGSeg's text prototypes module ``Atten``."""

    def __init__(self, context_length: int, width: int, layers: int, vocab_size: int, npr: bool,
                 num_text_prototypes: int = 8, npr_iters: int = 10, npr_momentum: float = 0.9):
        super().__init__()
        self.context_length, self.width = context_length, width
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.transformer = Transformer(width, layers, max(width // 64, 1), mask)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = nn.LayerNorm(width)
        self.token_embedding = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.Atten = TextNPR(num_text_prototypes, npr_iters, npr_momentum) if npr else None

    def forward(self, tokens: torch.Tensor, move_prototypes: bool = True) -> torch.Tensor:
        """``[N, L]`` int64 -> the EOT features ``[N, width]`` float32. With T-NPR, the forward also moves its
        buffer towards these texts' prototypes, in training and in evaluation (``segment``, ``cam``, class
        embeddings), as every text forward of the reference does; ``forward_train`` passes ``move_prototypes=False``
        and moves it once through :meth:`prototypes`, on the captions alone."""
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        eot = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
        if move_prototypes and self.Atten is not None:
            self.Atten(eot.detach())  # the reference's every text forward runs T-NPR: its buffer moves
        return eot

    def prototypes(self, eot: torch.Tensor, gather: Gather | None = None) -> torch.Tensor:
        """T-NPR's text prototypes ``[N, G, 1]`` of the EOT features (detached, as the reference)."""
        return self.Atten(eot.detach(), gather)
