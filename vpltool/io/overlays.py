"""Coloured overlays for people: a photo with its mask's palette colours blended in and a legend of the classes
drawn below (`segment --overlay`). The photo is read, never written. Torch-free."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .images import load_image, read_mask, voc_palette, write_picture

OVERLAYS = "overlays"  # `segment --overlay`'s folder, inside the stage folder beside the masks
OVERLAY_SUFFIX = ".jpg"
ALPHA = 0.5  # the mask colour's share of each pixel
_ROW = 14  # legend row height, pixels (Pillow's default bitmap font is 11 pixels high)
LEGEND_SIDE = 1000  # a photo's long side per legend scale step (legend_scale)


def legend_scale(height: int, width: int) -> int:
    """How many photo pixels a legend pixel takes: 1 up to a 1000-pixel long side, then one more per 1000 (a
    12-megapixel photo's legend is 4 times the size, its 44-pixel letters still legible when the picture is shown
    whole on a screen)."""
    return max(1, round(max(height, width) / LEGEND_SIDE))


def class_overlay(image: np.ndarray, mask: np.ndarray, classes: Sequence[str], alpha: float = ALPHA) -> np.ndarray:
    """``[H, W, 3]`` uint8 photo and its ``[H, W]`` mask (class indices into ``classes``, 0 = background, drawn
    as is) -> ``[H + L, W, 3]`` uint8: the photo with the palette colour of every non-background pixel blended
    ``alpha`` (in [0, 1]), then a legend (a swatch and the name of each class the mask holds, background first) of L
    pixels, drawn with Pillow's bitmap font and enlarged whole (nearest) by :func:`legend_scale` on a large photo."""
    if not 0.0 <= float(alpha) <= 1.0:  # nan too
        from ..errors import VplError

        raise VplError(f"overlay alpha={alpha}: give the colours' share of each pixel, in [0, 1] (0.5 by default)")
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    blended = image.astype(np.float32)
    fg = mask > 0
    blended[fg] = (1 - alpha) * blended[fg] + alpha * palette[mask[fg]]
    present = [int(c) for c in np.unique(mask) if c < len(classes)]
    scale = legend_scale(*image.shape[:2])
    width = -(-image.shape[1] // scale)  # the legend laid out at its own scale, then enlarged to the photo's width
    entries, rows, x = [], 0, 4
    for c in present:  # flow the legend's entries into rows as wide as the photo
        w = 12 + 4 + 6 * len(classes[c]) + 10
        if x + w > width and x > 4:
            rows, x = rows + 1, 4
        entries.append((c, x, rows))
        x += w
    legend = Image.new("RGB", (width, (rows + 1) * _ROW + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for c, x, row in entries:
        y = 2 + row * _ROW
        draw.rectangle((x, y + 1, x + 11, y + 11), fill=tuple(int(v) for v in palette[c]), outline=(0, 0, 0))
        draw.text((x + 16, y), classes[c], fill=(0, 0, 0))
    if scale > 1:
        legend = legend.resize((width * scale, legend.height * scale), Image.NEAREST).crop(
            (0, 0, image.shape[1], legend.height * scale))
    sheet = Image.new("RGB", (image.shape[1], image.shape[0] + legend.height), (255, 255, 255))
    sheet.paste(Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8)), (0, 0))
    sheet.paste(legend, (0, image.shape[0]))
    return np.asarray(sheet)


def overlay_path(folder: str | os.PathLike, item_id: str) -> Path:
    return Path(folder) / f"{item_id}{OVERLAY_SUFFIX}"


def write_overlay(path: str | os.PathLike, image_path: str | os.PathLike, mask_path: str | os.PathLike,
                  classes: Sequence[str]) -> Path:
    """The overlay of one photo (read, never written) and its palette mask, as a JPEG, atomically."""
    return write_picture(path, class_overlay(load_image(image_path), read_mask(mask_path), classes), quality=90)


def overlay_folder(out: str | os.PathLike) -> Path:
    """Where ``--overlay`` writes: ``<out>/overlays/<id>.jpg``, beside the masks ``<out>/<id>.png``."""
    return Path(out) / OVERLAYS


def write_overlays(items: Iterable, out: str | os.PathLike, classes: Sequence[str], stage: str,
                   overwrite: bool = False, option: str = "--overlay") -> int:
    """``--overlay``: for every item (``.id``, ``.image``) whose mask ``<out>/<id>.png`` is there, its photo (read,
    never written) with the mask's colours and a legend of ``classes``, ``<out>/overlays/<id>.jpg`` (atomically;
    one already there is kept unless ``overwrite``: a resumed run makes the missing ones). Returns how many were
    written."""
    from .images import mask_path
    from .stage import write_side_record

    folder = overlay_folder(out)
    write_side_record(folder, stage, option)
    done = 0
    for item in items:
        mask, path = mask_path(out, item.id), overlay_path(folder, item.id)
        if mask.is_file() and (overwrite or not path.is_file()):
            write_overlay(path, item.image, mask, classes)
            done += 1
    return done


__all__ = ["ALPHA", "OVERLAYS", "OVERLAY_SUFFIX", "class_overlay", "legend_scale", "overlay_folder", "overlay_path",
           "write_overlay", "write_overlays"]
