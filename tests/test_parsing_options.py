"""Parsing, validation and options, checked at their one shared layer (no model loads here).

* class files read as each reference's own ``get_cls_idx`` splits them (SCLIP's ``,``; ProxyCLIP's and Trident's
  ``; ``) and checked as ``--classes`` is;
* the image-text pairs of train-pgseg: the split named as every ``--split`` is, never dropped or picked silently;
* the table of which options apply under which mode (vpltool.cli.applies) and the finite-number rule of every
  float option.
"""

from __future__ import annotations

import io as _io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from vpltool.config import SegmentConfig
from vpltool.config.presets import VOC_CLASSES
from vpltool.data.class_files import class_file_queries, read_class_file
from vpltool.data.pairs import check_pairs, open_pairs
from vpltool.errors import VplError


# ------------------------------------------------------------------------------------------------ class files
def _proxyclip_voc21(path: Path) -> Path:
    """VOC21's class file in ProxyCLIP's and Trident's format: the background's 26 words on line 1 separated by
    '; ' (the words themselves are SCLIP's, which ship the same 26 comma-separated), then one class a line; no
    newline after the last line, as their files."""
    words = read_class_file("sclip:voc21")[0]
    path.write_text("; ".join(words) + "\n" + "\n".join(VOC_CLASSES))
    return path


def test_proxyclip_and_trident_class_files_give_voc21_its_26_background_queries(tmp_path):
    fg, bg = class_file_queries(_proxyclip_voc21(tmp_path / "cls_voc21.txt"), 20)
    assert len(bg) == 26 and bg == read_class_file("sclip:voc21")[0]
    assert fg == [[c] for c in VOC_CLASSES]


def test_a_semicolon_file_keeps_commas_inside_a_query(tmp_path):
    path = tmp_path / "cls.txt"  # ADE20K-847's names as ProxyCLIP writes them: one query each
    path.write_text("sky; wall\nbuilding, edifice\nroad, route; street")
    assert read_class_file(path) == [["sky", "wall"], ["building, edifice"], ["road, route", "street"]]
    path.write_text("sky, wall\nbuilding\n")  # no ';': SCLIP's format
    assert read_class_file(path) == [["sky", "wall"], ["building"]]


@pytest.mark.parametrize("line, message", [("plane|jet", "holds '|'"), ("#plane", "starts with '#'")])
def test_a_class_file_refuses_the_marks_of_other_lists(tmp_path, line, message):
    path = tmp_path / "cls.txt"
    path.write_text(line + "\nbike\n")
    with pytest.raises(VplError, match=message):
        read_class_file(path)


def test_class_files_get_the_checks_classes_gets_and_background_is_applied_or_refused(tmp_path):
    from vpltool.stages.segment import resolve_queries

    names = list(VOC_CLASSES)
    twice = tmp_path / "twice.txt"
    twice.write_text("\n".join(["dog", *VOC_CLASSES[1:]]))  # 'dog' queried by aeroplane's line and dog's
    with pytest.raises(VplError, match="'dog' is named twice"):
        resolve_queries(names, SegmentConfig(class_file=str(twice), background="none"))
    pc = _proxyclip_voc21(tmp_path / "pc.txt")
    with pytest.raises(VplError, match="gives the background's queries on its first line"):
        resolve_queries(names, SegmentConfig(class_file=str(pc), background="sky,wall"))
    _, _, bg = resolve_queries(names, SegmentConfig(class_file="sclip:voc20", background="sky,wall"))
    assert bg == ["sky", "wall"]  # a file without a background line: --background applies
    with pytest.warns(UserWarning, match="'bed' is a query of the background's line"):  # SCLIP's own file
        resolve_queries(list(_coco_object_classes()), SegmentConfig(class_file="sclip:coco-object"))


def _coco_object_classes():
    from vpltool.data.benchmarks import BENCHMARKS

    return BENCHMARKS["coco-object"].classes[1:]


# ------------------------------------------------------------------------------------------------ pairs
def _png(color=(200, 30, 30), mode="RGB", frames=1) -> bytes:
    buf = _io.BytesIO()
    images = [Image.new(mode, (16, 16), color if mode == "RGB" else (*color, 0)) for _ in range(frames)]
    if frames > 1:
        images = [Image.new("RGB", (16, 16), (i * 60, 0, 0)) for i in range(frames)]
        images[0].save(buf, "PNG", save_all=True, append_images=images[1:])
    else:
        images[0].save(buf, "PNG")
    return buf.getvalue()


def _shard(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, _io.BytesIO(data))
    return path


