"""The Python door's second pass (docs/api.md), by transformers', open_clip's and segment-anything's conventions:
encode once and query many (``seg.embed``), per-call options and ``candidate_labels``, a result that saves, draws
and measures itself as the CLI would, the model listing, URLs and BGR arrays, ``device=`` as torch takes it, and the
one-line refusals a Python caller reads (no command-line flag in them)."""

from __future__ import annotations

import functools
import http.server
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from killed_runs import free_port
from typer.testing import CliRunner

import vpltool
from vpltool import io
from vpltool.cli import app
from vpltool.errors import VplError

TOY = dict(model="vpltool-toy", pretrained="none", templates="a photo of a {}.", background="grass,sky,wall,water")
TOY_CLI = ["--model", "vpltool-toy", "--pretrained", "none", "--templates", "a photo of a {}.",
           "--background", "grass,sky,wall,water", "--device", "cpu"]
NAMES = ["circle", "star|diamond", "square"]
OTHER = ["triangle", "circle", "cross"]


@pytest.fixture(scope="module")
def photo(world) -> Path:
    return sorted((world / "images").glob("val_*.png"))[0]


@pytest.fixture(scope="module")
def seg():
    return vpltool.segmenter("maskclip", device="cpu", short_side=112, **TOY)  # one 7x7 window: cheap


@pytest.mark.parametrize("method, options", [("sclip", dict(short_side=336)),  # 2x2 slide windows, area filter
                                             ("naclip", dict(short_side=112))])  # the whole image, then PAMR
def test_embed_then_two_class_lists_equal_two_fresh_calls_label_for_label(photo, method, options, monkeypatch):
    from vpltool.models.dense import DenseHooks

    seg = vpltool.segmenter(method, device="cpu", **options, **TOY)
    emb = seg.embed(photo)
    assert emb.kept and f"for {method!r}" in repr(emb)
    passes = []
    features = DenseHooks.features
    monkeypatch.setattr(DenseHooks, "features", lambda self, *a, **k: passes.append(1) or features(self, *a, **k))
    kept = [seg(emb, NAMES), seg(emb, OTHER)]
    assert passes == []  # the image side ran once, in embed: the kept features answered every window
    fresh = [seg(photo, NAMES), seg(photo, OTHER)]
    assert len(passes) >= 2
    for a, b in zip(kept, fresh):
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.scores, b.scores)
        assert a.classes == b.classes
    assert len(np.unique(fresh[0].labels)) > 1  # a map with classes in it, not a blank one both ways
    # an option that changes the windows computes them anew: still the fresh call's labels
    assert np.array_equal(seg(emb, NAMES, short_side=160).labels, seg(photo, NAMES, short_side=160).labels)
    # a list of photos gives a list of embeddings; an embedding of another segmenter is refused
    assert len(seg.embed([photo, photo])) == 2
    other = vpltool.segmenter(method, device="cpu", **options, **TOY)
    with pytest.raises(VplError, match="made by another segmenter"):
        other(emb, NAMES)


def test_embed_refuses_what_has_no_image_side_of_its_own(tiny_pgseg_checkpoint, photo):
    from vpltool.api.embed import embeddable
    from vpltool.models.dense import dense_hooks

    assert [m for m in vpltool.list_methods(family="clip") if not embeddable(dense_hooks(m))] == \
        ["cass", "trident", "corrclip", "ov-stitcher", "textregion", "radseg"]  # their window
    # logits read the names (object presence, SAM, regions, RADSeg's text-scored windows); OV-Stitcher's own segmentor
    # stitches the windows inside the models, per image with its region map; TextRegion's region tokens are pooled
    # over each photo's own region masks and scored against the text before they are painted back, so no patch grid
    # stands alone (SAM 3 and ActiveSAM keep SAM 3's image encoding: their image_side hook, tests/test_activesam.py)
    pgseg = vpltool.segmenter("pgseg", checkpoint=tiny_pgseg_checkpoint, device="cpu")
    with pytest.raises(VplError, match=r"^embed: a PGSeg / GroupViT checkpoint's zero-shot hook .*takes the photo "
                                       r"and the class names' text in one call"):
        pgseg.embed(photo)
    with pytest.raises(VplError, match=r"^bg_thresh 1.5: must be in \[0, 1\]"):  # per call, its check
        pgseg(photo, "circle", threshold=1.5)


