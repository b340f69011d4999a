"""Images: the photos users bring (decoded to RGB once, here) and the masks and pictures vpltool writes.

* Masks (ground truth, pseudo masks, predictions) are single-channel PNGs with the PASCAL VOC palette: 0 =
  background, 1..C = classes, 255 = ignore. Readers take palette (P) and grayscale (L) PNGs and always return class
  indices, never colours.
* Charts and contact sheets are RGB PNGs drawn with PIL (no plotting dependency).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ..errors import ContractError, VplError, VplWarning
from . import files
from .digests import read_as_named
from .marks import png_info
from .photo_files import cut_short, leave_out
from .provenance import RUN_META, check_item, writing_digest

MASK_SUFFIX = ".png"


def mask_path(folder: str | os.PathLike, item_id: str) -> Path:
    """Where a mask stage (`crf`, `predict`) keeps image ``item_id``'s mask: ``<folder>/<id>.png``."""
    return Path(folder) / f"{item_id}{MASK_SUFFIX}"


def masks_digest(folder: str | os.PathLike) -> str:
    """sha256 over a mask folder's masks (``<id>.png``: each name and its bytes' sha256, in name order): what a
    score of the folder is of (eval records it, choose-pseudo compares it), so that a mask edited after it was
    scored, its vpltool chunks kept and the folder's record untouched, makes the score stale."""
    import hashlib

    from .digests import sha256_file

    h = hashlib.sha256()
    for path in sorted(Path(folder).glob(f"*{MASK_SUFFIX}")):
        if files.is_regular_file(path):
            h.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return h.hexdigest()


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map, 256 entries x RGB (bit-interleaved class index); entry 255 is drawn white."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    palette[-3:] = [255, 255, 255]
    return palette


_PALETTE = voc_palette()


ID_CHUNK = "vpltool.id"  # a stage's mask records the id of its image in this PNG text chunk
RUN_CHUNK = f"vpltool.{RUN_META}"  # ... and the run that made it (vpltool.io.provenance)


def write_mask(path: str | os.PathLike, labels: np.ndarray, item_id: str | None = None, kind: str | None = None
               ) -> Path:
    """Save an ``[H, W]`` uint8 label map as a VOC-palette PNG (0 = background, 255 = ignore), atomically.

    ``item_id``: the image the mask was made for (a stage's output), recorded in the text chunk ``vpltool.id`` so
    that :func:`read_mask` refuses the mask when it lies under another item's name, with the digest of the run
    under way in the mask's folder (``vpltool.run``), so that it refuses a mask of another run too. ``kind``: the
    file's kind (:mod:`vpltool.io.marks`; ``segmentation``, a Python result's), so that only a run that writes that
    kind replaces it."""
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ContractError(f"{path}: a mask must be HxW uint8, got {labels.dtype} {labels.shape}")
    img = Image.fromarray(labels, mode="L").convert("P")
    img.putpalette(_PALETTE)
    extra = {}
    if kind is not None:
        from .marks import png_info

        extra["pnginfo"] = png_info(kind)
    if item_id is not None:
        from PIL.PngImagePlugin import PngInfo

        extra.setdefault("pnginfo", PngInfo())
        extra["pnginfo"].add_text(ID_CHUNK, item_id)
        if (run := writing_digest(Path(path).parent)) is not None:
            extra["pnginfo"].add_text(RUN_CHUNK, run)
    with files.atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=False, **extra)
    return Path(path)


def read_mask(path: str | os.PathLike, num_classes: int | None = None) -> np.ndarray:
    """Read a label PNG (palette or grayscale) as ``[H, W]`` uint8 class indices, never RGB colours.

    Args:
        num_classes: classes including background; given, a value outside ``0..num_classes-1`` and 255 is refused
            (a mask of another dataset would otherwise be scored silently).
    """
    path = Path(path)
    try:
        with Image.open(BytesIO(read_as_named(path))) as img:  # the bytes the run named the mask by
            img.load()
            if img.mode not in ("P", "L", "I", "I;16"):
                raise ContractError(
                    f"{path}: masks must be palette (P) or grayscale (L) PNGs holding class indices, not {img.mode}"
                )
            arr = np.asarray(img)
            recorded, run = img.info.get(ID_CHUNK), img.info.get(RUN_CHUNK)
    except FileNotFoundError:
        raise VplError(f"{path}: mask file not found") from None
    except (OSError, SyntaxError) as e:
        raise ContractError(f"{path}: unreadable mask ({e}); re-create it") from None
    check_item(path, recorded, run, "mask")
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255:
            raise ContractError(f"{path}: mask values above 255; class indices must fit in uint8")
        arr = arr.astype(np.uint8)
    if num_classes is not None:
        values = np.unique(arr)
        bad = values[(values >= num_classes) & (values != 255)]
        if bad.size:
            raise ContractError(f"{path}: mask values {bad.tolist()[:5]} outside 0..{num_classes - 1} (and 255 = "
                                f"ignore); it does not belong to this dataset's {num_classes - 1} classes")
    return arr


