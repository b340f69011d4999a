"""GradCAM's block in bf16 against fp32, measured on the CPU: may CUDA run it in bf16? Prints ONE JSON object.

    python studies/study_gradcam_precision.py [--train 200] [--quick]

`cam`'s batched path re-runs the last block with autograd for GradCAM. In bf16 (autocast: its matrix products in
bf16; layer norms, softmax, the GradCAM weights and sums in fp32) it would run on a GPU's tensor cores. The question
is what that does to the CAMs after CAA, where the final min-max magnifies small differences on flat maps. TF32 (the
matrix products' inputs rounded to 10 mantissa bits, float32 sums and outputs: ``allow_tf32`` on CUDA) is emulated
on the CPU the same way (:class:`TF32`).

The tolerance, fixed before measuring: bf16 is adopted when, on both inputs below, the final CAMs move by no more
than the bf16 *frozen blocks* already move them (``--precision auto``, the CUDA default since issue 19: the
reference), in the largest and in the mean absolute difference, and the demo world's CAM mIoU by at most 0.2 points.

Inputs (the same code, on the CPU, through the batched path as on CUDA):

* ``photos``: bench_cam.py's 12 photos (VOC sizes, 1-2 labels) and random ``ViT-B-16-quickgelu`` weights (seed 0),
  text prototypes of CLIP-ES's prompt, ``--refine caa`` (CLIP-ES's CAA);
* ``demo``: a demo world (``--train`` scenes, seed 0) with the shipped toy CLIP and the demo's prompts, with
  ``--refine none`` (the demo's setting) and ``--refine caa``; mIoU by `eval` on those scenes.

For each: fp32 everything (the base), the frozen blocks in bf16 (the reference), GradCAM's block in bf16 or TF32; the
largest, mean and 99th-percentile absolute difference of the stored CAMs (values in [0, 1], patch grid) against the
base, and on the demo the mIoU of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "bench")]
from bench_cam import ASSETS, make_voc, make_weights  # noqa: E402

import benchlib  # noqa: E402

TOLERANCE = {"max_abs": "<= the reference's", "mean_abs": "<= the reference's", "miou_points": 0.2}
BLOCKS = ("bf16", "tf32")  # GradCAM's block: autocast to bf16 | TF32 matrix products (emulated on the CPU)


def differences(a: Path, b: Path) -> dict:
    """Largest, mean and 99th-percentile absolute difference of two cam folders' stored maps."""
    from vpltool import io

    diffs = []
    for path in sorted(a.glob("*.safetensors")):
        x = io.read_tensors(path, kind=io.CAM_KIND)["cams"].float()
        y = io.read_tensors(b / path.name, kind=io.CAM_KIND)["cams"].float()
        if x.numel():
            diffs.append((x - y).abs().flatten())
    d = torch.cat(diffs)
    return {"max_abs": round(float(d.max()), 5), "mean_abs": round(float(d.mean()), 6),
            "p99_abs": round(float(d.quantile(0.99)), 5), "values": int(d.numel())}


