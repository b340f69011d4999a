"""Run PGSeg's OWN model code (Ferenas/PGSeg at 9f167cd) from a clone, fp32 on the CPU, without mmcv / mmseg /
apex / diffdist / omegaconf: the reference half of ``pgseg_parity.py``.

    python pgseg_ref_runner.py --clone DIR --inputs inputs.pt --out OUT_DIR [--tiny] [--threads 1]

It imports nothing from vpltool. The clone's code is never copied or edited: ``models/`` is imported as a package
with the clone first on ``sys.path``, ``segmentation/evaluation/pgseg_seg.py`` and ``datasets/tokenizer.py`` by
file. Only imports the arithmetic does not touch are stubbed, plus the one-process collective:

1. ``mmcv.utils.Registry`` (``register_module()`` keeps the class, ``build(dict)`` calls ``cls(**rest)``),
   ``mmcv.Config`` (a dict with attribute access), ``mmcv.image.tensor2imgs``, ``mmseg.models.EncoderDecoder``
   (an ``nn.Module``), ``omegaconf.OmegaConf``, ``matplotlib.pyplot``, the clone's ``utils.get_logger``;
2. ``diffdist.functional.all_gather(out_list, x)`` returns ``[x]`` and ``torch.distributed.get_world_size`` /
   ``get_rank`` return 1 / 0: the reference's ``dist_collect`` on one process (its gather is the identity, its
   gradient too).

The model is the reference's ``MultiLabelContrastive`` with ``configs/pgseg_specific.yml``'s model settings
(GroupViT-S; ``--tiny``: a smaller config of the same code, as vpltool's ``tiny_config``), built under seed 0 by
its own initialisers, then every float parameter and buffer perturbed by seeded noise (so that zero biases and unit
norms are not special), BatchNorm variances kept positive. Its state dict is saved as the released checkpoints are
(``{'model': state_dict}``, ``ref_checkpoint.pth``): vpltool reads it through its key map.

``--groupvit``: the clone is NVlabs/GroupViT (13b7861); its own ``MultiLabelContrastive`` with its released
config (``group_vit_gcc_yfcc_30e.yml``; ``--tiny`` as above), saved as ``groupvit_checkpoint.pth``; outputs in
``groupvit.pt`` (see :func:`run_groupvit`); with ``--multi-label`` its multi-label (noun) loss alone and in one
training step, in ``groupvit_ml.pt`` (see :func:`run_groupvit_multi_label`).

Outputs (``OUT_DIR/ref.pt``): ``tokens`` (the captions through the clone's tokenizer), ``eval`` (the image
encoder's final tokens, both stages' soft and hard assignment maps, the text encoder's EOT features, the projected
image / text embeddings), ``train`` (from the saved state: ``torch.manual_seed(1)``, then ``forward_train`` on the
batch: the NPR prototypes of both stages, the matched indices, the three ``closs`` values, ``loss_pg``, the
contrastive ``loss``, the total; the gradient of every parameter; the parameters and buffers after one
``torch.optim.AdamW`` step), ``zero_shot`` (per seg photo ``PGSegInference.encode_decode``'s logits and the
labels, from the saved state, VOC's class names with the ``simple`` template).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from refstubs import MmcvConfig, MmcvRegistry, slide_inference, stub_module  # parity/ is the script's folder


def install_stubs() -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    mmcv = stub_module("mmcv", Config=MmcvConfig)
    mmcv.utils = stub_module("mmcv.utils", Registry=MmcvRegistry)
    mmcv.image = stub_module("mmcv.image", tensor2imgs=None)

    class EncoderDecoder(nn.Module):
        pass

    stub_module("mmseg")
    stub_module("mmseg.models", EncoderDecoder=EncoderDecoder)
    stub_module("omegaconf", OmegaConf=type("OmegaConf", (), {}))
    stub_module("matplotlib")
    stub_module("matplotlib.pyplot")
    stub_module("diffdist")
    stub_module("diffdist.functional", all_gather=lambda out_list, x: [x])
    dist.get_world_size = lambda *a, **k: 1
    dist.get_rank = lambda *a, **k: 0

    class _Logger:
        def info(self, *a, **k):
            pass

    stub_module("utils", get_logger=lambda *a, **k: _Logger())
    torch.set_default_dtype(torch.float32)


def load_file_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


MODEL_FULL = dict(
    type="MultiLabelContrastive",
    img_encoder=dict(type="PGSeg", embed_dim=384, embed_factors=[1, 1, 1], num_heads=[6, 6, 6], depths=[6, 3, 3],
                     num_group_tokens=[64, 8, 0], num_output_groups=[64, 8], drop_rate=0.0, drop_path_rate=0.1,
                     return_attn_o=True),
    text_encoder=dict(type="TextTransformer", context_length=77, width=256, layers=12, vocab_size=49408),
    contrast_temperature=0.07, proj_num_layers=2, output_dim=256, multi_label=0)
# vpltool's tiny_config() but the projectors' 4096-wide hidden layer (the reference's fixed width)
MODEL_TINY = dict(
    type="MultiLabelContrastive",
    img_encoder=dict(type="PGSeg", img_size=32, patch_size=8, embed_dim=64, embed_factors=[1, 1, 1],
                     num_heads=[1, 1, 1], depths=[1, 1, 1], num_group_tokens=[16, 8, 0], num_output_groups=[16, 8],
                     drop_rate=0.0, drop_path_rate=0.1, return_attn_o=True),
    text_encoder=dict(type="TextTransformer", context_length=77, width=64, layers=1, vocab_size=49408),
    contrast_temperature=0.07, proj_num_layers=2, output_dim=32, multi_label=0)


def perturb(model, seed: int = 0, kept: tuple[str, ...] = ()) -> None:
    """Seeded noise on every float parameter and buffer (BatchNorm variances stay positive); the NPR prototypes
    (``.mu``: the reference's own random unit rows) and the tensors named in ``kept`` are left as drawn (their noise
    is drawn all the same, so the others' is the same whatever is kept)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.state_dict(keep_vars=True).items()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g) * 0.02
            if name.endswith("running_var"):
                t.copy_(1.0 + torch.rand(t.shape, generator=g) * 0.5)
            elif name.endswith(".mu") or name in kept:
                continue
            else:
                t.add_(noise)


def reference_model(spec: dict, groupvit: bool = False, multi_label: int | None = None, kept: tuple[str, ...] = ()):
    """The clone's ``MultiLabelContrastive`` as every PGSeg / GroupViT parity builds it: ``spec`` (:data:`MODEL_TINY`
    or :data:`MODEL_FULL`), with ``groupvit`` NVlabs/GroupViT's image encoder (the same sizes, no ``return_attn_o``),
    ``multi_label`` when given, made under seed 0 and perturbed (:func:`perturb`, ``kept`` left as drawn). Shared by
    this runner and pgseg_trainer_ref_runner.py. Returns ``(model, spec)``, the spec as passed to the class."""
    import torch

    models = importlib.import_module("models")
    spec = {k: v for k, v in spec.items() if k != "type"}
    if groupvit:
        img = {k: v for k, v in spec["img_encoder"].items() if k != "return_attn_o"}
        spec["img_encoder"] = {**img, "type": "GroupViT"}
    if multi_label is not None:
        spec["multi_label"] = multi_label
    torch.manual_seed(0)
    model = models.MultiLabelContrastive(**spec)
    perturb(model, kept=kept)
    return model, spec


def build(clone: Path, tiny: bool):
    return reference_model(MODEL_TINY if tiny else MODEL_FULL)[0]


def run_slide(args, tokenize, inputs, seg_mod) -> None:
    """Zero-shot labels in slide mode (the VOC config's ``test_cfg``: crop 448, stride 224; ``--tiny``: 32 / 16)
    from the saved ``ref_checkpoint.pth``."""
    import torch

    model = build(args.clone.resolve(), args.tiny)
    model.load_state_dict(torch.load(args.out / "ref_checkpoint.pth")["model"])
    model.eval()
    class_tokens = torch.stack([tokenize([f"a photo of a {c}."]) for c in inputs["classes"]])
    text_emb = model.build_text_embedding(class_tokens)
    seg = seg_mod.PGSegInference(model, text_emb, with_bg=True)
    seg.eval()
    crop, stride = (32, 16) if args.tiny else (448, 224)
    photos = []
    with torch.no_grad():
        for img in inputs["seg_images"]:
            logits = slide_inference(seg, img, crop, stride)[0]
            photos.append({"logits": logits, "labels": logits.argmax(dim=0)})
    torch.save({"crop": crop, "stride": stride, "photos": photos}, args.out / "slide.pt")
    print(f"wrote {args.out / 'slide.pt'}")


def mmseg_test_image(path: Path, short: int, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)):
    """The reference's test pipeline on one file (its dataset configs: ``LoadImageFromFile``, ``MultiScaleFlipAug(
    img_scale=(2048, short))`` with ``Resize(keep_ratio=True)``, ``Normalize(to_rgb=True)``, ``ImageToTensor``),
    restated from mmcv 1.x (not installed) with the same cv2 calls: ``imfrombytes`` (``cv2.imdecode``,
    IMREAD_COLOR: BGR), ``imrescale`` = ``rescale_size`` (factor ``min(max(scale) / max(h, w), min(scale) /
    min(h, w))``, each side ``int(side * factor + 0.5)``) then ``imresize`` (``cv2.resize``, INTER_LINEAR, on the
    uint8 image), ``imnormalize`` (float32 copy; ``cvtColor`` BGR2RGB, ``cv2.subtract`` the float64 mean,
    ``cv2.multiply`` by ``1 / std``). Returns ``([1, 3, h, w]`` float32, ``(H0, W0)``)."""
    import cv2
    import numpy as np
    import torch

    img = cv2.imdecode(np.frombuffer(Path(path).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    scale = (2048, short)
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    size = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    img = img.copy().astype(np.float32)
    cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)
    cv2.subtract(img, np.float64(np.asarray(mean).reshape(1, -1)), img)
    cv2.multiply(img, 1 / np.float64(np.asarray(std).reshape(1, -1)), img)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None], (h, w)


