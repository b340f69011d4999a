"""Run OV-Stitcher's OWN segmentor (atw617/OV-Stitcher ``ov_stitcher_segmentor.py``, its patched open_clip) from a
clone, on the CPU in fp32, without mmseg / mmcv / mmengine: the reference half of ``ov_stitcher_parity.py``.

    python ov_stitcher_ref_runner.py --clone OV-Stitcher --dino-clone DINO --dino-weights D.pth \\
        --clip-weights W.pt --model-config M.json --masks NPZ_DIR --out OUT PHOTO.jpg ... [--threads 1]

It imports nothing from vpltool. Around the clone's unchanged code, what ``corrclip_ref_runner.py`` puts around
CorrCLIP's (the two segmentors load their models the same way; its helpers are imported from there):

1. ``dense_ref_runner.py``'s OpenMMLab stubs; ``transformers`` (its Mask2Former generator, not run) and
   ``openpyxl`` (``myutils.py``'s spreadsheet logging, not run) stubbed when missing; scikit-learn is the real one
   (its DBSCAN);
2. ``create_model(model_type, pretrained=clip_type, precision='fp16')`` builds ``--model-config`` (an open_clip
   config: the ViT-B/16 image tower with QuickGELU of its ``('openai', 'ViT-B/16')`` and of MetaCLIP's
   ``ViT-B-16-quickgelu``) in fp32 and loads ``--clip-weights`` strictly;
3. ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')`` builds that entry of ``--dino-clone`` (a clone of
   facebookresearch/dino, ``source='local'``, ``pretrained=False``) and loads ``--dino-weights`` strictly;
4. ``Tensor.half`` is the identity while it builds and predicts (fp32 parity; its ``self.dino.half()`` casts each
   tensor through it);
5. the segmentor's arguments are ``configs/cfg_voc21.py``'s (``_base_`` first: its ``template_path``, the
   class-biased templates), with ``device='cpu'``, ``instance_mask_path=--masks`` (its offline path: ``<stem>.npz``,
   key ``instance_mask``) and ``--overrides``;
6. each photo goes through mmseg's test pipeline restated (``dense_ref_runner.mmseg_input``), its ``Resize``'s
   short side ``--short-side`` when given.

Outputs in ``--out``: ``meta.json`` (the arguments, the query words and their classes, the instance's settings),
``text.pt`` (``query_features``) and per photo ``photo_NNN.pt``: the normalised input ``[1, 3, H, W]``, ``logits``
``[1, Q, H0, W0]`` (what ``predict`` hands ``postprocess_result``), ``probs`` ``[C, H0, W0]`` and ``pred``
``[1, H0, W0]`` (what ``postprocess_result`` sets), ``pred_argmax`` (its ``postprocess_result`` again on the same
logits with ``prob_thd`` 0) and ``windows``: the DBSCAN call (input and output) of its whole-image mask merging.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corrclip_ref_runner import fp32_clip, recorded_dbscan  # noqa: E402
from dense_ref_runner import (  # noqa: E402
    STUBBED,
    Sample,
    half_is_identity,
    install_openmmlab_stubs,
    logits_seen,
    mmseg_input,
    proxy_hub,
    read_config,
    stub_if_missing,
)
from refstubs import in_clone  # noqa: E402


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    install_openmmlab_stubs()
    clone = args.clone.resolve()
    args.proxy_clone, args.proxy_weights = args.dino_clone.resolve(), args.dino_weights.resolve()
    photos = [p.resolve() for p in args.photos]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with in_clone(clone):
        stub_if_missing("transformers", AutoImageProcessor=None, Mask2FormerForUniversalSegmentation=None)
        stub_if_missing("openpyxl")
        cfg = read_config(clone, args.config)
        if args.short_side:  # the test pipeline's Resize(scale=(2048, S)) with another S
            cfg["scale"] = (max(cfg["scale"]), args.short_side)
        mod = importlib.import_module("ov_stitcher_segmentor")
        kwargs = {k: v for k, v in cfg["model"].items() if k != "type"}
        names = args.name_path or clone / kwargs["name_path"]  # --name-path: the merge's parity
        kwargs.update(name_path=str(names.resolve()), device="cpu",
                      instance_mask_path=str(args.masks.resolve()), **json.loads(args.overrides))
        if kwargs.get("template_path"):
            kwargs["template_path"] = str((clone / kwargs["template_path"]).resolve())
        with torch.no_grad(), fp32_clip(mod, args.model_config.resolve(), args.clip_weights.resolve()), \
                proxy_hub(args), half_is_identity():
            seg = mod.OVStitcherSegmentation(**kwargs).eval()
        torch.save({"query_features": seg.query_features.float().clone()}, out / "text.pt")
        words, idx = mod.get_cls_idx(kwargs["name_path"])
        pre = seg.data_preprocessor.kwargs
        if args.serve:
            serve(seg, photos, cfg["scale"], pre)
            return
        shapes, seconds = [], []
        for i, path in enumerate(photos):
            x, ori = mmseg_input(path, cfg["scale"], pre)
            sample = Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:]), "img_path": str(path)})
            sample.img_path = str(path)  # mmseg's SegDataSample reads its metainfo as attributes
            calls: list = []
            began = time.process_time()
            with torch.no_grad(), half_is_identity(), recorded_dbscan("open_clip.transformer", calls), \
                    logits_seen(seg) as seen:
                seg.predict(x, [sample])
            seconds.append(round(time.process_time() - began, 2))
            # its own post-processing again on the same logits with prob_thd 0 (the argmax, then the map
            # correction): with random weights the config's threshold may leave every pixel background
            argmax = Sample(sample.metainfo)
            threshold, seg.prob_thd = seg.prob_thd, 0.0
            with torch.no_grad():
                seg.postprocess_result(seen["logits"].clone(), [argmax])
            seg.prob_thd = threshold
            torch.save({"input": x, "logits": seen["logits"], "probs": sample.data["seg_logit"].data.float(),
                        "pred": sample.data["pred_sem_seg"].data, "pred_argmax": argmax.data["pred_sem_seg"].data,
                        "windows": calls}, out / f"photo_{i:03d}.pt")
            shapes.append({"file": path.name, "ori_shape": list(ori), "input_shape": list(x.shape[-2:])})
    meta = {"kwargs": kwargs, "resize_scale": list(cfg["scale"]), "preprocessor": pre, "query_words": list(words),
            "query_idx": [int(i) for i in idx], "photos": shapes, "stubbed": STUBBED,
            "effective": {k: getattr(seg, k) for k in ("logit_scale", "prob_thd", "slide_crop", "slide_stride")},
            "cpu_seconds": seconds, "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
            "threads": args.threads}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def serve(seg, photos: list[Path], scale, pre) -> None:
    """``--serve`` (``bench/bench_ov_stitcher.py``'s timing): the segmentor built once, then per photo index read
    from stdin its whole ``predict`` run and its CPU-seconds printed as one JSON line, until ``quit``."""
    import torch

    inputs = [mmseg_input(p, scale, pre) for p in photos]
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        i = int(line)
        x, ori = inputs[i]
        sample = Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:]), "img_path": str(photos[i])})
        sample.img_path = str(photos[i])
        start = time.process_time()
        with torch.no_grad(), half_is_identity():
            seg.predict(x, [sample])
        print(json.dumps({"i": i, "cpu_seconds": time.process_time() - start}), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path, nargs="+")
    ap.add_argument("--clone", type=Path, required=True, help="the OV-Stitcher clone (ov_stitcher_segmentor.py)")
    ap.add_argument("--config", default="configs/cfg_voc21.py")
    ap.add_argument("--dino-clone", type=Path, required=True, help="a clone of facebookresearch/dino (hubconf.py)")
    ap.add_argument("--dino-weights", type=Path, required=True, help="its dino_vitb8 state dict (.pth)")
    ap.add_argument("--clip-weights", type=Path, required=True, help="an open_clip state dict (.pt)")
    ap.add_argument("--model-config", type=Path, required=True, help="the open_clip config (NAME.json)")
    ap.add_argument("--masks", type=Path, required=True, help="the region masks' folder (<stem>.npz)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name-path", type=Path, default=None, help="a class file in place of the config's "
                    "(the merge's parity: synonyms on other rows than the background's)")
    ap.add_argument("--overrides", default="{}", help="JSON: segmentor keyword arguments over the config's")
    ap.add_argument("--short-side", type=int, default=0, help="the Resize's short side in place of the config's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--serve", action="store_true", help="time predict per photo index read from stdin (no outputs)")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
