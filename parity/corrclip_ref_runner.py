"""Run CorrCLIP's OWN segmentor (zdk258/CorrCLIP ``CorrCLIPv1/corrclip_segmentor.py``, its patched open_clip) from
a clone, on the CPU in fp32, without mmseg / mmcv / mmengine: the reference half of ``corrclip_parity.py``.

    python corrclip_ref_runner.py --clone CorrCLIP/CorrCLIPv1 --dino-clone DINO --dino-weights D.pth \\
        --clip-weights W.pt --model-config M.json --masks NPZ_DIR --out OUT PHOTO.jpg ... [--threads 1]

It imports nothing from vpltool. Around the clone's unchanged code:

1. ``dense_ref_runner.py``'s OpenMMLab stubs (``BaseSegmentor``, ``SegDataPreProcessor``, ``MODELS``,
   ``PixelData``); ``transformers`` (its Mask2Former generator, not run) and ``openpyxl`` (``myutils.py``'s
   spreadsheet logging, not run) stubbed when missing; scikit-learn is the real one (its DBSCAN);
2. ``create_model(model_type, pretrained='metaclip_fullcc', precision='fp16')`` builds ``--model-config`` (an
   open_clip config added to the clone's open_clip) in fp32 and loads ``--clip-weights`` strictly;
3. ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')`` builds that entry of ``--dino-clone`` (a clone of
   facebookresearch/dino, ``source='local'``, ``pretrained=False``) and loads ``--dino-weights`` strictly;
4. ``Tensor.half`` is the identity while it builds and predicts (fp32 parity);
5. the segmentor's arguments are ``configs/cfg_voc21.py``'s (``_base_`` first), with ``device='cpu'``,
   ``instance_mask_path=--masks`` (its offline path: ``<stem>.npz``, key ``instance_mask``) and ``--overrides``;
6. each photo goes through mmseg's test pipeline restated (``dense_ref_runner.mmseg_input``), its ``Resize``'s
   short side ``--short-side`` when given.

Outputs in ``--out``: ``meta.json`` (the arguments, the query words and their classes, the instance's settings),
``text.pt`` (``query_features``) and per photo ``photo_NNN.pt``: the normalised input ``[1, 3, H, W]``, ``logits``
``[1, Q, H0, W0]`` (what ``predict`` hands ``postprocess_result``), ``probs`` ``[C, H0, W0]`` and ``pred``
``[1, H0, W0]`` (what ``postprocess_result`` sets), ``pred_argmax`` (its ``postprocess_result`` again on the same
logits with ``prob_thd`` 0) and ``windows``: per window the DBSCAN input and output.
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


@contextlib.contextmanager
def fp32_clip(mod, config: Path, weights: Path):
    """Point 2: the segmentor module's ``create_model`` builds ``config``'s model in fp32 with ``weights``."""
    import open_clip
    import torch

    open_clip.add_model_config(str(config))
    create = mod.create_model

    def local(model_type, pretrained=None, precision="fp32", **kwargs):
        model = create(config.stem, pretrained=None, precision="fp32", **kwargs)
        model.load_state_dict(torch.load(weights, map_location="cpu"), strict=True)
        return model

    mod.create_model = local
    try:
        yield
    finally:
        mod.create_model = create


@contextlib.contextmanager
def recorded_dbscan(mod_name: str, calls: list):
    """Every DBSCAN ``fit_predict`` of the patched transformer recorded (its distance matrix and labels)."""
    import numpy as np
    import torch

    tr = sys.modules[mod_name]
    cls = tr.DBSCAN

    class Recorded(cls):
        def fit_predict(self, X, y=None, sample_weight=None):
            labels = super().fit_predict(X)
            calls.append({"dist": torch.from_numpy(np.array(X, copy=True)),
                          "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64))})
            return labels

    tr.DBSCAN = Recorded
    try:
        yield
    finally:
        tr.DBSCAN = cls


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
        mod = importlib.import_module("corrclip_segmentor")
        kwargs = {k: v for k, v in cfg["model"].items() if k != "type"}
        names = args.name_path or clone / kwargs["name_path"]  # --name-path: the merge's parity
        kwargs.update(name_path=str(names.resolve()), device="cpu",
                      instance_mask_path=str(args.masks.resolve()), **json.loads(args.overrides))
        with torch.no_grad(), fp32_clip(mod, args.model_config.resolve(), args.clip_weights.resolve()), \
                proxy_hub(args), half_is_identity():
            seg = mod.CorrCLIPSegmentation(**kwargs).eval()
        torch.save({"query_features": seg.query_features.float().clone()}, out / "text.pt")
        words, idx = mod.get_cls_idx(kwargs["name_path"])
        pre = seg.data_preprocessor.kwargs
        shapes = []
        for i, path in enumerate(photos):
            x, ori = mmseg_input(path, cfg["scale"], pre)
            sample = Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:]), "img_path": str(path)})
            sample.img_path = str(path)  # mmseg's SegDataSample reads its metainfo as attributes
            calls: list = []
            with torch.no_grad(), half_is_identity(), recorded_dbscan("open_clip.transformer", calls), \
                    logits_seen(seg) as seen:
                seg.predict(x, [sample])
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
            "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__, "threads": args.threads}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path, nargs="+")
    ap.add_argument("--clone", type=Path, required=True, help="the clone's CorrCLIPv1 folder")
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
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
