"""The Python front door (docs/api.md): `import vpltool` stays cheap, `vpltool.segmenter` gives the CLI's masks, the
stage functions take the commands' options, and every example of docs/api.md runs as written on the toy CLIP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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
            "from vpltool import api; assert callable(api.cam) and 'torch' not in sys.modules; print('ok')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    with pytest.raises(AttributeError):
        vpltool.no_such_name  # noqa: B018


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
    from vpltool.models import pgseg

    ckpt = pgseg.save_checkpoint(tmp_path / "m.safetensors", pgseg.build_model(pgseg.tiny_config(), seed=3).eval())
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "--classes", "circle,star,square", "-o",
                                 str(out), "--pgseg", str(ckpt), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    seg = vpltool.segmenter("pgseg", checkpoint=ckpt, device="cpu")
    from vpltool.data import open_dataset

    for item in open_dataset(world, "val").items:
        result = seg(item.image, ["circle", "star", "square"])
        assert np.array_equal(result.labels, io.read_mask(io.mask_path(out, item.id))), item.id
        assert result.scores.shape == (4, *result.labels.shape)


def test_segmenter_and_stage_functions_refuse_bad_input_in_one_line(tmp_path):
    with pytest.raises(VplError, match="--dense"):
        vpltool.segmenter("no-such-method", **TOY)
    with pytest.raises(VplError, match="unknown option 'box_threshold'"):
        vpltool.segmenter("maskclip", box_threshold=0.4, **TOY)
    with pytest.raises(VplError, match="checkpoint=FILE"):
        vpltool.segmenter("pgseg")
    with pytest.raises(VplError, match="missing.safetensors: no such checkpoint file"):
        vpltool.segmenter("pgseg", checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(VplError, match=r"vpltool.api.cam: unknown option 'tau_i'"):
        vpltool.api.cam(tmp_path, tmp_path / "p.safetensors", tmp_path / "out", tau_i=0.1)
    seg = vpltool.segmenter("maskclip", device="cpu", **TOY)
    with pytest.raises(VplError, match=r"\[H, W, 3\] uint8"):
        seg(np.zeros((8, 8), dtype=np.float32), ["circle"])
    with pytest.raises(VplError, match="at least one class"):
        seg(np.zeros((32, 32, 3), dtype=np.uint8), " , ")


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def test_every_example_of_docs_api_md_runs_on_the_toy_model(tmp_path, monkeypatch):
    from vpltool.demo.make_world import write_dataset
    from vpltool.models import pgseg

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