# ----------------------------------------------------------------------------------------- photos
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _unreadable(path: Path, e: Exception) -> ContractError:
    if isinstance(e, Image.DecompressionBombError):
        return _too_many_pixels(path, e)
    return ContractError(f"{path}: unreadable image ({e}); re-download it or {leave_out(path)}")


def _too_many_pixels(path: Path, e: Exception) -> ContractError:
    """Pillow refuses to decode an image of more than ``2 * Image.MAX_IMAGE_PIXELS`` pixels (a decompression-bomb
    guard): the file is fine, only too large, so say so (re-downloading cannot help)."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(e))
    pixels, limit = (int(found.group(1)), int(found.group(2))) if found else (None, 2 * (Image.MAX_IMAGE_PIXELS or 0))
    size = f"{pixels / 1e6:.0f} megapixels, " if pixels else ""
    return ContractError(f"{path}: {size}more than the {limit / 1e6:.0f} megapixels an image may have (Pillow's "
                         "decompression-bomb guard); shrink the file itself, e.g. to 4000 pixels on its long side "
                         "(--max-side resizes an image only after it is decoded)")


def mask_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of a mask PNG from its header (a ground-truth mask is checked against its image this way before
    a model loads). Raises VplError / ContractError as :func:`read_mask`."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError:
        raise VplError(f"{path}: mask file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ContractError(f"{path}: unreadable mask ({e}); re-create it") from None
    return height, width


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image as :func:`load_image` will decode it (EXIF orientation applied), from its header
    alone: a stage checks every image this way before loading a model (a zero-byte or foreign file fails here; a
    file cut short after its header fails later, when it is decoded).

    Raises:
        ContractError / VplError: as :func:`load_image`.
    """
    height, width, orientation = _header(path)
    return (width, height) if orientation in _TRANSPOSED else (height, width)


