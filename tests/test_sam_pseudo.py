"""`sam-pseudo`: SAM's masks assigned to the CAM's classes (SAM_WSSS's merge rules), the stage end to end on the
demo world with a toy SAM, resume, bad input in one line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpltool import io
from vpltool.config import RuntimeConfig, SamPseudoConfig
from vpltool.errors import VplError
from vpltool.runtime.numerics import run_numerics
from vpltool.stages.sam_pseudo import merge_masks

needs_crf = pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is None,
                               reason="the CRF extra is not installed: pip install -e '.[crf]'")
ONE = RuntimeConfig(device="cpu", workers=1)


def _box(rows: slice, cols: slice, shape=(10, 10)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


# --------------------------------------------------------------------------------------------- the rule
def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A 10x10 CAM label and three SAM masks, each case one a plausible rule gets wrong:

    * class 1's CAM (rows 0-3, cols 0-5) fills 16 of mask A's 20 pixels (rows 0-4, cols 0-3): A becomes 1, row 4
      included; its spill into mask B (rows 0-3, cols 4-9: 8 of 24 pixels) is no majority: those pixels become 0;
    * class 2 (rows 6-7, cols 6-7) lies outside every mask: it keeps its label (imp, imp2), or loses it (max-iou);
    * class 3 (rows 8-9, cols 0-1) is 4 of mask C's 20 pixels (rows 8-9): no majority, but C holds all of class 3,
      so imp2 gives C to class 3 (85 % rule) while imp and max-iou leave it, and class 3 with it, background.
    """
    start = np.zeros((10, 10), np.uint8)
    start[0:4, 0:6] = 1
    start[6:8, 6:8] = 2
    start[8:10, 0:2] = 3
    masks = np.stack([_box(slice(0, 5), slice(0, 4)), _box(slice(0, 4), slice(4, 10)),
                      _box(slice(8, 10), slice(0, 10))])
    return start, masks


def test_each_mask_goes_to_its_majority_class_and_the_rest_keeps_the_cams_label():
    start, masks = _scene()
    want = np.zeros((10, 10), np.uint8)
    want[0:5, 0:4] = 1  # mask A, its CAM-less row 4 included; the spill into B (cols 4-5) dropped
    want[6:8, 6:8] = 2  # no mask: the CAM's label
    want[8:10, :] = 3  # mask C: all of class 3 is inside it (imp2's 85 % rule)
    np.testing.assert_array_equal(merge_masks(start, masks, "max-iou-imp2"), want)
    want[8:10, :] = 0  # imp: C has no majority class, and class 3's pixels lie inside a free mask
    np.testing.assert_array_equal(merge_masks(start, masks, "max-iou-imp"), want)
    want[6:8, 6:8] = 0  # max-iou: the CAM's label is kept nowhere
    np.testing.assert_array_equal(merge_masks(start, masks, "max-iou"), want)


def test_a_mask_taken_by_an_earlier_class_is_not_a_later_ones_and_the_later_paints_over_it():
    """Mask M (rows 0-4) is 3/4 class 4 and holds all of class 5: class 4 takes it (the first class, in increasing
    order); class 5 finds it taken, so its pixels lie outside every free mask and keep label 5, painted over 4.
    A rule that gave each mask its plurality class alone would paint class 5's pixels 4."""
    start = np.zeros((10, 10), np.uint8)
    start[0:5, 0:8] = 4
    start[0:2, 8:10] = 5
    m = _box(slice(0, 5), slice(0, 10))
    out = merge_masks(start, m[None], "max-iou-imp2")
    want = np.where(m, 4, 0).astype(np.uint8)
    want[0:2, 8:10] = 5
    np.testing.assert_array_equal(out, want)


