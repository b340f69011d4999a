"""Every SAM-family path runs at the run's ``--precision``: `sam-pseudo --masks sam|sam3` (auto: the CAMs' dtype),
`segment --region-masks sam` (CorrCLIP, OV-Stitcher, TextRegion: the regions made where the segmentor runs, under
its autocast), without a crash in the steps after the model (segment-anything's and TextRegion's fp32 / fp16
post-processing). SAM 3 and ActiveSAM themselves: tests/test_sam3_half.py; bf16's distance from fp32 on real-ish
inputs: bench/bench_sam3_footprint.py --methods."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vpltool import io
from vpltool.config import RuntimeConfig, SamPseudoConfig
from vpltool.errors import VplError
from vpltool.runtime.numerics import run_numerics

ASSETS = Path(__file__).resolve().parents[1] / "vpltool" / "assets"
TOY_SAM = ASSETS / "toy-sam-world20" / "model.safetensors"  # the demo's SAM of sam-pseudo (trained)
TOY_SAM3 = ASSETS / "toy-sam3"
needs_toys = pytest.mark.skipif(not (TOY_SAM.is_file() and (TOY_SAM3 / "model.safetensors").is_file()),
                                reason="the toy SAM or SAM 3 is missing")
# every mask the toy SAM predicts kept: the steps after the decoder see masks at either precision
EVERY = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _image_encoder_dtypes(model) -> list:
    """The dtypes the first linear layer of ``model``'s image encoder outputs, appended as it runs (a forward hook;
    the encoder's own output is its neck's LayerNorm2d's, fp32 from fp32 weights at any autocast)."""
    seen: list = []
    model.image_encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    return seen


@needs_toys
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_segment_anythings_generator_runs_at_the_callers_autocast(world, dtype):
    """`sam-pseudo --masks sam`'s and `--region-masks sam`'s generator: SAM's image encoder at the autocast's dtype
    (bf16 crashed in segment-anything's MaskData.to_numpy, which has no bfloat16), its records' masks boolean and
    their scores float at either."""
    from vpltool.data import open_dataset
    from vpltool.models.dense.corrclip.regions import region_source

    source = region_source("sam", "toy", str(TOY_SAM), settings=EVERY, method="sam-pseudo")
    seen = _image_encoder_dtypes(source.generator.predictor.model)
    image = io.load_image(open_dataset(world, "val").items[0].image)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        records = source.records(image)
    assert seen == [dtype] and records, seen
    assert all(r["segmentation"].dtype == bool and isinstance(r["predicted_iou"], float) for r in records)


@needs_toys
def test_textregions_generator_runs_the_decoder_at_the_callers_autocast(world):
    """TextRegion's generator on the toy SAM: the decoder at bf16 under a bf16 autocast (its fp16 masks crashed the
    autocast's cat), its soft masks float16 of the photo's size as at fp32."""
    from vpltool.data import open_dataset
    from vpltool.models.dense.textregion import MaskGenerator
    from vpltool.models.dense.textregion.regions import mask_source

    source = mask_source("sam", str(TOY_SAM), MaskGenerator(**EVERY), sam_model="toy")
    decoded: list = []
    source.model.predictor.model.mask_decoder.register_forward_hook(lambda m, i, out: decoded.append(out[1].dtype))
    image = io.load_image(open_dataset(world, "val").items[0].image)
    fp32 = source.masks(None, image)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = source.masks(None, image)
    assert set(decoded) == {torch.float32, torch.bfloat16}, decoded
    assert bf16.dtype == fp32.dtype == np.float16 and bf16.shape[1:] == fp32.shape[1:] == image.shape[:2]


