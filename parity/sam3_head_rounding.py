"""Whose rounding the SAM 3 parity's mask logits gap is: vpltool's segmentation head as it runs (``Sam3.head_conv``
"channels_last") and with "phases", transformers' ``Sam3MaskDecoder`` in float32 on the whole bucket at once (whose
pixel decoder convolves channels-last sums, as Meta's does, whose FPN levels are channels-last) and one prompt at a
time (vpltool's ``MASK_PROMPTS``; contiguous sums), and the reference's saved ``pred_masks``, each against
transformers' head in float64 on vpltool's own head inputs (the queries, levels, encoder states and prompt vpltool's
``Sam3.ground`` hands the head).

    python parity/sam3_head_rounding.py [--work /tmp/vpltool-sam3-parity] [--images 3]

Reads the work folder ``sam3_parity.py`` left (its ``sam3.pt``, photos and ``reduced/ref`` outputs; run that first)
and writes ``parity/results/sam3_head_rounding.json``: per photo, each float32 head's max abs difference from the
float64 head and from the reference, and the pixel decoder's first 3 x 3 convolution of the bucket's input as it is
laid out (the encoder's tokens transposed into a map: channels-last strides) and made contiguous, each against its
float64 result (the convolution's library picks its kernel by layout). Where vpltool's head is nearer the float64
one than the reference's is, the mask logits gap is the reference's own rounding, not an error of vpltool's; where
vpltool's head is as near the reference as the bucket at once is, it rounds as the reference does.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "parity"))
import sam3_parity  # noqa: E402


def spy_head(decoder) -> list[dict]:
    """The keyword arguments of each call of ``decoder`` (transformers' ``Sam3MaskDecoder``), copied."""
    import torch

    calls, forward = [], decoder.forward

    def copy_arg(v):
        return v.clone() if isinstance(v, torch.Tensor) else [t.clone() for t in v] if isinstance(v, list) else v

    def spy(**kw):
        calls.append({k: copy_arg(v) for k, v in kw.items()})
        return forward(**kw)

    decoder.forward = spy
    return calls


def joined(calls: list[dict]) -> dict:
    """The calls' arguments as one bucket (each tensor and each level concatenated along the batch)."""
    import torch

    def cat(k):
        first = calls[0][k]
        if isinstance(first, list):
            return [torch.cat([c[k][i] for c in calls]) for i in range(len(first))]
        return torch.cat([c[k] for c in calls]) if isinstance(first, torch.Tensor) else first

    return {k: cat(k) for k in calls[0]}


def plain_head(decoder, dtype, args: dict, at_once: int):
    """Transformers' own head (vpltool's layouts undone) in ``dtype`` on ``args``, ``at_once`` prompts a call ->
    ``pred_masks`` ``[K, Q, H, W]`` float64."""
    import torch

    head = copy.deepcopy(decoder).to(dtype)
    vars(head).pop("forward", None)  # the spy
    for m in head.modules():
        if type(m).__module__.endswith("sam3_fast"):
            m.__class__ = type(m).__mro__[1]

    def part(v, i):
        if isinstance(v, list):
            return [part(t, i) for t in v]
        if not isinstance(v, torch.Tensor):
            return v
        v = v[i:i + at_once]
        return v.to(dtype) if v.is_floating_point() else v

    k = args["decoder_queries"].shape[0]
    with torch.no_grad():
        return torch.cat([head(**{n: part(v, i) for n, v in args.items()}).pred_masks
                          for i in range(0, k, at_once)]).double()


def first_conv_layouts(decoder, args: dict) -> dict:
    """The pixel decoder's first 3 x 3 convolution on the input transformers' head hands it for the whole bucket
    (``upsample(encoder map) + level``: the encoder's tokens transposed into a map, so channels-last strides), as
    laid out and made contiguous, each against the float64 convolution -> ``{layout: max abs diff}``."""
    import torch
    import torch.nn.functional as F

    head = copy.deepcopy(decoder)
    vars(head).pop("forward", None)
    for m in head.modules():
        if type(m).__module__.endswith("sam3_fast"):
            m.__class__ = type(m).__mro__[1]
    conv, seen = head.pixel_decoder.conv_layers[0], []
    hook = conv.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].clone()) or None)
    with torch.no_grad():
        head(**args)
        hook.remove()
        x = seen[0]
        exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        return {"channels_last" if x.is_contiguous(memory_format=torch.channels_last) else "as laid out":
                float((conv(x).double() - exact).abs().max()),
                "contiguous": float((conv(x.contiguous()).double() - exact).abs().max())}