def test_the_mask_order_does_not_matter_and_ignore_pixels_are_no_class():
    rng = np.random.default_rng(0)
    start = rng.integers(0, 4, (12, 12)).astype(np.uint8)
    start[0, :3] = 255
    masks = rng.random((9, 12, 12)) < 0.3
    out = merge_masks(start, masks)
    np.testing.assert_array_equal(out, merge_masks(start, masks[::-1]))
    assert 255 not in out and set(np.unique(out)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(merge_masks(start, masks[:0]), np.where(start == 255, 0, start))  # no mask: the CAM


# --------------------------------------------------------------------------------------------- the stage
TOY = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-sam-world20" / "model.safetensors"
needs_toy = pytest.mark.skipif(not TOY.is_file(), reason="sam-pseudo's toy SAM is missing")
NUMERICS = run_numerics("fp32")  # what a `cam` run records of its dtype and mode
# the demo's settings but for its points a side (the Makefile's SAM_PSEUDO_ARGS: 16; 8 is a quarter of the work)
DEMO = SamPseudoConfig(sam_model="toy", sam_weights=str(TOY), points_per_side=8, pred_iou_thresh=0.4,
                       stability_score_thresh=0.4)


def _cams(world: Path, folder: Path, split: str = "val", numerics: dict = NUMERICS) -> Path:
    """A finished `cam`-like folder over ``world``'s ``split``: per label its ground-truth mask blurred and spilled
    past the object (a CAM's error the rule is there to fix), in [0, 1]; recorded as made with ``numerics``."""
    import cv2
    import torch

    from vpltool.data import open_dataset

    data = open_dataset(world, split)
    for item in data.items:
        gt = io.read_mask(item.gt)
        maps = [cv2.GaussianBlur((gt == c).astype(np.float32), (0, 0), sigmaX=5.0) for c in item.labels]
        maps = [np.clip(m * 2.0, 0, 1) for m in maps]
        cams = np.stack(maps) if maps else np.zeros((0, *gt.shape), np.float32)
        io.write_cam(io.cam_path(folder, item.id), torch.from_numpy(cams), item.labels, classes=data.classes,
                     params={}, id=item.id, image_size=list(gt.shape), numerics=numerics)
    io.write_stage_record(folder, "cam", params={}, inputs={"dataset": data.identity()}, count=len(data.items),
                          numerics=numerics)  # what every stage records (the record and each item): dtype and mode
    return folder


@needs_crf
@needs_toy
def test_the_stage_on_the_demo_world_with_the_toy_sam_writes_every_mask_and_resumes(world, tmp_path):
    """The shipped toy SAM (world seed 20's scenes) on the conftest world's val scenes: every image's mask written,
    of the `sam-pseudo` kind eval scores, SAM's masks taking some pixels from the start label (the CRF's) and a
    folder of no masks none; a resumed run redoes only what is missing, and the same again. Whether SAM's masks beat
    the CRF's is the demo's figure (`make sam`: on its CAMs, not these ground-truth-made ones, where the CRF's start
    is already 0.95 mIoU and the objects-only toy's masks, 5 % of the pixels, lower it to 0.86-0.87)."""
    from vpltool.stages.eval import run_eval
    from vpltool.stages.sam_pseudo import run_sam_pseudo

    cams = _cams(world, tmp_path / "cams")
    out = tmp_path / "sam"
    summary = run_sam_pseudo(cams, out, DEMO, ONE)
    ids = io.item_ids(cams)
    assert summary.done == len(ids) == 3 and summary.complete and summary.masks > 0 and 0 < summary.covered < 1
    assert io.read_record(io.stage_record_path(out))["stage"] == "sam-pseudo" and summary.changed > 0
    start = run_sam_pseudo(cams, tmp_path / "start", SamPseudoConfig(**{**DEMO.__dict__, "masks": str(_no_masks(
        tmp_path, ids))}), ONE)  # no SAM mask: the rule keeps the start label, the CRF's
    assert start.changed == 0.0
    assert 0 < run_eval(out)[0]["miou"] <= 1 and 0 < run_eval(tmp_path / "start")[0]["miou"] <= 1
    first = {i: io.read_mask(io.mask_path(out, i)) for i in ids}
    io.mask_path(out, ids[1]).unlink()
    again = run_sam_pseudo(cams, out, DEMO, ONE)
    assert (again.done, again.skipped) == (1, 2)
    np.testing.assert_array_equal(io.read_mask(io.mask_path(out, ids[1])), first[ids[1]])
    with pytest.raises(VplError) as e:  # another rule into the same folder: refused, not mixed
        run_sam_pseudo(cams, out, SamPseudoConfig(**{**DEMO.__dict__, "merge": "max-iou"}), ONE)
    assert "\n" not in str(e.value) and "merge" in str(e.value)


@needs_crf
@needs_toy
def test_a_start_folder_crf_wrote_gives_the_masks_of_sam_pseudos_own_crf_and_is_checked_before_sam_loads(
        world, tmp_path, monkeypatch):
    """``--start FOLDER`` (`crf --start-out FOLDER`'s labels, the pipeline's CRF run once) gives the masks ``--start
    crf`` gives, and of `crf --no-crf --start-out` those of ``--start argmax``; a folder of other CAMs, of other
    settings (crf's own masks at --confidence 0.95, another --bg-exponent), without an image's label or of a label
    of another size, or no folder at all, is one line naming the file and the fix before SAM loads."""
    import shutil
    from dataclasses import replace

    from vpltool.config import CrfConfig
    from vpltool.stages.crf import run_crf
    from vpltool.stages.sam_pseudo import run_sam_pseudo
    from vpltool.stages.sam_pseudo.sources import AutomaticMasks

    cams = _cams(world, tmp_path / "cams")
    ids = io.item_ids(cams)
    run_crf(cams, tmp_path / "crf", runtime=ONE, start_out=tmp_path / "start")
    run_crf(cams, tmp_path / "argmax_masks", CrfConfig(no_crf=True), ONE, start_out=tmp_path / "argmax")
    masks = {}
    for start in ("crf", str(tmp_path / "start"), "argmax", str(tmp_path / "argmax")):
        out = tmp_path / f"sam_{len(masks)}"
        run_sam_pseudo(cams, out, replace(DEMO, start=start), ONE)
        masks[start] = {i: io.read_mask(io.mask_path(out, i)) for i in ids}
        record = io.read_record(io.stage_record_path(out))
        assert record["params"]["start"] == ("argmax" if "argmax" in start else "crf")
        assert ("start" in record["inputs"]) == (start not in ("crf", "argmax"))  # the folder, by its record
    for computed, read in (("crf", tmp_path / "start"), ("argmax", tmp_path / "argmax")):
        for i in ids:
            np.testing.assert_array_equal(masks[str(read)][i], masks[computed][i])
    assert any((masks["crf"][i] != masks["argmax"][i]).any() for i in ids)  # the two starts differ: can fail

    def no_sam(self, device):
        raise AssertionError("SAM loaded before the start folder was checked")

    monkeypatch.setattr(AutomaticMasks, "load", no_sam)
    other = _cams(world, tmp_path / "other", numerics=NUMERICS)
    io.write_stage_record(other, "cam", params={"refine": "other"}, inputs={"dataset": io.read_record(
        io.stage_record_path(cams))["inputs"]["dataset"]}, count=len(ids), numerics=NUMERICS)
    run_crf(other, tmp_path / "other_crf", runtime=ONE, start_out=tmp_path / "other_start")
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "start", cut)
    io.mask_path(cut, ids[1]).unlink()
    small = tmp_path / "small"
    shutil.copytree(tmp_path / "start", small)
    io.write_mask(io.mask_path(small, ids[2]), np.zeros((5, 7), np.uint8))
    cases = {"a label of another size": (small, DEMO, f"{io.mask_path(small, ids[2])}: a 5x7 start label for a 96x96"),
             "other CAMs": (tmp_path / "other_start", DEMO, "start labels of other CAMs than"),
             "crf's masks": (tmp_path / "crf", DEMO, "labels of `vpltool crf --confidence 0.95`, while sam-pseudo "
                             "starts from `vpltool crf --confidence"),
             "bg exponent": (tmp_path / "start", replace(DEMO, bg_exponent=2.0), "--bg-exponent 1.0`, while"),
             "a label missing": (cut, DEMO, f"{io.mask_path(cut, ids[1])}: no start label for image"),
             "no folder": (tmp_path / "nowhere", DEMO, "no such folder; pass crf or argmax")}
    for name, (folder, cfg, words) in cases.items():
        with pytest.raises(VplError) as e:
            run_sam_pseudo(cams, tmp_path / "refused", replace(cfg, start=str(folder)), ONE)
        assert words in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
        assert "--start-out" in str(e.value) and not (tmp_path / "refused").exists(), name