@needs_toys
@pytest.mark.parametrize("method", ["corrclip", "textregion"])
def test_segment_region_masks_sam_are_made_at_the_runs_precision(world, tmp_path, monkeypatch, method):
    """`segment --region-masks sam --precision bf16`: SAM's regions are made where the segmentor runs, under its bf16
    autocast (they were made in the loading processes at fp32 whatever --precision); the run finishes."""
    from typer.testing import CliRunner

    from vpltool.cli import app
    from vpltool.models.dense.corrclip.regions import SamRegions
    from vpltool.models.dense.textregion.generator import TextRegionGenerator

    made: list = []
    for cls in (SamRegions, TextRegionGenerator):
        name = "records" if cls is SamRegions else "generate"
        real = getattr(cls, name)

        def spy(self, *a, _real=real, **k):
            made.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
            return _real(self, *a, **k)
        monkeypatch.setattr(cls, name, spy)
    extra = (["--proxy-model", "test_vit", "--proxy-weights", str(ASSETS / "toy-dino" / "model.safetensors")]
             if method == "corrclip" else [])
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "-o", str(out), "--classes", "circle,star",
                                 "--model", "vpltool-toy", "--pretrained", "none", "--dense", method, *extra,
                                 "--region-masks", "sam", "--sam-model", "toy", "--sam-weights", str(TOY_SAM),
                                 "--device", "cpu", "--workers", "1", "--precision", "bf16"])
    assert r.exit_code == 0, r.output
    assert made and set(made) == {torch.bfloat16}, made
    assert io.read_record(io.stage_record_path(out))["numerics"]["dtype"] == "bf16"


@needs_toys
@pytest.mark.parametrize("masks", ["sam", "sam3"])
def test_sam_pseudo_runs_sam_at_the_cams_dtype_and_refuses_another(world, tmp_path, monkeypatch, masks):
    """`sam-pseudo --precision auto` runs SAM (or SAM 3) at the dtype the CAMs record (it ran fp32 whatever they
    were); an explicit --precision other than theirs is one line naming both fixes, before SAM loads."""
    from test_sam_pseudo import _cams

    from vpltool.stages.sam_pseudo import run_sam_pseudo
    from vpltool.stages.sam_pseudo.sources import AutomaticMasks, Sam3Masks

    made: list = []
    for cls in (AutomaticMasks, Sam3Masks):
        real = cls.masks

        def spy(self, *a, _real=real, **k):
            made.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
            return _real(self, *a, **k)
        monkeypatch.setattr(cls, "masks", spy)
    cfg = (SamPseudoConfig(masks="sam", sam_model="toy", sam_weights=str(TOY_SAM), start="argmax", **EVERY)
           if masks == "sam" else
           SamPseudoConfig(masks="sam3", sam_weights=str(TOY_SAM3), start="argmax", sam3_threshold=0.02))
    cams = _cams(world, tmp_path / "cams", numerics=run_numerics("bf16", "bf16"))
    summary = run_sam_pseudo(cams, tmp_path / "out", cfg, RuntimeConfig(device="cpu", workers=1))
    assert summary.complete and made and set(made) == {torch.bfloat16}, made
    numerics = io.read_record(io.stage_record_path(tmp_path / "out"))["numerics"]
    assert numerics["dtype"] == "bf16" and numerics["precision"] == "auto"
    made.clear()
    with pytest.raises(VplError) as e:
        run_sam_pseudo(cams, tmp_path / "fp32", cfg, RuntimeConfig(device="cpu", workers=1, precision="fp32"))
    assert "made at bf16" in str(e.value) and "pass --precision bf16 to this command" in str(e.value)
    assert not made and not (tmp_path / "fp32").exists()


@pytest.mark.cuda
@needs_toys
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_segment_anythings_generator_on_cuda_at_half_precision(world, dtype):
    """On CUDA, `--precision fp16 / bf16`: SAM's image encoder at that dtype, its records as at fp32 in kind."""
    from vpltool.data import open_dataset
    from vpltool.models.dense.corrclip.regions import region_source

    source = region_source("sam", "toy", str(TOY_SAM), settings=EVERY, method="sam-pseudo", device="cuda")
    seen = _image_encoder_dtypes(source.generator.predictor.model)
    image = io.load_image(open_dataset(world, "val").items[0].image)
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        records = source.records(image)
    assert seen == [dtype] and records
    assert all(r["segmentation"].dtype == bool for r in records)