def run_files(args, tokenize, inputs, seg_mod) -> None:
    """Zero-shot labels from the image FILES as the reference's mmseg evaluation makes them (``mmseg_test_image``,
    then mmseg 0.x's ``EncoderDecoder.inference`` restated: ``whole_inference`` or ``slide_inference``, the logits
    resized bilinearly to the original size (``rescale=True``, ``align_corners`` False), softmax, argmax), from the
    saved ``ref_checkpoint.pth``. Also T-NPR's text-prototype buffer before and after ``build_text_embedding``
    (the reference's text forward moves it in evaluation too). Outputs in ``files.pt``."""
    import torch
    import torch.nn.functional as F

    model = build(args.clone.resolve(), args.tiny)
    model.load_state_dict(torch.load(args.out / "ref_checkpoint.pth")["model"])
    model.eval()
    class_tokens = torch.stack([tokenize([f"a photo of a {c}."]) for c in inputs["classes"]])
    text_mu_before = model.text_encoder.Atten.mu.clone()
    text_emb = model.build_text_embedding(class_tokens)
    seg = seg_mod.PGSegInference(model, text_emb, with_bg=True)
    seg.eval()
    short, (crop, stride) = inputs["files_short"], inputs["files_slide"]
    photos = []
    with torch.no_grad():
        for path in inputs["files"]:
            x, (h0, w0) = mmseg_test_image(Path(path), short)
            row = {"file": Path(path).name, "ori_shape": [h0, w0], "input_shape": list(x.shape[-2:]), "input": x}
            for mode in ("whole", "slide"):
                logits = seg.encode_decode(x, None) if mode == "whole" else slide_inference(seg, x, crop, stride)
                logits = F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)
                row[mode] = F.softmax(logits, dim=1).argmax(dim=1)[0].to(torch.uint8)
            photos.append(row)
    torch.save({"photos": photos, "short": short, "crop": crop, "stride": stride,
                "text_mu_before": text_mu_before, "text_mu_after_embedding": model.text_encoder.Atten.mu.clone()},
               args.out / "files.pt")
    print(f"wrote {args.out / 'files.pt'}")


