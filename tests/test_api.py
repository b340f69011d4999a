"""The Python front door (docs/api.md): `import vpltool` stays cheap, `vpltool.segmenter` gives the CLI's masks, the
stage functions take the commands' options, and every example of docs/api.md runs as written on the toy CLIP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vpltool
from vpltool import io
from vpltool.cli import app
from vpltool.errors import VplError

ROOT = Path(__file__).resolve().parents[1]
TOY = dict(model="vpltool-toy", pretrained="none", templates="a photo of a {}.", background="grass,sky,wall,water")
TOY_CLI = ["--model", "vpltool-toy", "--pretrained", "none", "--templates", "a photo of a {}.",
           "--background", "grass,sky,wall,water", "--device", "cpu"]
NAMES = ["circle", "star|diamond", "square"]


def test_import_vpltool_imports_no_torch_and_names_load_on_use():
    code = ("import sys, vpltool; assert 'torch' not in sys.modules, 'torch at import'; "
            "assert callable(vpltool.segmenter) and 'torch' not in sys.modules; "
            "assert 'naclip' in vpltool.list_methods() and 'torch' not in sys.modules; "
            "from vpltool import api; assert callable(api.cam) and 'torch' not in sys.modules; print('ok')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    with pytest.raises(AttributeError):
        vpltool.no_such_name  # noqa: B018


@pytest.mark.numeric  # both at --precision auto: bf16 on a CPU with AMX, where a path in another dtype would show
@pytest.mark.parametrize("method", ["maskclip", "naclip"])
def test_segmenter_label_map_equals_the_cli_mask(world, tmp_path, method):
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "--classes", ",".join(NAMES), "-o",
                                 str(out), "--dense", method, *TOY_CLI])
    assert r.exit_code == 0, r.output
    seg = vpltool.segmenter(method, device="cpu", **TOY)
    from vpltool.data import open_dataset

    for item in open_dataset(world, "val").items:
        result = seg(item.image, NAMES)
        mask = io.read_mask(io.mask_path(out, item.id))
        assert result.labels.dtype == np.int64 and result.labels.shape == mask.shape
        assert np.array_equal(result.labels, mask), item.id
        assert result.classes == ("background", "circle", "star", "square")
        assert result.scores.shape == (4, *mask.shape) and result.scores.dtype == np.float32
        assert 0.0 <= result.scores.min() and result.scores.max() <= 1.0
    # the same photo as a PIL image, an array and a path: one label map
    from PIL import Image

    path = open_dataset(world, "val").items[0].image
    a = seg(Image.open(path), ",".join(NAMES)).labels
    assert np.array_equal(a, seg(io.load_image(path), NAMES).labels)


def test_pgseg_segmenter_label_map_equals_the_cli_mask(world, tmp_path):
    from vpltool.models.text import pgseg

    ckpt = pgseg.save_checkpoint(tmp_path / "m.safetensors", pgseg.build_model(pgseg.tiny_config(), seed=3).eval())
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "--classes", "circle,star,square", "-o",
                                 str(out), "--pgseg", str(ckpt), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    seg = vpltool.segmenter("pgseg", checkpoint=ckpt, device="cpu")
    from vpltool.data import open_dataset

    items = open_dataset(world, "val").items
    for item in items:
        result = seg(item.image, ["circle", "star", "square"])
        assert np.array_equal(result.labels, io.read_mask(io.mask_path(out, item.id))), item.id
        assert result.scores.shape == (4, *result.labels.shape)
    both = seg([items[0].image, items[1].image], "circle,star,square", return_tensors="pt")  # a list, as torch
    assert all(isinstance(r.labels, torch.Tensor) for r in both)
    assert [np.array_equal(r.labels.numpy(), io.read_mask(io.mask_path(out, it.id))) for r, it in zip(both, items[:2])
            ] == [True, True]


# each stage function of docs/api.md with a bad value of one of its options -> the Python keyword its line must name
BAD_OPTION = {
    "extract": (("world", "out"), {"batch_size": 0}, "batch_size 0"),
    "text_prototypes": (("feats", "t.safetensors"), {"templates": " "}, "templates is empty"),
    "cam": (("feats", "t.safetensors", "out"), {"box_threshold": 2.0}, "box_threshold 2.0"),
    "learn_prototypes": (("feats", "cams", "t.safetensors", "v.safetensors"), {"tau_i": 0.0}, "tau_i 0.0"),
    "crf": (("cams", "out"), {"confidence": 2.0}, "confidence 2.0"),
    "sam_pseudo": (("cams", "out"), {"sam3_gate": 2.0}, "sam3_gate 2.0"),
    "train_decoder": (("pseudo", "t.safetensors", "out"), {"crop_size": 7}, "crop_size 7"),
    "predict": (("decoder.safetensors", "out"), {"classes": ("background",)}, "classes: 'background'"),
    "evaluate": (("masks",), {"bg_exponents": (-1.0,)}, "bg_exponents -1.0"),
    "segment": (("world", "out", ["star"]), {"short_side": -1}, "short_side -1"),
    "report": (("run",), {"page_size": 0}, "page_size 0"),
}


@pytest.mark.parametrize("stage", list(BAD_OPTION))
def test_a_stage_function_names_its_python_keywords_not_the_command_s_flags(stage, tmp_path):
    """Every stage function of the Python door says the keyword it was given (``batch_size``), never the command
    line's flag (``--batch-size``), which `vpltool <stage>` still says."""
    from vpltool import api

    assert stage in api.__all__ or stage in api.stages.__all__
    args, options, said = BAD_OPTION[stage]
    with pytest.raises(VplError) as e:
        getattr(api, stage)(*(tmp_path / a if isinstance(a, str) else a for a in args), **options)
    msg = str(e.value)
    assert said in msg and "--" not in msg, msg


