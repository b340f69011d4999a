"""The text tower of :class:`~vpltool.models.ClipBackbone`: its tokenizer and :meth:`TextTower.encode_text`, with
the context truncated to the longest prompt in the batch (the causal mask makes later positions irrelevant: same
embeddings, ~10x faster) and CLIP-ES's exact path (``--parity clip-es``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import VplError
from .loading import tokenizer_factory


def _open_clip_tokenizer(model: str):
    """open_clip's tokenizer of ``model``; one line when it cannot be made here: SigLIP's (a Hugging Face tokenizer:
    Gemma's for SigLIP 2) needs ``transformers`` and its vocabulary file from the hub or its cache. One of a
    registered config's name is made once a process for that config (:func:`_registered_tokenizer`); a
    ``local-dir:`` or ``hf-hub:`` model's each time (its files may change)."""
    from .loading import import_open_clip

    open_clip = import_open_clip()
    try:
        if ":" in model:
            return open_clip.get_tokenizer(model)
        return _registered_tokenizer(model, json.dumps(open_clip.get_model_config(model), sort_keys=True, default=str))
    except (ImportError, OSError, ValueError, RuntimeError) as e:
        why = " ".join(str(e).split())[:160] or type(e).__name__
        raise VplError(f"--model {model}: its tokenizer cannot be loaded ({why}); SigLIP's tokenizers need "
                       "`pip install transformers sentencepiece` and, once, the hub (or HF_HOME holding its files)"
                       ) from None


@functools.lru_cache(maxsize=16)
def _registered_tokenizer(model: str, config: str):
    """open_clip's tokenizer of the registered config ``model`` while it reads ``config`` (its JSON), made once (a
    tokenizer is read, never changed, but for its encoding memo; CLIP's BPE ranks 49k merges to be made). A failed
    make is not kept."""
    from .loading import import_open_clip

    return _RowMemo(import_open_clip().get_tokenizer(model))


class _RowMemo:
    """A tokenizer made once a process (:func:`_registered_tokenizer`) that keeps each text's row: open_clip's
    SimpleTokenizer gives every text its own row, the same each time (the clean-up, ftfy's fix and the BPE cost
    ~0.15 ms a text, and a benchmark's presets ask thousands of prompts each run). Any other tokenizer, or one
    that reduces long texts its own way (open_clip's ``reduction_fn``: some draw at random), is called as it is."""

    LIMIT = 50_000  # rows kept (~30 MiB at a context of 77); past it the memo starts again

    def __init__(self, inner: Any) -> None:
        self.inner, self.rows = inner, {}
        simple = type(inner).__name__ == "SimpleTokenizer" and type(inner).__module__ == "open_clip.tokenizer"
        self.memo = simple and getattr(inner, "reduction_fn", None) is None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        if not self.memo:
            return self.inner(texts, context_length)
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.inner.context_length
        new = list(dict.fromkeys(t for t in texts if (t, length) not in self.rows))
        if len(self.rows) + len(new) > self.LIMIT:
            self.rows.clear()
            new = list(dict.fromkeys(texts))
        if not texts or len(new) > self.LIMIT:
            return self.inner(texts, length)
        if new:
            self.rows.update({(t, length): row for t, row in zip(new, self.inner(new, length))})
        return torch.stack([self.rows[(t, length)] for t in texts])


class TextTower:
    """The text half of a CLIP backbone; the class using it sets ``model``, ``spec``, ``extra``, ``device``,
    ``embed_dim`` and ``_tokenizer`` (None until first used)."""

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            kind = self.extra.get("tokenizer")
            if kind:
                self._tokenizer = tokenizer_factory(kind)(self.extra, self._text_tower()["context_length"])
            else:
                self._tokenizer = _open_clip_tokenizer(self.spec.model)
        return self._tokenizer

    def _text_tower(self) -> dict[str, Any]:
        m = self.model
        t = m.text if hasattr(m, "text") else m  # CustomTextCLIP keeps the tower in .text
        return {
            "token_embedding": t.token_embedding, "positional_embedding": t.positional_embedding,
            "transformer": t.transformer, "ln_final": t.ln_final, "projection": t.text_projection,
            "attn_mask": t.attn_mask, "pool": getattr(t, "text_pool_type", getattr(t, "pool_type", "argmax")),
            "context_length": t.positional_embedding.shape[0], "cls_emb": getattr(t, "cls_emb", None),
        }

    def encode_text(self, texts: Sequence[str], batch_size: int = 256, grad: bool = False,
                    exact: bool = False) -> torch.Tensor:
        """Prompts -> ``[N, D]`` float32 L2-normalised text embeddings (``grad``: differentiable, for training).

        ``exact`` repeats CLIP-ES's ``zeroshot_classifier`` (``--parity clip-es``): one prompt at a time, the full
        context, every attention on the explicit path (:meth:`_encode_tokens_clip_es`): the same embeddings up to
        rounding, and the same rounding.
        """
        with torch.set_grad_enabled(grad):
            parts = self._text_tower()
            if exact:
                rows = [self._encode_tokens_clip_es(self.tokenizer([t]).to(self.device), parts) for t in texts]
                out = torch.cat(rows).float() if rows else torch.zeros(0, self.embed_dim)
                return out / out.norm(dim=-1, keepdim=True)
            if parts["pool"] != "argmax" or parts["cls_emb"] is not None:  # unusual towers: open_clip's own path
                tokens = self.tokenizer(list(texts)).to(self.device)
                return F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            out = []
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
                out.append(self._encode_tokens(tokens, parts))
            return F.normalize(torch.cat(out).float(), dim=-1)

    def _encode_tokens_clip_es(self, tokens: torch.Tensor, parts: dict[str, Any]) -> torch.Tensor:
        """The text tower as CLIP-ES runs it: the full context, and every block's attention on the explicit path
        (its ``ResidualAttentionBlock`` asks for the attention weights, so torch never takes the fused kernel)."""
        x = parts["token_embedding"](tokens) + parts["positional_embedding"]
        mask = parts["attn_mask"]
        for blk in parts["transformer"].resblocks:
            h = blk.ln_1(x)
            x = x + blk.ls_1(blk.attn(h, h, h, need_weights=True, attn_mask=mask)[0])
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        x = parts["ln_final"](x)[torch.arange(len(tokens), device=x.device), tokens.argmax(dim=-1)]
        proj = parts["projection"]
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    def _encode_tokens(self, tokens: torch.Tensor, parts: dict[str, Any]) -> torch.Tensor:
        eot = tokens.argmax(dim=-1)  # the EOT token has the highest id in CLIP vocabularies
        length = int(eot.max()) + 1  # causal mask: positions after EOT never influence it
        tokens = tokens[:, :length]
        x = parts["token_embedding"](tokens) + parts["positional_embedding"][:length]
        mask = parts["attn_mask"]
        x = parts["transformer"](x, attn_mask=None if mask is None else mask[:length, :length])
        x = parts["ln_final"](x)[torch.arange(len(tokens), device=x.device), eot]
        proj = parts["projection"]
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
