"""Encode a photo once, query it with many class lists: :meth:`vpltool.api.Segmenter.embed`.

open_clip splits ``encode_image`` from ``encode_text``, and SAM's predictor keeps a photo's embedding
(``set_image``) for many prompts. Here the photo's image side is the method's dense patch features of every slide
window (``bb.dense_features``: the CLIP's blocks, the mixed last block, a proxy DINO's, SC-CLIP's every-block read),
which do not depend on the class names. :meth:`Segmenter.embed` runs them once and keeps them in an
:class:`Embedding`; a later call given the embedding runs the same per-image function as a fresh call
(:func:`vpltool.models.dense.segmentor.scores_batch`), and each ``dense_features`` input it meets that equals a kept one
(the same window pixels, compared exactly) is answered with the kept output: the same tensor, so the same labels
as a fresh call, bit for bit. Only the text side (the queries, their product with the features, the softmax,
PAMR, the threshold) runs again. An option that changes the windows (``short_side``, ``slide_crop``,
``slide_stride``) meets no kept input and computes them anew: still exact, not faster.

SAM 3 and ActiveSAM (their ``image_side`` hook) keep SAM 3's image encoder's output, at SAM 3's side (and at
ActiveSAM's preview side): a later call runs the prompts' decoder alone, the same numbers as a fresh call.

A method whose window logits read the class names inside its own hook (CASS's object presence, Trident's and
CorrCLIP's own segmentors) has no image side apart from them, and a text-supervised family's ``zero_shot_logits``
takes the photo and the text in one call: ``embed`` refuses both in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import VplError


@dataclass(eq=False)
class Embedding:
    """One photo's image-side work for one segmenter (made by :meth:`vpltool.api.Segmenter.embed`); give it to the
    segmenter in place of the photo: ``seg(embedding, names)``.

    Attributes:
        photo: the photo as given (a path or URL names it in messages; an array or image: None).
        image: ``[H, W, 3]`` uint8 RGB, the decoded photo.
        method: the segmenter's method.
        kept: ``(owner, name, args, output)`` per image-side call of the photo, on the segmenter's device:
            ``(bb, "dense_features", (window pixels [n, 3, h, w] float32, fp16_pos), features [n, hw, D])``, or a
            method's own (its ``image_side`` hook: SAM 3's ``(sam, "encode_image", (pixels,), Sam3Image)``).
    """

    photo: Any
    image: Any
    method: str
    kept: list = field(default_factory=list, repr=False)
    owner: tuple = field(default=(), repr=False)  # (id of the backbone, its device, the dtype): who may reuse it

    def __repr__(self) -> str:
        h, w = self.image.shape[:2]
        return f"<vpltool embedding of a {w}x{h} photo for {self.method!r}: {len(self.kept)} feature pass(es)>"


def embeddable(hooks: Any) -> bool:
    """Whether a dense method's image side stands apart from the class names: its own ``image_side`` hook (SAM 3's
    image encoder), or ``bb.dense_features`` alone (the shared segmentor and the default window logits, the cosine
    of the features with the text)."""
    from ..models.dense import DenseHooks

    if type(hooks).image_side is not DenseHooks.image_side:
        return True
    return not hooks.own_segmentor and type(hooks).grid_logits is DenseHooks.grid_logits


def refuse(method: str, family: str | None = None) -> VplError:
    """The line for a segmenter whose image side cannot be kept apart from the text."""
    if family is not None:
        return VplError(f"embed: a {family} checkpoint's zero-shot hook (zero_shot_logits) takes the photo and the "
                        "class names' text in one call, so there is no image side to keep; call seg(photo, names) "
                        "for each class list")
    return VplError(f"embed: method {method!r} reads the class names inside its own window logits (its "
                    "grid_logits or dense_logits hook), so there is no image side to keep apart; call "
                    "seg(photo, names) for each class list")


def _equal(a: Any, b: Any) -> bool:
    """Arguments compared exactly: tensors by shape, dtype and every value; anything else by ``==``."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))
    return a == b


@contextmanager
def kept_features(bb: Any, kept: list, record: bool) -> Iterator[None]:
    """Within: each kept call ``(owner, name, args, output)`` (an :class:`Embedding`'s) answers ``owner.name`` made
    again with equal arguments (:func:`_equal`) with its kept output, and computes any other; with ``record``,
    ``bb.dense_features(pixels, fp16_pos)`` too, each new call appended to ``kept``. Instance attributes over the
    methods, removed on exit."""
    targets = {(id(owner), name): (owner, name) for owner, name, _, _ in kept}
    if record:
        targets[id(bb), "dense_features"] = (bb, "dense_features")

    def answering(owner: Any, name: str):
        compute = getattr(owner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            given = (*args, *sorted(kwargs.items()))  # keywords as (name, value) pairs after the positions
            for o, n, a, out in kept:
                if o is owner and n == name and len(a) == len(given) and all(map(_equal, a, given)):
                    return out
            out = compute(*args, **kwargs)
            if record:
                kept.append((owner, name, given, out))
            return out

        return call

    for owner, name in targets.values():
        setattr(owner, name, answering(owner, name))
    try:
        yield
    finally:
        for owner, name in targets.values():
            delattr(owner, name)


def image_side(bb: Any, pixels: Any, sizes: list, settings: Any, extras: list, dtype: Any) -> None:
    """Run the method's segmentor on one photo with a single all-zero query row: every window's features are
    computed (and, inside :func:`kept_features`, kept) while the text side costs one row."""
    import torch

    from ..device import autocast

    text = torch.zeros(1, bb.embed_dim, device=bb.device)
    with torch.no_grad(), autocast(bb.device, dtype):
        bb.hooks.dense_logits(bb, pixels, text, sizes, settings, [dict(e) for e in extras])


def check_owner(embedding: Embedding, owner: tuple) -> None:
    if embedding.owner != owner:
        raise VplError(f"{embedding!r} was made by another segmenter, or before seg.to(...) moved this one; embed "
                       "the photo again with this segmenter")


__all__ = ["Embedding", "check_owner", "embeddable", "image_side", "kept_features", "refuse"]