def photo_row(sam, decoder, photo: Path, ref: dict) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    calls = spy_head(decoder)
    image = np.asarray(Image.open(photo).convert("RGB"))
    encoded, text = sam.encode_image(sam.prepare(image)), sam.encode_text(sam3_parity.PROMPTS)
    g = sam.ground(encoded, text)
    vars(decoder).pop("forward")
    as_run, sam.head_conv = sam.head_conv, "phases"
    phases = sam.ground(encoded, text).pred_masks.double()
    sam.head_conv = as_run
    args = joined(calls)
    k = args["decoder_queries"].shape[0]
    exact = plain_head(decoder, torch.float64, args, k)
    heads = {f"vpltool as run ({as_run})": g.pred_masks.double(), "vpltool, head_conv phases": phases,
             "transformers float32, the bucket at once": plain_head(decoder, torch.float32, args, k),
             "transformers float32, one prompt at a time": plain_head(decoder, torch.float32, args, 1),
             "reference": ref["grounding"]["pred_masks"].double()}
    return {"photo": photo.name, "max_abs_mask_logit": float(exact.abs().max()),
            "first_conv_vs_float64": first_conv_layouts(decoder, args),
            "vs_float64_head": {n: float((h - exact).abs().max()) for n, h in heads.items()},
            "vs_reference": {n: float((h - heads["reference"]).abs().max()) for n, h in heads.items()
                             if n != "reference"} | {"float64 head": float((exact - heads["reference"]).abs().max())}}


def page(d: dict) -> dict:
    w = d["worst_vs_float64_head"]
    return {"title": "SAM 3's segmentation head: whose rounding the mask logits gap is",
            "command": f"`python parity/sam3_head_rounding.py` after `parity/sam3_parity.py` (its work folder: "
                       f"the reduced SAM 3, {len(d['photos'])} photos, prompts {', '.join(d['prompts'])}): each "
                       f"float32 head's mask logits (`pred_masks`) against transformers' head in float64 on the "
                       f"inputs vpltool's grounding handed its head; fp32 on one thread of an {d['cpu']}.",
            "bar": "none (a measurement: the nearer a head is to the float64 one, the less its own rounding)",
            "rows": [*([f"{name}: max abs diff from the float64 head", value] for name, value in w.items()),
                     *([f"the pixel decoder's first 3x3 conv of the bucket's input, {layout}: max abs diff from "
                        f"float64", value] for layout, value in d["worst_first_conv_vs_float64"].items())]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/vpltool-sam3-parity"))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "parity" / "results" / "sam3_head_rounding.json")
    args = ap.parse_args()
    work = args.work / "reduced"
    ref_dir = work / "ref"
    sam3_parity.saved_reference(ref_dir, args.images)  # one line before the model loads where a run is missing
    import torch
    from transformers.models.sam3 import modeling_sam3 as hf

    from vpltool.models import load_model
    from vpltool.models.backbones.sam3 import Sam3Spec

    s = sam3_parity.setup(work, args.images, sam3_parity.REDUCED)
    torch.set_num_threads(1)
    sam = load_model("sam3", Sam3Spec(str(s["ckpt"])))
    decoder = next(m for m in sam.model.modules() if isinstance(m, hf.Sam3MaskDecoder))
    rows = []
    for i, photo in enumerate(s["photos"]):
        ref = torch.load(ref_dir / f"photo_{i:03d}.pt", weights_only=True, mmap=True)
        rows.append(photo_row(sam, decoder, photo, ref))
        print(json.dumps(rows[-1]), flush=True)
    worst = {side: max(r["vs_float64_head"][side] for r in rows) for side in rows[0]["vs_float64_head"]}
    d = {"cpu": sam3_parity.cpu_name(), "threads": 1, "prompts": sam3_parity.PROMPTS, "dims": sam3_parity.REDUCED,
         "worst_vs_float64_head": worst,
         "worst_first_conv_vs_float64": {k: max(r["first_conv_vs_float64"][k] for r in rows)
                                         for k in rows[0]["first_conv_vs_float64"]}, "photos": rows}
    d["page"] = page(d)
    args.out.write_text(json.dumps(d, indent=1) + "\n")
    print(json.dumps(worst, indent=1))


if __name__ == "__main__":
    main()
