"""The frozen side's features of each pair, computed once and kept in the run folder (`train-text --feature-cache`,
on by default).

A family whose image and text sides are frozen (:class:`vpltool.models.text.family.FrozenSide`: Talk2DINO's DINO
and CLIP) and whose view is unaugmented (``min_scale`` 1, no flip, no noun prompts) gets the same features of a pair
at every epoch; its reference extracts them once (Talk2DINO's ``dino_extraction_v2.py``) and trains on the saved
file. Here the first epoch computes them in the step as before, and each pair's row is written to
``OUT/cache/<kk>/<key>.safetensors`` (atomically); a later epoch, or a ``--resume`` after a kill, reads the rows
back in the DataLoader's workers (one small file per pair, streamed: nothing is held in memory) and skips the
image's decoding and the backbones. The step is then the family's ``forward_train_from``: the loss and gradients
of the uncached step bit for bit (``tests/test_talk2dino_cache.py``).

* ``key``: sha256 of the cache's identity, the image's bytes and the caption's token ids: a pair whose image or
  caption changed is another key.
* Identity (``cache/_cache.json``): the family's ``frozen_identity`` (its backbones' names and the digests of their
  bytes, the dtype) and the view (``crop_size``, ``min_scale``) and numerics mode; a cache made under another one
  (another DINO, another precision) is not read: it is cleared with one warning and made again. Each entry repeats
  the identity's digest and a CRC-32 of its tensors: a damaged or foreign entry is never used; its pair is computed
  again (one warning naming the file) and the entry rewritten.
* torchrun: every rank computes and writes the pairs of its own share (one pair is in one rank's share of an
  epoch); rank 0 alone writes the identity, before any rank reads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ... import io
from ...errors import VplWarning

CACHE_DIR = "cache"
RECORD = "_cache.json"
FORMAT = 1


def cache_off(fam: Any, cfg: Any) -> str | None:
    """Why a run of ``cfg`` caches nothing (a warning to print), ``""`` when there is nothing to say (the knob off, or
    a family that trains its image side), None when it caches."""
    from ...models.text.family import caches_frozen_side

    if not cfg.feature_cache or not caches_frozen_side(fam):
        return ""
    multi_label, _, keyed = cfg.noun_prompts()
    if cfg.min_scale < 1 or cfg.hflip or multi_label or keyed:
        return (f"--feature-cache is on but the view is augmented (--min-scale {cfg.min_scale:g}"
                f"{', --hflip' if cfg.hflip else ''}): each epoch sees other pixels, so the frozen features are "
                "computed at every step")
    return None


class Item(NamedTuple):
    """One pair as the cached loader gives it: its cache ``key`` and either its ``features`` (read back) or its
    ``image`` ``[3, S, S]`` and ``tokens`` ``[L]`` (to compute), with ``problem`` naming a damaged entry."""

    key: str
    features: dict[str, Tensor] | None
    image: Tensor | None
    tokens: Tensor | None
    problem: str | None


def as_list(batch: list[Item]) -> list[Item]:
    """The DataLoader's collate: the items as they are (a batch may mix read and computed pairs)."""
    return batch


