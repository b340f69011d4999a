"""`make-pairs`: fresh demo scenes as img2dataset-style webdataset shards (layout, captions, crops, determinism,
resume, no scene of a world's val split), read unchanged by `train-pgseg` and `train-toy-clip --pairs`."""

from __future__ import annotations

import hashlib
import io as _io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vpltool.data.pairs import decode_rgb, open_pairs
from vpltool.demo.config import PairsConfig
from vpltool.demo.make_pairs import pair_sample, write_pairs
from vpltool.demo.make_world import write_dataset
from vpltool.demo.scenes import LOOK_WORDS, SceneConfig, generate_scenes, split_seed
from vpltool.demo.toyclip import scene_seed, toy_vocabulary
from vpltool.errors import VplError

CFG = PairsConfig(scenes=7, seed=3, shard_size=3)


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_layout_is_img2datasets_and_train_pgseg_reads_it(tmp_path):
    out = write_pairs(tmp_path / "pairs", CFG)
    shards = sorted(p.name for p in out.glob("*.tar"))
    assert shards == ["00000.tar", "00001.tar", "00002.tar"]  # 3 + 3 + 1 samples
    first = _members(out / "00000.tar")
    assert sorted(first) == [f"00000{i}.{e}" for i in range(3) for e in ("json", "png", "txt")]
    meta = json.loads(first["000001.json"])
    assert meta["key"] == "000001" and meta["scene"] == 1 and meta["caption"] == first["000001.txt"].decode()
    pairs = open_pairs(out)  # the reader train-pgseg uses, unchanged
    assert len(pairs.pairs) == 7 and pairs.kind == "shards"
    assert np.asarray(decode_rgb(pairs.pairs[6])).shape == (96, 96, 3)
    record = json.loads((out / "_stage.json").read_text())
    assert record["stage"] == "make-pairs" and record["count"] == 7


def test_captions_are_detailed_and_name_what_the_view_shows():
    words = set(toy_vocabulary("detailed"))
    cfg = PairsConfig(scenes=60, seed=0, crop_prob=0.5)
    crops, looks = 0, 0
    for i in range(cfg.scenes):
        image, caption, crop = pair_sample(cfg, i)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert set(caption.lower().replace(",", " ").replace(".", " ").replace(":", " ").split()) <= words
        crops += crop
        looks += any(w in caption.split() for w in LOOK_WORDS.values())
    assert 15 <= crops <= 45  # about half are re-captioned crops
    assert looks > 10  # the detailed captions' look words


def test_a_crop_is_recaptioned_with_what_it_shows():
    """With every sample a crop, some caption drops a class its whole scene has (the crop left it out)."""
    cfg = PairsConfig(scenes=40, seed=1, crop_prob=1.0, detail=0.0)
    whole = PairsConfig(scenes=40, seed=1, crop_prob=0.0, detail=0.0)
    fewer = sum(len(pair_sample(cfg, i)[1].split(" and ")) < len(pair_sample(whole, i)[1].split(" and "))
                for i in range(cfg.scenes))
    assert fewer > 0


def test_same_seed_same_bytes_other_seed_other_scenes(tmp_path):
    a = write_pairs(tmp_path / "a", CFG)
    b = write_pairs(tmp_path / "b", CFG)
    c = write_pairs(tmp_path / "c", PairsConfig(scenes=7, seed=4, shard_size=3))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert [digest(p) for p in sorted(a.glob("*.tar"))] == [digest(p) for p in sorted(b.glob("*.tar"))]
    assert digest(a / "00000.tar") != digest(c / "00000.tar")


def test_no_sample_is_a_scene_of_the_worlds_splits(tmp_path):
    """The pairs' scene seed is none of the world's split seeds, and no whole-scene sample is a val image."""
    for seed in range(4):
        assert scene_seed(seed, "pairs") not in {split_seed(s, part) for s in range(4) for part in ("train", "val")}
        assert scene_seed(seed, "pairs") not in {scene_seed(seed, "train"), scene_seed(seed, "heldout")}
    cfg = PairsConfig(scenes=50, seed=0, crop_prob=0.0)
    val = {hashlib.sha256(s.image.tobytes()).hexdigest() for s in generate_scenes(50, split_seed(0, "val"),
                                                                                   SceneConfig())}
    ours = set()
    for i in range(cfg.scenes):
        image = pair_sample(cfg, i)[0]
        ours |= {hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in (image, image[:, ::-1])}
    assert not ours & val


