"""The reference half of ``bench_vs_reference.py``: one method's OWN code from a clone, built once, then one unit of
its work per ``run`` (``sidebyside.serve``). It imports nothing from vpltool; the clone's code runs unchanged, with
the parity runners' stand-ins for what a CPU run without its cluster needs (each named in the runner it comes from):

* ``talk2dino``: ``talk2dino_ref_runner.install_stubs`` (the hub DINOv2 of facebookresearch/dinov2 built from the
  inputs' weights, the toy CLIP as ``clip``). A unit: ``dino_extraction_v2.run_dinov2_extraction`` on the batch's
  image files (its DINOv2 forward, its qkv hook, ``disentangled_self_attn``; read back from its file), the
  captions' ``encode_text``, then ``src.train_util.train`` for that one batch (``ContrastiveLoss('infonce')``,
  ``Adam``: one step). The model and optimiser persist across units. Stand-in 5 of the runner is kept, with one
  change: the pinned extraction runs the DINO twice per batch (its ``if`` where ``elif`` was meant), and the second
  call returns the first's tokens instead of computing them again (the runner shows they are the same bit for bit),
  so the reference is timed with the one forward its code means. ``talk2dino_step``: the extraction and the
  captions' features once, then per unit ``train`` over ``steps`` batches of them (train.py trains on the saved
  features). ``talk2dino_run``: per unit the extraction, the captions' features, then ``epochs`` calls of ``train``.
* ``corrclip``: ``corrclip_ref_runner``'s set-up (``CorrCLIPSegmentation`` of ``configs/cfg_voc21.py``, its
  open_clip in fp32 with the inputs' weights, the hub DINO ViT-B/8 from a clone of facebookresearch/dino, the
  region masks read from their folder). A unit: ``predict`` on one photo's normalised input (mmseg's test pipeline
  restated once, as the runner does), ``postprocess_result`` included.
* ``proxyclip``: ``dense_ref_runner.build`` (``ProxyCLIPSegmentation`` of ``configs/cfg_voc21.py``, the hub DINO
  ViT-B/8 of the facebookresearch/dino clone, fp16 casts the identity). A unit: ``predict`` on one photo's input.

    python bench/vs_reference_ref.py METHOD --inputs INPUTS.json --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "parity")]
from sidebyside import claim_stdout, serve  # noqa: E402


def _t2d_setup(inp: dict) -> tuple:
    """What the three Talk2DINO units share: the stubs, the hub DINOv2 (its slip's second call cached), the image
    folder and annotation file the extraction reads, the projection, the loss and Adam; -> ``(extract() ->
    [6, H, C] features, encode() -> [6, text_dim] caption features, train(samples) -> mean loss, samples(feats,
    ann))``."""
    import talk2dino_ref_runner as runner
    import torch
    from torch.utils.data import DataLoader

    inputs = torch.load(inp["inputs"], weights_only=False)
    runner.install_stubs(inputs)
    sys.path.insert(0, inp["clone"])
    import clip
    import dino_extraction_v2 as ext
    import torch.optim as optim
    from src.loss import ContrastiveLoss
    from src.model import ProjectionLayer
    from src.train_util import train

    hub = torch.hub.load("facebookresearch/dinov2", inputs["dino"]["name"])
    own, last = hub.forward_features, {}

    def forward_features(x, *a, **k):  # stand-in 5, the DINO's tokens as one tensor; the slip's second call cached
        if last.get("x") is not x:
            d = own(x, *a, **k)
            last.update(x=x, out=torch.cat([d["x_norm_clstoken"][:, None], d["x_norm_patchtokens"]], dim=1))
        return last["out"]

    hub.forward_features = forward_features
    torch.hub.load = lambda *a, **k: hub
    torch.cuda.is_available = runner._Falsy()  # stand-in 4, for the process (it never uses a GPU)
    work = Path(inp["work"])
    (work / "train2014").mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(inputs["photos"]):
        target = work / "train2014" / f"train_{i:03d}.png"
        if not target.exists():
            target.symlink_to(path)
    torch.save({"images": [{"id": i, "file_name": f"train_{i:03d}.png"} for i in range(len(inputs["photos"]))],
                "annotations": []}, work / "ann.pth")
    model = ProjectionLayer.from_config(inputs["proj_config"])
    model.load_state_dict({k: v.clone() for k, v in inputs["proj_state"].items()})
    clip_model, _ = clip.load("ViT-B/16")
    criterion = ContrastiveLoss(model, ltype="infonce")
    optimizer = optim.Adam(model.parameters(), lr=inputs["lr"])

    def extract():
        hub.blocks[-1].attn.qkv._forward_hooks.clear()  # the extraction registers its hook again on each call
        last.clear()
        ext.run_dinov2_extraction(inputs["dino"]["name"], str(work), str(work / "ann.pth"), len(inputs["photos"]),
                                  inputs["resize_dim"], inputs["resize_dim"], str(work / "features.pth"),
                                  extract_disentangled_self_attn=True)
        saved = torch.load(work / "features.pth", weights_only=False)
        return torch.stack([im["disentangled_self_attn"] for im in saved["images"]])

    def encode():
        with torch.no_grad():
            return clip_model.encode_text(clip.tokenize(inputs["captions"]))

    def fit(samples, batches=1):
        return train(model, DataLoader(samples * batches, batch_size=len(samples), shuffle=False), criterion,
                     optimizer)

    def samples(feats, ann):
        return [{"annotation": ann[i], "image": feats[i]} for i in range(len(feats))]

    return extract, encode, fit, samples


def talk2dino(inp: dict) -> None:
    """(a) extraction, the captions' features, one step."""
    extract, encode, fit, samples = _t2d_setup(inp)

    def unit():
        feats = extract()
        return {"loss": fit(samples(feats, encode())), "features": feats}

    serve(unit)


def talk2dino_step(inp: dict) -> None:
    """(b) the training step proper: ``train`` over ``steps`` batches of the features extracted once (train.py
    trains on the saved file and the captions' saved ``ann_feats``)."""
    extract, encode, fit, samples = _t2d_setup(inp)
    batch = samples(extract(), encode())

    def unit():
        return {"loss": fit(batch, inp["steps"])}

    serve(unit)


def talk2dino_run(inp: dict) -> None:
    """(c) a whole short run: the extraction once, the captions' features once, then ``epochs`` calls of
    ``train`` (one batch each: train.py's epochs)."""
    extract, encode, fit, samples = _t2d_setup(inp)

    def unit():
        batch = samples(extract(), encode())
        for _ in range(inp["epochs"]):
            loss = fit(batch)
        return {"loss": loss}

    serve(unit)


def corrclip(inp: dict) -> None:
    import importlib
    import types

    import corrclip_ref_runner as runner
    import torch
    from dense_ref_runner import (
        Sample,
        half_is_identity,
        install_openmmlab_stubs,
        logits_seen,
        mmseg_input,
        proxy_hub,
        read_config,
        stub_if_missing,
    )
    from refstubs import in_clone

    install_openmmlab_stubs()
    clone = Path(inp["clone"]).resolve()
    args = types.SimpleNamespace(proxy_clone=Path(inp["dino_clone"]), proxy_weights=Path(inp["dino_weights"]))
    with in_clone(clone):
        stub_if_missing("transformers", AutoImageProcessor=None, Mask2FormerForUniversalSegmentation=None)
        stub_if_missing("openpyxl")
        cfg = read_config(clone, "configs/cfg_voc21.py")
        cfg["scale"] = (max(cfg["scale"]), inp["short_side"])
        mod = importlib.import_module("corrclip_segmentor")
        kwargs = {k: v for k, v in cfg["model"].items() if k != "type"}
        kwargs.update(name_path=str((clone / kwargs["name_path"]).resolve()), device="cpu",
                      instance_mask_path=inp["masks"], slide_crop=inp["slide_crop"], slide_stride=inp["slide_stride"])
        with torch.no_grad(), runner.fp32_clip(mod, Path(inp["model_config"]), Path(inp["clip_weights"])), \
                proxy_hub(args), half_is_identity():
            seg = mod.CorrCLIPSegmentation(**kwargs).eval()
        x, ori = mmseg_input(Path(inp["photo"]), cfg["scale"], seg.data_preprocessor.kwargs)

        def unit():
            sample = Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:]), "img_path": inp["photo"]})
            sample.img_path = inp["photo"]
            with torch.no_grad(), half_is_identity(), logits_seen(seg) as seen:
                seg.predict(x, [sample])
            return {"input": x, "logits": seen["logits"][0], "pred": sample.data["pred_sem_seg"].data}

        serve(unit)