class TF32(TorchDispatchMode):
    """CUDA's TF32 matrix products emulated on the CPU: the float32 inputs of every matrix product rounded to TF32
    (10 mantissa bits, to nearest even), the products and sums in float32, as tensor cores do."""

    PRODUCTS = {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name.replace("::", ".") in self.PRODUCTS:
            args = tuple(_tf32(a) for a in args)
        return func(*args, **(kwargs or {}))


def _tf32(x):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    bits = (bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF  # round the low 13 of 23 mantissa bits away
    return bits.view(torch.float32).view(x.shape)


def cams(features: Path, protos: Path, out: Path, refine: str, block: str = "fp32") -> Path:
    """`cam` on the batched path (batch 8) with GradCAM's block in fp32, bf16 (autocast) or TF32 (emulated), as CUDA
    would run it; everything else in fp32."""
    from vpltool.config import CamConfig, RuntimeConfig
    from vpltool.models.backbones import model
    from vpltool.stages.cam import run_cam, stage

    real_precision, real_gradcam = stage.gradcam_precision, model.gradcam_batch
    stage.gradcam_precision = lambda device: "bf16" if block == "bf16" else "fp32"  # tf32 has no effect on a CPU
    if block == "tf32":
        def emulated(*args, **kwargs):
            with TF32():
                return real_gradcam(*args, **kwargs)

        model.gradcam_batch = emulated
    try:
        run_cam(features, protos, out, CamConfig(refine=refine),
                RuntimeConfig(device="cpu", precision="fp32", batch_size=8, workers=1, overwrite=True))
    finally:
        stage.gradcam_precision, model.gradcam_batch = real_precision, real_gradcam
    return out


def compare(tmp: Path, extract, protos: Path, refines: tuple[str, ...], miou) -> dict:
    """fp32 / bf16 frozen blocks / bf16 GradCAM block, per refinement: CAM differences (and mIoU)."""
    fp32, bf16 = extract(tmp / "f_fp32", "fp32"), extract(tmp / "f_bf16", "bf16")
    out = {}
    for refine in refines:
        base = cams(fp32, protos, tmp / f"{refine}_base", refine)
        folders = {"reference_bf16_frozen_blocks": cams(bf16, protos, tmp / f"{refine}_reference", refine)}
        for block in BLOCKS:
            folders[f"gradcam_block_{block}"] = cams(fp32, protos, tmp / f"{refine}_{block}", refine, block)
        row = {name: differences(base, folder) for name, folder in folders.items()}
        if miou is not None:
            row["miou_pct"] = {"fp32": miou(base), **{name: miou(folder) for name, folder in folders.items()}}
        ref = row["reference_bf16_frozen_blocks"]
        for block in BLOCKS:
            new = row[f"gradcam_block_{block}"]
            change = 0.0 if miou is None else row["miou_pct"][f"gradcam_block_{block}"] - row["miou_pct"]["fp32"]
            new["miou_change_points"] = None if miou is None else round(change, 2)
            new["within_tolerance"] = (new["max_abs"] <= ref["max_abs"] and new["mean_abs"] <= ref["mean_abs"]
                                       and abs(change) <= TOLERANCE["miou_points"])
        out[refine] = row
    return out


def photos(tmp: Path, quick: bool) -> dict:
    from vpltool.config import ExtractConfig, RuntimeConfig, TextPrototypesConfig
    from vpltool.data import open_dataset
    from vpltool.models import ModelSpec
    from vpltool.stages.extract import run_extract
    from vpltool.stages.text_prototypes import run_text_prototypes

    model = "vpl-test-vit" if quick else "ViT-B-16-quickgelu"
    voc = make_voc(tmp / "voc", 3 if quick else 12, 0.25 if quick else 1.0)
    _, weights = make_weights(tmp, model)
    spec = ModelSpec(model, str(weights), config_dir=str(ASSETS))
    data = open_dataset(voc, "train")
    protos = tmp / "text.safetensors"
    run_text_prototypes(data.classes, protos, spec, TextPrototypesConfig(background="voc"), device="cpu")

    def extract(out: Path, precision: str) -> Path:
        run_extract(data, out, spec, ExtractConfig(cache="full"), RuntimeConfig(device="cpu", precision=precision,
                                                                                  workers=1))
        return out

    return {"model": f"{model} (random, seed 0)", "images": len(data.items),
            **compare(tmp, extract, protos, ("caa",), None)}


def demo(tmp: Path, n_train: int) -> dict:
    from vpltool.config import EvalConfig, ExtractConfig, RuntimeConfig, TextPrototypesConfig
    from vpltool.data import open_dataset
    from vpltool.demo import TOY_MODEL
    from vpltool.demo.make_world import write_dataset
    from vpltool.models import ModelSpec
    from vpltool.stages.eval import run_eval
    from vpltool.stages.extract import run_extract
    from vpltool.stages.text_prototypes import run_text_prototypes

    world = write_dataset(tmp / "world", n_train=n_train, n_val=1, seed=0)
    data = open_dataset(world, "train")
    spec = ModelSpec(TOY_MODEL, "none")
    protos = tmp / "text.safetensors"
    run_text_prototypes(data.classes, protos, spec, TextPrototypesConfig(templates="a photo of a {}.",
                                                                         background="grass,sky,wall,water"),
                        device="cpu")

    def extract(out: Path, precision: str) -> Path:
        run_extract(data, out, spec, ExtractConfig(cache="full"), RuntimeConfig(device="cpu", precision=precision,
                                                                                  workers=1))
        return out

    def miou(folder: Path) -> float:
        return round(100 * run_eval(folder, cfg=EvalConfig())[0]["miou"], 2)

    return {"model": "the shipped toy CLIP", "images": len(data.items),
            **compare(tmp, extract, protos, ("none", "caa"), miou)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=200, help="demo-world scenes")
    ap.add_argument("--quick", action="store_true", help="smoke test: the tiny test ViT on 3 small photos, 8 scenes")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VPLTOOL_MODEL_CONFIGS", str(ASSETS))
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    with tempfile.TemporaryDirectory(prefix="study_gradcam_precision_") as tmp:
        tmp = Path(tmp)
        result = {"study": "gradcam_precision", "quick": args.quick, "machine": benchlib.machine("cpu"),
                  "tolerance": TOLERANCE, "photos": photos(tmp / "photos", args.quick),
                  "demo": demo(tmp / "demo", 8 if args.quick else args.train)}
    for block in BLOCKS:
        result[f"adopt_{block}"] = all(row[f"gradcam_block_{block}"]["within_tolerance"] for part in ("photos", "demo")
                                       for row in result[part].values() if isinstance(row, dict))
    result["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