def _folder(root: Path, ids=("a", "b", "c"), splits: dict[str, str] | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    for i in ids:
        (root / "images" / f"{i}.png").write_bytes(_png())
    (root / "captions.json").write_text(json.dumps({i: f"a red square {i}" for i in ids}))
    for name, text in (splits or {}).items():
        (root / "splits").mkdir(exist_ok=True)
        (root / "splits" / f"{name}.txt").write_text(text)
    return root


def test_a_split_is_checked_as_every_split_and_recorded(tmp_path):
    root = _folder(tmp_path / "w", splits={"train": "a\n# held out: c\nb\n", "val": "c\n"})
    pairs = open_pairs(root)
    assert [p.key for p in pairs.pairs] == ["a", "b"] and pairs.identity()["split"] == "train"
    assert [p.key for p in open_pairs(root, "val").pairs] == ["c"]
    with pytest.raises(VplError, match=r"no split 'tset' here \(found: train, val\)"):
        open_pairs(root, "tset")
    (root / "splits" / "train.txt").write_text("a\nb\na\n")
    with pytest.raises(VplError, match="'a' is listed 2 times"):
        open_pairs(root)


def test_a_split_where_there_is_nothing_to_split_is_refused(tmp_path):
    plain = _folder(tmp_path / "plain")
    assert len(open_pairs(plain).pairs) == 3 and open_pairs(plain).identity()["split"] is None
    with pytest.raises(VplError, match="--split train: .* without split listings"):
        open_pairs(plain, "train")
    shard = _shard(tmp_path / "s" / "00000.tar", {"k.png": _png(), "k.txt": b"a red square"})
    with pytest.raises(VplError, match="a folder of shards: nothing to split"):
        open_pairs(shard.parent, "train")


def test_comma_brace_patterns_expand_as_webdataset_does(tmp_path):
    for n in ("00000", "00001", "00002"):
        _shard(tmp_path / f"{n}.tar", {f"k{n}.png": _png(), f"k{n}.txt": b"a red square"})
    pairs = open_pairs(f"{tmp_path}/{{00000,00002}}.tar")
    assert [p.key for p in pairs.pairs] == ["00000.tar:k00000", "00002.tar:k00002"]


@pytest.mark.parametrize("members, message", [
    ({"a.1.png": _png(), "a.1.txt": b"x", "a.2.png": _png(), "a.2.txt": b"y"}, "a key with a dot"),
    ({"k.png": _png(), "k.jpg": _png(), "k.txt": b"x"}, r"two images \(.jpg, .png\)"),
    ({"k.png": _png(), "k.txt": b"x", "k.text": b"y"}, r"two captions \(.text, .txt\)"),
    ({"k.png": _png(), "k.txt": "café".encode("latin-1")}, "not UTF-8 text"),
])
def test_shard_samples_are_never_dropped_or_picked_silently(tmp_path, members, message):
    with pytest.raises(VplError, match=message):
        open_pairs(_shard(tmp_path / "00000.tar", members))


@pytest.mark.parametrize("image, message", [(_png(frames=3), "animated PNG of 3 frames"),
                                            (_png(mode="RGBA"), "fully transparent")])
def test_shard_images_that_are_no_still_photo_are_refused(tmp_path, image, message):
    pairs = open_pairs(_shard(tmp_path / "00000.tar", {"k.png": image, "k.txt": b"a red square"}))
    with pytest.raises(VplError, match=message):
        check_pairs(pairs, lambda text: 3, 77)


def test_caption_files_are_read_once_by_one_rule(tmp_path):
    root = _folder(tmp_path / "w")
    (root / "captions.json").unlink()
    tsv = root / "captions.tsv"
    tsv.write_text("a\tone\nb\ttwo\na\tthree\n")
    with pytest.raises(VplError, match="id 'a' on lines 1 and 3"):
        open_pairs(root)
    tsv.write_bytes("a\tcafé\nb\tx\nc\ty\n".encode("latin-1"))
    with pytest.raises(VplError, match="not UTF-8 text .*iconv -f latin1"):
        open_pairs(root)
    tsv.write_text("a\tone\nb\ttwo\nc\tthree\n", encoding="utf-16")
    with pytest.raises(VplError, match="UTF-16 text"):
        open_pairs(root)
    tsv.write_text("a\tone\nb\ttwo\nc\tthree\n")
    (root / "captions.json").write_text(json.dumps({"a": "one", "b": "two", "c": "other"}))
    with pytest.raises(VplError, match="disagrees with captions.json"):
        open_pairs(root)
    (root / "captions.json").write_text(json.dumps({"a": "one", "b": "two", "c": "three"}))
    assert [p.caption for p in open_pairs(root).pairs] == ["one", "two", "three"]
    (root / "images" / "a.jpg").write_bytes(_png())
    with pytest.raises(VplError, match="a second image of id 'a'"):
        open_pairs(root)


# ------------------------------------------------------------------------------------------------ options
def test_every_float_option_of_every_command_refuses_nan_and_inf():
    from typer.testing import CliRunner

    from vpltool.cli import app

    for args in (["segment", "x", "-o", "y", "--cos-fac", "nan"], ["train-pgseg", "x", "-o", "y", "--lr", "inf"],
                 ["segment", "x", "-o", "y", "--bg-thresh", "nan"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "not a finite number" in r.output, (args, r.output)


def test_the_options_table_names_real_options_of_its_commands():
    """Every option of vpltool.cli.applies' table is a parameter of its command, so a rule cannot rot."""
    import typer.main

    from vpltool.cli import app
    from vpltool.cli.applies import RULES

    group = typer.main.get_command(app)
    for command, rules in RULES.items():
        params = {p.name for p in group.commands[command].params}
        for rule in rules:
            assert set(rule.options) <= params, (command, set(rule.options) - params)


def test_sam_refine_without_trident_is_refused_and_other_methods_knobs_are_not_applied():
    from vpltool.errors import VplWarning

    with pytest.raises(VplError, match="--sam-refine: Trident's SAM prompt refinement needs"):
        SegmentConfig.of(dense="naclip", sam_refine=True)
    with pytest.warns(VplWarning, match="--coarse-threshold 0.5 has no effect without --dense trident"):
        cfg = SegmentConfig.of(dense="naclip", coarse_threshold=0.5)
    assert cfg.resolved().coarse_threshold == 0.2
    assert "coarse_threshold" not in __import__("vpltool.config", fromlist=["to_params"]).to_params(cfg)


def test_pgseg_training_options_without_effect_stay_out_of_the_record():
    from vpltool.config import to_params
    from vpltool.config.pgseg import pgseg_recipe

    assert "multi_label_weight" not in to_params(pgseg_recipe("cpu", multi_label_weight=2.0))
    assert to_params(pgseg_recipe("cpu", multi_label=3, multi_label_weight=2.0))["multi_label_weight"] == 2.0
    with pytest.raises(VplError, match="--batch-size 1: must be >= 2"):
        pgseg_recipe("cpu", batch_size=1)


def test_weclip_with_a_dino_branch_is_weclip_plus():
    from vpltool.config import decoder_recipe

    with pytest.raises(VplError, match="pass --recipe weclip\\+"):
        decoder_recipe("weclip", dino_model="vit_small_patch14_dinov2.lvd142m")
    cfg = decoder_recipe("weclip", iters=10, rfm_start=10)
    assert "rfm_start" in __import__("vpltool.config", fromlist=["inert_fields"]).inert_fields(cfg)


def test_a_weclip_plus_decoder_finds_its_dino_anywhere_or_is_told_where(tmp_path):
    """The decoder records its DINO file by an absolute path and sha256; predict --dino-weights points at a moved
    copy, checked by content."""
    from types import SimpleNamespace

    from vpltool import io
    from vpltool.stages.predict import decoder_dino_weights

    dino = tmp_path / "dino.safetensors"
    dino.write_bytes(b"weights")
    ident = io.file_identity(dino.resolve())
    f = SimpleNamespace(path=tmp_path / "decoder.safetensors", meta=lambda key, default=None: {"dino_weights": ident})
    assert decoder_dino_weights(f, str(dino.resolve()), None) == str(dino.resolve())
    moved = tmp_path / "elsewhere.safetensors"
    dino.rename(moved)
    with pytest.raises(VplError, match="pass --dino-weights FILE"):
        decoder_dino_weights(f, ident["path"], None)
    assert decoder_dino_weights(f, ident["path"], moved) == str(moved.resolve())
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"other weights")
    with pytest.raises(VplError, match="sha256 differs"):
        decoder_dino_weights(f, ident["path"], other)


def test_a_schedule_that_climbs_is_warned_about():
    from vpltool.config.pgseg import pgseg_recipe

    with pytest.warns(UserWarning, match="--min-lr 0.1 is above --lr 0.001: the cosine climbs"):
        pgseg_recipe("cpu", min_lr=0.1)
    with pytest.warns(UserWarning, match="--warmup-lr 0.01 is above --lr 0.001: the warm-up descends"):
        pgseg_recipe("cpu", warmup_lr=0.01)


def test_reproducible_after_the_command_says_where_it_goes():
    """``vpltool cam ... --reproducible``: click's "No such option", with where vpltool's own option goes (it once
    said no more)."""
    from typer.testing import CliRunner

    from vpltool.cli import app

    r = CliRunner().invoke(app, ["cam", "features", "-p", "text.safetensors", "-o", "out", "--reproducible"])
    assert r.exit_code == 2
    assert ("No such option: --reproducible; it is vpltool's own, so it goes before the command: vpltool "
            "--reproducible cam ... (or VPLTOOL_REPRODUCIBLE=1 before it)") in " ".join(r.output.split())