def test_a_killed_run_resumes_its_missing_shards_and_other_settings_are_refused(tmp_path):
    out = write_pairs(tmp_path / "p", CFG)
    want = (out / "00001.tar").read_bytes()
    (out / "00001.tar").unlink()
    (out / "_stage.json").rename(out / "_run.json")  # as a kill leaves it: no completion record
    before = (out / "00000.tar").stat().st_mtime_ns
    write_pairs(out, CFG)
    assert (out / "00001.tar").read_bytes() == want
    assert (out / "00000.tar").stat().st_mtime_ns == before  # a finished shard is kept
    with pytest.raises(VplError, match="other parameters"):
        write_pairs(out, PairsConfig(scenes=7, seed=5, shard_size=3))


def test_png_members_decode_to_the_sample(tmp_path):
    out = write_pairs(tmp_path / "p", PairsConfig(scenes=2, seed=2, shard_size=2))
    png = _members(out / "00000.tar")["000001.png"]
    assert np.array_equal(np.asarray(Image.open(_io.BytesIO(png))), pair_sample(PairsConfig(scenes=2, seed=2), 1)[0])


def test_cli_bad_values_are_one_line_and_write_nothing(tmp_path):
    from vpltool.cli import app

    for args, words in ((["--scenes", "0"], "--scenes 0: must be >= 1"),
                        (["--crop-prob", "2"], "--crop-prob 2.0: must be in [0, 1]"),
                        (["--size", "32"], "--size 32: must be >= 48")):
        result = CliRunner().invoke(app, ["make-pairs", str(tmp_path / "p"), *args])
        assert result.exit_code == 2 and words in result.output, result.output
        assert not (tmp_path / "p").exists()


def test_a_run_too_big_for_the_disk_is_refused_before_a_shard_is_written(tmp_path, monkeypatch):
    from vpltool.cli import app
    from vpltool.demo import make_pairs

    per_pair = make_pairs.sample_bytes(PairsConfig())
    assert 5_000 < per_pair < 100_000  # a 96 px scene's PNG and its two text members (~21 KB a pair on disk)
    result = CliRunner().invoke(app, ["make-pairs", str(tmp_path / "p"), "--scenes", "2147483648"])
    assert result.exit_code == 2 and "--scenes 2147483648 needs about" in result.output, result.output
    assert "lower --scenes" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()
    # a resumed run needs room for its missing shards alone
    out = write_pairs(tmp_path / "q", CFG)
    (out / "00001.tar").unlink()
    (out / "_stage.json").rename(out / "_run.json")
    monkeypatch.setattr(make_pairs, "_free_bytes", lambda _: per_pair * 2)  # room for 4 pairs at the margin of 2
    write_pairs(out, CFG)  # 3 pairs missing: resumed
    monkeypatch.setattr(make_pairs, "_free_bytes", lambda _: per_pair)
    with pytest.raises(VplError, match="needs about"):
        write_pairs(tmp_path / "r", CFG)  # 7 pairs > 2 x 1
    assert not (tmp_path / "r").exists()


def test_toy_clip_trains_on_the_shards_and_refuses_bad_pairs(tmp_path):
    from vpltool.demo.config import ToyClipConfig
    from vpltool.demo.train_toy_clip import open_pair_source, train_toy_clip

    out = write_pairs(tmp_path / "p", PairsConfig(scenes=8, seed=0, shard_size=4))
    got = train_toy_clip(tmp_path / "toy", ToyClipConfig(steps=2, batch_size=4), pairs=out, eval_scenes=8,
                         cam_scenes=0)
    assert got["data"].startswith("8 pairs in") and got["steps"] == 2
    with pytest.raises(VplError, match="cannot fill one batch of 16"):
        open_pair_source(out, 16, "detailed")
    world = write_dataset(tmp_path / "w", n_train=4, n_val=0, seed=0)
    (world / "captions.json").write_text(json.dumps({f"train_{i:06d}": " " for i in range(4)}))
    with pytest.raises(VplError, match="empty caption"):
        open_pair_source(world, 2, "detailed")
