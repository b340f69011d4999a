"""`segment` on a user's own photos: one image file or a plain folder of images (no labels, no layout), with
`--overlay`; `eval` refuses them in one line, `report` shows them; bad input is one line naming the file, exit 2,
nothing written. The shipped toy CLIP (``vpltool-toy``) on the demo world's photos, CPU."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vpltool import io
from vpltool.cli import app
from vpltool.data import open_dataset
from vpltool.errors import VplWarning

TOY = ["--model", "vpltool-toy", "--pretrained", "none", "--dense", "maskclip", "--templates", "a photo of a {}.",
       "--background", "grass,sky,wall,water", "--device", "cpu"]
NAMES = "circle,star,square"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture()
def photos(world, tmp_path) -> Path:
    """Three of the world's val photos in a plain folder, one re-encoded as a JPEG: no labels, no masks."""
    folder = tmp_path / "my photos"
    folder.mkdir()
    images = sorted((Path(world) / "images").glob("val_*"))[:3]
    for path in images[:2]:
        shutil.copy(path, folder / path.name)
    Image.open(images[2]).convert("RGB").save(folder / f"{images[2].stem}.jpg", quality=95)
    return folder


def test_a_folder_of_photos_and_one_photo_give_masks_and_overlays_and_stay_untouched(photos, tmp_path):
    before = digests(photos)
    out = tmp_path / "seg"
    r = invoke("segment", photos, "--classes", NAMES, "-o", out, "--overlay", *TOY)
    assert r.exit_code == 0, r.output
    ids = sorted(p.stem for p in photos.iterdir())
    record = io.read_stage_record(out, "segment")
    assert record["classes"] == ["background", "circle", "star", "square"]
    assert record["inputs"]["dataset"]["kind"] == "images"
    for item_id in ids:
        mask = io.read_mask(io.mask_path(out, item_id), num_classes=4)
        image = io.load_image(next(photos.glob(f"{item_id}.*")))
        assert mask.shape == image.shape[:2]
        overlay = np.asarray(Image.open(out / "overlays" / f"{item_id}.jpg"))
        assert overlay.shape[1] == image.shape[1] and overlay.shape[0] > image.shape[0]  # the legend below
    assert digests(photos) == before  # the photos: byte-identical, and nothing added beside them
    # one photo alone: the same mask as in the folder, its folder may hold the output
    one = sorted(photos.iterdir())[0]
    r = invoke("segment", one, "--classes", NAMES, "-o", photos.parent / "one", "--overlay", *TOY)
    assert r.exit_code == 0, r.output
    # the same pixels (each file records its own run: the runs read other inputs)
    assert np.array_equal(io.read_mask(io.mask_path(photos.parent / "one", one.stem)),
                          io.read_mask(io.mask_path(out, one.stem)))
    assert (photos.parent / "one" / "overlays" / f"{one.stem}.jpg").is_file()
    assert digests(photos) == before


