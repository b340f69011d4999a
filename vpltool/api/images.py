"""What the Python door takes as a photo, and how one is told from a batch: the CLI's checks, the CLI's lines.

A photo is a path (checked and decoded as `segment` checks and decodes a file: its extension, its header, its size,
EXIF orientation applied), an ``http://`` or ``https://`` URL (downloaded, then read as that file), a PIL image (any
mode, its EXIF orientation applied), an ``[H, W, 3]`` numpy array (uint8, or float in [0, 1] as scikit-image and
matplotlib give photos), or a torch tensor ``[3, H, W]``: uint8 0..255 or float in [0, 1] (torchvision's
``to_tensor`` / ``read_image`` layouts). A ``file://`` URL is the path it names. An array or tensor is RGB unless
the call says ``image_format="BGR"`` (OpenCV's order; SAM's ``set_image`` takes the same word). Every one is checked
for the size `segment` refuses (:func:`vpltool.io.check_image_side`). Torch is imported only when a tensor is given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VplError

TAKES = ("a path, a URL, a PIL image, an [H, W, 3] uint8 or float array or a [3, H, W] uint8 or float tensor (floats "
         "in [0, 1])")
IMAGE_FORMATS = ("RGB", "BGR")  # the channel order of an array or tensor (SAM's set_image(image_format=...))
URL_SCHEMES = ("http://", "https://")
URL_TIMEOUT = 30.0  # seconds for a URL's server to answer
URL_MAX_BYTES = 200 * 2**20  # a download larger than this is refused (a photo of 200 MB is a mistake)


def is_batch(images: Any) -> bool:
    """Whether ``images`` is several photos (a list or tuple) rather than one. A 4-D array or tensor
    ``[B, H, W, 3]`` / ``[B, 3, H, W]`` is a batch too, as a vision model's input is."""
    if isinstance(images, (list, tuple)):
        return True
    shape = getattr(images, "shape", None)
    return shape is not None and len(shape) == 4 and not isinstance(images, (str, os.PathLike))


def photos(images: Any) -> list:
    """``images`` as a list of single photos (a 4-D array or tensor split along its first axis)."""
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images[i] for i in range(images.shape[0])]


def is_url(image: Any) -> bool:
    """Whether ``image`` is an ``http(s)://`` address (a str: ``Path`` would fold its ``//`` into ``/``)."""
    return isinstance(image, str) and image[:8].lower().startswith(URL_SCHEMES)


def file_url_path(image: Any) -> Any:
    """A ``file://`` URL (``file:///home/me/cat%20photo.jpg``) as the path it names (``Path`` folded its ``//``
    and the "not found" line showed ``file:/home/me/cat%20photo.jpg``); anything else as it is."""
    if not (isinstance(image, str) and image[:7].lower() == "file://"):
        return image
    from urllib.parse import unquote, urlparse

    parsed = urlparse(image)
    if parsed.netloc not in ("", "localhost"):
        raise VplError(f"{image}: a file:// URL of another host ({parsed.netloc}); give a path on this machine")
    return unquote(parsed.path)


