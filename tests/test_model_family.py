"""One way of naming a model that segments by class names: ``--model pgseg:FILE`` (``groupvit:FILE``) is the PGSeg /
GroupViT checkpoint's, as the registry parses it, in `segment`, `cam`, `benchmark` and ``vpltool.segmenter``; the
older ``--pgseg FILE`` is its alias (the same files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vpltool import io
from vpltool.cli import app
from vpltool.errors import VplError
from vpltool.models.registry import SEGMENTERS, model_family

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--short-side", "48", "--slide-crop", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from vpltool.demo.make_world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("world") / "w", n_train=3, n_val=2, seed=1)


@pytest.fixture(scope="module")
def checkpoint(tiny_pgseg_checkpoint) -> Path:
    return tiny_pgseg_checkpoint


def _masks(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _warned(option: str, output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("warning:") and f"{option} " in ln]


# ------------------------------------------------------------------------------------------------ the parser
@pytest.mark.parametrize("value, want", [
    ("pgseg:runs/gv/pgseg.safetensors", ("pgseg", Path("runs/gv/pgseg.safetensors"))),
    ("groupvit:group_vit_gcc_yfcc_30e-879422e0.pth", ("pgseg", Path("group_vit_gcc_yfcc_30e-879422e0.pth"))),
    ("pgseg:/abs/with:colon.pth", ("pgseg", Path("/abs/with:colon.pth"))),
    ("ViT-B-16", ("clip", "ViT-B-16")),
    ("local-dir:/models/clip", ("clip", "local-dir:/models/clip")),
    ("hf-hub:timm/ViT-B-16-SigLIP", ("clip", "hf-hub:timm/ViT-B-16-SigLIP")),
    ("vpltool-toy", ("clip", "vpltool-toy")),
])
def test_model_family_parses_family_and_file(value, want):
    assert model_family(value) == want


@pytest.mark.parametrize("value", ["pgseg:", "groupvit:  "])
def test_a_family_prefix_without_a_file_is_one_line(value):
    with pytest.raises(VplError, match=r"no checkpoint file after .*give --model (pgseg|groupvit):FILE"):
        model_family(value)


def test_every_segmenter_name_is_a_prefix_and_the_registry_imports_no_torch():
    assert all(model_family(f"{name}:x.pth") == (fam, Path("x.pth")) for name, fam in SEGMENTERS.items())
    code = "import sys, vpltool.models.registry as r; r.model_family('pgseg:x'); print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


# ------------------------------------------------------------------------------------------------ segment
def test_segment_model_pgseg_writes_the_masks_of_the_pgseg_alias(world, checkpoint, tmp_path):
    runner = CliRunner()
    runs = {"alias": ["--pgseg", str(checkpoint)], "model": ["--model", f"pgseg:{checkpoint}"],
            "groupvit": ["--model", f"groupvit:{checkpoint}"],
            "both": ["--model", f"pgseg:{checkpoint}", "--pgseg", str(checkpoint)]}
    for name, how in runs.items():
        r = runner.invoke(app, ["segment", str(world), "--split", "val", "-o", str(tmp_path / name), *how, *FAST])
        assert r.exit_code == 0, (name, r.output)
        assert not _warned("--model", r.output), (name, r.output)  # pgseg:FILE is not a CLIP option left unused
    want = _masks(tmp_path / "alias")
    assert len(want) == 2
    for name in ("model", "groupvit", "both"):
        assert _masks(tmp_path / name) == want, name
        assert io.read_record(io.stage_record_path(tmp_path / name))["params"] == \
            io.read_record(io.stage_record_path(tmp_path / "alias"))["params"]
    # the CLIP path is untouched by the parser: the toy CLIP's name still segments with --dense
    r = runner.invoke(app, ["segment", str(world), "--split", "val", "-o", str(tmp_path / "clip"), "--model",
                            "vpltool-toy", "--pretrained", "none", "--dense", "maskclip", *FAST])
    assert r.exit_code == 0, r.output
    assert io.read_record(io.stage_record_path(tmp_path / "clip"))["params"]["dense"] == "maskclip"


def test_segment_two_checkpoints_or_no_file_is_refused_before_anything(world, checkpoint, tmp_path):
    runner = CliRunner()
    other = tmp_path / "other.safetensors"
    other.write_bytes(checkpoint.read_bytes())  # a copy: a file of its own, same bytes
    r = runner.invoke(app, ["segment", str(world), "--split", "val", "-o", str(tmp_path / "a"), "--model",
                            f"pgseg:{checkpoint}", "--pgseg", str(other), *FAST])
    assert r.exit_code == 2, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert "two checkpoints" in line and "alias of --model pgseg:FILE" in line
    r = runner.invoke(app, ["segment", str(world), "--split", "val", "-o", str(tmp_path / "b"), "--model", "pgseg:",
                            *FAST])
    assert r.exit_code == 2 and "give --model pgseg:FILE" in r.output, r.output
    r = runner.invoke(app, ["segment", str(world), "--split", "val", "-o", str(tmp_path / "c"), "--model",
                            f"pgseg:{tmp_path / 'missing.safetensors'}", *FAST])
    assert r.exit_code == 2 and "missing.safetensors" in r.output, r.output
    assert not any((tmp_path / n).exists() for n in "abc")


# ------------------------------------------------------------------------------------------------ cam
def test_cam_model_pgseg_is_cam_pgseg(world, checkpoint, tmp_path):
    runner = CliRunner()
    for name, how in {"alias": ["--pgseg", str(checkpoint)], "model": ["--model", f"pgseg:{checkpoint}"]}.items():
        r = runner.invoke(app, ["cam", str(world), "--split", "train", *how, "--pgseg-side", "48", "-o",
                                str(tmp_path / name), "--device", "cpu"])
        assert r.exit_code == 0, (name, r.output)
        assert not _warned("--model", r.output), (name, r.output)
    from vpltool.data import open_dataset

    items = open_dataset(world, "train").items
    for item in items:
        a, b = (io.read_cam(io.cam_path(tmp_path / n, item.id)) for n in ("alias", "model"))
        assert a.labels == b.labels and np.array_equal(a.cams, b.cams), item.id
    r = runner.invoke(app, ["cam", str(world), "--split", "train", "--model", "ViT-B-16", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2, r.output
    assert "--model ViT-B-16: cam's CLIP is the one its --prototypes file names" in r.output
    other = tmp_path / "other.safetensors"
    other.write_bytes(checkpoint.read_bytes())
    r = runner.invoke(app, ["cam", str(world), "--split", "train", "--model", f"pgseg:{checkpoint}", "--pgseg",
                            str(other), "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and "two checkpoints" in r.output, r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ------------------------------------------------------------------------------------------------ benchmark
def test_benchmark_pgseg_scores_the_checkpoint_as_segment_and_eval_do(checkpoint, tmp_path):
    from vpltool.data.miniature import make_miniature

    roots = {n: make_miniature(n, tmp_path / "mini") for n in ("voc21", "voc20")}
    runner = CliRunner()
    out = tmp_path / "b"
    r = runner.invoke(app, ["benchmark", "pgseg", "--model", f"pgseg:{checkpoint}",
                            *[a for n, root in roots.items() for a in ("--root", f"{n}={root}")], "-o", str(out),
                            "--short-side", "48", "--slide-crop", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    head, row = [ln for ln in r.output.splitlines() if ln.startswith(("method", "pgseg"))][-2:]
    assert head.split()[1:] == ["VOC21", "VOC20", "Avg", "protocol"] and row.split()[4:] == ["zero-shot"]
    table = json.loads((out / "table.json").read_text())
    assert table["method"] == "pgseg" and table["model"] == {"model": "pgseg", "pretrained": str(checkpoint)}
    assert table["settings"]["voc21"]["bg_thresh"] == 0.95 and table["settings"]["voc20"]["bg_thresh"] == 0.0
    assert table["settings"]["voc21"]["background"] == "none" and table["settings"]["voc21"]["short_side"] == 48
    # VOC21's column is `segment --model pgseg:FILE` then `eval` on the same root with the same settings
    seg = tmp_path / "seg"
    r = runner.invoke(app, ["segment", f"voc21={roots['voc21']}", "-o", str(seg), "--model", f"pgseg:{checkpoint}",
                            *FAST])
    assert r.exit_code == 0, r.output
    assert _masks(seg) == _masks(out / "voc21")
    r = runner.invoke(app, ["eval", str(seg), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["miou"] == pytest.approx(table["miou"]["voc21"])
    assert f"{100 * table['miou']['voc21']:.1f}" == row.split()[1]


def test_benchmark_pgseg_refuses_a_missing_checkpoint_a_dense_method_or_a_clip(checkpoint, tmp_path):
    from vpltool.data.miniature import make_miniature

    root = make_miniature("voc21", tmp_path / "mini")
    runner = CliRunner()
    cases = {
        "missing": (["pgseg", "--model", f"pgseg:{tmp_path / 'missing.safetensors'}"], "missing.safetensors"),
        "dense": (["naclip", "--model", f"pgseg:{checkpoint}"], "a PGSeg / GroupViT checkpoint runs as method pgseg"),
        "clip": (["groupvit"], "give its checkpoint, --model groupvit:FILE"),
    }
    for name, (args, words) in cases.items():
        r = runner.invoke(app, ["benchmark", *args, "--root", f"voc21={root}", "-o", str(tmp_path / name)])
        assert r.exit_code == 2, (name, r.output)
        (line,) = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert words in line, (name, line)
        assert not (tmp_path / name).exists(), name
    r = runner.invoke(app, ["benchmark", "--presets", "pgseg"])
    assert r.exit_code == 0 and "pgseg      voc21        bg_thresh=0.95, short_side=448" in r.output, r.output


def test_pgseg_in_two_shards_is_the_run_in_one_piece(world, checkpoint, tmp_path):
    """`segment --model pgseg:FILE --shard i/n` and `benchmark pgseg --shard i/n` split the images (each shard once:
    they were ignored, so under torchrun every rank segmented every image); the folder completes with the last."""
    from vpltool.data.miniature import make_miniature

    runner = CliRunner()
    one = runner.invoke(app, ["segment", str(world), "--split", "val", "--model", f"pgseg:{checkpoint}", *FAST,
                              "-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    for i in (0, 1):
        r = runner.invoke(app, ["segment", str(world), "--split", "val", "--model", f"pgseg:{checkpoint}", *FAST,
                                "-o", str(tmp_path / "two"), "--shard", f"{i}/2"])
        assert r.exit_code == 0 and "1 masks" in r.output, r.output  # 2 val images: one each
        assert io.stage_record_path(tmp_path / "two").is_file() == (i == 1)
    assert _masks(tmp_path / "two") == _masks(tmp_path / "one") and len(_masks(tmp_path / "one")) == 2
    root = make_miniature("voc21", tmp_path / "mini")
    bench = ["benchmark", "pgseg", "--model", f"pgseg:{checkpoint}", "--root", f"voc21={root}", "--short-side", "48"]
    whole = runner.invoke(app, [*bench, "-o", str(tmp_path / "b1")])
    first = runner.invoke(app, [*bench, "-o", str(tmp_path / "b2"), "--shard", "0/2"])
    assert first.exit_code == 0 and "not scored yet" in first.output, first.output
    last = runner.invoke(app, [*bench, "-o", str(tmp_path / "b2"), "--shard", "1/2"])
    assert last.exit_code == 0 and whole.exit_code == 0, (last.output, whole.output)
    assert _masks(tmp_path / "b2" / "voc21") == _masks(tmp_path / "b1" / "voc21")
    assert io.read_json(tmp_path / "b2" / "table.json")["miou"] == io.read_json(tmp_path / "b1" / "table.json")["miou"]


# ------------------------------------------------------------------------------------------------ Python
def test_segmenter_model_pgseg_is_segmenter_pgseg_checkpoint(world, checkpoint):
    import vpltool
    from vpltool.data import open_dataset

    a = vpltool.segmenter("pgseg", checkpoint=checkpoint, device="cpu", short_side=48, slide_crop=0)
    b = vpltool.segmenter(model=f"pgseg:{checkpoint}", device="cpu", short_side=48, slide_crop=0)
    assert b.method == "pgseg" and b.checkpoint == Path(checkpoint)
    for item in open_dataset(world, "val").items:
        x, y = a(item.image, ["circle", "star", "square"]), b(item.image, ["circle", "star", "square"])
        assert np.array_equal(x.labels, y.labels) and np.array_equal(x.scores, y.scores)
    with pytest.raises(VplError, match="drop method 'naclip'"):
        vpltool.segmenter("naclip", model=f"pgseg:{checkpoint}")
    with pytest.raises(VplError, match="two checkpoints"):
        vpltool.segmenter(model=f"pgseg:{checkpoint}", checkpoint="other.safetensors")
