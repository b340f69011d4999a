"""parity/sam3_parity.py's --reference-from (a saved reference run read back, one line where it lacks a file) and
parity/sam3_head_rounding.py's head arbiter (transformers' head on the inputs vpltool's grounding handed it), on the
family's tiny SAM 3."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.models.sam3 import modeling_sam3 as hf

from vpltool.models import load_model
from vpltool.models.backbones import sam3_fast
from vpltool.models.backbones.sam3 import Sam3Spec
from vpltool.models.backbones.sam3_files import write_tiny

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "parity")]
import sam3_head_rounding  # noqa: E402
import sam3_parity  # noqa: E402


def test_a_saved_reference_is_read_back_and_a_missing_photo_is_one_line(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"seconds": [1.0], "stubbed": ["x"]}))
    (tmp_path / "photo_000.pt").write_bytes(b"")
    (tmp_path / "stdout.txt").write_text("missing_keys=[]\n")
    meta, stdout = sam3_parity.saved_reference(tmp_path, 1)
    assert meta["stubbed"] == ["x"] and "missing_keys" in stdout
    with pytest.raises(SystemExit) as e:
        sam3_parity.saved_reference(tmp_path, 2)
    line = str(e.value)
    assert "\n" not in line and str(tmp_path) in line and "photo_001.pt" in line and "without --reference-from" in line


def test_the_head_arbiter_sees_the_calls_vpltool_made(tmp_path):
    torch.manual_seed(0)
    sam = load_model("sam3", Sam3Spec(str(write_tiny(tmp_path / "hf", "hf"))))
    decoder = next(m for m in sam.model.modules() if isinstance(m, hf.Sam3MaskDecoder))
    calls = sam3_head_rounding.spy_head(decoder)
    photo = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    g = sam.ground(sam.encode_image(sam.prepare(photo)), sam.encode_text(["a red square", "a blue circle"]))
    vars(decoder).pop("forward")
    assert len(calls) == 2  # one prompt a call (MASK_PROMPTS)
    args = sam3_head_rounding.joined(calls)
    assert args["decoder_queries"].shape[0] == 2 and all(f.shape[0] == 2 for f in args["backbone_features"])
    exact = sam3_head_rounding.plain_head(decoder, torch.float64, args, 2)
    at_once = sam3_head_rounding.plain_head(decoder, torch.float32, args, 2)
    assert exact.shape == g.pred_masks.shape and exact.dtype == torch.float64
    # vpltool's head and transformers' are the same sums in float32: both near the float64 head, not equal to it
    scale = float(exact.abs().max())
    assert 0 < float((g.pred_masks.double() - exact).abs().max()) < 1e-5 * max(scale, 1.0)
    assert float((at_once - exact).abs().max()) < 1e-5 * max(scale, 1.0)
    assert type(decoder) is sam3_fast.LevelsMaskDecoder  # the arbiter undid vpltool's layouts on a copy only