def name_of(image: Any, index: int | None = None) -> str:
    """How a one-line error names a photo: its path or URL, or ``image`` / ``images[i]`` and its kind."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    where = "image" if index is None else f"images[{index}]"
    return f"{where} (a {type(image).__name__})"


def photo_item(image: Any):
    """The dataset item a method's ``extra_inputs`` hook gets for a photo given to a segmenter: ``id`` the file's
    stem (``image`` its path) for a path, else ``"image"`` (``image`` None)."""
    from ..data.common import Item

    if is_url(image):  # no file to find a method's side input by: the URL's last name as its id
        return Item(Path(image.split("?")[0].rstrip("/")).stem or "image", None, ())  # type: ignore[arg-type]
    image = file_url_path(image)
    if isinstance(image, (str, os.PathLike)):
        return Item(Path(image).stem, Path(image), ())
    return Item("image", None, ())  # type: ignore[arg-type]


def check_image_format(image_format: str) -> bool:
    """``image_format`` checked (one line); True for ``"BGR"``."""
    if image_format not in IMAGE_FORMATS:
        raise VplError(f"image_format={image_format!r}: choose 'RGB' or 'BGR' (OpenCV's order, for arrays and "
                       "tensors)")
    return image_format == "BGR"


def as_rgb(image: Any, index: int | None = None, image_format: str = "RGB") -> np.ndarray:
    """One photo (module doc) as ``[H, W, 3]`` uint8 RGB, checked as `segment` checks a file (one line naming
    it and the fix); ``index``: its place in a batch, for the message; ``image_format``: the channel order of an
    array or tensor (a file, a URL and a PIL image know their own, and are refused with ``"BGR"``)."""
    bgr = check_image_format(image_format)
    image = file_url_path(image)
    where = name_of(image, index)
    if bgr and not (isinstance(image, np.ndarray) or type(image).__module__.split(".")[0] == "torch"):
        raise VplError(f"{where}: image_format='BGR' is for arrays and tensors (OpenCV's order); a file, a URL or "
                       "a PIL image is read in its own order: drop image_format")
    if is_url(image):
        return _from_url(image)
    if isinstance(image, (str, os.PathLike)):
        return _from_path(Path(image))
    if isinstance(image, np.ndarray):
        rgb = _from_array(image, where)
    elif type(image).__module__.split(".")[0] == "torch":
        rgb = _from_tensor(image, where)
    else:
        from PIL import Image, ImageOps

        if not isinstance(image, Image.Image):
            raise VplError(f"{where}: not a photo; give {TAKES}")
        from ..io.images import _to_rgb

        rgb = _to_rgb(ImageOps.exif_transpose(image))
    from ..io import check_image_side

    check_image_side(where, rgb.shape[0], rgb.shape[1])
    return np.ascontiguousarray(rgb[..., ::-1]) if bgr else rgb


def _from_path(path: Path) -> np.ndarray:
    """A photo file as `segment PHOTO` reads it: refused by its extension, its header or its size (the CLI's
    lines), then decoded."""
    from .. import io
    from ..data.images import open_images

    if not path.is_file():
        if path.is_dir():
            raise VplError(f"{path}: a folder; segment its photos with seg.map({str(path)!r}, classes)")
        raise VplError(f"{path}: image not found; check the path")
    open_images(path)  # one line for a file that is no image by its extension
    io.check_image_side(path, *io.image_size(path))
    return io.load_image(path)


def _from_url(url: str) -> np.ndarray:
    """A photo at an ``http(s)://`` address: downloaded (:data:`URL_TIMEOUT`, at most :data:`URL_MAX_BYTES`), then
    read as `segment` reads the same bytes from a file (:func:`_from_path`), its lines naming the URL. One line
    when it cannot be had: offline, no such host, an HTTP error."""
    import tempfile
    import urllib.error
    import urllib.request

    from .. import __version__

    fix = "check the address and the network, or download the photo and pass its path"
    request = urllib.request.Request(url, headers={"User-Agent": f"vpltool/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as answer:
            data = answer.read(URL_MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise VplError(f"{url}: the server answered HTTP {e.code} {e.reason}; {fix}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise VplError(f"{url}: could not download it ({reason}); {fix}") from None
    if len(data) > URL_MAX_BYTES:
        raise VplError(f"{url}: more than {URL_MAX_BYTES // 2**20} MB; download it and pass its path")
    with tempfile.TemporaryDirectory(prefix="vpltool-url-") as folder:
        path = Path(folder) / ("photo" + _url_suffix(url, data))
        path.write_bytes(data)
        try:
            return _from_path(path)
        except VplError as e:  # the line names the URL, not the temporary file
            raise type(e)(str(e).replace(str(path), url)) from None


def _url_suffix(url: str, data: bytes) -> str:
    """The extension the downloaded bytes are read under: the URL's own when it is an image's, else the format
    Pillow finds in them (``.png`` for PNG bytes behind ``/photo?id=3``); ``.bin`` when none (refused as a file of
    that name is)."""
    from PIL import Image

    from ..data.common import IMAGE_EXTS

    suffix = Path(url.split("?")[0].split("#")[0]).suffix.lower()
    if suffix in IMAGE_EXTS:
        return suffix
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            found = (img.format or "").lower()
    except Exception:  # not an image at all: refused below by its name, with the CLI's line
        return ".bin"
    return {"jpeg": ".jpg", "mpo": ".jpg", "tiff": ".tif"}.get(found, f".{found}" if f".{found}" in IMAGE_EXTS
                                                                 else ".bin")


def _from_array(a: np.ndarray, where: str) -> np.ndarray:
    """An ``[H, W, 3]`` array: uint8 as it is, or float in [0, 1] (scikit-image's and matplotlib's photos) as a
    float tensor is read: ``round(255 * x)``."""
    if a.ndim != 3 or a.shape[2] != 3 or not (a.dtype == np.uint8 or np.issubdtype(a.dtype, np.floating)):
        raise VplError(f"{where}: an array of {a.dtype} {tuple(a.shape)}; give [H, W, 3] uint8 RGB, or float in [0, 1]")
    if a.dtype == np.uint8:
        return a
    x = a.astype(np.float32)
    _check_unit(x, where, "array")
    return np.ascontiguousarray(np.round(x * 255).astype(np.uint8))


def _check_unit(x: Any, where: str, what: str) -> None:
    """A float photo's values finite and in [0, 1]; one line otherwise (a 0..255 photo given as floats)."""
    if x.size if isinstance(x, np.ndarray) else x.numel():
        finite = bool(np.isfinite(x).all()) if isinstance(x, np.ndarray) else bool(x.isfinite().all())
        lo, hi = (float(x.min()), float(x.max())) if finite else (float("nan"), float("nan"))
        if not (finite and lo >= 0 and hi <= 1):
            raise VplError(f"{where}: float values from {lo:g} to {hi:g}; a float photo is in [0, 1] (divide a 0..255 "
                           f"{what} by 255, or give it as uint8)")


