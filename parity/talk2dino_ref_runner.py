"""Run Talk2DINO's OWN code (lorebianchi98/Talk2DINO at 4918c2d) from a clone, fp32 on the CPU: the reference half of
``talk2dino_parity.py``.

    python talk2dino_ref_runner.py --clone DIR --dinov2 DIR --inputs inputs.pt --work WORK_DIR --out ref.pt

It imports nothing from vpltool. The clone's code is never copied or edited; what it cannot run here is replaced
from outside, and only where the compared arithmetic does not pass:

1. ``torch.hub.load('facebookresearch/dinov2', name)`` returns a ``DinoVisionTransformer`` of facebookresearch/dinov2
   (``--dinov2``: a clone of it, the code the hub would fetch), built as its ``*_reg`` hub entries build it
   (``num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0``) at the inputs' small size, its
   weights the inputs' seeded random ones (no download);
2. the OpenAI ``clip`` package (a git-only dependency): ``clip.load`` returns the toy CLIP (open_clip's ``CLIP``
   built from its config and weights: its ``encode_text`` is what ``encode_text`` computes), ``clip.tokenize``
   looks the prompts up in the inputs' table (the toy's word tokenizer, tokenised on vpltool's side);
3. ``transformers``, ``webdataset``, ``braceexpand``, ``wandb``, ``matplotlib``, ``requests``, ``mmcv`` / ``mmseg``
   (a ``Registry``, a ``Config`` dict, ``EncoderDecoder`` as an ``nn.Module``), ``omegaconf`` and the evaluation's
   ``utils.get_logger``: imported, never reached;
4. ``torch.cuda.is_available`` is falsy while ``dino_extraction_v2.run_dinov2_extraction`` runs (it tests the
   function without calling it, so it always picks 'cuda');
5. **the extraction crashes as pinned on a DINOv2 model**: after ``outs = model(x, is_training=True)`` of its
   ``'dinov2'`` branch, an ``if`` where an ``elif`` was meant (the DINOv3 branch, 4918c2d) lets the timm branch
   (``'dino' in model_name``) run too, which indexes DINOv2's ``forward_features`` dict as a tensor (TypeError).
   While it runs, the hub model's ``forward_features`` returns ``cat(x_norm_clstoken, x_norm_patchtokens)``, so
   that the second branch's ``output[:, 0]`` / ``output[:, 1:]`` are the first branch's tokens, bit for bit (the
   qkv hook sees the same forward twice).

What runs is the reference's: ``run_dinov2_extraction`` (the training features from image files, written by its
``torch.save``), ``src.train_util.train`` for one epoch of one batch with ``ContrastiveLoss(ltype='infonce')`` and
``Adam(lr=1e-4)`` (the loss, the selected heads, every gradient, the weights after the step), and
``DINOTextSegInference.encode_decode`` per sliding window of mmseg's test pipeline, whose ``slide_inference`` is
restated here (mmseg 0.30.0's reads ``out_channels``, which the segmentor never sets).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refstubs import MmcvConfig, MmcvRegistry, slide_inference, stub_module  # noqa: E402 - parity/ is the script's folder


class _Falsy:
    """``torch.cuda.is_available`` while the extraction runs: false as a value, False when called."""

    def __bool__(self):
        return False

    def __call__(self, *a, **k):
        return False


def install_stubs(inputs: dict) -> None:
    import open_clip
    import torch
    from safetensors.torch import load_file
    from torch import nn

    toy = Path(inputs["clip_folder"])
    import json

    cfg = json.loads((toy / "open_clip_config.json").read_text())["model_cfg"]
    clip_model = open_clip.model.CLIP(**cfg)
    clip_model.load_state_dict(load_file(str(toy / "open_clip_model.safetensors")))
    clip_model.eval()
    table = inputs["token_table"]

    def tokenize(texts, context_length=None, truncate=False):
        texts = [texts] if isinstance(texts, str) else texts
        return torch.stack([table[t] for t in texts])

    stub_module("clip", load=lambda *a, **k: (clip_model, None), tokenize=tokenize)
    stub_module("transformers", Blip2Processor=None, Blip2ForConditionalGeneration=None, AddedToken=None,
                BertModel=None, AutoTokenizer=None)
    stub_module("webdataset")
    stub_module("braceexpand", braceexpand=None)
    stub_module("wandb")
    stub_module("matplotlib")
    stub_module("matplotlib.pyplot")
    try:
        import requests  # noqa: F401
    except ImportError:
        stub_module("requests")
    mmcv = stub_module("mmcv", Config=MmcvConfig)
    mmcv.utils = stub_module("mmcv.utils", Registry=MmcvRegistry)
    mmcv.engine = stub_module("mmcv.engine", collect_results_cpu=None, collect_results_gpu=None)
    mmcv.image = stub_module("mmcv.image", tensor2imgs=None)
    mmcv.runner = stub_module("mmcv.runner", get_dist_info=None)

    class EncoderDecoder(nn.Module):
        pass

    stub_module("mmseg")
    stub_module("mmseg.models", EncoderDecoder=EncoderDecoder)
    stub_module("mmseg.apis")
    stub_module("mmseg.apis.test", np2tmp=None)
    stub_module("omegaconf", OmegaConf=type("OmegaConf", (), {}))

    class _Logger:
        def info(self, *a, **k):
            pass

    stub_module("utils", get_logger=lambda *a, **k: _Logger())

    sys.path.insert(0, inputs["dinov2"])
    from functools import partial

    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.models.vision_transformer import DinoVisionTransformer

    d = inputs["dino"]

    def hub_load(repo, name, *a, **k):  # vit_small's arguments, fewer blocks (vit_small fixes depth=12)
        assert repo == "facebookresearch/dinov2" and name == d["name"], (repo, name)
        model = DinoVisionTransformer(img_size=d["img_size"], patch_size=d["patch_size"], embed_dim=d["width"],
                                      depth=d["depth"], num_heads=d["heads"], mlp_ratio=4,
                                      block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
                                      init_values=1.0, block_chunks=0, num_register_tokens=d["registers"],
                                      interpolate_antialias=d["antialias"], interpolate_offset=d["offset"])
        missing, unexpected = model.load_state_dict(d["state"], strict=False)
        assert list(missing) == ["mask_token"] and not unexpected, (missing, unexpected)
        return model.eval()

    torch.hub.load = hub_load


def extraction(clone: Path, inputs: dict, work: Path) -> dict:
    """``run_dinov2_extraction`` on the photos (a COCO-style dict of ``train2014/`` file names), as its README runs
    it with ``--extract_disentangled_self_attn --extract_avg_self_attn``; its saved file read back."""
    import dino_extraction_v2 as ext
    import torch

    data = {"images": [{"id": i, "file_name": f"train_{i:03d}.png"} for i in range(len(inputs["photos"]))],
            "annotations": []}
    (work / "train2014").mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(inputs["photos"]):
        target = work / "train2014" / f"train_{i:03d}.png"
        if not target.exists():
            os.symlink(path, target)
    torch.save(data, work / "ann.pth")
    saved, hub = torch.cuda.is_available, torch.hub.load

    def tokens_as_one_tensor(*a, **k):  # stand-in 5 of the module doc
        model = hub(*a, **k)
        own = model.forward_features

        def forward_features(x, *args, **kwargs):
            d = own(x, *args, **kwargs)
            return torch.cat([d["x_norm_clstoken"][:, None], d["x_norm_patchtokens"]], dim=1)

        model.forward_features = forward_features
        return model

    torch.cuda.is_available, torch.hub.load = _Falsy(), tokens_as_one_tensor
    try:
        ext.run_dinov2_extraction(inputs["dino"]["name"], str(work), str(work / "ann.pth"), len(inputs["photos"]),
                                  inputs["resize_dim"], inputs["resize_dim"], str(work / "features.pth"),
                                  extract_avg_self_attn=True, extract_disentangled_self_attn=True)
    finally:
        torch.cuda.is_available, torch.hub.load = saved, hub
    out = torch.load(work / "features.pth", weights_only=False)
    return {"disentangled": torch.stack([im["disentangled_self_attn"] for im in out["images"]]),
            "avg": torch.stack([im["avg_self_attn_out"] for im in out["images"]])}


def training(inputs: dict, feats) -> dict:
    """One step of ``src.train_util.train`` (the batch all the photos, in order) on the inputs' projection."""
    import clip
    import torch
    import torch.optim as optim
    from src.loss import ContrastiveLoss
    from src.model import ProjectionLayer
    from src.train_util import train
    from torch.utils.data import DataLoader

    model = ProjectionLayer.from_config(inputs["proj_config"])
    model.load_state_dict({k: v.clone() for k, v in inputs["proj_state"].items()})
    clip_model, _ = clip.load("ViT-B/16")
    with torch.no_grad():  # text_features_extraction.py: encode_text of clip.tokenize(caption)
        ann = clip_model.encode_text(clip.tokenize(inputs["captions"]))
    samples = [{"annotation": ann[i], "image": feats[i]} for i in range(len(feats))]
    loader = DataLoader(samples, batch_size=len(samples), shuffle=False)
    criterion = ContrastiveLoss(model, ltype="infonce")
    with torch.no_grad():
        loss0, heads = criterion(feats, ann.float(), return_index=True)
    optimizer = optim.Adam(model.parameters(), lr=inputs["lr"])
    grads = {}
    hooks = [p.register_hook(lambda g, n=n: grads.__setitem__(n, g.clone())) for n, p in model.named_parameters()]
    mean_loss = train(model, loader, criterion, optimizer)
    for h in hooks:
        h.remove()
    return {"ann_feats": ann, "loss": loss0, "train_mean_loss": mean_loss, "heads": heads, "grads": grads,
            "after": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "projected": model.project_clip_txt(ann.float()).detach()}  # after the step


