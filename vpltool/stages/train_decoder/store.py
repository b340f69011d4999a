"""train-decoder's feature store (``--feature-store DIR``): the frozen features of ``--cache-features`` kept on disk,
named by their content, so that a second decoder on the same images (another refinement's pseudo masks: `make demo`
trains two at once) reads them instead of running the CLIP over every image again.

* Key: the sha256 of what the features depend on: the CLIP's identity (the prototypes' model record, its weights by
  content), its input mean and std, the blocks read, the view (crop), the dtype and the numerics mode
  (:func:`store_key`), and every image's bytes in the run's order. Another CLIP, image, order, crop or mode reads
  another entry; the pseudo masks are never stored (each run reads its own).
* One builder at a time: the store's lock (``flock`` on ``DIR/.lock``) is held while an entry is looked up and, when
  missing, built and written (atomically), so two runs started together build it once: the second waits, then
  reads. The kernel frees the lock when a run dies.
* An entry that cannot be read, or holds another shape or dtype than its key's run builds, is built again and
  rewritten, with one warning naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ... import io
from ...errors import VplWarning

FORMAT = 2  # 2: the key over the images' content_sha digests
LOCK = ".lock"
TENSOR = "feats"


def store_key(identity: dict[str, Any], images: Sequence[Path]) -> str:
    """The entry's name: sha256 of ``identity`` (JSON, keys sorted) and of each image's bytes, in order. The bytes'
    digests are the process's one record of its inputs by content (:func:`vpltool.data.common.content_sha`: each
    file read once a process, noted in the run's ledger), not a second reading of every image."""
    from ...data.common import content_sha

    identity_json = json.dumps({"format": FORMAT, **identity}, sort_keys=True, default=str)
    return io.files_digest([identity_json, *(content_sha(path) for path in images)]).removeprefix("sha256:")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    io.make_folder(folder)
    with open(folder / LOCK, "a") as f:  # blocks while another run builds: its entry is then read, not rebuilt
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read(path: Path, shape: tuple[int, ...] | None) -> Tensor | None:
    """The entry's ``[n, 2, L, h, w, width]`` float16 features, or None (with a warning) when it is unusable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        feats = load_file(str(path))[TENSOR]
    except (SafetensorError, OSError, KeyError) as e:
        warnings.warn(f"{path}: unreadable feature-store entry ({str(e)[:80]}); computing it again", VplWarning,
                      stacklevel=3)
        return None
    if feats.dtype != torch.float16 or (shape is not None and tuple(feats.shape[:2]) != shape):
        warnings.warn(f"{path}: feature-store entry of shape {tuple(feats.shape)} {feats.dtype}, not this run's; "
                      "computing it again", VplWarning, stacklevel=3)
        return None
    return feats


def stored_features(folder: str | Path, key: str, n_images: int, build: Callable[[], Tensor]) -> Tensor:
    """Features ``[n_images, 2, L, h, w, width]`` float16 from ``folder/<key>.safetensors``, or ``build()`` written
    there first (under the store's lock: one builder)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    path = folder / f"{key}.safetensors"
    with _locked(folder):
        feats = _read(path, (n_images, 2)) if path.is_file() else None
        if feats is None:
            feats = build()
            with io.atomic_path(path) as tmp:
                save_file({TENSOR: feats.contiguous()}, str(tmp))
    return feats