class FeatureCache:
    """The cache folder of one run: ``folder`` (``OUT/cache``), the identity's digest ``digest``."""

    def __init__(self, folder: Path, identity: dict[str, Any]):
        self.folder, self.identity = Path(folder), io.jsonable(identity)
        self.digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()

    @classmethod
    def open(cls, folder: Path, identity: dict[str, Any], rank: int, world: int) -> FeatureCache:
        """The cache of ``identity`` in ``folder``: one of another identity (or an unreadable record) is cleared
        with one warning naming what differs; rank 0 writes the record, every rank waits for it."""
        cache = cls(folder, identity)
        record = cache.folder / RECORD
        if rank == 0:
            old = None
            if record.exists():
                try:
                    old = json.loads(record.read_text())
                except (OSError, ValueError):
                    old = {}
            if old is not None and (not isinstance(old, dict) or old.get("digest") != cache.digest):
                was = old.get("identity", {}) if isinstance(old, dict) else {}
                was = was if isinstance(was, dict) else {}
                said = [f"{k} {_short(was.get(k))} there, {_short(v)} here" for k, v in cache.identity.items()
                        if was.get(k) != v]
                warnings.warn(VplWarning(
                    f"{cache.folder}: a feature cache made {'; '.join(said[:3]) if said else 'unreadably'}; not "
                    "used: it is cleared and made again"), stacklevel=2)
                shutil.rmtree(cache.folder)
            if old is None or old.get("digest") != cache.digest:
                io.write_json(record, {"format": FORMAT, "digest": cache.digest, "identity": cache.identity})
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        return cache

    def key(self, image: bytes, tokens: Tensor) -> str:
        """The entry of a pair: its image's bytes and caption's ``[L]`` int64 token ids under this identity."""
        h = hashlib.sha256(self.digest.encode())
        h.update(hashlib.sha256(image).digest())
        h.update(tokens.to(torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def read(self, key: str) -> tuple[dict[str, Tensor] | None, str | None]:
        """``(features, None)`` of a sound entry, ``(None, None)`` when there is none, ``(None, why)`` for a
        damaged or foreign one (never used)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as e:
            return None, f"unreadable ({e.strerror})"
        try:
            from safetensors.torch import load

            n = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
            features = load(data)
        except Exception as e:  # noqa: BLE001 (any damage reads as one: the entry is made again)
            return None, f"not a safetensors file ({type(e).__name__})"
        if meta.get("identity") != self.digest or meta.get("key") != key:
            return None, "made under another identity"
        if meta.get("crc32") != _tensors_digest(features):
            return None, "its tensors do not match their checksum"
        return features, None

    def write(self, key: str, features: dict[str, Tensor]) -> None:
        from safetensors.torch import save

        rows = {k: v.detach().cpu().contiguous() for k, v in features.items()}
        meta = {"identity": self.digest, "key": key, "crc32": _tensors_digest(rows), "format": str(FORMAT)}
        path = self.path(key)
        with io.atomic_path(path) as tmp:
            tmp.write_bytes(save(rows, metadata=meta))

    def features(self, batch: list[Item], compute: Callable[[Tensor, Tensor], dict[str, Tensor]],
                 device: torch.device) -> dict[str, Tensor]:
        """The batch's features ``{name: [b, ...]}`` on ``device``: the entries read back, the others computed by
        ``compute(images [m, 3, S, S], tokens [m, L])`` on ``device`` in one call and written; a damaged entry is
        named in one warning and made again."""
        for item in batch:
            if item.problem is not None:
                warnings.warn(VplWarning(f"{self.path(item.key)}: a damaged feature-cache entry ({item.problem}); "
                                         "not used: its pair's features are computed again"), stacklevel=2)
        miss = [i for i, item in enumerate(batch) if item.features is None]
        if not miss:
            rows = [item.features for item in batch]
            return {k: torch.stack([r[k] for r in rows]).to(device, non_blocking=True) for k in rows[0]}
        images = torch.stack([batch[i].image for i in miss]).to(device, non_blocking=True)
        tokens = torch.stack([batch[i].tokens for i in miss]).to(device, non_blocking=True)
        made = compute(images, tokens)
        host = {k: v.detach().cpu() for k, v in made.items()}
        for j, i in enumerate(miss):
            self.write(batch[i].key, {k: v[j] for k, v in host.items()})
        if len(miss) == len(batch):
            return made  # the step's own tensors: the uncached step's arithmetic
        rows: list[dict[str, Tensor]] = [item.features for item in batch]  # type: ignore[misc]
        for j, i in enumerate(miss):
            rows[i] = {k: v[j] for k, v in host.items()}
        return {k: torch.stack([r[k] for r in rows]).to(device, non_blocking=True) for k in host}


class CachedPairs(torch.utils.data.Dataset):
    """``PairViews`` through the cache: keys ``(index, epoch)`` -> :class:`Item` (runs in the DataLoader's workers:
    the read is theirs). A pair with a sound entry is not decoded."""

    def __init__(self, views: Any, cache: FeatureCache):
        self.views, self.cache = views, cache
        # each pair's key, made on its first read in this process: its image's bytes are the run's input, checked
        # by content when the run started (the run's record), so they are read and hashed once, not every epoch
        self.keys: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, key: tuple[int, int]) -> Item:
        name = self.keys.get(key[0])
        if name is None:
            pair = self.views.pairs[key[0]]
            name = self.keys[key[0]] = self.cache.key(pair.image_bytes(), self.views.tokenize([pair.caption])[0])
        features, problem = self.cache.read(name)
        if features is not None:
            return Item(name, features, None, None, None)
        image, tokens = self.views[key]
        return Item(name, None, image, tokens, problem)


def _short(value: Any) -> Any:
    """A digest cut to 12 hex digits for a message (``sha256:6a453bd66501…``)."""
    text = str(value)
    return text[:text.index(":") + 13] + "…" if text.startswith(("sha256:", "values:")) else value


def _tensors_digest(tensors: dict[str, Tensor]) -> str:
    """A CRC-32 of the tensors' names, dtypes, shapes and bytes: damage on disk is what it catches (a flipped byte,
    a cut file), not a forger; read at every epoch, so the cheap one (a tenth of sha256's time)."""
    crc = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        crc = zlib.crc32(f"{name}:{t.dtype}:{tuple(t.shape)};".encode(), crc)
        crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


__all__ = ["CACHE_DIR", "FeatureCache", "CachedPairs", "Item", "as_list", "cache_off"]
