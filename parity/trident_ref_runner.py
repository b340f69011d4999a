"""Run Trident's OWN segmentor (YuHengsss/Trident ``trident.py``) from a clone, on the CPU in fp32, without mmseg /
mmcv / mmengine: the reference half of ``ovss_parity.py --methods trident``.

    python trident_ref_runner.py --clone DIR --weights W.pt --dino-clone DINO_DIR --dino-weights D.pth \\
        --sam-weights S.pth --photos JPG_DIR --out OUT_DIR [--images 12] [--threads 1] [--config configs/cfg_voc21.py]

It imports nothing from vpltool (the clone's ``open_clip`` and ``segment_anything`` packages must not meet
vpltool's): run it as its own process. The clone's code is never copied or edited; it is imported with the clone
first on ``sys.path`` and the clone as the working directory, with only what a CPU run without the OpenMMLab
packages needs around it (``dense_ref_runner.py``'s helpers):

1. the OpenMMLab imports ``trident.py`` makes are stubbed (``BaseSegmentor``, ``SegDataPreProcessor``, ``MODELS``,
   ``PixelData``), and ``openpyxl`` when missing (``myutils.py``'s spreadsheet logging, not run);
2. CLIP: ``create_model('ViT-B/16', pretrained='openai', precision='fp16')`` reads ``--weights`` (OpenAI's layout)
   in fp32 through the clone's own ``load_openai_model``; DINO: ``torch.hub.load('facebookresearch/dino:main',
   'dino_vitb16')`` is that entry of ``--dino-clone`` with ``--dino-weights`` loaded strictly; SAM: its own
   ``sam_model_registry['vit_b'](checkpoint=--sam-weights)``; ``Tensor.half`` (and so ``Module.half``) is the
   identity while the segmentor is built and runs: the parity is in fp32;
3. the keyword arguments are the ``model`` dict of ``--config`` over ``configs/base_config.py``, with
   ``name_path`` absolute, ``sam_ckpt`` = ``--sam-weights``, ``device='cpu'`` and ``sam_refinement=False``
   (``eval.py`` without ``--sam_refine``);
4. each photo goes through mmseg's test pipeline of that config (``dense_ref_runner.mmseg_input``) and
   ``predict(x, [sample])`` with ``sample.img_path`` the photo (Trident reads it again for SAM).

Outputs in ``--out``: ``text.pt`` (``query_features``), ``photo_NNN.pt`` (the input, ``logits`` ``[1, Q, H0, W0]``
as ``predict`` hands them to ``postprocess_result``, ``probs`` ``[C, H0, W0]`` and ``pred`` ``[1, H0, W0]`` as it
sets them) and ``meta.json`` (the keyword arguments, the effective settings, query words and classes, photos).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dense_ref_runner as drr  # noqa: E402  (imports nothing from vpltool either)


def build(args, cfg: dict):
    """Trident with the config's arguments (points 2 and 3); returns (segmentor, kwargs)."""
    import torch

    kwargs = {k: v for k, v in cfg["model"].items() if k != "type"}
    kwargs["name_path"] = str((args.clone / kwargs["name_path"]).resolve())
    # built with sam_refinement=True when refined outputs are asked for (its coarse_thresh, minimal_area and
    # sam_mask_coff are kept only then); predict() itself runs with sam_refine off, the refinement after it (run)
    kwargs.update(sam_ckpt=str(args.sam_weights.resolve()), sam_refinement=bool(args.refine_scales), device="cpu")
    mod = importlib.import_module("trident")
    hub = argparse.Namespace(proxy_clone=args.dino_clone, proxy_weights=args.dino_weights)
    with drr.clearclip_weights(args.weights) as create_fp32, torch.no_grad(), drr.proxy_hub(hub), \
            drr.half_is_identity():
        mod.create_model = create_fp32
        seg = mod.Trident(**kwargs)
    seg.sam_refine = False  # predict() unrefined (inside half_is_identity); refined() turns it on for its calls
    return seg.eval(), kwargs


def run_order(n: int, first: list[int]) -> list[int]:
    """The photos' indices ``0..n-1`` with ``first`` (those below ``n``) moved to the front, in their order."""
    head = [i for i in first if 0 <= i < n]
    return head + [i for i in range(n) if i not in head]


def variant_key(spec: str) -> str:
    """``"150"`` -> ``scale_150``; ``"150:0.5"`` (a logit scale and a ``sam_iou_thresh``) -> ``scale_150_iou_0.5``."""
    scale, _, iou = spec.partition(":")
    return f"scale_{float(scale):g}" + (f"_iou_{float(iou):g}" if iou else "")