def zero_shot(clone: Path, inputs: dict, work: Path) -> dict:
    """Per photo and setting: mmseg's test pipeline restated (cv2 BGR, keep-ratio resize to short side 448,
    FloatImage), ``encode_decode`` per window, the windows averaged, resized to the photo, softmax, argmax."""
    import cv2
    import numpy as np
    import torch
    import torch.nn.functional as F
    import yaml

    sys.path.insert(0, str(clone / "src" / "open_vocabulary_segmentation"))
    from models.dinotext.dinotext import DINOText

    # by file: the evaluation package's __init__ imports its mmseg dataset builders
    spec = importlib.util.spec_from_file_location(
        "dinotext_seg", clone / "src" / "open_vocabulary_segmentation" / "segmentation" / "evaluation" /
        "dinotext_seg.py")
    seg_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seg_module)
    DINOTextSegInference = seg_module.DINOTextSegInference

    (work / "configs").mkdir(exist_ok=True)
    (work / "configs" / "talk2dino_parity.yaml").write_text(yaml.safe_dump({"model": inputs["proj_config"]}))
    out = {}
    cwd = os.getcwd()
    os.chdir(work)  # DINOText reads configs/<proj_class>.yaml from the working directory
    try:
        for name, setting in inputs["zero_shot"].items():
            seg_scale = inputs["seg"]
            model = DINOText(inputs["dino"]["name"], seg_scale["resize_dim"], "ViT-B/16", "talk2dino_parity",
                             "talk2dino_parity", "ProjectionLayer", pre_trained=False,
                             with_bg_clean=setting["bg_clean"])
            model.proj.load_state_dict({k: v.clone() for k, v in inputs["proj_state"].items()})
            model.eval()
            tokens = model.build_dataset_class_tokens("sub_imagenet_template", inputs["classes"])
            text = model.build_text_embedding(tokens)
            seg = DINOTextSegInference(model, text, inputs["classes"], with_bg=True, pamr=setting["pamr"],
                                       bg_thresh=setting["bg_thresh"],
                                       test_cfg={"mode": "slide", "stride": (seg_scale["stride"],) * 2,
                                                 "crop_size": (seg_scale["crop"],) * 2})
            rows = []
            for path in inputs["photos"][:seg_scale["photos"]]:
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                h0, w0 = bgr.shape[:2]
                scale = min(2048 / max(h0, w0), seg_scale["short_side"] / min(h0, w0))
                size = (int(w0 * scale + 0.5), int(h0 * scale + 0.5))
                img = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR) if size != (w0, h0) else bgr
                img = torch.from_numpy(np.ascontiguousarray(img.astype(np.float32).transpose(2, 0, 1)))[None]
                logits = slide_inference(seg, img, seg_scale["crop"], seg_scale["stride"])
                logits = F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)
                probs = F.softmax(logits, dim=1)
                rows.append({"logits": logits[0], "labels": probs.argmax(dim=1)[0]})
            out[name] = {"text": text, "photos": rows}
    finally:
        os.chdir(cwd)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clone", type=Path, required=True)
    ap.add_argument("--inputs", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    inputs = torch.load(args.inputs, weights_only=False)
    install_stubs(inputs)
    clone = args.clone.resolve()
    sys.path.insert(0, str(clone))
    args.work.mkdir(parents=True, exist_ok=True)
    feats = extraction(clone, inputs, args.work)
    out = {"features": feats, "train": training(inputs, feats["disentangled"]),
           "zero_shot": zero_shot(clone, inputs, args.work)}
    torch.save(out, args.out)


if __name__ == "__main__":
    main()