def test_per_call_options_equal_a_segmenter_made_with_them(seg, photo):
    given = dict(prob_threshold=0.3, pamr_steps=2, max_side=64)
    made = vpltool.segmenter("maskclip", device="cpu", short_side=112, **given, **TOY)(photo, NAMES)
    per_call = seg(photo, candidate_labels=NAMES, threshold=0.3, pamr_steps=2, max_side=64, batch_size=2)
    assert np.array_equal(per_call.labels, made.labels) and np.array_equal(per_call.scores, made.scores)
    assert not np.array_equal(seg(photo, NAMES).labels, made.labels)  # the options changed something
    with pytest.raises(VplError, match=r"unknown option 'treshold'; did you mean 'threshold'\?"):
        seg(photo, NAMES, treshold=0.3)
    with pytest.raises(VplError, match="threshold=0.3 and prob_threshold=0.4; give one"):
        seg(photo, NAMES, threshold=0.3, prob_threshold=0.4)
    with pytest.raises(VplError, match="classes and candidate_labels name different classes"):
        seg(photo, NAMES, candidate_labels=OTHER)


def test_a_result_saves_draws_and_measures_itself_as_the_cli_does(world, photo, tmp_path, seg):
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(photo), "--classes", ",".join(NAMES), "-o", str(out), "--dense",
                                 "maskclip", "--short-side", "112", "--overlay", *TOY_CLI])
    assert r.exit_code == 0, r.output
    result = seg(photo, NAMES)
    saved = result.save(tmp_path / "mask.png")
    cli_mask = io.read_mask(io.mask_path(out, photo.stem))
    assert np.array_equal(io.read_mask(saved), cli_mask) and np.array_equal(result.labels, cli_mask)
    # the overlay is --overlay's picture: the same JPEG bytes once encoded as segment encodes it
    jpg = io.write_picture(tmp_path / "overlay.jpg", result.overlay(), quality=90)
    assert jpg.read_bytes() == (out / "overlays" / f"{photo.stem}.jpg").read_bytes()
    assert result.overlay().size[0] == result.labels.shape[1]
    areas, boxes = result.areas(), result.boxes()
    assert list(areas) == list(result.classes) and sum(areas.values()) == pytest.approx(1.0)
    for c, name in enumerate(result.classes):
        ys, xs = np.nonzero(result.labels == c)
        assert result.areas(normalize=False)[name] == len(ys)
        assert boxes[name] == ((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(ys) else None)
    with pytest.raises(VplError, match=r"mask.jpg: a mask is saved as a .png"):
        result.save(tmp_path / "mask.jpg")
    for alpha in (2, -0.1, float("nan")):  # the colours' share of a pixel: in [0, 1]
        with pytest.raises(VplError, match=r"overlay alpha=.*: give the colours' share of each pixel, in \[0, 1\]"):
            result.overlay(alpha=alpha)


def test_save_never_writes_over_its_photo_nor_a_file_it_did_not_write(photo, tmp_path, seg, monkeypatch):
    """result.save(path) checks its path as the command line does, each refusal one VplError line naming the path
    and the fix, before anything is written: the photo it segmented (its path, a symbolic or a hard link to it, a
    file:// URL of it, an embedding of it) never, overwrite=True or not; a user's file only with overwrite=True; a
    file of its own again freely; a file inside a vpltool stage folder never. A write that fails leaves the old
    file and no temporary."""
    import os
    import shutil

    own = tmp_path / "photo.png"
    shutil.copy(photo, own)
    before = own.read_bytes()
    (tmp_path / "link.png").symlink_to(own)
    os.link(own, tmp_path / "hard.png")
    results = {"path": seg(own, NAMES), "file:// URL": seg(own.as_uri(), NAMES), "embedding": seg(seg.embed(own),
                                                                                                   NAMES)}
    for given, result in results.items():
        assert result.source == own, given
        for target in (own, tmp_path / "link.png", tmp_path / "hard.png", str(own)):
            for overwrite in (False, True):
                with pytest.raises(VplError) as e:
                    result.save(target, overwrite=overwrite)
                said = str(e.value)
                assert said.startswith(f"{target}: is ") and "\n" not in said, said
                assert "this result segmented" in said and said.endswith("choose another path"), said
    assert own.read_bytes() == before
    result = results["path"]
    assert seg(np.asarray(__import__("PIL.Image").Image.open(own).convert("RGB")), NAMES).source is None
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"the user's own")
    with pytest.raises(VplError, match=r"^\S*mine.png: exists and was not written by vpltool, so it is not replaced; "
                                       r"move it away, or pass overwrite=True to replace it$"):
        result.save(mine)
    assert mine.read_bytes() == b"the user's own"
    assert result.save(mine, overwrite=True) == mine and np.array_equal(io.read_mask(mine), result.labels)
    other = seg(own, OTHER)
    assert not np.array_equal(other.labels, result.labels)
    assert np.array_equal(io.read_mask(other.save(mine)), other.labels)  # its own mask: replaced without a word
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(photo), "--classes", ",".join(NAMES), "-o", str(out), "--dense",
                                 "maskclip", "--short-side", "112", *TOY_CLI])
    assert r.exit_code == 0, r.output
    with pytest.raises(VplError, match=r"lies inside .*seg, a `segment` folder whose files only that stage writes"):
        result.save(out / "mine.png", overwrite=True)

    def broken(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half a PNG")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(__import__("PIL.Image").Image.Image, "save", broken)
    with pytest.raises(VplError, match=r"^no space left on device writing \S*mine.png: free space"):
        result.save(mine)
    monkeypatch.undo()
    assert np.array_equal(io.read_mask(mine), other.labels)  # the last good mask stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.png", "link.png", "mine.png", "photo.png", "seg"]


def test_the_legend_of_a_large_photo_grows_with_it():
    """A 12-megapixel photo's legend is Pillow's bitmap font enlarged 4 times, whole pixels (nearest): 44-pixel
    letters, legible when the picture is shown whole; a photo up to a 1000-pixel side keeps the 14-pixel rows."""
    from vpltool.io.overlays import class_overlay

    mask = np.zeros((3000, 4000), np.int64)
    mask[1000:2000, 1000:3000] = 1
    big = class_overlay(np.full((3000, 4000, 3), 128, np.uint8), mask, ["background", "triangle"])
    legend = big[3000:]
    assert big.shape == (3000 + 4 * 18, 4000, 3)
    assert np.array_equal(np.repeat(np.repeat(legend[::4, ::4], 4, 0), 4, 1), legend)  # 4x4 blocks: enlarged
    dark = np.nonzero((legend < 60).all(-1))[0]
    assert dark.max() - dark.min() >= 40  # letters and swatch outlines 44 pixels high
    small = class_overlay(np.full((96, 96, 3), 128, np.uint8), mask[:96, :96], ["background", "triangle"])
    assert small.shape == (96 + 18, 96, 3)


def test_list_models_and_pretrained_as_open_clip_lists_them():
    models = vpltool.list_models()
    assert models[0] == "vpltool-toy" and "ViT-B-16" in models and "pgseg:FILE" in models
    b16 = vpltool.list_models("vit-b-16*", family="clip")  # a pattern, case aside, as timm's
    assert "ViT-B-16" in b16 and all(m.lower().startswith("vit-b-16") for m in b16)
    assert vpltool.list_models(family="sam")[:3] == ["vit_b", "vit_l", "vit_h"]
    assert ("ViT-B-16", "openai") in vpltool.list_pretrained() and ("vpltool-toy", "none") in vpltool.list_pretrained()
    with pytest.raises(VplError, match=r"list_models\(family='nope'\): choose clip, text, dino, sam"):
        vpltool.list_models(family="nope")
    said = vpltool.list_methods(details=True)
    assert list(said) == vpltool.list_methods() and "no dense method" in said["none"]
    assert "DINO proxy" in said["proxyclip"] and "pgseg:FILE" in said["pgseg"]


@pytest.fixture
def server(world):
    """The world's images over http on 127.0.0.1 (offline: a local server)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(world / "images"))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_urls_and_bgr_arrays_are_photos(seg, photo, server):
    by_path = seg(photo, NAMES).labels
    assert np.array_equal(seg(f"{server}/{photo.name}", NAMES).labels, by_path)
    with pytest.raises(VplError, match=rf"^{server}/missing.png: the server answered HTTP 404"):
        seg(f"{server}/missing.png", NAMES)
    closed = f"https://127.0.0.1:{free_port()}/photo.jpg"
    with pytest.raises(VplError, match=rf"^{closed}: could not download it \(.*\); check the address and the "
                                       "network, or download the photo and pass its path"):
        seg(closed, NAMES)  # https:// intact, one line, offline
    rgb = io.load_image(photo)
    assert np.array_equal(seg(np.ascontiguousarray(rgb[..., ::-1]), NAMES, image_format="BGR").labels, by_path)
    bgr_chw = torch.from_numpy(rgb[..., ::-1].copy()).permute(2, 0, 1)
    assert np.array_equal(seg(bgr_chw, NAMES, image_format="BGR").labels, by_path)
    with pytest.raises(VplError, match="image_format='BGR' is for arrays and tensors"):
        seg(photo, NAMES, image_format="BGR")


def test_python_door_l_cases_device_classes_and_lines_without_flags(seg, photo):
    assert str(vpltool.segmenter("maskclip", device=-1, short_side=112, **TOY).device) == "cpu"
    assert str(vpltool.segmenter("maskclip", device=torch.device("cpu"), short_side=112, **TOY).device) == "cpu"
    assert seg.to(-1) is seg and seg.to(torch.device("cpu")) is seg
    refusals = {
        "device": lambda: vpltool.segmenter("maskclip", device=0, **TOY),
        "none": lambda: seg(photo, None),
        "set": lambda: seg(photo, {"circle", "star"}),
        "empty": lambda: seg(photo, ["circle", ""]),
        "twice": lambda: seg(photo, "circle,Circle"),
        "batch": lambda: seg(photo, NAMES, batch_size=0),
        "threshold": lambda: seg(photo, NAMES, prob_threshold=2.0),
        "dtype": lambda: vpltool.segmenter("maskclip", torch_dtype=torch.bfloat16, **TOY),
    }
    lines = {}
    for key, call in refusals.items():
        with pytest.raises(VplError) as e:
            call()
        lines[key] = str(e.value)
    assert not [line for line in lines.values() if "--" in line], lines  # Python keywords, never CLI flags
    if not torch.cuda.is_available():
        assert lines["device"].startswith("device cuda:0 asked for, but CUDA is not available")
    assert lines["none"].startswith("classes: give the class names")
    assert "has no order" in lines["set"] and "sorted(names)" in lines["set"]
    assert lines["empty"] == "classes: an empty class name; give names like cat,dog"
    assert lines["twice"].startswith("classes: 'Circle' is named twice") or "named twice" in lines["twice"]
    assert lines["batch"].startswith("batch_size 0") and lines["threshold"].startswith("prob_threshold 2")
    assert "precision='bf16'" in lines["dtype"]


def test_the_toy_clip_says_each_new_list_s_unknown_words(photo):
    seg = vpltool.segmenter("maskclip", device="cpu", short_side=112, **TOY)
    said = []
    for names in ("zebra,circle", "giraffe,circle", "zebra,circle", "giraffe,zebra,okapi"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seg(photo, names)
        said.append([str(w.message) for w in caught if "does not know" in str(w.message)])
    assert [len(s) for s in said] == [1, 1, 0, 1]  # the third list was encoded already: nothing new to say
    assert "'zebra'" in said[0][0] and "'giraffe'" in said[1][0] and "'zebra'" not in said[1][0]
    assert "'okapi'" in said[3][0] and "'giraffe'" not in said[3][0]
