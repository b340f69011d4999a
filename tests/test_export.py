"""`vpltool export`: a trained decoder and `--dense naclip`, exported to ONNX and run by onnxruntime, give vpltool's
own labels and logits; what cannot be exported is refused as such; the photo size is recorded and checked; the
file records its source's digest, classes and settings."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vpltool
from vpltool import io
from vpltool.cli import app
from vpltool.config import DecoderConfig, PredictConfig, RuntimeConfig

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ASSETS = Path(__file__).parent / "assets"
TINY = ["--model", "vpl-test-vit", "--pretrained", "none", "--model-config-dir", str(ASSETS / "model_configs")]
NAMES = "circle,star|diamond,square"
# naclip at a short side of 112 (its own 336 makes the tiny photos 3.5 times larger: the same arithmetic, slower)
NACLIP = ["--dense", "naclip", "--short-side", "112", "--templates", "a photo of a {}.", "--background", "grass,sky"]
LOGITS_BAR, LABELS_BAR = 1e-4, 0.999
PGSEG_SIDE = ["--short-side", "112", "--slide-crop", "112", "--slide-stride", "56"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def decoder(gt_pseudo, text_protos, tmp_path_factory) -> Path:
    """A tiny decoder trained one step on the world's GT (fp32)."""
    from vpltool.stages.train_decoder import run_train_decoder

    out = tmp_path_factory.mktemp("decoder")
    cfg = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=1, log_every=1, warmup_iters=1)
    run_train_decoder(gt_pseudo, text_protos, out, cfg, RuntimeConfig(device="cpu", workers=1, precision="fp32"))
    return out / "decoder.safetensors"


@pytest.fixture(scope="module")
def decoder_onnx(decoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "decoder.onnx"
    r = invoke("export", "-o", out, "--decoder", decoder, "--size", "96x96")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def naclip_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "naclip.onnx"
    r = invoke("export", "-o", out, *NACLIP, "--classes", NAMES, "--size", "96x96", *TINY)
    assert r.exit_code == 0, r.output
    return out


def agree(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def test_decoder_onnx_gives_predicts_labels_and_logits(world, decoder, decoder_onnx, tmp_path):
    from vpltool.data import open_dataset
    from vpltool.decoder import input_long_side, predict_logits
    from vpltool.models import ModelSpec, load_model
    from vpltool.stages.predict import run_predict

    ref, ours = tmp_path / "predict", tmp_path / "onnx"
    run_predict(decoder, world, "val", ref, PredictConfig(scales=(1.0,), flip=False),
                RuntimeConfig(device="cpu", precision="fp32", workers=1))
    r = invoke("segment", world, "--split", "val", "--onnx", decoder_onnx, "-o", ours)
    assert r.exit_code == 0, r.output
    model, f = load_model("decoder", decoder, "cpu")
    bb = load_model("clip", ModelSpec.from_identity(f.meta("model"), f.path), "cpu")
    side = input_long_side(None, f.meta("decoder_config")["crop_size"])
    seg = vpltool.onnx_segmenter(decoder_onnx)
    assert seg.classes == tuple(f.classes)
    for item in open_dataset(world, "val").items:
        mask = io.read_mask(io.mask_path(ref, item.id))
        assert agree(io.read_mask(io.mask_path(ours, item.id)), mask) >= LABELS_BAR, item.id
        image = io.load_image(item.image)
        with torch.no_grad():
            logits = predict_logits(bb, model, f.meta("decoder_arch")["blocks"], image, (1.0,), False, side,
                                    torch.float32).numpy()
        out = seg.file.run(image)
        assert np.abs(out["logits"] - logits).max() <= LOGITS_BAR
        assert agree(seg(item.image).labels, mask) >= LABELS_BAR
    record = io.read_json(ours / "_stage.json")
    assert record["classes"] == list(f.classes)  # eval scores the folder by these names


def test_naclip_onnx_gives_segments_labels_and_logits(world, naclip_onnx, tmp_path, tiny_spec):
    from vpltool.config import SegmentConfig
    from vpltool.data import open_dataset
    from vpltool.models.backbones.preprocess import Preprocess
    from vpltool.models.dense.segmentor import query_rows, segment_logits, short_side_size
    from vpltool.stages.segment import check_dense, load_dense, resolve_queries

    ref, ours = tmp_path / "segment", tmp_path / "onnx"
    r = invoke("segment", world, "--split", "val", "-o", ref, "--classes", NAMES, *NACLIP, *TINY, "--device", "cpu",
               "--precision", "fp32")
    assert r.exit_code == 0, r.output
    r = invoke("segment", world, "--split", "val", "--onnx", naclip_onnx, "-o", ours)
    assert r.exit_code == 0, r.output
    names = NAMES.split(",")
    cfg = SegmentConfig.of(dense="naclip", short_side=112, templates="a photo of a {}.", background="grass,sky",
                           classes=tuple(names))
    bb = load_dense(tiny_spec, check_dense(cfg, tiny_spec), torch.device("cpu"))
    text, _ = query_rows(bb, *resolve_queries(names, cfg))
    settings = cfg.resolved()
    seg = vpltool.onnx_segmenter(naclip_onnx)
    assert seg.classes == ("background", "circle", "star", "square")
    for item in open_dataset(world, "val").items:
        mask = io.read_mask(io.mask_path(ref, item.id))
        assert agree(io.read_mask(io.mask_path(ours, item.id)), mask) >= LABELS_BAR, item.id
        image = io.load_image(item.image)
        size = short_side_size(*image.shape[:2], settings.short_side, settings.long_side)
        with torch.no_grad():
            logits = segment_logits(bb, bb.normalize(Preprocess.resize(image, size)[None]), text, settings,
                                    [image.shape[:2]])[0].numpy()
        assert np.abs(seg.file.run(image)["logits"] - logits).max() <= LOGITS_BAR, item.id


def test_the_file_records_its_source_classes_size_and_settings(decoder, decoder_onnx, naclip_onnx):
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(decoder_onnx), load_external_data=False).metadata_props}
    assert meta["vpltool.source_sha256"] == io.sha256_file(decoder)
    assert meta["vpltool.photo_size"] == "96x96" and meta["vpltool.source"] == "decoder"
    assert json.loads(meta["vpltool.classes"]) == list(io.read_tensors(decoder, kind=io.DECODER_KIND, keys=()).classes)
    assert json.loads(meta["vpltool.settings"])["scales"] == [1.0]
    assert {"vpltool.model", "vpltool.input_size", "vpltool.licence"} <= set(meta)
    dense = {p.key: p.value for p in onnx.load(str(naclip_onnx), load_external_data=False).metadata_props}
    assert dense["vpltool.source"] == "dense:naclip" and len(dense["vpltool.source_sha256"]) == 64
    settings = json.loads(dense["vpltool.settings"])
    assert settings["short_side"] == 112 and settings["pamr_steps"] == 10 and settings["background_words"] == [
        "grass", "sky"]
    assert json.loads(dense["vpltool.classes"]) == ["background", "circle", "star", "square"]