def _no_masks(tmp_path: Path, ids) -> Path:
    """A mask folder in amg.py's layout with no mask for any image."""
    root = tmp_path / "no_masks"
    for i in ids:
        (root / i).mkdir(parents=True, exist_ok=True)
    return root


def test_a_mask_folder_is_read_as_amg_writes_it_and_checked_before_any_work(world, tmp_path, monkeypatch):
    """``--masks FOLDER``: ``FOLDER/<id>/<k>.png`` (255 inside); a missing image folder, a mask of another size or a
    non-binary one is one line naming the file, before any mask is written."""
    from vpltool.stages import sam_pseudo

    cams = _cams(world, tmp_path / "cams")
    ids = io.item_ids(cams)
    masks = tmp_path / "masks"
    for i in ids:
        gt = io.read_mask(next(it for it in __import__("vpltool.data", fromlist=["x"]).open_dataset(world, "val").items
                               if it.id == i).gt)
        (masks / i).mkdir(parents=True)
        Image.fromarray(((gt > 0) * 255).astype(np.uint8)).save(masks / i / "0.png")  # the objects, as one mask
        Image.fromarray(((gt == 0) * 255).astype(np.uint8)).save(masks / i / "1.png")  # the background
    cfg = SamPseudoConfig(masks=str(masks), start="argmax")
    out = tmp_path / "out"
    s = sam_pseudo.run_sam_pseudo(cams, out, cfg, ONE)
    assert s.done == 3 and abs(s.covered - 1.0) < 1e-9
    for i in ids:  # the background mask has no class's majority: no class pixel survives outside the objects
        gt, mask = io.read_mask(next(world.glob(f"masks/{i}.png"))), io.read_mask(io.mask_path(out, i))
        assert not (mask[gt == 0]).any()
    kept = io.read_mask(io.mask_path(out, ids[0]))
    io.mask_path(out, ids[0]).unlink()  # a run stopped before its last mask: the rerun makes that one alone
    again = sam_pseudo.run_sam_pseudo(cams, out, cfg, ONE)
    assert (again.done, again.skipped, again.complete) == (1, 2, True)
    np.testing.assert_array_equal(io.read_mask(io.mask_path(out, ids[0])), kept)
    bad = {"missing": lambda: __import__("shutil").rmtree(masks / ids[0]),
           "size": lambda: Image.fromarray(np.zeros((5, 7), np.uint8)).save(masks / ids[1] / "2.png"),
           "values": lambda: Image.fromarray(np.full((96, 96), 7, np.uint8)).save(masks / ids[2] / "3.png")}
    want = {"missing": f"{masks / ids[0]}: no mask folder for image", "size": "2.png: a 5x7 mask for a 96x96 image",
            "values": "3.png: holds values other than 0 and 255"}
    for name in ("values", "size", "missing"):  # each on top of the previous: the first one met is named
        bad[name]()
        with pytest.raises(VplError) as e:
            sam_pseudo.run_sam_pseudo(cams, tmp_path / f"out_{name}", cfg, ONE)
        assert want[name] in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert not (tmp_path / f"out_{name}").exists() or not list((tmp_path / f"out_{name}").glob("*.png"))