def image_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation :func:`load_image` applies to an image (1 = as stored; 2..8 flip or rotate it), read as
    decoding reads it (:func:`_orientation`)."""
    return _header(path)[2]


def _header(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(height, width, orientation)`` of an image as stored, from its header (see :func:`image_size`)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = _orientation(img, path)
            _check_still(img, path)
            why = cut_short(path, img.format)
    except FileNotFoundError:
        raise VplError(f"{path}: image not found; restore it or {leave_out(path)}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    if why is not None:  # found here, before a model loads, not when a loader decodes it
        raise ContractError(f"{path}: cut short ({why}): the file is truncated; re-download it or {leave_out(path)}")
    return height, width, orientation


# what the image extensions vpltool reads hold (vpltool.data.common.IMAGE_EXTS; MPO: a camera's JPEG with extra
# views, its first is the photo): every still-photo format Pillow decodes by itself, without a plugin or a program
# (not GIF: a palette of 256 colours is no photo, and a GIF is refused under any name)
_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "PPM", "TGA")


def check_image_side(where: object, height: int, width: int) -> None:
    """The one line for an image too small to segment (``MIN_IMAGE_SIDE`` pixels a side, one CLIP patch; 0x0 and
    a 1x500 strip too), the same for a file (``where``: its path) and a Python image (``where``: its name)."""
    from ..config import MIN_IMAGE_SIDE

    if min(height, width) < MIN_IMAGE_SIDE:  # a file: left out as its source says (io.leave_out)
        leave = leave_out(where) if isinstance(where, os.PathLike) else "pass a larger image"
        raise VplError(f"{where}: {height}x{width} pixels, too small to segment (at least {MIN_IMAGE_SIDE} pixels a "
                       f"side, one CLIP patch); use the full-size image or {leave}")


def _check_still(img: Image.Image, path: Path) -> None:
    """One still image of a format vpltool reads, from its header: a GIF named ``.png`` or an animated WebP or PNG
    would be decoded as its first frame without a word (which frame the labels describe, nobody knows)."""
    if img.format not in _FORMATS:
        raise ContractError(f"{path}: a {img.format} image under a {path.suffix} name; convert it to one of .jpg, "
                            f".png, .tif, .webp (a still image) or {leave_out(path)}")
    frames = getattr(img, "n_frames", 1)
    if img.format != "MPO" and frames > 1:
        what = f"a {img.format} of {frames} pages" if img.format == "TIFF" else \
            f"an animated {img.format} of {frames} frames"
        raise ContractError(f"{path}: {what}; save the {'page' if img.format == 'TIFF' else 'frame'} its labels "
                            f"describe as a still image, or {leave_out(path)}")


_PNG_METADATA = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")  # chunks Pillow reads EXIF or XMP orientation from


def _orientation(img: Image.Image, path: Path) -> int:
    """The orientation ``ImageOps.exif_transpose`` finds once the image is decoded (its ``getexif()``: the EXIF
    block, a PNG's "Raw profile type exif" text, or XMP's ``tiff:Orientation``), without decoding when the header
    holds all of it. A PNG may keep its ``eXIf`` (or a text chunk) after the pixel data, which Pillow reads only
    when it decodes: then, and only then, the image is decoded here too."""
    if getattr(img, "format", None) == "PNG" and "exif" not in img.info and _png_metadata_after_pixels(path):
        img.load()
    return int(Image.Image.getexif(img).get(_EXIF_ORIENTATION, 1) or 1)  # the base reader: never a decode


def _png_metadata_after_pixels(path: Path) -> bool:
    """Whether a PNG holds an ``eXIf`` or text chunk after its first ``IDAT`` (a walk over the chunk headers:
    no pixel is decompressed)."""
    with open(path, "rb") as fh:
        fh.seek(8)  # the signature
        seen_pixels = False
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return False
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"IEND":
                return False
            seen_pixels = seen_pixels or kind == b"IDAT"
            if seen_pixels and kind in _PNG_METADATA:
                return True
            fh.seek(length + 4, os.SEEK_CUR)  # the data and its CRC


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode any common image as ``[H, W, 3]`` uint8 RGB, EXIF orientation applied.

    Grayscale, palette, CMYK, alpha (composited on black) and 16-bit images are converted, so no stage ever sees
    another shape or dtype.

    Raises:
        ContractError: the file is corrupt or truncated.
    """
    path = Path(path)
    try:
        with Image.open(BytesIO(read_as_named(path))) as img:  # the bytes the run named the image by
            _check_still(img, path)
            img.load()  # decode now: a truncated file fails here, inside the try, not later in a worker
            ImageOps.exif_transpose(img, in_place=True)  # in place: an upright photo is not copied
            rgb = _to_rgb(img, path)
    except FileNotFoundError:
        raise VplError(f"{path}: image not found; restore it or {leave_out(path)}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ContractError(f"{path}: decoded to {rgb.dtype} {rgb.shape}, not HxWx3 uint8; convert it to RGB")
    return rgb


def _to_rgb(img: Image.Image, path: Path | None = None) -> np.ndarray:
    """``[H, W, 3]`` uint8 from a PIL image of any mode; a :class:`VplWarning` naming ``path`` when the image is
    fully transparent (it decodes to black)."""
    if img.mode.startswith("I") or img.mode == "F":
        gray = _to_uint8(np.asarray(img), img.mode)  # [H, W]
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)  # [H, W, 4]
        if path is not None and rgba.size and rgba[:, :, 3].max() == 0:
            # kept (it is a valid image) but said: a blank export or a mask saved as a photo, not a picture
            warnings.warn(VplWarning(f"{path}: fully transparent (alpha 0 in every pixel), so it decodes to a black "
                                     f"image; {leave_out(path)}, or save it without its alpha channel if its "
                                     "colours are the picture"), stacklevel=2)
        # composite on black: colour * alpha, so hidden pixels (alpha 0) are black, not their stored colour
        return ((rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255).astype(np.uint8)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)  # RGB: no copy to convert


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16/32-bit integer or float image to uint8.

    'I;16*' maps 0..65535 -> 0..255. 'I' (some Pillow versions' mode for 16-bit PNGs) only if a value exceeds 255,
    so an 'I' image holding 8-bit values stays as is. 'F' is read as 0..1 if its maximum is <= 1, else as 0..255.
    """
    arr = arr.astype(np.float64)
    if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
        arr = arr / 257.0
    elif mode == "F" and arr.max(initial=0) <= 1.0:
        arr = arr * 255.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def write_png(path: str | os.PathLike, image: np.ndarray | Image.Image, kind: str | None = None) -> Path:
    """An RGB picture (``[H, W, 3]`` uint8 or a PIL image) as a PNG, atomically; ``kind``: a file output's kind,
    recorded in a text chunk (:func:`vpltool.io.marks.png_info`)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    extra = {} if kind is None else {"pnginfo": png_info(kind)}
    with files.atomic_path(path) as tmp:
        img.save(tmp, format="PNG", **extra)
    return Path(path)


PICTURE_FORMATS = {".webp": "WEBP", ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def write_picture(path: str | os.PathLike, image: np.ndarray | Image.Image, quality: int = 80) -> Path:
    """A picture for people (a thumbnail, a report's view): ``[H, W, 3]`` uint8 RGB, ``[H, W]`` uint8 class indices
    (drawn with the VOC palette) or a PIL image, in the format of the suffix (``.webp``, ``.jpg``: lossy at
    ``quality``; ``.png``: lossless, a mask kept as a palette image), atomically."""
    path = Path(path)
    fmt = PICTURE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise VplError(f"{path}: pictures are written as {', '.join(PICTURE_FORMATS)}, not {path.suffix!r}")
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    if img.mode == "L" and not isinstance(image, Image.Image):  # class indices, not grey levels
        img = img.convert("P")
        img.putpalette(_PALETTE)
        img = img if fmt == "PNG" else img.convert("RGB")
    options = {} if fmt == "PNG" else {"quality": int(quality)}
    with files.atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **options)
    return path


COLORS = ((0, 0, 0), (31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def write_chart(path: str | os.PathLike, panels: Sequence[Mapping[str, Sequence[tuple[float, float]]]], *,
                title: str = "", xlabel: str = "iteration", ranges: Sequence[tuple[float, float] | None] = (),
                size: tuple[int, int] = (720, 480), kind: str | None = None) -> Path:
    """Line charts stacked vertically, as a PNG: one panel per mapping ``{series name: [(x, y), ...]}``; ``kind``
    as :func:`write_png`.

    ``ranges[i]`` fixes panel i's y range (e.g. (0, 1) for an mIoU); None or absent = the data's own range.
    Series with fewer than 30 points also get a dot per point, so a handful of validation scores stay visible.
    """
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    top, left, right, gap = (24 if title else 8), 70, 12, 30
    if title:
        draw.text((left, 6), title, fill=(0, 0, 0))
    xs = [x for panel in panels for pts in panel.values() for x, _ in pts]
    x_lo, x_hi = min(xs, default=0.0), max(xs, default=1.0)
    panel_h = (height - top - gap * len(panels)) / max(len(panels), 1)
    for i, panel in enumerate(panels):
        y0 = top + i * (panel_h + gap)
        box = (left, y0, width - right, y0 + panel_h)
        ys = [y for pts in panel.values() for _, y in pts]
        lo, hi = (ranges[i] if i < len(ranges) and ranges[i] else (min(ys, default=0.0), max(ys, default=1.0)))
        draw.rectangle(box, outline=(160, 160, 160))
        draw.text((4, box[1]), f"{hi:.4g}", fill=(90, 90, 90))
        draw.text((4, box[3] - 10), f"{lo:.4g}", fill=(90, 90, 90))
        draw.text((box[0], box[3] + 3), f"{x_lo:g}", fill=(90, 90, 90))
        draw.text((box[2] - 80, box[3] + 3), f"{xlabel} {x_hi:g}", fill=(90, 90, 90))
        for j, (name, pts) in enumerate(panel.items()):
            color = COLORS[j % len(COLORS)]
            xy = [(box[0] + (x - x_lo) / ((x_hi - x_lo) or 1.0) * (box[2] - box[0]),
                   box[3] - (y - lo) / ((hi - lo) or 1.0) * (box[3] - box[1])) for x, y in pts]
            if len(xy) > 1:
                draw.line(xy, fill=color, width=2)
            for px, py in xy if len(xy) < 30 else []:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
            draw.text((box[2] - 90, box[1] + 4 + 12 * j), name, fill=color)
    return write_png(path, img, kind)