def proxyclip(inp: dict) -> None:
    import importlib
    import types

    import torch
    from dense_ref_runner import (
        Sample,
        build,
        half_is_identity,
        install_openmmlab_stubs,
        install_pkg_resources_stub,
        logits_seen,
        mmseg_input,
        read_config,
        stub_if_missing,
    )
    from refstubs import in_clone

    install_openmmlab_stubs()
    install_pkg_resources_stub()
    clone = Path(inp["clone"]).resolve()
    args = types.SimpleNamespace(clone=clone, module="proxyclip_segmentor", cls="ProxyCLIPSegmentation",
                                 config="configs/cfg_voc21.py", weights=Path(inp["clip_weights"]),
                                 overrides=json.dumps({"slide_crop": inp["slide_crop"],
                                                       "slide_stride": inp["slide_stride"]}),
                                 proxy_clone=Path(inp["dino_clone"]), proxy_weights=Path(inp["dino_weights"]))
    with in_clone(clone):
        stub_if_missing("openpyxl")  # myutils.py's spreadsheet logging, not run
        cfg = read_config(clone, args.config)
        cfg["scale"] = (max(cfg["scale"]), inp["short_side"])
        importlib.import_module(args.module)
        seg, _, _ = build(args, cfg)
        x, ori = mmseg_input(Path(inp["photo"]), cfg["scale"], seg.data_preprocessor.kwargs)

        def unit():
            sample = Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:]), "pad_shape": tuple(x.shape[-2:]),
                             "padding_size": [0, 0, 0, 0], "img_path": inp["photo"]})
            with torch.no_grad(), half_is_identity(), logits_seen(seg) as seen:
                seg.predict(x, [sample])
            return {"input": x, "logits": seen["logits"][0], "pred": sample.data["pred_sem_seg"].data}

        serve(unit)


UNITS = {"talk2dino": talk2dino, "talk2dino_step": talk2dino_step, "talk2dino_run": talk2dino_run,
         "corrclip": corrclip, "proxyclip": proxyclip}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", choices=sorted(UNITS))
    ap.add_argument("--inputs", type=Path, required=True, help="the JSON the vpltool side wrote")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    claim_stdout()
    import torch

    torch.set_num_threads(args.threads)
    UNITS[args.method](json.loads(args.inputs.read_text()))


if __name__ == "__main__":
    main()