def test_the_cams_numerics_are_checked_as_crf_checks_them_and_recorded(world, tmp_path):
    """The masks record the CAMs' dtype and mode (numerics, as every stage's); CAMs whose record lost its numerics,
    or a CAM file whose header disagrees with its record (an edited record), are one line before anything is
    written (io.folder_made, as crf reads them)."""
    from vpltool.stages.sam_pseudo import run_sam_pseudo

    cams = _cams(world, tmp_path / "cams")
    ids = io.item_ids(cams)
    cfg = SamPseudoConfig(masks=str(_no_masks(tmp_path, ids)), start="argmax")
    run_sam_pseudo(cams, tmp_path / "ok", cfg, ONE)
    assert io.read_record(io.stage_record_path(tmp_path / "ok"))[io.NUMERICS]["dtype"] == "fp32"
    record = io.read_record(io.stage_record_path(cams))
    for name, numerics, want in (("lost", None, "records no 'numerics'"),
                                 ("edited", {**NUMERICS, "dtype": "bf16"}, "made at fp32")):
        io.write_stage_record(cams, "cam", params={}, inputs=record["inputs"], count=len(ids), numerics=numerics)
        with pytest.raises(VplError) as e:
            run_sam_pseudo(cams, tmp_path / name, cfg, ONE)
        assert want in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert not (tmp_path / name).exists() or not list((tmp_path / name).glob("*.png"))


