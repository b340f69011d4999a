"""The frozen side's features of each pair, computed once and kept in the run folder (`train-text --feature-cache`,
on by default).

A family whose image and text sides are frozen (:class:`vpltool.models.text.family.FrozenSide`: Talk2DINO's DINO
and CLIP) and whose view is unaugmented (``min_scale`` 1, no flip, no noun prompts) gets the same features of a pair
at every epoch; its reference extracts them once (Talk2DINO's ``dino_extraction_v2.py``) and trains on the saved
file. Here the first epoch computes them in the step as before, and each pair's rows are written to
``OUT/cache/{image,text}/<kk>/<key>.safetensors`` (atomically); a later epoch, or a ``--resume`` after a kill,
reads them back in the DataLoader's workers (small files, streamed: nothing is held in memory) and skips the
image's decoding and the backbones. The step is then the family's ``forward_train_from``: the loss and gradients
of the uncached step bit for bit (``tests/test_talk2dino_cache.py``).

* in memory: the training process also holds each entry it writes or is handed (:meth:`FeatureCache.hold`), up to
  :data:`HOLD_SHARE` of the memory available when the run starts, as the reference holds its extracted features; an
  epoch whose every pair is held takes its batches from memory (:meth:`CachedPairs.held_item`), without the
  DataLoader's workers or a file read (two files a pair were half of a 6-pair step's time). A loader worker never
  holds: its copy would end with it.

* keys: an image's entry (``cache/image/``) is the sha256 of the cache's identity and the image's bytes, a
  caption's (``cache/text/``) of the identity and its token ids: an image with five captions is kept once, and a
  pair whose image or caption changed reads other entries.
* Identity (``cache/_cache.json``): the family's ``frozen_identity`` (its backbones' names and the digests of their
  bytes, the dtype) and the view (``crop_size``, ``min_scale``) and numerics mode; a cache made under another one
  (another DINO, another precision) is not read: it is cleared with one warning and made again. Each entry repeats
  the identity's digest and a CRC-32 of its tensors: a damaged or foreign entry is never used; its pair is computed
  again (one warning naming the file) and the entry rewritten.
* torchrun: every rank computes and writes the pairs of its own share (one pair is in one rank's share of an
  epoch); rank 0 alone writes the identity, before any rank reads.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ... import io
from ...errors import VplError, VplWarning

CACHE_DIR = "cache"
RECORD = "_cache.json"
LAYOUT = "_layout.json"  # per side: the names, dtypes and shapes of one entry (FeatureCache.layout)
FORMAT = 1
HOLD_SHARE = 0.25  # of the memory available when the cache opens: what the entries held in memory may take


def available_bytes() -> int:
    """The memory available to new allocations now (``MemAvailable`` on Linux; else the free pages), 0 unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


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
    """One pair as the cached loader gives it: its ``(index, epoch)``, its entries' keys, each side's features read
    back (None: to compute), the ``image`` ``[3, S, S]`` when its side is to compute, the ``tokens`` ``[L]`` when
    the text side is, and ``problems``: a line per damaged entry (never used)."""

    at: tuple[int, int]
    keys: tuple[str, str]
    image_features: dict[str, Tensor] | None
    text_features: dict[str, Tensor] | None
    image: Tensor | None
    tokens: Tensor | None
    problems: tuple[str, ...]


def as_list(batch: list[Item]) -> list[Item]:
    """The DataLoader's collate: the items as they are (a batch may mix read and computed pairs)."""
    return batch


SIDES = ("image", "text")


