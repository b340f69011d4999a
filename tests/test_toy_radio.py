"""The toy RADIO (`train-toy-radio`): a toy SigLIP (sigmoid loss) and a toy C-RADIOv3 distilled from it and the toy
DINO, written as NVlabs/RADIO's hub checkpoint and a Hugging Face SigLIP folder; a bit-identical rebuild, the
record, and both files loading through the real ``--dense radseg`` path (the ``dino`` family building the student
at the size its checkpoint records)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("timm")

from vpltool.demo.config import ToyRadioConfig  # noqa: E402
from vpltool.demo.train_toy_radio import sigmoid_loss, train_toy_radio  # noqa: E402
from vpltool.errors import VplError  # noqa: E402

TINY = ToyRadioConfig(width=16, depth=1, teacher_depth=1, text_depth=1, head_width=16, side=64, siglip_steps=2,
                      radio_steps=2, batch_size=4)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toy_radio") / "a"
    return out, train_toy_radio(out, TINY)


def test_toy_radio_rebuilds_bit_identically_and_records_its_recipe(toy, tmp_path):
    out, record = toy
    again = train_toy_radio(tmp_path / "b", TINY)
    for name in ("radio.pth.tar", "siglip/model.safetensors", "siglip/tokenizer.json"):
        assert (out / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert again["siglip"]["final_loss"] == record["siglip"]["final_loss"]
    saved = json.loads((out / "model.json").read_text())
    assert saved["vpltool_file"] == "toy-radio-record" and saved["recipe"]["seed"] == 0
    assert saved["recipe"]["width"] == 16 and saved["radio"]["teachers"] == ["siglip2", "dino_v2"]
    assert saved["siglip"]["steps"] == 2 and saved["radio"]["steps"] == 2 and saved["siglip"]["words"] == 56
    assert set(saved["radio"]["terms"]) == {"summary0", "feature0", "summary1", "feature1"}
    assert all(np.isfinite(v) for v in saved["radio"]["terms"].values())
    other = train_toy_radio(tmp_path / "c", replace(TINY, seed=1, dino_teacher=False))
    assert (tmp_path / "c" / "radio.pth.tar").read_bytes() != (out / "radio.pth.tar").read_bytes()
    assert other["radio"]["teachers"] == ["siglip2"]


def test_the_checkpoint_is_radios_hub_format_at_the_recorded_size(toy):
    from vpltool.models.backbones.dino import DinoSpec, load_dino
    from vpltool.models.backbones.radio import read_checkpoint, summary_head
    from vpltool.models.backbones.radio_files import recorded_size

    out, _ = toy
    chk = read_checkpoint(out / "radio.pth.tar")
    assert chk.args["model_kwargs"] == {"embed_dim": 16, "depth": 1, "num_heads": 2}
    assert [t["name"] for t in chk.args["teachers"]] == ["siglip2", "dino_v2"] and chk.args["mlp_version"] == "v2"
    assert chk.state["base_model.patch_generator.pos_embed"].shape == (1, 16, 16)  # a 4 x 4 grid of 64 px
    assert chk.state["base_model.patch_generator.cls_token.token"].shape == (8, 16)  # 2 summaries + 6 registers
    assert all(v.dtype == torch.float16 for v in chk.state.values())  # as the hub's _half files
    head = summary_head(chk, "siglip2")
    assert head.final[-1].out_features == 16  # the toy SigLIP's embedding width
    spec = DinoSpec("naflexvit_base_patch16_radio_v3", str(out / "radio.pth.tar"))
    assert recorded_size(spec.model, spec.weights) == {"depth": 1, "embed_dim": 16, "num_heads": 2,
                                                       "pos_embed_grid_size": (4, 4)}
    assert recorded_size("test_vit", str(out / "radio.pth.tar")) == {}  # only a C-RADIOv3 is sized
    dino = load_dino(spec)
    assert len(dino.model.blocks) == 1 and dino.model.embed_dim == 16 and dino.n_prefix == 8


def test_the_toy_files_segment_through_dense_radseg(toy):
    import vpltool
    from vpltool.demo.scenes import SceneConfig, generate_scenes

    out, _ = toy
    scene = next(generate_scenes(1, 123, SceneConfig()))
    seg = vpltool.segmenter("radseg", proxy_weights=str(out / "radio.pth.tar"), language_model=str(out / "siglip"),
                            short_side=64, slide_crop=64, slide_stride=32, templates="a photo of a {}.",
                            background="grass,sky,wall,water", device="cpu")
    result = seg(scene.image, ["circle", "star", "square"])
    assert result.labels.shape == scene.image.shape[:2]
    assert int(result.labels.max()) <= 3
    # the text side is the toy SigLIP's own: its rows for two class words differ
    rows = seg.backbone.encode_text(["a photo of a circle.", "a photo of a star."])
    assert rows.shape == (2, 16) and not torch.allclose(rows[0], rows[1])


def test_sigmoid_loss_makes_identical_captions_positives():
    img = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    scale, bias = torch.tensor(np.log(10.0)), torch.tensor(-10.0)
    logits = img @ img.T * 10 - 10
    same = sigmoid_loss(img, img, ["a", "a", "b"], scale, bias)
    z = torch.tensor([[1.0, 1, -1], [1, 1, -1], [-1, -1, 1]])
    assert torch.isclose(same, -torch.nn.functional.logsigmoid(z * logits).sum() / 3)
    assert not torch.isclose(same, sigmoid_loss(img, img, ["a", "b", "c"], scale, bias))


def test_bad_settings_are_one_line_before_training():
    with pytest.raises(VplError, match="--side 100: give a multiple of 16"):
        replace(TINY, side=100)
    with pytest.raises(VplError, match="--batch-size 1: give at least 2"):
        replace(TINY, batch_size=1)


def test_make_radseg_segments_val_with_the_toy_radio_and_make_demo_does_not(tmp_path):
    import os
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("needs GNU make")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def planned(target: str) -> str:
        return subprocess.run(["make", "-n", "--no-print-directory", target, f"RUN={tmp_path / 'run'}",
                               f"VENV={tmp_path / 'venv'}"], cwd=root, env=env, capture_output=True, text=True,
                              check=True).stdout

    lines = [" ".join(line.split()) for line in planned("radseg").replace("\\\n", " ").splitlines()]
    segment = next(line for line in lines if " segment " in line)
    for words in ("--dense radseg", "--split val", f"-o {tmp_path / 'run'}/dense_radseg/radseg",
                  "--proxy-weights vpltool/assets/toy-radio/radio.pth.tar",
                  "--language-model vpltool/assets/toy-radio/siglip", "--scra-scale", "--scga-scale"):
        assert words in segment, (words, segment)
    assert any(f"eval {tmp_path / 'run'}/dense_radseg/radseg --json" in line for line in lines)
    assert any(f"studies/radseg_demo_rows.py {tmp_path / 'run'}" in line for line in lines)
    assert "--dense radseg" not in planned("demo") and "dense_radseg" not in planned("demo")


def test_the_shipped_toy_radio_is_the_recipes_and_loads_through_dense_radseg():
    import vpltool
    from vpltool.demo.scenes import SceneConfig, generate_scenes

    shipped = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-radio"
    record = json.loads((shipped / "model.json").read_text())
    assert record["vpltool_file"] == "toy-radio-record" and record["recipe"] == vars(ToyRadioConfig())
    assert record["radio"]["teachers"] == ["siglip2", "dino_v2"]
    assert "never a make-world split" in record["data"]["scenes"]
    assert all(p.stat().st_size < 1 << 20 for p in shipped.rglob("*") if p.is_file())  # the package ships them
    scene = next(generate_scenes(1, 7, SceneConfig()))
    seg = vpltool.segmenter("radseg", proxy_weights=str(shipped / "radio.pth.tar"),
                            language_model=str(shipped / "siglip"), short_side=192, slide_crop=192, slide_stride=96,
                            templates="a photo of a {}.", background="grass,sky,wall,water", device="cpu")
    assert seg(scene.image, ["circle", "star"]).labels.shape == (96, 96)
    assert seg.backbone.text.dim == record["recipe"]["width"]