# --------------------------------------------------------------------------------------------- SAM 3's rule
def test_sam3_instances_are_gated_by_the_cam_and_a_missed_label_keeps_the_cams_mask():
    """Label 1: one instance on its CAM region (kept, and it reaches past the CAM) and one elsewhere (gated out);
    label 2: its only instance lies on background: gated out, so label 2 keeps its CAM mask; label 3: an instance on
    its CAM that overlaps label 1's where label 1 is more probable; label 4: SAM 3 found nothing."""
    from vpltool.stages.sam_pseudo import prompted_masks

    start = np.zeros((10, 10), np.uint8)
    start[0:3, 0:3] = 1
    start[6:8, 0:2] = 2
    start[0:3, 5:8] = 3
    start[8:10, 8:10] = 4
    one = np.zeros((2, 10, 10), np.float32)
    one[0, 0:4, 0:5] = 0.9  # 9 of its 20 pixels on label 1's CAM (45 %): kept at gate 0.4, not at 0.5
    one[0, 0:3, 0:3] = 0.95
    one[1, 5:10, 4:8] = 0.8  # far from label 1's CAM: dropped
    two = np.zeros((1, 10, 10), np.float32)
    two[0, 3:6, 3:6] = 0.9  # background only: dropped, label 2 keeps its CAM
    three = np.zeros((1, 10, 10), np.float32)
    three[0, 0:3, 4:8] = 0.7  # 9 of 12 on label 3's CAM; column 4 shared with label 1's instance (0.9 > 0.7)
    four = np.zeros((0, 10, 10), np.float32)
    out, kept, missed = prompted_masks(start, [(1, one), (2, two), (3, three), (4, four)], gate=0.4)
    want = np.zeros((10, 10), np.uint8)
    want[0:4, 0:5] = 1
    want[0:3, 5:8] = 3
    want[6:8, 0:2] = 2
    want[8:10, 8:10] = 4
    np.testing.assert_array_equal(out, want)
    assert (kept, missed) == (2, [2, 4])
    out, kept, missed = prompted_masks(start, [(1, one), (2, two), (3, three), (4, four)], gate=0.5)
    assert missed == [1, 2, 4] and (out[start == 1] == 1).all() and out[3, 3] == 0  # 9/20 < 0.5: label 1 missed


@needs_crf
def test_the_sam3_rule_runs_end_to_end_with_a_tiny_random_sam3(world, tmp_path):
    """The tiny random SAM 3 (its heads set so that queries pass 0.5) prompted with the conftest world's labels:
    every mask written, of the sam-pseudo kind, its record naming SAM 3's weights by content and the prompts; an
    instance off the CAM is gated out (gate 1.0 keeps none: the CAM's label alone), a resume redoes nothing."""
    from vpltool.models.backbones.sam3_files import write_tiny
    from vpltool.stages.sam_pseudo import run_sam_pseudo

    weights = write_tiny(tmp_path / "sam3", "hf")
    cams = _cams(world, tmp_path / "cams")
    # the tiny model's instances cover nearly the whole scene: gate 0 keeps them all, gate 1 none
    cfg = SamPseudoConfig(masks="sam3", sam_weights=str(weights), sam3_gate=0.0)
    s = run_sam_pseudo(cams, tmp_path / "out", cfg, ONE)
    assert s.done == 3 and s.complete and s.masks > 0 and s.missed < 1.0 and s.changed > 0
    record = io.read_record(io.stage_record_path(tmp_path / "out"))
    assert record["params"]["masks"] == "sam3" and "merge" not in record["params"]
    assert record["inputs"]["masks"]["generator"] == "sam3" and "circle" in record["inputs"]["masks"]["prompts"]
    none = run_sam_pseudo(cams, tmp_path / "gate1", SamPseudoConfig(**{**cfg.__dict__, "sam3_gate": 1.0}), ONE)
    run_sam_pseudo(cams, tmp_path / "start", SamPseudoConfig(masks=str(_no_masks(tmp_path, io.item_ids(cams)))),
                   ONE)  # the start label itself (no mask changes it)
    assert none.missed == 1.0 and none.changed == 0.0  # every label left to the CAM
    for i in io.item_ids(cams):
        np.testing.assert_array_equal(io.read_mask(io.mask_path(tmp_path / "gate1", i)),
                                      io.read_mask(io.mask_path(tmp_path / "start", i)))
    again = run_sam_pseudo(cams, tmp_path / "out", cfg, ONE)
    assert (again.done, again.skipped) == (0, 3)


def _amg_folder(world: Path, cams: Path, root: Path) -> Path:
    """``root`` in amg.py's layout: per image of ``cams`` its objects as one mask (``0.png``)."""
    from vpltool.data import open_dataset

    gts = {it.id: io.read_mask(it.gt) for it in open_dataset(world, "val").items}
    for i in io.item_ids(cams):
        (root / i).mkdir(parents=True)
        Image.fromarray(((gts[i] > 0) * 255).astype(np.uint8)).save(root / i / "0.png")
    return root