def test_the_command_line_still_names_its_flags_and_a_stage_function_s_warnings_its_keywords(tmp_path):
    from vpltool.errors import VplWarning

    r = CliRunner().invoke(app, ["crf", "nowhere", "-o", "out", "--confidence", "2"])
    assert r.exit_code == 2 and "--confidence 2.0: must be in [0, 1]" in r.output, r.output
    with pytest.warns(VplWarning) as said, pytest.raises(VplError, match="folder not found"):
        vpltool.api.crf(tmp_path / "nowhere", tmp_path / "out", no_crf=True, batch_size=2)
    [line] = [str(w.message) for w in said]
    assert line.startswith("batch_size 2 has no effect with no_crf") and "--" not in line, line


def test_segmenter_and_stage_functions_refuse_bad_input_in_one_line(tmp_path):
    with pytest.raises(VplError, match=r"method 'no-such-method': choose one of none, maskclip"):
        vpltool.segmenter("no-such-method", **TOY)
    with pytest.raises(VplError, match=r"method 'naclp': did you mean 'naclip'\?"):
        vpltool.segmenter("naclp", **TOY)
    with pytest.raises(VplError, match=r"unknown option 'slide_crp'; did you mean 'slide_crop'\? its options are "
                                       r"templates, .*pamr_steps, max_side, class_file, attention, residual, device"):
        vpltool.segmenter("naclip", slide_crp=224, **TOY)  # naclip's options: not CASS's or Trident's knobs
    with pytest.raises(VplError, match="method='naclip' and dense='maskclip'; give one"):
        vpltool.segmenter("naclip", dense="maskclip", **TOY)
    with pytest.raises(VplError, match="unknown option 'box_threshold'"):
        vpltool.segmenter("maskclip", box_threshold=0.4, **TOY)
    with pytest.raises(VplError, match="checkpoint=FILE"):
        vpltool.segmenter("pgseg")
    with pytest.raises(VplError, match="missing.safetensors: no such checkpoint file"):
        vpltool.segmenter("pgseg", checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(VplError, match=r"vpltool.api.cam: unknown option 'tau_i'"):
        vpltool.api.cam(tmp_path, tmp_path / "p.safetensors", tmp_path / "out", tau_i=0.1)
    with pytest.raises(VplError, match=r"vpltool.api.segment: method='naclip' and dense='maskclip'; give one"):
        vpltool.api.segment(tmp_path, tmp_path / "out", "circle", method="naclip", dense="maskclip", **TOY)
    seg = vpltool.segmenter("maskclip", device="cpu", **TOY)
    with pytest.raises(VplError, match=r"\[H, W, 3\] uint8"):
        seg(np.zeros((8, 8), dtype=np.float32), ["circle"])
    with pytest.raises(VplError, match="at least one class"):
        seg(np.zeros((32, 32, 3), dtype=np.uint8), " , ")
    # the CLI's size check and its line: 8x8, a 1x500 strip and 0x0 (once a ZeroDivisionError)
    for shape in ((8, 8, 3), (1, 500, 3), (0, 0, 3)):
        with pytest.raises(VplError, match=rf"image \(a ndarray\): {shape[0]}x{shape[1]} pixels, too small to "
                                           r"segment \(at least 16 pixels a side"):
            seg(np.zeros(shape, dtype=np.uint8), ["circle"])
    with pytest.raises(VplError, match=r"images\[1\] \(a Tensor\): float values from 0 to 255; a float photo is in "
                                       r"\[0, 1\]"):
        seg([np.zeros((32, 32, 3), np.uint8), torch.arange(3 * 32 * 32.0).reshape(3, 32, 32) % 256], ["circle"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VplError, match=r"notes.txt: not an image \(vpltool reads .jpg, .*\.tif"):
        seg(tmp_path / "notes.txt", ["circle"])
    with pytest.raises(VplError, match="return_tensors='tf': choose 'np'"):
        seg(np.zeros((32, 32, 3), dtype=np.uint8), ["circle"], return_tensors="tf")
    # `segment`'s check of the memory a photo needs, its one line, before any photo of the call runs
    from vpltool.models.dense import bands

    big = np.zeros((4000, 6000, 3), dtype=np.uint8)  # 24 MP, its pages never touched
    with mock.patch.object(bands, "available_bytes", lambda: 2**28), \
            mock.patch("vpltool.models.dense.segmentor.scores_batch", side_effect=AssertionError("a photo ran")):
        with pytest.raises(VplError, match=r"^images\[1\] \(a ndarray\): a 6000x4000 photo \(24 megapixels\) needs "
                                           r"about 1\.\d GB to segment \(7 queries\) and 0\.2 GB are free; free"):
            seg([np.zeros((32, 32, 3), dtype=np.uint8), big], ["circle", "star|diamond"])
        with mock.patch.object(bands, "available_bytes", lambda: 2**30):  # room for a smaller working size: named
            with pytest.raises(VplError, match=r"and 1\.0 GB are free; pass vpltool\.segmenter\(\.\.\., "
                                               r"max_side=\d+\) \(the photo is segmented at that long side"):
                seg(big, ["circle", "star|diamond"])


def test_list_methods_lists_every_method_and_filters_as_timm():
    names = vpltool.list_methods()
    assert names[:2] == ["none", "maskclip"] and {"naclip", "trident", "pgseg", "groupvit"} <= set(names)
    assert vpltool.list_methods("*CLIP*") == ["maskclip", "sclip", "clearclip", "naclip", "sc-clip", "proxyclip",
                                              "corrclip"]
    assert vpltool.list_methods(family="pgseg") == ["pgseg", "groupvit"]
    assert vpltool.list_methods(["sc*", "cass"]) == ["sclip", "sc-clip", "cass"]
    with pytest.raises(VplError, match="list_methods.family='dino'.: choose clip, pgseg"):
        vpltool.list_methods(family="dino")


def test_segmenter_takes_lists_tensors_folders_and_gives_numpy_torch_or_pipeline_output(world, tmp_path, capfd):
    """A list gives a result per photo (in batches of one input size: the same labels as one by one); a [3, H, W]
    uint8 or float tensor is the photo it holds; ``return_tensors="pt"`` gives torch; ``to_pipeline`` gives
    transformers' list; ``map`` walks a folder lazily; ``.to`` and ``.model`` are torch's."""
    from PIL import Image

    # 7x7 patches: cheap. fp32: a batch's kernels round otherwise than one photo's, by 2.5e-6 of a score in fp32 and
    # by 0.047 in bf16 (auto on a CPU with AMX), where a near-tie's label flipped (docs/api.md)
    seg = vpltool.segmenter("maskclip", device="cpu", batch_size=2, short_side=112, precision="fp32", **TOY)
    assert isinstance(seg.model, torch.nn.Module) and seg.to("cpu") is seg and str(seg.device) == "cpu"
    paths = sorted((world / "images").glob("val_*.png"))[:2]
    one = [seg(p, NAMES) for p in paths]  # a batch of one each
    two = seg(paths, NAMES)  # one batch of two
    assert isinstance(two, list) and len(two) == 2
    for a, b in zip(one, two):
        assert np.array_equal(a.labels, b.labels) and np.allclose(a.scores, b.scores, atol=1e-5)
    rgb = np.asarray(Image.open(paths[0]).convert("RGB"))
    chw = torch.from_numpy(rgb.copy()).permute(2, 0, 1)
    from_uint8, from_float = seg([chw, chw.float() / 255], NAMES, return_tensors="pt")
    assert from_uint8.labels.dtype == torch.int64 and isinstance(from_uint8.scores, torch.Tensor)
    assert torch.equal(from_uint8.labels, torch.from_numpy(one[0].labels))
    assert torch.equal(from_float.labels, from_uint8.labels)
    assert np.array_equal(from_uint8.numpy().labels, one[0].labels)
    pipe = one[0].to_pipeline()
    present = np.unique(one[0].labels)
    assert [d["label"] for d in pipe] == [one[0].classes[c] for c in present]
    for d, c in zip(pipe, present):
        mask = np.asarray(d["mask"])
        assert d["mask"].mode == "L" and np.array_equal(mask == 255, one[0].labels == c)
        assert d["score"] == pytest.approx(float(one[0].scores[c][one[0].labels == c].mean()))
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in paths:
        (folder / p.name).write_bytes(p.read_bytes())
    lazy = seg.map(folder, NAMES, progress=False)
    assert iter(lazy) is lazy  # a generator: nothing runs before it is asked
    assert [(Path(p).name, r.labels.tolist()) for p, r in lazy] == [(p.name, a.labels.tolist())
                                                                     for p, a in zip(paths, one)]
    assert "segment (maskclip)" not in capfd.readouterr().err  # progress=False: nothing printed
    assert len(list(seg.map(folder, NAMES, progress=True))) == 2
    assert "segment (maskclip): 2/2 images (100%)" in capfd.readouterr().err  # the CLI's progress lines


def test_api_segment_takes_dense_as_the_command_line_names_it(world, tmp_path):
    """``dense="maskclip"`` runs MaskCLIP (it was dropped for the default NACLIP, and recorded so)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(sorted((world / "images").glob("val_*.png"))[0].read_bytes())
    vpltool.api.segment(photos, tmp_path / "out", NAMES, dense="maskclip", device="cpu", progress=False, **TOY)
    assert io.read_json(tmp_path / "out" / "_stage.json")["params"]["dense"] == "maskclip"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def test_every_example_of_docs_api_md_runs_on_the_toy_model(tmp_path, monkeypatch):
    from vpltool.demo.make_world import write_dataset
    from vpltool.models.text import pgseg

    blocks = python_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) >= 5
    write_dataset(tmp_path / "world", n_train=6, n_val=3, seed=0)
    pgseg.save_checkpoint(tmp_path / "pgseg.safetensors", pgseg.build_model(pgseg.tiny_config(), seed=3).eval())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VPLTOOL_DEVICE", "cpu")
    namespace: dict = {}
    for block in blocks:  # in order, in one namespace, as a reader runs them
        exec(compile(block, "docs/api.md", "exec"), namespace)
    assert (tmp_path / "run" / "shapes" / "overlays").is_dir()
    assert (tmp_path / "run" / "shapes_report" / "index.html").is_file()
    assert 0.0 <= namespace["scores"]["miou"] <= 1.0
    assert isinstance(namespace["emb"], vpltool.Embedding) and namespace["emb"].kept  # the second pass's examples
    assert np.array_equal(io.read_mask(tmp_path / "val_000000_mask.png"), namespace["a"].labels)  # same photo, names
    # each class list the page gives a named photo holds that photo's own classes (labels.csv)
    truth = dict(line.split(",") for line in (tmp_path / "world" / "labels.csv").read_text().splitlines()[1:])
    calls = re.findall(r'\("world/images/(val_\d+)\.png",\s*\[([^\]]*)\]', "\n".join(blocks))
    assert calls and all(set(truth[stem].split(";")) <= set(re.findall(r'"([^"]+)"', names)) for stem, names in calls)
