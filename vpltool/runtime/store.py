"""The feature store (``--feature-store DIR`` of train-decoder and predict): frozen CLIP features kept on disk, named
by their content, so that a second run on the same images (another refinement's decoder) reads them instead of
running the CLIP over every image again.

* Key (:func:`store_key`): the sha256 of what the features depend on (the run's ``identity``: the CLIP's record, its
  input mean and std, the blocks read, the views, the dtype and the numerics mode) and of every image's bytes in the
  run's order. Another CLIP, image, order, view or mode reads another entry.
* One builder at a time (:func:`locked`): ``flock`` on ``DIR/.lock`` is held while an entry is looked up and, when
  missing, built and written (atomically, :func:`write_entry`), so two runs started together build it once: the
  second waits, then reads. The kernel frees the lock when a run dies.
* An entry that cannot be read, or holds other tensors than its key's run builds (:func:`read_entry`'s check), is
  built again and rewritten, with one warning naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from .. import io
from ..errors import VplWarning

FORMAT = 2  # 2: the key over the images' content_sha digests
LOCK = ".lock"


def store_key(identity: Mapping[str, Any], images: Sequence[Path]) -> str:
    """The entry's name: sha256 of ``identity`` (JSON, keys sorted) and of each image's bytes, in order. The bytes'
    digests are the process's one record of its inputs by content (:func:`vpltool.data.common.content_sha`: each
    file read once a process, noted in the run's ledger), not a second reading of every image."""
    from ..data.common import content_sha

    identity_json = json.dumps({"format": FORMAT, **identity}, sort_keys=True, default=str)
    return io.files_digest([identity_json, *(content_sha(path) for path in images)]).removeprefix("sha256:")


def entry_path(folder: str | Path, key: str) -> Path:
    """``folder/<key>.safetensors``."""
    return Path(folder) / f"{key}.safetensors"


@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """The store's lock, held for the block: another run's lookup waits (its entry is then read, not rebuilt)."""
    io.make_folder(Path(folder))
    with open(Path(folder) / LOCK, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_entry(path: Path, check: Callable[[dict[str, Tensor]], str | None]) -> dict[str, Tensor] | None:
    """The entry's tensors, or None: no file, or (with one warning naming it) an unreadable one, or one whose
    tensors ``check`` finds wrong (it returns what it found, e.g. ``"of shape (3, 2) torch.float32"``, or None when
    they are this run's)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        warnings.warn(f"{path}: unreadable feature-store entry ({str(e)[:80]}); computing it again", VplWarning,
                      stacklevel=3)
        return None
    found = check(tensors)
    if found is not None:
        warnings.warn(f"{path}: feature-store entry {found}, not this run's; computing it again", VplWarning,
                      stacklevel=3)
        return None
    return tensors


def write_entry(path: Path, tensors: Mapping[str, Tensor]) -> None:
    """The entry written atomically (a reader never sees half of it)."""
    from safetensors.torch import save_file

    with io.atomic_path(path) as tmp:
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp))