@pytest.mark.parametrize("entry", ["folder", "loop", "fifo", "devzero"])
def test_a_mask_entry_that_is_no_regular_file_is_one_line_before_anything_is_read(world, tmp_path, entry):
    """An entry named like a mask (``1.png``) that is a folder, a symlink loop, a FIFO or a link to /dev/zero: one
    line naming it and the fix, as the photo readers say it, before a mask is hashed (a FIFO and /dev/zero hung the
    hash) or written."""
    import os

    from vpltool.stages.sam_pseudo import run_sam_pseudo

    cams = _cams(world, tmp_path / "cams")
    masks = _amg_folder(world, cams, tmp_path / "masks")
    bad = masks / io.item_ids(cams)[1] / "1.png"
    {"folder": lambda: bad.mkdir(), "loop": lambda: bad.symlink_to(bad.name), "fifo": lambda: os.mkfifo(bad),
     "devzero": lambda: bad.symlink_to("/dev/zero")}[entry]()
    want = {"folder": "a folder, not a mask file", "loop": "looping symlink? remove it or point it at the mask",
            "fifo": "a pipe (FIFO), not a mask file", "devzero": "a link to /dev/zero, a device, not a mask file"}
    out = tmp_path / "out"
    with pytest.raises(VplError) as e:
        run_sam_pseudo(cams, out, SamPseudoConfig(masks=str(masks), start="argmax"), ONE)
    assert str(e.value).startswith(f"{bad}: ") and want[entry] in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() or not list(out.rglob("*.png"))


def test_a_hidden_dot_file_among_the_masks_is_skipped(world, tmp_path):
    """``.1.png`` (a hidden file: an editor's or a sync tool's) is no mask of the image, as dot-files are skipped
    by the other folder readers: a full-image one left there changes nothing, and the folder's identity neither."""
    from vpltool.stages.sam_pseudo import run_sam_pseudo
    from vpltool.stages.sam_pseudo.sources import FolderMasks

    cams = _cams(world, tmp_path / "cams")
    masks = _amg_folder(world, cams, tmp_path / "masks")
    ids = io.item_ids(cams)
    cfg = SamPseudoConfig(masks=str(masks), start="argmax")
    clean = run_sam_pseudo(cams, tmp_path / "clean", cfg, ONE)
    identity = FolderMasks(masks).check([(i, (96, 96)) for i in ids])
    for i in ids:
        Image.fromarray(np.full((96, 96), 255, np.uint8)).save(masks / i / ".1.png")
    hidden = run_sam_pseudo(cams, tmp_path / "hidden", cfg, ONE)
    assert FolderMasks(masks).check([(i, (96, 96)) for i in ids]) == identity
    assert (hidden.masks, hidden.covered, hidden.done) == (clean.masks, clean.covered, 3)
    for i in ids:
        np.testing.assert_array_equal(io.read_mask(io.mask_path(tmp_path / "hidden", i)),
                                      io.read_mask(io.mask_path(tmp_path / "clean", i)))


def test_a_folder_whose_name_starts_with_sam2_is_a_folder_not_sam2_with_a_config(world, tmp_path, monkeypatch):
    """``--masks sam2_masks`` (an amg.py folder) was read as SAM 2 with config ``_masks`` and refused for want of
    weights, the folder never named: only ``sam``, ``sam2`` and ``sam2:CONFIG`` name a generator (as ``--region-masks``
    reads them too), so the folder is read; a missing one is named as a folder that is not there."""
    from vpltool.config.dense_knobs import automatic_generator
    from vpltool.stages.sam_pseudo import run_sam_pseudo

    cams = _cams(world, tmp_path / "cams")
    monkeypatch.chdir(tmp_path)
    _amg_folder(world, cams, tmp_path / "sam2_masks")
    assert [SamPseudoConfig(masks=m).generator() for m in ("sam", "sam2", "sam2:x.yaml", "sam2_masks", "sam_out")] == [
        "sam", "sam2", "sam2:x.yaml", None, None]
    assert not automatic_generator("sam2_masks") and automatic_generator("sam2:sam2.1_hiera_l.yaml")
    s = run_sam_pseudo(cams, tmp_path / "out", SamPseudoConfig(masks="sam2_masks", start="argmax"), ONE)
    assert s.done == 3 and s.masks == 1.0
    with pytest.raises(VplError) as e:
        run_sam_pseudo(cams, tmp_path / "out2", SamPseudoConfig(masks="sam2_maks", start="argmax"), ONE)
    assert str(e.value).startswith("--masks sam2_maks: not a folder") and "weights" not in str(e.value)