def groupvit_model(args, multi_label: int, checkpoint: str):
    """NVlabs/GroupViT's ``MultiLabelContrastive`` as the parity builds it (seed 0, perturbed, ``multi_label`` =
    K), its initial state saved as ``args.out / checkpoint`` in the releases' layout: ``(model, spec)``."""
    import torch

    model, spec = reference_model(MODEL_TINY if args.tiny else MODEL_FULL, groupvit=True, multi_label=multi_label)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.clone() for k, v in model.state_dict().items()}}, args.out / checkpoint)
    return model, spec


def adamw_step(model, loss_fn):
    """One AdamW step (lr 1e-3, wd 0.05) on ``loss_fn()``, run after ``torch.manual_seed(1)`` (the gumbel noise):
    ``(loss, every parameter's gradient, the state dict after the step)``."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    torch.manual_seed(1)
    loss = loss_fn()
    optimizer.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return loss, grads, {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_groupvit(args, tokenize, inputs) -> None:
    """NVlabs/GroupViT's own ``MultiLabelContrastive`` (its released config: multi-label 3, so its state dict holds
    ``multi_label_logit_scale`` as the releases do): eval outputs, and its contrastive ``loss`` on the batch with
    gradients and one AdamW step (the multi-label loss needs the noun prompts its data pipeline makes: not run)."""
    import torch

    model, _ = groupvit_model(args, 3, "groupvit_checkpoint.pth")
    tokens, images = tokenize(inputs["captions"]), inputs["images"]
    model.eval()
    with torch.no_grad():
        enc = model.img_encoder(images, return_attn=True, as_dict=True, return_feat=True)
        maps = [{k: d[k] for k in ("soft", "hard")} for d in enc["attn_dicts"] if d is not None]
        eot = model.text_encoder(tokens)
        result = {"tokens": tokens, "eval": {"tokens": enc["feat"], "maps": maps, "text_eot": eot,
                                             "image_x": model.img_projector(enc["x"]),
                                             "text_x": model.text_projector(eot),
                                             "group_x": model.img_projector(enc["feat"])}}
    model.train()

    def contrastive():  # forward_train's order: image, then text
        image_x = model.encode_image(images, as_dict=True)["image_x"]
        return model.loss(image_x, model.encode_text(tokens, as_dict=True)["text_x"])

    loss, grads, after_step = adamw_step(model, contrastive)
    after_step.pop("multi_label_logit_scale")
    result["train"] = {"loss": loss.detach(), "grads": grads, "after_step": after_step}
    torch.save(result, args.out / "groupvit.pt")
    print(f"wrote {args.out / 'groupvit.pt'}")


def run_groupvit_multi_label(args, tokenize, inputs) -> None:
    """NVlabs/GroupViT's ``MultiLabelContrastive`` with ``multi_label`` = K (its released config: 3), built as in
    :func:`run_groupvit` (``groupvit_ml_checkpoint.pth``): (1) its ``multi_label_loss`` alone on seeded random
    features ``[B, 1, D]`` / ``[B, K, D]`` with the gradients of both; (2) one ``forward_train`` on the batch with
    the fixed texts ``inputs['multi_label_texts']`` (``[caption, K noun prompts]`` per image, tokens ``[B, 1 + K,
    L]``), the sum of its losses (``parse_losses``), the gradient of every parameter and one AdamW step.
    Outputs in ``groupvit_ml.pt``."""
    import torch

    k = len(inputs["multi_label_texts"][0]) - 1
    model, spec = groupvit_model(args, k, "groupvit_ml_checkpoint.pth")
    g = torch.Generator().manual_seed(2)
    b, d = len(inputs["multi_label_texts"]), spec["output_dim"]
    image_feat = torch.randn(b, 1, d, generator=g).requires_grad_(True)
    text_feat = torch.randn(b, k, d, generator=g).requires_grad_(True)
    alone = model.multi_label_loss(image_feat, text_feat)
    alone.backward()
    result = {"features": {"image_feat": image_feat.detach(), "text_feat": text_feat.detach(),
                           "loss": alone.detach(), "grad_image_feat": image_feat.grad.clone(),
                           "grad_text_feat": text_feat.grad.clone(),
                           "grad_multi_label_logit_scale": model.multi_label_logit_scale.grad.clone()}}
    model.zero_grad(set_to_none=True)
    texts = torch.stack([tokenize(t) for t in inputs["multi_label_texts"]])  # [B, 1 + K, L]
    model.train()
    losses = {}

    def forward_train():
        losses.update(model(inputs["images"], texts))
        return sum(v.mean() for kk, v in losses.items() if "loss" in kk)  # utils/misc.py parse_losses

    total, grads, after_step = adamw_step(model, forward_train)
    result.update(tokens=texts, train={"loss": losses["loss"].detach(),
                                       "multi_label_loss": losses["multi_label_loss"].detach(),
                                       "total": total.detach(), "grads": grads, "after_step": after_step})
    torch.save(result, args.out / "groupvit_ml.pt")
    print(f"wrote {args.out / 'groupvit_ml.pt'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clone", required=True, type=Path)
    ap.add_argument("--inputs", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--slide-only", action="store_true", help="zero-shot in mmseg's slide mode only, from "
                    "OUT_DIR/ref_checkpoint.pth (slide.pt)")
    ap.add_argument("--files", action="store_true", help="zero-shot from inputs' image files through the "
                    "reference's mmseg test pipeline (restated), whole and slide, from OUT_DIR/ref_checkpoint.pth "
                    "(files.pt; see run_files)")
    ap.add_argument("--groupvit", action="store_true", help="the clone is NVlabs/GroupViT: its model, eval and "
                    "contrastive step only (groupvit.pt)")
    ap.add_argument("--multi-label", action="store_true", help="with --groupvit: its multi-label (noun) loss on "
                    "inputs' multi_label_texts (groupvit_ml.pt; see run_groupvit_multi_label)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    clone = args.clone.resolve()
    sys.path.insert(0, str(clone))
    os.chdir(clone)
    install_stubs()
    tok_mod = load_file_module("pgseg_ref_tokenizer", clone / "datasets" / "tokenizer.py")
    seg_mod = None if args.groupvit else load_file_module(
        "pgseg_ref_seg", clone / "segmentation" / "evaluation" / "pgseg_seg.py")
    inputs = torch.load(args.inputs)
    tokenizer = tok_mod.SimpleTokenizer()
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]

    def tokenize(texts):
        out = torch.zeros(len(texts), 77, dtype=torch.long)
        for i, text in enumerate(texts):  # datasets/builder.py's Tokenize, restated (it imports webdataset)
            ids = [sot] + tokenizer.encode(text) + [eot]
            if len(ids) > 77:
                ids = ids[:77]
                ids[-1] = eot
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    if args.groupvit and args.multi_label:
        run_groupvit_multi_label(args, tokenize, inputs)
        return
    if args.groupvit:
        run_groupvit(args, tokenize, inputs)
        return
    if args.slide_only:
        run_slide(args, tokenize, inputs, seg_mod)
        return
    if args.files:
        run_files(args, tokenize, inputs, seg_mod)
        return
    model = build(clone, args.tiny)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, args.out / "ref_checkpoint.pth")
    tokens = tokenize(inputs["captions"])
    images = inputs["images"]
    result = {"tokens": tokens, "class_tokens": torch.stack([tokenize([f"a photo of a {c}."])
                                                             for c in inputs["classes"]])}

    # ---- eval outputs
    model.eval()
    with torch.no_grad():
        enc = model.img_encoder(images, return_attn=True, as_dict=True, return_feat=True)
        maps = [{k: d[k] for k in ("soft", "hard")} for d in enc["attn_dicts"] if d is not None]
        text = model.text_encoder(tokens, as_dict=True)
        result["eval"] = {"tokens": enc["feat"], "maps": maps, "text_eot": text["x"],
                          "image_x": model.img_projector(enc["x"]), "text_x": model.text_projector(text["x"]),
                          "group_x": model.img_projector(enc["feat"])}

    # ---- one training step
    model.load_state_dict(state)
    model.train()
    enc_mod = model.img_encoder
    seen: dict = {"match": [], "closs": []}
    orig_match, orig_closs, orig_npr = enc_mod.hug_match, enc_mod.closs, enc_mod.forward_with_NPR

    def hug_match(inp, target):
        b, t = orig_match(inp, target)
        seen["match"].append(torch.as_tensor(t))
        return b, t

    def closs(group, proto):
        value = orig_closs(group, proto)
        seen["closs"].append(value.detach().clone())
        return value

    def forward_with_npr(x, attn_list, attn_o_list, text):
        seen["mu"] = [attn_o_list[0][0].detach().clone(), attn_o_list[1][0].detach().clone()]
        seen["center"] = [attn_list[0]["ori_center"].detach().clone(), attn_list[1]["ori_center"].detach().clone()]
        seen["text_mu"] = text.detach().clone()
        out = orig_npr(x, attn_list, attn_o_list, text)
        seen["loss_pg"] = out[1].detach().clone()
        return out

    enc_mod.hug_match, enc_mod.closs, enc_mod.forward_with_NPR = hug_match, closs, forward_with_npr
    losses = {}

    def forward_train():
        losses.update(model(images, tokens))
        return sum(v.mean() for k, v in losses.items() if "loss" in k)  # utils/misc.py parse_losses

    total, grads, after_step = adamw_step(model, forward_train)
    result["train"] = {"loss": losses["loss"].detach(), "loss_pg": seen["loss_pg"], "total": total.detach(),
                       "closs": seen["closs"], "match": seen["match"], "mu": seen["mu"], "center": seen["center"],
                       "text_mu": seen["text_mu"], "grads": grads, "after_step": after_step}

    # ---- zero-shot labels
    model.load_state_dict(state)
    model.eval()
    text_emb = model.build_text_embedding(result["class_tokens"])
    seg = seg_mod.PGSegInference(model, text_emb, with_bg=True)
    seg.eval()
    zs = []
    with torch.no_grad():
        for img in inputs["seg_images"]:
            logits = seg.encode_decode(img, None)
            zs.append({"logits": logits[0], "labels": logits[0].argmax(dim=0)})
    result["zero_shot"] = {"text_embedding": text_emb, "photos": zs}
    torch.save(result, args.out / "ref.pt")
    print(f"wrote {args.out / 'ref.pt'}")


if __name__ == "__main__":
    main()