class FeatureCache:
    """The cache folder of one run: ``folder`` (``OUT/cache``), the identity's digest ``digest``; entries in
    ``image/`` (by the image's bytes) and ``text/`` (by the caption's tokens): an image with five captions is kept
    once."""

    def __init__(self, folder: Path, identity: dict[str, Any], hold_bytes: int | None = None):
        self.folder, self.identity = Path(folder), io.jsonable(identity)
        self.digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()
        # the entries held in memory ((side, key) -> features), their bytes, and the most they may take
        self.held: dict[tuple[str, str], dict[str, Tensor]] = {}
        self.held_bytes = 0
        self.hold_bytes = int(HOLD_SHARE * available_bytes()) if hold_bytes is None else hold_bytes
        self._layouts: dict[str, dict[str, list] | None] = {}

    def hold(self, side: str, key: str, features: dict[str, Tensor]) -> None:
        """Keep a sound entry in memory (a copy on the host), unless held already, past :attr:`hold_bytes`, or in a
        DataLoader worker."""
        if (side, key) in self.held or torch.utils.data.get_worker_info() is not None:
            return
        size = sum(v.numel() * v.element_size() for v in features.values())
        if self.held_bytes + size > self.hold_bytes:
            return
        self.held[(side, key)] = {k: v.detach().to("cpu", copy=True) for k, v in features.items()}
        self.held_bytes += size

    @classmethod
    def open(cls, folder: Path, identity: dict[str, Any], rank: int, world: int) -> FeatureCache:
        """The cache of ``identity`` in ``folder``: one of another identity (or an unreadable record) is cleared
        with one warning naming what differs; rank 0 writes the record, every rank waits for it."""
        cache = cls(folder, identity)
        record = cache.folder / RECORD
        if rank == 0:
            old, why = None, None
            if os.path.lexists(record):
                try:
                    old = json.loads(record.read_text())
                except (OSError, ValueError) as e:
                    old, why = {}, _unreadable(record, e)
            if old is not None and (not isinstance(old, dict) or old.get("digest") != cache.digest):
                was = old.get("identity") if isinstance(old, dict) else None
                said = [f"{k} {_short(was.get(k))} there, {_short(v)} here" for k, v in cache.identity.items()
                        if was.get(k) != v] if isinstance(was, dict) else []
                made = f"made {'; '.join(said[:3])}" if said else f"whose record {why or 'is not one'}"
                link = f" (through the link to {os.path.realpath(cache.folder)})" if cache.folder.is_symlink() else ""
                warnings.warn(VplWarning(f"{cache.folder}: a feature cache {made}{link}; not used: it is cleared and "
                                         "made again"), stacklevel=2)
                _clear(cache.folder)
            if not isinstance(old, dict) or old.get("digest") != cache.digest:
                io.write_json(record, {"format": FORMAT, "digest": cache.digest, "identity": cache.identity})
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        return cache

    def keys(self, image: bytes, tokens: Tensor) -> tuple[str, str]:
        """The entries of a pair under this identity: its image's by the image's bytes, its caption's by its
        ``[L]`` int64 token ids."""
        ik = hashlib.sha256(f"{self.digest}:image:".encode() + hashlib.sha256(image).digest()).hexdigest()
        tk = hashlib.sha256(f"{self.digest}:text:".encode() + tokens.to(torch.int64).contiguous().numpy().tobytes())
        return ik, tk.hexdigest()

    def path(self, side: str, key: str) -> Path:
        return self.folder / side / key[:2] / f"{key}.safetensors"

    def read(self, side: str, key: str) -> tuple[dict[str, Tensor] | None, str | None]:
        """``(features, None)`` of a sound entry (held in memory, else read from its file), ``(None, None)`` when
        there is none, ``(None, "PATH: why")`` for a damaged or foreign one (never used)."""
        held = self.held.get((side, key))
        if held is not None:
            return held, None
        path = self.path(side, key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as e:
            return None, f"{path}: a damaged feature-cache entry (unreadable: {e.strerror})"
        why = None
        try:
            from safetensors.torch import load

            n = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
            features = load(data)
        except Exception as e:  # noqa: BLE001 (any damage reads as one: the entry is made again)
            why = f"not a safetensors file ({type(e).__name__})"
        else:
            if meta.get("identity") != self.digest or meta.get("key") != key:
                why = "made under another identity"
            elif meta.get("crc32") != _tensors_digest(features):
                why = "its tensors do not match their checksum"
        if why is not None:
            return None, f"{path}: a damaged feature-cache entry ({why})"
        return features, None  # held by features() once its layout is checked (a forged one is not)

    def write(self, side: str, key: str, features: dict[str, Tensor]) -> None:
        from safetensors.torch import save

        rows = {k: v.detach().cpu().contiguous() for k, v in features.items()}
        meta = {"identity": self.digest, "key": key, "crc32": _tensors_digest(rows), "format": str(FORMAT)}
        with io.atomic_path(self.path(side, key)) as tmp:
            tmp.write_bytes(save(rows, metadata=meta))
        self.hold(side, key, rows)

    def features(self, batch: list[Item], image_side: Callable[[Tensor], dict[str, Tensor]],
                 text_side: Callable[[Tensor], dict[str, Tensor]], inputs: Callable[[Item], tuple[Tensor, Tensor]],
                 device: torch.device) -> dict[str, Tensor]:
        """The batch's features, both sides in one dict ``{name: [b, ...]}`` on ``device``. A side whose every entry
        was read is stacked from them; otherwise it is computed for the whole batch, one call (``image_side(images
        [b, 3, S, S])``, ``text_side(tokens [b, L])`` on ``device``; ``inputs(item)``: a read pair's ``(image,
        tokens)``), exactly as the uncached step computes it (a backbone's rounding can follow the batch's size),
        and its missing entries are written; a damaged entry is named in one warning and made again."""
        for item in batch:
            for line in item.problems:
                _recomputed(line)
        out: dict[str, Tensor] = {}
        for side, compute in (("text", text_side), ("image", image_side)):
            rows = [it.text_features if side == "text" else it.image_features for it in batch]
            keys = [it.keys[SIDES.index(side)] for it in batch]
            rows = self._of_layout(side, rows, keys)
            for it, r in zip(batch, rows):  # what a loader worker read, held here for the next epochs
                if r is not None:
                    self.hold(side, it.keys[SIDES.index(side)], r)
            if all(r is not None for r in rows):
                out.update({name: torch.stack([r[name] for r in rows]).to(device, non_blocking=True)  # type: ignore
                            for name in rows[0]})  # type: ignore[union-attr]
                continue
            given = [it.tokens if side == "text" else it.image for it in batch]
            given = [g if g is not None else inputs(it)[side == "text"] for g, it in zip(given, batch)]
            made = compute(torch.stack(given).to(device, non_blocking=True))  # type: ignore[arg-type]
            host = {name: v.detach().cpu() for name, v in made.items()}
            layout = _layout({name: v[0] for name, v in host.items()})
            self._keep_layout(side, layout)
            for i, r in enumerate(rows):
                if r is not None and _layout(r) != layout:  # read, but not what the side computes: rewritten
                    _recomputed(_misshapen(self.path(side, keys[i]), r, layout))
                    r = None
                if r is None:
                    self.write(side, keys[i], {name: v[i] for name, v in host.items()})
            out.update(made)
        return out

    def _of_layout(self, side: str, rows: list, keys: list[str]) -> list:
        """``rows`` with each entry whose tensors' names, dtypes or shapes are not the side's (its recorded
        layout, or, none recorded yet, those of the batch's other entries) set to None (computed again): a forged
        or foreign entry with a valid checksum must not reach ``torch.stack`` or the step."""
        layout = self.layout(side)
        read = [_layout(r) for r in rows if r is not None]
        if layout is None and read and any(x != read[0] for x in read):
            layout = {}  # entries of several layouts and none recorded: every one of them is computed again
        if layout is None:
            return rows
        out = []
        for r, key in zip(rows, keys):
            if r is not None and _layout(r) != layout:
                _recomputed(_misshapen(self.path(side, key), r, layout))
                r = None
            out.append(r)
        return out

    def layout(self, side: str) -> dict[str, list] | None:
        """The names, dtypes and shapes of one entry of ``side`` (``cache/<side>/_layout.json``, written when the
        side is first computed), or None when none is recorded yet."""
        if side not in self._layouts:
            try:
                found = json.loads((self.folder / side / LAYOUT).read_text())
            except (OSError, ValueError):
                found = None
            self._layouts[side] = found if isinstance(found, dict) else None
        return self._layouts[side]

    def _keep_layout(self, side: str, layout: dict[str, list]) -> None:
        if self.layout(side) != layout:
            io.write_json(self.folder / side / LAYOUT, layout)
            self._layouts[side] = layout


class CachedPairs(torch.utils.data.Dataset):
    """``PairViews`` through the cache: keys ``(index, epoch)`` -> :class:`Item` (runs in the DataLoader's workers:
    the read is theirs). A pair whose image entry is sound is not decoded."""

    def __init__(self, views: Any, cache: FeatureCache):
        self.views, self.cache = views, cache
        # each pair's keys, made on its first read in this process: its image's bytes are the run's input, checked
        # by content when the run started (the run's record), so they are read and hashed once, not every epoch
        self.keys: dict[int, tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, key: tuple[int, int]) -> Item:
        keys = self.keys.get(key[0])
        if keys is None:
            pair = self.views.pairs[key[0]]
            keys = self.keys[key[0]] = self.cache.keys(pair.image_bytes(), self.views.tokenize([pair.caption])[0])
        (image_features, bad_image), (text_features, bad_text) = (self.cache.read(side, k)
                                                                  for side, k in zip(SIDES, keys))
        image = tokens = None
        if image_features is None:
            image, tokens = self.views[key]
        elif text_features is None:
            tokens = self.views.tokenize([self.views.pairs[key[0]].caption])[0]
        return Item(key, keys, image_features, text_features, image, tokens,
                    tuple(p for p in (bad_image, bad_text) if p is not None))

    def held_item(self, key: tuple[int, int]) -> Item | None:
        """Pair ``key`` ``(index, epoch)`` from memory alone: its :class:`Item` when both its entries are held in
        this process (:meth:`FeatureCache.hold`), else None."""
        keys = self.keys.get(key[0])
        if keys is None:
            return None
        image, text = (self.cache.held.get((side, k)) for side, k in zip(SIDES, keys))
        return None if image is None or text is None else Item(key, keys, image, text, None, None, ())

    def inputs(self, item: Item) -> tuple[Tensor, Tensor]:
        """``(image [3, S, S], tokens [L])`` of a pair whose side was read, to compute its batch's side whole."""
        return self.views[item.at][:2]

    def features(self, batch: list[Item], fam: Any, model: Any, device: torch.device) -> dict[str, Tensor]:
        """:meth:`FeatureCache.features` with family ``fam``'s frozen sides of ``model`` (the batch's keys noted:
        a worker found them, :meth:`held_item` reads them here)."""
        for it in batch:
            self.keys.setdefault(it.at[0], it.keys)
        return self.cache.features(batch, functools.partial(fam.frozen_image_features, model),
                                   functools.partial(fam.frozen_text_features, model), self.inputs, device)


def check_cache_folder(folder: Path) -> None:
    """One line, before a run writes anything, where ``OUT/cache`` cannot be the run's feature cache: a file (or
    a link to one) or a link to nothing. A link to a folder (a cache kept on another disk) is used as that folder."""
    fix = "move it away or delete it (the run makes its cache there), or pass --no-feature-cache"
    if folder.is_symlink() and not folder.exists():
        raise VplError(f"{folder}: a link to {os.readlink(folder)}, which is not there, where train-text keeps its "
                       f"feature cache; {fix}")
    if folder.exists() and not folder.is_dir():
        raise VplError(f"{folder}: a file, where train-text keeps its feature cache (a folder); {fix}")


def _unreadable(record: Path, e: Exception) -> str:
    """Why a cache record could not be read, for the warning that clears the cache."""
    if record.is_dir():
        return f"{record.name} is a folder, not a file"
    return f"{record.name} is unreadable ({type(e).__name__})"


def _clear(folder: Path) -> None:
    """Empty a cache folder: its contents, so that a link to a folder elsewhere stays a link (rmtree refuses one)."""
    if not folder.is_symlink():
        shutil.rmtree(folder)
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _layout(rows: dict[str, Tensor]) -> dict[str, list]:
    """An entry's tensors by name: ``[dtype, shape]`` (JSON)."""
    return {name: [str(v.dtype).removeprefix("torch."), list(v.shape)] for name, v in sorted(rows.items())}


def _said(layout: dict[str, list]) -> str:
    return ", ".join(f"{name} {dtype} {tuple(shape)}" for name, (dtype, shape) in layout.items()) or "none"


def _misshapen(path: Path, rows: dict[str, Tensor], layout: dict[str, list]) -> str:
    """The line of an entry whose tensors are not the cache's layout (``{}``: none known, its batch disagrees)."""
    cache = f", the cache's {_said(layout)}" if layout else ", unlike the other entries of its batch"
    return f"{path}: a damaged feature-cache entry (its tensors are {_said(_layout(rows))}{cache})"


def _recomputed(line: str) -> None:
    warnings.warn(VplWarning(f"{line}; not used: its pair's features are computed again"), stacklevel=3)


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


def pair_batches(data: torch.utils.data.Dataset, plan: Callable[[int, int], Sampler], per_epoch: int, start: int,
                 stop: int, make_loader: Callable[[Sampler], Iterator]) -> Iterator[list]:
    """The batches of iterations ``start .. stop - 1``, an epoch at a time (``plan(first, end)``: its sampler):
    from memory where the feature cache holds every pair of the epoch in this process
    (:meth:`CachedPairs.held_item`: no loader, no worker, no file), else from ``make_loader(sampler)``.
    Without the cache, one loader for the whole range (its workers started once)."""
    if not isinstance(data, CachedPairs):
        yield from make_loader(plan(start, stop))
        return
    it = start
    while it < stop:
        end = min(stop, (it // per_epoch + 1) * per_epoch)
        sampler = plan(it, end)
        held = [[data.held_item(k) for k in keys] for keys in sampler]
        if all(item is not None for batch in held for item in batch):
            yield from held
        else:
            yield from make_loader(sampler)
        it = end


__all__ = ["CACHE_DIR", "HOLD_SHARE", "FeatureCache", "CachedPairs", "Item", "as_list", "available_bytes", "cache_off",
           "check_cache_folder", "pair_batches"]
