"""`vpltool export`'s agreement with vpltool itself on a demo world's val photos; prints a table and ONE JSON object.

A demo world (``--train`` + ``--val`` scenes), the toy CLIP shipped in the package, and:

* a decoder trained ``--iters`` steps on the train split's ground-truth masks (the agreement does not depend on how
  good the decoder is), exported with ``--size`` the photos' and compared with ``predict --scales 1 --no-flip``
  (fp32): its PNG masks, and its logits at the photo's size (:func:`vpltool.decoder.predict_logits`);
* each of ``--methods`` (the training-free methods export supports) with the world's classes and the demo's toy
  prompts, compared with ``segment --dense METHOD`` (fp32): its PNG masks, and its query logits
  (:func:`vpltool.models.dense.segmentor.segment_logits`, the eager backbone).

The ONNX files run under onnxruntime on the CPU (fp32). "labels equal" is the share of all val pixels whose label is
the same; "max logit diff" the largest absolute difference over every pixel and class.

* a seeded random tiny PGSeg (the tests' ``pgseg.tiny_config()``) compared with ``segment --model pgseg:FILE``.

    python bench/bench_export.py [--val 8] [--train 16] [--iters 30] [--methods naclip,sclip,maskclip,clearclip]
                                 [--rows decoder,dense,pgseg]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vpltool import io  # noqa: E402
from vpltool.config import DecoderConfig, PredictConfig, RuntimeConfig, SegmentConfig, TextPrototypesConfig  # noqa: E402
from vpltool.data import open_dataset  # noqa: E402
from vpltool.decoder import input_long_side, predict_logits  # noqa: E402
from vpltool.demo.make_world import write_dataset  # noqa: E402
from vpltool.models import ModelSpec, load_model  # noqa: E402
from vpltool.models.backbones.preprocess import Preprocess  # noqa: E402
from vpltool.models.dense.segmentor import query_rows, segment_logits, short_side_size  # noqa: E402
from vpltool.runtime.numerics import run_numerics  # noqa: E402
from vpltool.stages.export import export_decoder, export_dense  # noqa: E402
from vpltool.stages.export.run import OnnxFile  # noqa: E402
from vpltool.stages.predict import run_predict  # noqa: E402
from vpltool.stages.segment import check_dense, load_dense, resolve_queries, run_segment  # noqa: E402
from vpltool.stages.text_prototypes import run_text_prototypes  # noqa: E402
from vpltool.stages.train_decoder import run_train_decoder  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine  # noqa: E402

TOY = ModelSpec("vpltool-toy", "none")
TEMPLATES, BACKGROUND = "a photo of a {}.", "grass,sky,wall,water"  # the toy CLIP's prompts (make dense)
RUN = RuntimeConfig(device="cpu", precision="fp32", workers=1)


def gt_folder(dataset, out: Path) -> Path:
    """The split's ground-truth masks as a finished `crf` folder (pseudo masks = ground truth)."""
    import shutil

    out.mkdir(parents=True)
    for item in dataset.items:
        shutil.copy(item.gt, out / f"{item.id}.png")
    io.write_stage_record(out, "crf", params={}, inputs={"dataset": dataset.identity()}, count=len(dataset.items),
                          numerics=run_numerics())
    return out


class Tally:
    def __init__(self):
        self.equal = self.pixels = 0
        self.diff = 0.0

    def add(self, ours: np.ndarray, ref: np.ndarray, logits: np.ndarray, ref_logits: np.ndarray) -> None:
        assert ours.shape == ref.shape and logits.shape == ref_logits.shape, (ours.shape, ref.shape)
        self.equal += int((ours == ref).sum())
        self.pixels += ref.size
        self.diff = max(self.diff, float(np.abs(logits - ref_logits).max()))

    def row(self) -> dict:
        return {"labels_equal": self.equal / self.pixels, "pixels": self.pixels, "max_logit_diff": self.diff}


def decoder_row(world: Path, work: Path, size: tuple[int, int], iters: int) -> dict:
    train = open_dataset(world, "train")
    protos = work / "text.safetensors"
    run_text_prototypes(train.classes, protos, TOY, TextPrototypesConfig(templates=TEMPLATES, background=BACKGROUND),
                        device="cpu")
    cfg = DecoderConfig(dim=64, layers=1, heads=4, crop_size=128, batch_size=4, iters=iters, log_every=iters,
                        warmup_iters=1)
    run_train_decoder(gt_folder(train, work / "gt"), protos, work / "d", cfg, RUN)
    decoder = work / "d" / "decoder.safetensors"
    run_predict(decoder, world, "val", work / "predict", PredictConfig(scales=(1.0,), flip=False), RUN)
    start = time.process_time()
    export_decoder(decoder, work / "decoder.onnx", size)
    export_s = time.process_time() - start
    onnx = OnnxFile(work / "decoder.onnx")
    model, f = load_model("decoder", decoder, "cpu")
    bb = load_model("clip", ModelSpec.from_identity(f.meta("model"), f.path), "cpu")
    side = input_long_side(None, f.meta("decoder_config")["crop_size"])
    tally = Tally()
    for item in open_dataset(world, "val").items:
        image = io.load_image(item.image)
        out = onnx.run(image)
        with torch.no_grad():
            ref = predict_logits(bb, model, f.meta("decoder_arch")["blocks"], image, (1.0,), False, side,
                                 torch.float32).numpy()
        tally.add(out["labels"], io.read_mask(io.mask_path(work / "predict", item.id)), out["logits"], ref)
    return {"model": "decoder vs predict --scales 1 --no-flip", **tally.row(), "export_cpu_s": round(export_s, 1)}


