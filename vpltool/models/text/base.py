"""A text-supervised family with the interface's defaults: subclass :class:`TextFamilyBase` and write five hooks.

:class:`~vpltool.models.text.family.TextSegFamily` has 17 hooks; most families do most of them alike. A subclass
of :class:`TextFamilyBase` names itself (``name``, ``TrainConfig``, ``ModelConfig``) and writes what is its own:

* :meth:`~TextSegFamily.tokenizer` ``(cfg, vocabulary=None)``: texts -> ``[n, L]`` int64 ids, zero-padded;
* :meth:`~TextSegFamily.model_config` ``(cfg, init=None)``: the model config a run of ``cfg`` builds;
* :meth:`~TextSegFamily.build_model` ``(cfg, seed=0)``: a fresh seeded model (a ``torch.nn.Module`` with ``cfg``
  and ``encode_text(tokens) -> [n, D]``);
* :meth:`~TextSegFamily.forward_train` ``(model, images, tokens, gather=None, keys=None)``: ``{"loss": ...}``;
* :meth:`TextFamilyBase.class_scores` ``(model, images, text)``: ``[B, N, h, w]`` per-class scores, higher is more
  likely, on any grid (the default zero-shot map resizes them, slides its windows and adds background).

Everything else has a default here, which a family replaces by defining the hook: ``TEMPLATES`` (one simple
prompt), ``caption_length`` (the tokenizer's ``length(text)`` when it has one, else its non-zero ids),
``class_tokens`` (every name in every template), ``class_text_embeddings`` (CLIP's prompt ensemble: the mean of the
unit template embeddings, made unit), ``image_tensor`` (bilinear to the short side, normalised by ``MEAN`` / ``STD``),
``zero_shot_logits`` (from :meth:`TextFamilyBase.class_scores`), the checkpoint hooks (one safetensors file of kind
``name``: the weights and ``ModelConfig`` in its header, through :mod:`vpltool.io`) and ``for_ranks`` (the model
itself). :func:`~vpltool.models.text.family.register_text_family` checks a subclass as it checks any family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ... import io

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# what a subclass writes itself (no default here): registration names the missing ones
REQUIRED = ("tokenizer", "model_config", "build_model", "forward_train")
# the base's own public names beyond the interface's hooks
EXTRAS = ("ModelConfig", "MEAN", "STD", "class_scores")


class TextFamilyBase:
    """The defaults of :class:`~vpltool.models.text.family.TextSegFamily` (module docstring); a subclass writes
    :data:`REQUIRED` and :meth:`class_scores` (or ``zero_shot_logits`` itself)."""

    name: ClassVar[str]
    TrainConfig: ClassVar[type]
    # its model config: a dataclass (or a class with to_dict() and from_dict(d)), kept in every checkpoint's header
    ModelConfig: ClassVar[type]
    TEMPLATES: ClassVar[Mapping[str, tuple[str, ...]]] = {"simple": ("a photo of a {}.",)}
    MEAN: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN  # image_tensor's normalisation, on [0, 1] pixels
    STD: ClassVar[tuple[float, float, float]] = IMAGENET_STD

    @classmethod
    def missing(cls) -> list[str]:
        """The hooks a subclass has still to write: :data:`REQUIRED`, and :meth:`class_scores` unless it writes
        ``zero_shot_logits`` itself."""
        out = [n for n in REQUIRED if not callable(getattr(cls, n, None))]
        if cls.zero_shot_logits is TextFamilyBase.zero_shot_logits and cls.class_scores is TextFamilyBase.class_scores:
            out.append("class_scores")
        return out + [n for n in ("name", "TrainConfig", "ModelConfig") if not hasattr(cls, n)]

    # ------------------------------------------------------------------ text
    def caption_length(self, cfg: Any) -> tuple[Callable[[str], int], int]:
        tokenize = self.tokenizer(cfg)
        context = int(getattr(tokenize, "context_length", 0)) or int(tokenize(["a"]).shape[-1])
        if callable(getattr(tokenize, "length", None)):
            return tokenize.length, context
        # the ids a caption keeps: a longer one reads as L, which the trainer refuses unless --truncate
        return (lambda text: int((tokenize([text])[0] != 0).sum())), context

    def class_tokens(self, names: Sequence[str], tokenize: Callable, templates: Sequence[str]) -> torch.Tensor:
        return torch.stack([tokenize([t.format(n) for t in templates]) for n in names])

    def class_text_embeddings(self, model: Any, tokens: torch.Tensor) -> torch.Tensor:
        n, t, length = tokens.shape
        with torch.no_grad():
            emb = model.encode_text(tokens.reshape(n * t, length).to(_device(model))).float()
            emb = F.normalize(emb, dim=-1).reshape(n, t, -1).mean(1)
        return F.normalize(emb, dim=-1)

    # ------------------------------------------------------------------ images and zero-shot maps
    def image_tensor(self, image: np.ndarray, short_side: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
        h, w = image.shape[:2]
        scale = short_side / min(h, w)
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                          align_corners=False)
        mean, std = torch.tensor(self.MEAN).view(1, 3, 1, 1), torch.tensor(self.STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def class_scores(self, model: Any, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``images`` ``[B, 3, H, W]`` float32 (:meth:`image_tensor`, or a window of it), ``text`` ``[N, D]`` unit
        rows -> ``[B, N, h, w]`` float32 per-class scores on the model's own grid, higher is more likely (a cosine,
        a probability); the default :meth:`zero_shot_logits` resizes them to the input and adds background."""
        raise NotImplementedError(f"{type(self).__name__}: write class_scores (or zero_shot_logits)")

    def zero_shot_logits(self, model: Any, images: torch.Tensor, text: torch.Tensor, bg_thresh: float = 0.5,
                         with_bg: bool = True, mode: str = "whole", crop: int = 448, stride: int = 224
                         ) -> torch.Tensor:
        """:meth:`class_scores` bilinearly resized to the input (``whole``), or to each ``crop``-pixel window
        every ``stride`` pixels and averaged where they overlap (``slide``); with ``with_bg``, channel 0 is
        ``bg_thresh`` everywhere, so a pixel whose every class scores at most ``bg_thresh`` is background."""
        with torch.no_grad():
            if mode == "slide":
                scores = _slide(lambda x: self._scores(model, x, text), images, len(text), crop, stride)
            else:
                scores = self._scores(model, images, text)
        if not with_bg:
            return scores
        return torch.cat([torch.full_like(scores[:, :1], float(bg_thresh)), scores], dim=1)

    def _scores(self, model: Any, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        device = _device(model)
        out = self.class_scores(model, images.to(device), text.to(device)).float()
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ checkpoints
    def check_checkpoint(self, path: str | Path) -> Any:
        return self._config(io.read_tensors(path, kind=self.name, keys=[]))

    def load_checkpoint(self, path: str | Path) -> tuple[Any, dict[str, torch.Tensor]]:
        f = io.read_tensors(path, kind=self.name)
        return self._config(f), dict(f.tensors)

    def load_model(self, path: str | Path, device: Any = "cpu") -> Any:
        cfg, state = self.load_checkpoint(path)
        model = self.build_model(cfg, seed=0)
        model.load_state_dict(state)
        return model.eval().requires_grad_(False).to(device)

    def save_checkpoint(self, path: str | Path, model: Any, extra: dict[str, Any] | None = None, **meta: Any) -> Path:
        cfg = _as_dict(model.cfg)
        return io.write_tensors(path, model.state_dict(), kind=self.name, classes=[], params=cfg, model_config=cfg,
                                extra=extra or {}, **meta)

    def _config(self, f: Any) -> Any:
        from ...errors import ContractError

        try:
            given = f.meta("model_config")
            if hasattr(self.ModelConfig, "from_dict"):
                return self.ModelConfig.from_dict(given)
            return self.ModelConfig(**{k: v for k, v in given.items()
                                       if k in {x.name for x in dataclasses.fields(self.ModelConfig)}})
        except (KeyError, TypeError, ValueError) as e:
            raise ContractError(f"{f.path}: its model config cannot be read ({type(e).__name__}: {e}); give "
                                f"a {self.name} file that save_checkpoint wrote") from None

    # ------------------------------------------------------------------ training
    def for_ranks(self, model: Any) -> Any:
        return model


def _as_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)


def _device(model: Any) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _slide(scores: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, n: int, crop: int,
           stride: int) -> torch.Tensor:
    """``scores`` of every ``crop`` window every ``stride`` pixels (the last flush with the edge), averaged where
    they overlap: ``[B, n, H, W]``."""
    b, _, h, w = images.shape
    out = images.new_zeros(b, n, h, w)
    count = images.new_zeros(1, 1, h, w)
    rows = list(range(0, max(h - crop, 0) + 1, stride)) or [0]
    cols = list(range(0, max(w - crop, 0) + 1, stride)) or [0]
    rows += [max(h - crop, 0)] if rows[-1] + crop < h else []
    cols += [max(w - crop, 0)] if cols[-1] + crop < w else []
    for y in rows:
        for x in cols:
            window = images[..., y:y + crop, x:x + crop]
            out[..., y:y + crop, x:x + crop] += scores(window)
            count[..., y:y + crop, x:x + crop] += 1
    return out / count


__all__ = ["TextFamilyBase", "REQUIRED", "EXTRAS", "IMAGENET_MEAN", "IMAGENET_STD"]
