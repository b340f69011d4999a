"""mmseg's keep-ratio resize (``Resize(img_scale=(long, short), keep_ratio=True)``, mmcv's ``rescale_size``): the one
rule of a method's input size, for the dense CLIP methods' segmentor and the text-supervised families alike."""

from __future__ import annotations

MIN_INPUT_SIDE = 32  # two patches of a /16 model, one of a /32: the least side a forward has a row of patches in


def keep_ratio_size(height: int, width: int, short: int, long: int = 2048) -> tuple[int, int]:
    """``(H, W)`` of a ``height x width`` image resized by ``min(long / max(h, w), short / min(h, w))``, each side
    ``int(side * factor + 0.5)`` (mmcv's rounding), and at least :data:`MIN_INPUT_SIDE`: a strip 100,000 wide and 16
    tall, past a 64:1 ratio at the 2048 cap, had a side of 0 pixels under the rule alone (mmseg's own pipeline fails
    there too); the labels are resized back to the photo either way."""
    factor = min(long / max(height, width), short / min(height, width))
    return max(int(height * factor + 0.5), MIN_INPUT_SIDE), max(int(width * factor + 0.5), MIN_INPUT_SIDE)


__all__ = ["MIN_INPUT_SIDE", "keep_ratio_size"]
