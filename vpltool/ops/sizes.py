"""mmseg's keep-ratio resize (``Resize(img_scale=(long, short), keep_ratio=True)``, mmcv's ``rescale_size``): the one
rule of a method's input size, for the dense CLIP methods' segmentor and the text-supervised families alike."""

from __future__ import annotations

MIN_INPUT_SIDE = 32  # two patches of a /16 model, one of a /32: the least side a forward has a row of patches in
# a side the rule makes narrower than this (0 pixels: mmseg's own pipeline fails) is raised to MIN_INPUT_SIDE; any
# other side is mmseg's own, so that a method sees its reference's input wherever the reference runs
DEGENERATE_SIDE = 1


def keep_ratio_size(height: int, width: int, short: int, long: int = 2048) -> tuple[int, int]:
    """``(H, W)`` of a ``height x width`` image resized by ``min(long / max(h, w), short / min(h, w))``, each side
    ``int(side * factor + 0.5)`` (mmcv's rounding); a side below :data:`DEGENERATE_SIDE` becomes
    :data:`MIN_INPUT_SIDE`: a strip 100,000 wide and 16 tall, past a 64:1 ratio at the 2048 cap, had a side of 0
    pixels under the rule alone (mmseg's own pipeline fails there too). Any other side is the rule's (a 40 x 3,000
    photo is 27 x 2,048 and 13 x 1,008, as in the references); the labels are resized back to the photo either way."""
    factor = min(long / max(height, width), short / min(height, width))
    return tuple(side if side >= DEGENERATE_SIDE else MIN_INPUT_SIDE  # type: ignore[return-value]
                 for side in (int(height * factor + 0.5), int(width * factor + 0.5)))


__all__ = ["DEGENERATE_SIDE", "MIN_INPUT_SIDE", "keep_ratio_size"]