def test_a_photo_of_another_size_is_refused_naming_the_size_to_export(world, naclip_onnx, tmp_path):
    data = tmp_path / "world"
    shutil.copytree(world, data)
    image = data / "images" / "val_000001.png"
    Image.open(image).resize((93, 95), Image.BICUBIC).save(image)
    r = invoke("segment", data, "--split", "val", "--onnx", naclip_onnx, "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert "95x93" in r.output and "--size 95x93" in r.output and "96x96" in r.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))  # refused before any mask
    with pytest.raises(vpltool.errors.VplError, match="--size 95x93"):
        vpltool.onnx_segmenter(naclip_onnx)(image)


@pytest.mark.parametrize("method", ["sam3", "activesam", "proxyclip", "corrclip", "trident", "cass"])
def test_a_method_that_cannot_be_exported_is_refused_with_its_reason_even_over_an_existing_file(method, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"a user's file")
    r = invoke("export", "-o", out, "--dense", method, "--classes", "cat", "--size", "96x96", *TINY)
    assert r.exit_code == 2
    assert "cannot be exported" in r.output and "--overwrite" not in r.output, r.output
    assert out.read_bytes() == b"a user's file"


def test_an_existing_file_is_kept_without_overwrite_and_a_failed_export_leaves_none(decoder, tmp_path, monkeypatch):
    out = tmp_path / "d.onnx"
    out.write_bytes(b"a user's file")
    r = invoke("export", "-o", out, "--decoder", decoder, "--size", "96x96")
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert out.read_bytes() == b"a user's file"

    def broken(*args, **kwargs):
        raise RuntimeError("the exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    fresh = tmp_path / "fresh.onnx"
    with pytest.raises(RuntimeError):
        from vpltool.stages.export import export_decoder

        export_decoder(decoder, fresh, (96, 96))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx"]  # no file, no temporary


def test_segment_onnx_refuses_a_file_export_did_not_write(world, tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not onnx")
    r = invoke("segment", world, "--split", "val", "--onnx", bad, "-o", tmp_path / "out")
    assert r.exit_code == 2 and str(bad) in r.output


def test_a_pgseg_checkpoint_onnx_gives_segments_labels_and_logits(world, tiny_pgseg_checkpoint, tmp_path):
    from vpltool.data import open_dataset
    from vpltool.models.registry import load_model
    from vpltool.stages.segment_text import image_scores, text_family_of, text_queries, zero_shot_settings

    # at a short side of 112 in one window of 112 (stride 56), as its own 448 in one of 448 (stride 224) on these
    # square photos: the same graph, 16 times fewer pixels
    model_opt = ["--model", f"pgseg:{tiny_pgseg_checkpoint}", "--classes", "circle,square", "--background",
                 "grass,sky", *PGSEG_SIDE]
    onnx, ref, ours = tmp_path / "p.onnx", tmp_path / "segment", tmp_path / "onnx"
    r = invoke("export", "-o", onnx, *model_opt, "--size", "96x96")
    assert r.exit_code == 0, r.output
    r = invoke("segment", world, "--split", "val", "-o", ref, *model_opt, "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = invoke("segment", world, "--split", "val", "--onnx", onnx, "-o", ours)
    assert r.exit_code == 0, r.output
    fam, own = text_family_of("pgseg"), zero_shot_settings("pgseg")
    model = load_model("pgseg", tiny_pgseg_checkpoint, "cpu")
    text = text_queries(fam, model, ["circle", "square"], ["grass", "sky"], "cpu")
    seg = vpltool.onnx_segmenter(onnx)
    assert seg.metadata["vpltool.source_sha256"] == io.sha256_file(tiny_pgseg_checkpoint)
    for item in open_dataset(world, "val").items:
        mask = io.read_mask(io.mask_path(ref, item.id))
        assert agree(io.read_mask(io.mask_path(ours, item.id)), mask) >= LABELS_BAR, item.id
        image = io.load_image(item.image)
        logits, _ = image_scores(fam, model, image, text, 2, own.bg_thresh, 112, (112, 56), "cpu")
        assert np.abs(seg.file.run(image)["logits"] - logits.numpy()).max() <= LOGITS_BAR, item.id


def test_talk2dino_is_refused_with_its_reason(tmp_path):
    r = invoke("export", "-o", tmp_path / "t.onnx", "--model", f"talk2dino:{tmp_path / 'none.safetensors'}",
               "--classes", "cat", "--size", "96x96")
    assert r.exit_code == 2 and "cannot be exported" in r.output and "antialias" in r.output, r.output


@pytest.mark.parametrize("method", ["sclip", "maskclip", "clearclip", "none"])
def test_the_other_exportable_methods_give_the_segmenters_labels(world, method, tmp_path):
    """SCLIP's area filter, MaskCLIP's and ClearCLIP's padded windows, CLIP's own block: the file's labels are the
    Python door's (`segment`'s per-image function) on every val photo, its scores within the bar."""
    from vpltool.data import open_dataset

    out = tmp_path / f"{method}.onnx"
    r = invoke("export", "-o", out, "--dense", method, "--short-side", "112", "--templates", "a photo of a {}.",
               "--background", "grass,sky", "--classes", NAMES, "--size", "96x96", *TINY)
    assert r.exit_code == 0, r.output
    seg = vpltool.segmenter(method, model="vpl-test-vit", pretrained="none", short_side=112,
                            templates="a photo of a {}.", background="grass,sky", device="cpu", precision="fp32",
                            model_config_dir=str(ASSETS / "model_configs"))
    onnx = vpltool.onnx_segmenter(out)
    for item in open_dataset(world, "val").items:
        ours, ref = onnx(item.image), seg(item.image, NAMES.split(","))
        assert agree(ours.labels, ref.labels) >= LABELS_BAR, item.id
        assert np.abs(ours.scores - ref.scores).max() <= 1e-3  # probabilities: softmax(scale x logits), scale 40-65


@pytest.mark.parametrize("recipe", ["weclip", "weclip+"])
def test_a_weclip_decoder_is_refused_with_its_reason(recipe):
    from vpltool.errors import VplError
    from vpltool.stages.export.decoder import check_decoder

    class Header:  # a decoder file's header, as io.read_tensors gives it
        path = "d.safetensors"

        def meta(self, key, default=None):
            return {"recipe": recipe} if key == "decoder_config" else default

    with pytest.raises(VplError, match=re.escape(f"--recipe {recipe} cannot be exported")):
        check_decoder(Header())


def test_what_is_asked_is_checked_before_any_model_loads(decoder, tmp_path):
    out = tmp_path / "x.onnx"
    cases = {("--decoder", decoder, "--classes", "cat"): "--classes with --decoder",
             ("--dense", "naclip"): "pass --classes",
             ("--decoder", decoder, "--dense", "naclip"): "export one of them",
             ("--decoder", decoder, "--size", "12x"): "--size 12x"}
    for args, said in cases.items():
        size = () if "--size" in args else ("--size", "96x96")
        r = invoke("export", "-o", out, *args, *size)
        assert r.exit_code == 2 and said in r.output, (args, r.output)
    assert not out.exists()