def test_a_stage_reading_an_interrupted_sam_pseudo_folder_names_sam_pseudo_not_crf(tmp_path):
    """train-decoder over a sam-pseudo folder whose run was interrupted (its ``_run.json`` there, no
    ``_stage.json``) said "`vpltool crf` was interrupted", the first stage it accepts: the stage the folder's run
    record names is the one to re-run; a folder of an unfinished run of a stage not accepted says so."""
    from vpltool.stages.train_decoder import MASK_STAGES

    io.begin_stage_run(tmp_path / "sp", "sam-pseudo", {"masks": "sam"}, overwrite=False)
    with pytest.raises(VplError) as e:
        io.read_stage_record(tmp_path / "sp", MASK_STAGES)
    assert "`vpltool sam-pseudo` was interrupted or is still running (re-run it)" in str(e.value)
    assert "crf" not in str(e.value)
    io.begin_stage_run(tmp_path / "ex", "cam", {}, overwrite=False)
    with pytest.raises(VplError) as e:
        io.read_stage_record(tmp_path / "ex", MASK_STAGES)
    assert str(e.value) == f"{tmp_path / 'ex'}: holds an unfinished `cam` run, expected `crf` output"
    (tmp_path / "none").mkdir()  # no record at all: the first accepted stage, as before
    with pytest.raises(VplError) as e:
        io.read_stage_record(tmp_path / "none", MASK_STAGES)
    assert "`vpltool crf` did not finish there" in str(e.value)


@pytest.mark.parametrize("stage", ["sam-pseudo", "crf"])
def test_a_dtype_refused_on_a_sam_pseudo_or_crf_folder_names_cams_precision_as_the_fix(tmp_path, stage):
    """sam-pseudo and crf have no --precision (their masks carry the CAMs' dtype): the fix of a bf16 folder read at
    fp32 names `cam --precision`, then re-running the stage, not a `sam-pseudo --precision` that does not exist;
    a stage with --precision of its own (cam) is still named itself."""
    found, own = run_numerics("bf16"), run_numerics("fp32", "fp32")
    with pytest.raises(VplError) as e:
        io.check_numerics(own, (tmp_path / "sp", found, stage))
    assert str(e.value).endswith(f"pass --precision bf16 to this command, or re-run `vpltool cam` (and what it was "
                                 f"made from) with --precision fp32, then `vpltool {stage}` on it"), str(e.value)
    with pytest.raises(VplError) as e:
        io.check_numerics(own, (tmp_path / "cams", run_numerics("bf16", "bf16"), "cam"))
    assert str(e.value).endswith("re-run `vpltool cam` (and what it was made from) with --precision fp32")


PARITY = 1e-4  # the decoder's parity tolerance with segment-anything: logits and scores
SCORES = ("predicted_iou", "stability_score")


def exact(record: dict) -> dict:
    """A generator's record less its scores, the mask as bytes: what must be segment-anything's exactly."""
    return {**{k: v for k, v in record.items() if k not in SCORES}, "segmentation": record["segmentation"].tobytes()}


@needs_toy
@pytest.mark.parametrize("settings", [dict(pred_iou_thresh=0.4, stability_score_thresh=0.4),
                                      dict(pred_iou_thresh=0.0, stability_score_thresh=0.4, crop_n_layers=1)],
                         ids=["demo", "every-mask-with-crops"])