def test_the_readme_command_on_a_photo_and_a_folder_of_jpegs_with_words_the_toy_does_not_know(world, tmp_path):
    """The issue's bar, as typed: `segment photo.jpg --classes cat,dog -o out --model vpltool-toy --pretrained none
    --dense maskclip` (the default templates and background) and the same on a folder of plain JPEGs exit 0, write
    one mask per image and leave the photos byte-identical; the toy CLIP's unknown words are one warning line."""
    folder = tmp_path / "jpegs"
    folder.mkdir()
    for path in sorted((Path(world) / "images").glob("val_*"))[:2]:
        Image.open(path).convert("RGB").save(folder / f"{path.stem}.jpg", quality=90)
    photo = tmp_path / "photo.jpg"
    shutil.copy(next(folder.iterdir()), photo)
    before = {**digests(folder), "photo.jpg": hashlib.sha256(photo.read_bytes()).hexdigest()}
    toy = ["--model", "vpltool-toy", "--pretrained", "none", "--dense", "maskclip", "--device", "cpu"]
    for source, out, ids in ((photo, tmp_path / "out", ["photo"]),
                             (folder, tmp_path / "out_folder", sorted(p.stem for p in folder.iterdir()))):
        r = invoke("segment", source, "--classes", "cat,dog", "-o", out, *toy)
        assert r.exit_code == 0, r.output
        assert not error_lines(r.output)
        unknown = [line for line in r.output.splitlines() if "does not know" in line]
        assert len(unknown) == 1 and unknown[0].startswith("warning:") and "'cat'" in unknown[0] \
            and "'dog'" in unknown[0] and "demo world" in unknown[0], r.output
        assert sorted(p.stem for p in out.glob("*.png")) == ids
        for item_id in ids:
            assert io.read_mask(io.mask_path(out, item_id), num_classes=3).ndim == 2
    assert {**digests(folder), "photo.jpg": hashlib.sha256(photo.read_bytes()).hexdigest()} == before


def test_eval_says_plain_photos_cannot_be_scored_and_report_shows_them(photos, tmp_path):
    from vpltool.stages.report import run_report

    out = tmp_path / "seg"
    assert invoke("segment", photos, "--classes", NAMES, "-o", out, *TOY).exit_code == 0
    r = invoke("eval", out)
    assert r.exit_code == 2
    (line,) = error_lines(r.output)
    assert "plain photos" in line and "no ground truth" in line and "cannot be scored" in line
    s = run_report(out, workers=1)
    assert s.index == tmp_path / "seg_report" / "index.html" and s.index.is_file()
    assert sum(s.images.values()) == 3 and [c for cols in s.columns.values() for c in cols] == ["seg"]


@pytest.mark.parametrize("make, fragment", [
    (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "not an image"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "is empty: no image"),
    (lambda d: (d / "docs").mkdir() or (d / "docs" / "a.txt").write_text("x") and d / "docs", "holds 1 other file"),
    (lambda d: (d / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg") and d / "broken.jpg", "broken.jpg"),
])
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, make, fragment):
    bad = make(tmp_path)
    out = tmp_path / "out"
    r = invoke("segment", bad, "--classes", NAMES, "-o", out, *TOY)
    assert r.exit_code == 2, r.output
    (line,) = error_lines(r.output)
    assert fragment in line and str(bad) in line
    assert not out.exists()


def test_plain_photos_need_class_names_and_keep_outputs_out_of_their_folder(photos, tmp_path):
    r = invoke("segment", photos, "-o", tmp_path / "out", *TOY)
    assert r.exit_code == 2 and "plain photos name no classes" in error_lines(r.output)[0]
    r = invoke("segment", photos, "--classes", NAMES, "-o", photos / "seg", *TOY)
    assert r.exit_code == 2 and "lies inside" in error_lines(r.output)[0]
    r = invoke("segment", photos, "--split", "val", "--classes", NAMES, "-o", tmp_path / "out", *TOY)
    assert r.exit_code == 2 and "no splits" in error_lines(r.output)[0]
    assert not (tmp_path / "out").exists() and not (photos / "seg").exists()


def test_plain_source_reads_only_the_folders_own_images(photos):
    (photos / "sub").mkdir()
    shutil.copy(next(photos.iterdir()), photos / "sub" / "x.png")
    (photos / "readme.txt").write_text("not an image")
    with pytest.warns(VplWarning, match=r"1 file skipped \(readme.txt\), not an image vpltool reads \(.jpg, .*\.tif"):
        ds = open_dataset(photos)  # what is not read is named, so "2 masks" for 3 files says why
    assert ds.kind == "images" and ds.classes == ("background",)
    assert sorted(item.id for item in ds.items) == sorted(p.stem for p in photos.iterdir()
                                                          if p.suffix in (".png", ".jpg"))
    assert all(item.labels == () and item.gt is None for item in ds.items)