def dense_row(world: Path, work: Path, size: tuple[int, int], method: str) -> dict:
    val = open_dataset(world, "val")
    names = list(val.classes[1:])
    cfg = SegmentConfig.of(dense=method, templates=TEMPLATES, background=BACKGROUND, classes=tuple(names))
    run_segment(val, work / method, TOY, cfg, RUN)
    start = time.process_time()
    export_dense(TOY, cfg, names, work / f"{method}.onnx", size)
    export_s = time.process_time() - start
    onnx = OnnxFile(work / f"{method}.onnx")
    bb = load_dense(TOY, check_dense(cfg, TOY), torch.device("cpu"))
    text, _ = query_rows(bb, *resolve_queries(names, cfg))
    settings = cfg.resolved()
    tally = Tally()
    for item in val.items:
        image = io.load_image(item.image)
        out = onnx.run(image)
        view = short_side_size(*image.shape[:2], settings.short_side, settings.long_side)
        with torch.no_grad():
            ref = segment_logits(bb, bb.normalize(Preprocess.resize(image, view)[None]), text, settings,
                                 [image.shape[:2]])[0].numpy()
        tally.add(out["labels"], io.read_mask(io.mask_path(work / method, item.id)), out["logits"], ref)
    return {"model": f"--dense {method} vs segment", **tally.row(), "export_cpu_s": round(export_s, 1)}


def pgseg_row(world: Path, work: Path, size: tuple[int, int]) -> dict:
    """The seeded random tiny PGSeg of the tests (no training: the agreement does not depend on it), compared with
    ``segment --model pgseg:FILE``: its PNG masks and its zero-shot logits (:func:`image_scores`)."""
    from vpltool.models.text import pgseg
    from vpltool.stages.export import export_text
    from vpltool.stages.segment_text import image_scores, run_segment_text, text_family_of, text_queries

    checkpoint = pgseg.save_checkpoint(work / "pgseg.safetensors",
                                       pgseg.build_model(pgseg.tiny_config(), seed=3).eval())
    val = open_dataset(world, "val")
    names = list(val.classes[1:])
    run_segment_text(val, work / "pgseg", "pgseg", checkpoint, names, RUN, background=BACKGROUND)
    start = time.process_time()
    export_text("pgseg", checkpoint, names, work / "pgseg.onnx", size, background=BACKGROUND)
    export_s = time.process_time() - start
    onnx = OnnxFile(work / "pgseg.onnx")
    fam, model = text_family_of("pgseg"), load_model("pgseg", checkpoint, "cpu")
    settings = json.loads(onnx.metadata["vpltool.settings"])
    text = text_queries(fam, model, names, settings["background_words"], "cpu")
    tally = Tally()
    for item in val.items:
        image = io.load_image(item.image)
        out = onnx.run(image)
        ref, _ = image_scores(fam, model, image, text, len(names), settings["bg_thresh"], settings["short_side"],
                              (settings["slide_crop"], settings["slide_stride"]), "cpu")
        tally.add(out["labels"], io.read_mask(io.mask_path(work / "pgseg", item.id)), out["logits"], ref.numpy())
    return {"model": "PGSeg (tiny, seeded) vs segment --model pgseg:FILE", **tally.row(),
            "export_cpu_s": round(export_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", type=int, default=8)
    ap.add_argument("--train", type=int, default=16)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--methods", default="naclip,sclip,maskclip,clearclip")
    ap.add_argument("--rows", default="decoder,dense,pgseg", help="which rows: decoder, dense (--methods), pgseg")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        world = write_dataset(work / "world", n_train=args.train, n_val=args.val, seed=0)
        size = io.image_size(open_dataset(world, "val").items[0].image)
        asked = args.rows.split(",")
        rows = [decoder_row(world, work, size, args.iters)] if "decoder" in asked else []
        rows += [dense_row(world, work, size, m) for m in args.methods.split(",") if m and "dense" in asked]
        rows += [pgseg_row(world, work, size)] if "pgseg" in asked else []
    print(f"{args.val} val photos of a demo world, {size[0]}x{size[1]} ({args.val * size[0] * size[1]:,} pixels in "
          "all); onnxruntime on the CPU, fp32")
    print("| model | labels equal | max logit diff |\n|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {100 * r['labels_equal']:.3f} % | {r['max_logit_diff']:.2g} |")
    print(json.dumps({"bench": "export", "photos": args.val, "size": list(size), "rows": rows,
                      "machine": machine("cpu")}))


if __name__ == "__main__":
    main()