def _from_tensor(t: Any, where: str) -> np.ndarray:
    """A ``[3, H, W]`` tensor (uint8 0..255, or float in [0, 1]) -> ``[H, W, 3]`` uint8, rounded as torchvision's
    ``to_pil_image`` does not (it truncates): ``round(255 * x)``, so that uint8 -> float -> here is lossless."""
    import torch

    if t.ndim != 3 or t.shape[0] != 3:
        raise VplError(f"{where}: a tensor of shape {tuple(t.shape)}; give [3, H, W] (channels first), uint8 or "
                       "float in [0, 1]")
    t = t.detach().cpu()
    if t.dtype == torch.uint8:
        return np.ascontiguousarray(t.permute(1, 2, 0).numpy())
    if not t.is_floating_point():
        raise VplError(f"{where}: a {t.dtype} tensor; give uint8 (0..255) or float in [0, 1]")
    t = t.float()
    _check_unit(t, where, "tensor")
    return np.ascontiguousarray((t * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def folder_photos(source: Any) -> tuple[Iterable, int | None, Any]:
    """What :meth:`~vpltool.api.segmenters.Segmenter.map` walks: ``(photos, how many or None, name of each)``.
    A folder (or one photo file): its images as `segment` lists them (:func:`vpltool.data.open_images`: a warning
    naming what it skips), named by their paths; a URL: that one photo; an iterable: its items as they come,
    lazily."""
    if is_url(source):
        return [source], 1, lambda i, photo: photo
    source = file_url_path(source)
    if isinstance(source, (str, os.PathLike)):
        from ..data.images import open_images

        path = Path(source)
        if not path.exists():
            raise VplError(f"{path}: no such folder or photo; check the path")
        items = open_images(path).items
        return [item.image for item in items], len(items), lambda i, photo: photo
    total = len(source) if hasattr(source, "__len__") else None
    return source, total, lambda i, photo: photo if isinstance(photo, (str, os.PathLike)) else i


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last shorter), drawn lazily."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


__all__ = ["IMAGE_FORMATS", "TAKES", "as_rgb", "check_image_format", "chunks", "file_url_path", "folder_photos",
           "is_batch", "is_url", "name_of", "photo_item", "photos"]