def refined(seg, logits, sample, specs: list[str]) -> dict:
    """Trident's own ``postprocess_result`` on the captured logits for each of ``specs`` (a logit scale, or
    ``scale:iou`` with its ``sam_iou_thresh`` too), without and with ``sam_refine`` (``seg_utils.utils.sam_refinement``
    with the predictor still holding this photo's image, as ``predict`` leaves it): ``{variant_key(spec): {"probs",
    "pred", "refined_probs", "refined_pred"}}``. Outside ``half_is_identity``: ``sam_refinement`` resizes the labels
    as fp16 (``.half()``), which must stay fp16."""
    import torch

    out, keep = {}, (seg.logit_scale, seg.sam_refine, seg.sam_iou_thresh)
    try:
        for spec in specs:
            scale, _, iou = spec.partition(":")
            row = {}
            for refine in (False, True):
                seg.logit_scale, seg.sam_refine = float(scale), refine
                seg.sam_iou_thresh = float(iou) if iou else keep[2]
                s = drr.Sample(dict(sample.metainfo))
                s.img_path = sample.img_path
                with torch.no_grad():
                    seg.postprocess_result(logits.clone(), [s])
                tag = "refined_" if refine else ""
                row[tag + "probs"] = s.data["seg_logits"].data.float()
                row[tag + "pred"] = s.data["pred_sem_seg"].data
            out[variant_key(spec)] = row
    finally:
        seg.logit_scale, seg.sam_refine, seg.sam_iou_thresh = keep
    return out


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    drr.install_openmmlab_stubs()
    drr.install_pkg_resources_stub()
    clone = args.clone.resolve()
    photos = sorted(p.resolve() for p in args.photos.glob("*.jpg"))[: args.images]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with drr.in_clone(clone):
        cfg = drr.read_config(clone, args.config)
        drr.stub_if_missing("openpyxl")
        seg, kwargs = build(args, cfg)
        mod = sys.modules["trident"]
        words, query_idx = mod.get_cls_idx(kwargs["name_path"])
        torch.save({"query_features": seg.query_features.float().clone()}, out / "text.pt")
        pre = seg.data_preprocessor.kwargs
        shapes = []
        for i in run_order(len(photos), args.first):
            path = photos[i]
            done = out / f"photo_{i:03d}.pt"
            if args.skip_done and done.is_file():  # a run resumed: the photo's record kept as it is
                old = torch.load(done)
                shapes.append({"index": i, "file": path.name, "ori_shape": list(old["pred"].shape[-2:]),
                               "input_shape": list(old["input"].shape[-2:]), "seconds": None})
                continue
            x, ori = drr.mmseg_input(path, cfg["scale"], pre)
            sample = drr.Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:]), "pad_shape": tuple(x.shape[-2:]),
                                 "padding_size": [0, 0, 0, 0], "img_path": str(path)})
            sample.img_path = str(path)  # Trident reads data_samples[0].img_path itself
            tic = time.perf_counter()
            with torch.no_grad(), drr.half_is_identity(), drr.logits_seen(seg) as seen:
                seg.predict(x, [sample])
            record = {"input": x, "logits": seen["logits"], "probs": sample.data["seg_logits"].data.float(),
                      "pred": sample.data["pred_sem_seg"].data}
            record.update(refined(seg, seen["logits"], sample, args.refine_scales))
            torch.save(record, out / f"photo_{i:03d}.pt")
            shapes.append({"index": i, "file": path.name, "ori_shape": list(ori), "input_shape": list(x.shape[-2:]),
                           "seconds": round(time.perf_counter() - tic, 1)})
            print(f"trident {path.name}: {shapes[-1]['seconds']} s", file=sys.stderr, flush=True)
    effective = {k: getattr(seg, k) for k in ("logit_scale", "prob_thd", "slide_crop", "slide_stride", "beta",
                                              "gamma", "cos_fac", "refine_neg_cos", "sam_refine")}
    meta = {"module": "trident", "cls": "Trident", "config": args.config, "kwargs": kwargs, "effective": effective,
            "resize_scale": list(cfg["scale"]), "preprocessor": pre, "query_words": list(words),
            "query_idx": [int(i) for i in query_idx], "templates": [t("{}") for t in mod.openai_imagenet_template],
            "photos": shapes, "notes": [f"{n} stubbed" for n in drr.STUBBED],
            "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__, "threads": args.threads}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clone", type=Path, required=True)
    ap.add_argument("--config", default="configs/cfg_voc21.py")
    ap.add_argument("--weights", type=Path, required=True, help="CLIP: a state dict in OpenAI's layout (.pt)")
    ap.add_argument("--dino-clone", type=Path, required=True, help="a clone of facebookresearch/dino (hubconf.py)")
    ap.add_argument("--dino-weights", type=Path, required=True, help="DINO ViT-B/16's state dict (.pth)")
    ap.add_argument("--sam-weights", type=Path, required=True, help="SAM vit_b's whole state dict (.pth)")
    ap.add_argument("--photos", type=Path, required=True, help="a folder of .jpg photos")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--first", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="photo indices to run before the others (a long run stopped early has them), comma-separated")
    ap.add_argument("--skip-done", action="store_true", help="keep the photos already in --out (a run resumed)")
    ap.add_argument("--refine-scales", type=lambda v: [x for x in v.split(",") if x], default=[],
                    help="also Trident's post-processing at these logit scales (SCALE or SCALE:SAM_IOU_THRESH), "
                    "without and with its SAM refinement (eval.py --sam_refine), comma-separated; empty: none")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
