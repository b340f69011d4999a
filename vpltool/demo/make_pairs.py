"""`vpltool make-pairs`: image-caption pairs of fresh demo scenes, written as webdataset shards as img2dataset
lays them out, so that any text-supervised trainer reads them (`train-pgseg PAIRS`, `train-toy-clip --pairs`).

Each sample is one fresh scene (never one of a `make-world` split: its scenes come from
:func:`~vpltool.demo.toyclip.scene_seed` purpose ``"pairs"``, which neither the world's :func:`split_seed` nor the
toy CLIP's own scenes use), seen as the toy CLIP sees it (:func:`~vpltool.demo.train_toy_clip.detailed_view`): half
of them a random crop re-captioned with what it shows, flipped half of the time, captioned in detail (colour or
texture, size, position and count words read off the mask).

Layout (img2dataset's ``output_format webdataset``): ``OUT/00000.tar``, ``00001.tar``, ... each holding
``KEY.png``, ``KEY.txt`` (the caption) and ``KEY.json`` (``key``, ``caption``, ``scene``: the scene's index,
``crop``: whether the view is a crop; img2dataset's per-sample metadata file), ``KEY`` = the shard's 5 digits then
the sample's index in it; ``_stage.json`` last. Each shard is written whole and renamed into place
(:func:`vpltool.io.atomic_path`), byte-identical per seed (members in order, mtime 0); a killed run resumes by
writing only the shards that are missing.
"""

from __future__ import annotations

import io as _io
import json
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from .. import io
from ..errors import VplError
from ..runtime.numerics import run_numerics
from .config import PairsConfig
from .scenes import SceneConfig, check_config, render_scene
from .toyclip import scene_seed
from .train_toy_clip import detailed_view

STAGE = "make-pairs"
VIEW_STREAM = 0xC409  # the view's rng: (scene seed, index, this), as the toy CLIP's crops rng


def shard_count(cfg: PairsConfig) -> int:
    return -(-cfg.scenes // cfg.shard_size)


def sample_key(shard: int, index: int, shard_size: int) -> str:
    """img2dataset's key: the shard's number in 5 digits, then the sample's index in the shard."""
    return f"{shard:05d}{index:0{len(str(shard_size - 1))}d}"


def pair_sample(cfg: PairsConfig, i: int) -> tuple[np.ndarray, str, bool]:
    """Sample ``i``: ``([size, size, 3] uint8 image, caption, cropped)``; depends only on ``(cfg, i)``."""
    seed = scene_seed(cfg.seed, "pairs")
    scene = render_scene(np.random.default_rng([seed, i]), SceneConfig(size=cfg.size))
    rng = np.random.default_rng([seed, i, VIEW_STREAM])
    image, caption = detailed_view(scene, rng, cfg.crop_prob, cfg.detail)
    return np.ascontiguousarray(image), caption, image is not scene.image and image.base is not scene.image


def sample_bytes(cfg: PairsConfig) -> int:
    """About what one pair takes in a shard: sample 0's PNG, caption and metadata, each with its 512-byte tar header
    and padding (32,000 pairs of 96 px: 662 MB on disk, 21 KB a pair; sample 0 alone: the same order)."""
    image, caption, _ = pair_sample(cfg, 0)
    png = _io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    sizes = (len(png.getvalue()), len(caption.encode("utf-8")), len(caption) + 96)  # the JSON: the caption + keys
    return sum(512 + -(-n // 512) * 512 for n in sizes)


def _free_bytes(out: Path) -> int:
    """Free bytes on the disk that ``out`` is (or would be) on: its nearest existing folder's."""
    here = out.resolve()
    while not here.exists() and here != here.parent:
        here = here.parent
    return shutil.disk_usage(here).free


def check_room(out: Path, cfg: PairsConfig) -> None:
    """Refuse, before anything is written, a run whose missing shards would need more than twice the free disk
    (a one-sample estimate, so a margin of 2: `--scenes 2147483648` would otherwise render for years and stop on a
    full disk)."""
    n = shard_count(cfg)  # the shards already there, listed once (--scenes 2**31 is 2 million shard names)
    done = {int(p.stem) for p in out.glob("*.tar") if p.stem.isdigit()} if out.is_dir() else set()
    missing = cfg.scenes - sum(min(cfg.shard_size, cfg.scenes - s * cfg.shard_size) for s in done if s < n)
    need, free = missing * sample_bytes(cfg), _free_bytes(out)
    if need > 2 * free:
        raise VplError(f"{out}: --scenes {cfg.scenes} needs about {_size(need)} ({_size(need // max(missing, 1))} a "
                       f"pair) and that disk has {_size(free)} free; lower --scenes or write to a bigger disk")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, _io.BytesIO(data))


def write_shard(path: Path, cfg: PairsConfig, shard: int) -> int:
    """Shard ``shard`` of the run to ``path`` (atomically); returns its sample count."""
    first, stop = shard * cfg.shard_size, min((shard + 1) * cfg.shard_size, cfg.scenes)
    with io.atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(first, stop):
            image, caption, crop = pair_sample(cfg, i)
            key = sample_key(shard, i - first, cfg.shard_size)
            png = _io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            _member(tar, f"{key}.png", png.getvalue())
            _member(tar, f"{key}.txt", caption.encode("utf-8"))
            meta = {"key": key, "caption": caption, "scene": i, "crop": crop, "status": "success"}
            _member(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
    return stop - first


def write_pairs(out: str | Path, cfg: PairsConfig = PairsConfig(), *, overwrite: bool = False,
                on_start: Callable[[int, int], None] | None = None,
                on_shard: Callable[[int], None] | None = None) -> Path:
    """Write ``cfg.scenes`` pairs as shards into ``out`` (module doc) and record the run in ``_stage.json``.

    A folder holding this exact run is returned untouched; an interrupted one with the same settings is resumed
    (the shards it finished are kept); one of other settings is refused unless ``overwrite``. ``on_start(total
    samples, samples already there)``, ``on_shard(samples)`` after each shard written.
    """
    check_config(SceneConfig(size=cfg.size))
    out = Path(out)
    io.check_outputs(STAGE, {"OUT": (out, "stage")}, overwrite=overwrite)
    check_room(out, cfg)
    params = {**asdict(cfg), "scene_seed": scene_seed(cfg.seed, "pairs")}
    record = io.stage_record_path(out)
    if not overwrite and record.is_file() and io.read_record(record).get("params") == io.jsonable(params):
        return out
    with io.output_lock(out):
        io.prepare_stage_dir(out, STAGE, params, overwrite, numerics=run_numerics())
        shards = [out / f"{s:05d}.tar" for s in range(shard_count(cfg))]
        if overwrite:
            for path in shards:
                path.unlink(missing_ok=True)
        done = [path.is_file() for path in shards]
        if on_start is not None:
            on_start(cfg.scenes, sum(min(cfg.shard_size, cfg.scenes - s * cfg.shard_size)
                                     for s, d in enumerate(done) if d))
        for s, path in enumerate(shards):
            if not done[s]:
                n = write_shard(path, cfg, s)
                if on_shard is not None:
                    on_shard(n)
        io.write_stage_record(out, STAGE, params=params, inputs={}, numerics=run_numerics(), count=cfg.scenes,
                              shards=[p.name for p in shards])
        (out / io.RUN_RECORD).unlink(missing_ok=True)
    return out


__all__ = ["STAGE", "check_room", "sample_bytes", "write_pairs", "write_shard", "pair_sample", "sample_key",
           "shard_count"]