def test_the_mask_generator_gives_segment_anythings_own_records(world, settings):
    """`sam-pseudo`'s generator (:class:`~vpltool.models.dense.corrclip.amg.MaskGenerator`, which upsamples only the
    masks the predicted-IoU threshold keeps) against segment-anything's ``SamAutomaticMaskGenerator`` on the same
    toy SAM: the same records in the same order, every mask, area, box, point and crop the same, the scores within
    the parity tolerance (the image->token softmax and the resize run another float32 route), on the world's
    images, with crops too."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from vpltool.data import open_dataset
    from vpltool.models.dense.corrclip.regions import region_source

    settings = dict(points_per_side=8, **settings)
    ours = region_source("sam", "toy", str(TOY), settings=settings, method="sam-pseudo").generator
    stock = SamAutomaticMaskGenerator(ours.predictor.model, **settings)
    seen = 0
    for item in open_dataset(world, "val").items:
        image = np.asarray(Image.open(item.image).convert("RGB"))
        with torch.no_grad():
            got, want = ours.generate(image), stock.generate(image)
        assert [exact(r) for r in got] == [exact(r) for r in want]
        for key in SCORES:
            np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=0, atol=PARITY)
        seen += len(want)
    assert seen > 0


@needs_toy
def test_the_decoder_makes_segment_anythings_kept_masks_within_the_parity_tolerance(world):
    """:func:`~vpltool.models.dense.corrclip.amg.decode` (the first layer's image side once, the image->token
    softmax token-major, only the kept masks upscaled) against segment-anything's ``MaskDecoder`` on the toy SAM,
    then its IoU threshold: the same kept (prompt, mask) pairs, the logits and IoUs within the parity tolerance,
    with batches of one, a few and many prompts and thresholds that keep none, one prompt's, some and every mask
    (each threshold halfway between two IoUs, so that float32 rounding cannot move a pair across it)."""
    import torch

    from vpltool.data import open_dataset
    from vpltool.models.dense.corrclip.amg import decode
    from vpltool.models.dense.corrclip.regions import region_source

    predictor = region_source("sam", "toy", str(TOY), settings=dict(points_per_side=8), method="sam-pseudo"
                              ).generator.predictor
    model, rng, kept = predictor.model, np.random.default_rng(0), set()
    image = np.asarray(Image.open(open_dataset(world, "val").items[0].image).convert("RGB"))
    with torch.no_grad():
        predictor.set_image(image)
        pe = model.prompt_encoder.get_dense_pe()
        for batch in (1, 5, 64):
            points = torch.as_tensor(predictor.transform.apply_coords(rng.uniform(0, 96, (batch, 2)), image.shape[:2]))
            sparse, dense = model.prompt_encoder(points=(points[:, None, :], torch.ones(batch, 1, dtype=torch.int)),
                                                 boxes=None, masks=None)
            want, iou = model.mask_decoder(predictor.features, pe, sparse, dense, multimask_output=True)
            want, iou = want.flatten(0, 1), iou.flatten(0, 1)
            one = iou.view(batch, 3).max(1).values.sort().values[-2:].mean().item() if batch > 1 else None
            middle = iou.sort().values[len(iou) // 2 - 1:len(iou) // 2 + 1].mean().item()
            for thresh in (None, -1e9, 1e9, middle, one):
                keep = iou > thresh if thresh is not None else torch.ones_like(iou, dtype=torch.bool)
                got_keep, got, got_iou = decode(model.mask_decoder, predictor.features, pe, sparse, dense, thresh)
                assert torch.equal(got_keep, keep), (batch, thresh)
                torch.testing.assert_close(got_iou, iou[keep], rtol=0, atol=PARITY)
                torch.testing.assert_close(got, want[keep], rtol=0, atol=PARITY)
                kept.add(int(keep.view(batch, 3).any(1).sum()))
    assert {0, 1, 5, 64} <= kept  # none, one prompt, some, all


@pytest.mark.skipif(importlib.util.find_spec("segment_anything") is None, reason="segment-anything is not installed")
def test_the_masks_rles_are_segment_anythings_lists():
    """:func:`~vpltool.models.dense.corrclip.amg.mask_to_rle` (every mask's changes in one pass) against
    segment-anything's ``mask_to_rle_pytorch``: the same run lengths for random masks, an empty one, a full one and
    masks whose first pixel is set or not (a first run of zeros of length 0)."""
    import torch
    from segment_anything.utils.amg import mask_to_rle_pytorch

    from vpltool.models.dense.corrclip.amg import mask_to_rle

    masks = torch.from_numpy(np.random.default_rng(0).random((6, 7, 5)) < 0.5)
    masks[0], masks[1] = False, True
    masks[2, 0, 0], masks[3, 0, 0] = True, False
    got, want = mask_to_rle(masks), mask_to_rle_pytorch(masks)
    assert got == want
    assert got[0]["counts"] == [35] and got[1]["counts"] == [0, 35]  # empty, full (7 x 5)
    assert got[2]["counts"][0] == 0 < got[3]["counts"][0]  # first pixel set: a first run of zeros of length 0
    assert mask_to_rle(masks[:0]) == []


def test_a_start_folder_on_a_cpu_loads_in_this_process_unless_workers_are_asked():
    """Auto loaders with ``--start FOLDER`` on a CPU: none beside the process (no CRF to spread over them); asked
    for, or with the start's CRF to run, or on CUDA, the runtime's own count for the run's images (none for a few)."""
    import torch

    from vpltool.config import WORKERS_MIN_IMAGES
    from vpltool.stages.sam_pseudo import _loaders

    cpu, cuda, folder, n = torch.device("cpu"), torch.device("cuda"), Path("start"), WORKERS_MIN_IMAGES
    auto = RuntimeConfig(device="cpu")
    assert _loaders(auto, cpu, folder, n) == 1 and _loaders(auto, cpu, None, n) == auto.loader_workers(cpu, n) > 1
    assert _loaders(auto, cpu, None, n - 1) == 1  # a run of a few images: in this process
    asked = RuntimeConfig(device="cpu", workers=2)
    assert _loaders(asked, cpu, folder, 1) == asked.loader_workers(cpu)  # 2 where the CPU has 2 cores or more
    cuda_auto = RuntimeConfig(device="cuda")
    assert _loaders(cuda_auto, cuda, folder, n) == cuda_auto.loader_workers(cuda, n) > 1
