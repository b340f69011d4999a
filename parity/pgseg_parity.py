"""vpltool's PGSeg family against PGSeg's OWN code (Ferenas/PGSeg at 9f167cd); prints ONE JSON object.

    python parity/pgseg_parity.py --ref DIR [--work DIR] [--images 12] [--tiny] [--out parity/results/pgseg_parity.json]
    python parity/pgseg_parity.py --quick      # plumbing only: no clone, vpltool against itself (Δ = 0)

``--ref DIR`` is a clone of Ferenas/PGSeg; its code runs in its own process through ``pgseg_ref_runner.py`` (its
docstring says what is stubbed: mmcv/mmseg/omegaconf/matplotlib imports, and the one-process collective). The
reference builds its model (``configs/pgseg_specific.yml``: GroupViT-S; ``--tiny``: a smaller config of the same
code) under seed 0 with its own initialisers plus seeded noise, and saves it as its releases are saved; vpltool
reads that file through its key map (:func:`vpltool.models.text.pgseg.load_checkpoint`) and both run, fp32 on the CPU:

a. ``eval``: the image encoder's final tokens, both stages' soft and hard assignment maps, the text encoder's EOT
   features, the projected embeddings, on the 12 parity photos at 224x224 with a caption each (bar <= 1e-5);
b. ``train``: one ``forward_train`` in training mode on that batch, gumbel noise and drop path seeded identically
   on both sides (``torch.manual_seed(1)`` before the forward; the same generator calls in the same order): the
   NPR prototypes, the matched indices, the three ``closs``, the NPR total, the contrastive and total loss; the
   gradient of every parameter; the parameters and buffers after one AdamW step (lr 1e-3, wd 0.05) (bar <= 1e-5);
c. ``zero_shot``: VOC's 20 class names in the ``simple`` template, each photo at short side ``--seg-short``
   (448, the reference's test scale), ``PGSegInference.encode_decode`` (whole image) against
   :func:`vpltool.models.text.pgseg.zero_shot_logits`: logits and the share of equal labels (bar >= 99.9 %);
d. ``zero_shot_files`` (``--files``): ``vpltool segment --pgseg`` run as a command on the photo FILES, whole image
   and slide, against the reference's mmseg evaluation of the same files (its test pipeline restated with mmcv's
   cv2 calls): the share of equal labels (bar >= 99.9 %), the test images, T-NPR's buffer after evaluation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

BAR = 1e-5
FUSED_ATTENTION = False  # vpltool's side with the family's fused attention (--fused-attention)
LABEL_BAR = 0.999
REF_COMMIT = "9f167cd"
REF_COMMIT_FULL = "9f167cd9de614e42340c22888650719579df3474"
# segmentation/datasets/pascal_voc.py's CLASSES of the reference (its names, without background)
VOC = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table", "dog",
       "horse", "motorbike", "person", "plant", "sheep", "sofa", "train", "monitor")


def make_inputs(work: Path, images: int, size: int, seg_short: int) -> dict:
    """The parity photos as normalised tensors: a ``size`` x ``size`` batch with captions, and each photo at short
    side ``seg_short`` (keep ratio) for zero-shot."""
    import bench_cam
    import numpy as np
    import torch
    from PIL import Image

    from vpltool.models.text.pgseg import IMAGE_MEAN, IMAGE_STD

    voc = work / "voc"
    if len(list((voc / "JPEGImages").glob("*.jpg"))) != images:
        bench_cam.make_voc(voc, images)
    mean, std = torch.tensor(IMAGE_MEAN).view(3, 1, 1), torch.tensor(IMAGE_STD).view(3, 1, 1)

    def norm(img: Image.Image) -> torch.Tensor:
        return (torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) - mean) / std

    batch, seg, captions = [], [], []
    for i in range(images):
        img = Image.open(voc / "JPEGImages" / f"img_{i:03d}.jpg").convert("RGB")
        batch.append(norm(img.resize((size, size), Image.BICUBIC)))
        w, h = img.size
        f = seg_short / min(w, h)
        seg.append(norm(img.resize((int(w * f + 0.5), int(h * f + 0.5)), Image.BILINEAR))[None])
        labels = bench_cam.PHOTOS[i % len(bench_cam.PHOTOS)][3]
        captions.append("a photo of " + " and ".join(f"a {c}" for c in labels) + ".")
    return {"images": torch.stack(batch), "seg_images": seg, "captions": captions, "classes": list(VOC)}


def max_abs(a, b) -> float:
    import torch

    if isinstance(a, (list, tuple)):
        return max(max_abs(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return max(max_abs(a[k], b[k]) for k in a)
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        return float("inf")
    nan = torch.isnan(a)
    if not torch.equal(nan, torch.isnan(b)):  # NaN on one side only: not equal
        return float("inf")
    diff = (a - b).abs()[~nan]  # NaN in the same places on both sides (see `nan_in_reference`) compare equal
    return float(diff.max()) if diff.numel() else 0.0


def adamw_step(model, images, tokens) -> tuple[dict, dict, dict]:
    """One ``forward_train`` (gumbel noise seeded 1) and one AdamW step (lr 1e-3, wd 0.05), as the reference runner
    takes them: the detached losses, every parameter's gradient and the state dict after the step."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    torch.manual_seed(1)
    losses = model.forward_train(images, tokens)
    optimizer.zero_grad()
    losses["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return ({k: v.detach() for k, v in losses.items()}, grads,
            {k: v.detach().clone() for k, v in model.state_dict().items()})


def vpltool_side(ckpt: Path, inputs: dict, ref_tokens, ref_class_tokens) -> dict:
    """The same quantities from vpltool's model loaded from the reference's checkpoint."""
    import torch

    from vpltool.models.text.pgseg import (
        class_text_embeddings,
        load_checkpoint,
        model_from_state,
        tokenizer,
        zero_shot_logits,
    )

    cfg, state = load_checkpoint(ckpt)
    model = model_from_state(replace(cfg, fused_attention=FUSED_ATTENTION), state, str(ckpt))
    tok = tokenizer(cfg)
    tokens = tok(inputs["captions"])
    class_tokens = torch.stack([tok([f"a photo of a {c}."]) for c in inputs["classes"]])
    images = inputs["images"]
    out: dict = {"tokens": tokens, "class_tokens": class_tokens, "config": cfg.to_dict()}
    model.eval()
    with torch.no_grad():
        feats = model.image_features(images)
        maps = [{k: s["maps"][k] for k in ("soft", "hard")} for s in feats["stages"] if s["maps"] is not None]
        eot = model.text_encoder(ref_tokens)
        out["eval"] = {"tokens": feats["tokens"], "maps": maps, "text_eot": eot, "image_x": feats["pooled"],
                       "text_x": model.text_projector(eot), "group_x": feats["groups"]}
    model.load_state_dict(state)
    model.train()
    losses, grads, after_step = adamw_step(model, images, ref_tokens)
    out["train"] = {"losses": losses, "grads": grads, "after_step": after_step}
    model.load_state_dict(state)
    model.eval()
    text_emb = class_text_embeddings(model, ref_class_tokens)
    photos = []
    for img in inputs["seg_images"]:
        logits = zero_shot_logits(model, img, text_emb, bg_thresh=0.95)[0]
        photos.append({"logits": logits, "labels": logits.argmax(dim=0)})
    out["zero_shot"] = {"text_embedding": text_emb, "photos": photos}
    return out


def vpltool_train_internals(ckpt: Path, images, tokens) -> dict:
    """The NPR internals of vpltool's training forward (prototypes, centres, text prototypes), seeded as above."""
    import torch

    from vpltool.models.text.pgseg import load_checkpoint, model_from_state

    cfg, state = load_checkpoint(ckpt)
    model = model_from_state(replace(cfg, fused_attention=FUSED_ATTENTION), state, str(ckpt)).train()
    torch.manual_seed(1)
    with torch.no_grad():
        eot = model.text_encoder(tokens, move_prototypes=False)  # as forward_train: T-NPR once, below
        text_mu = model.text_encoder.prototypes(eot)
        _, stages = model.img_encoder.forward_features(images)
    return {"mu": [stages[0]["mu"], stages[1]["mu"]], "center": [stages[0]["center"], stages[1]["center"]],
            "text_mu": text_mu}


def compare(ref: dict, vt: dict, internals: dict) -> dict:
    import torch

    r_eval, v_eval = ref["eval"], vt["eval"]
    eval_d = {k: max_abs(r_eval[k], v_eval[k]) for k in ("tokens", "maps", "text_eot", "image_x", "text_x",
                                                          "group_x")}
    rt, vl = ref["train"], vt["train"]["losses"]
    train = {
        "npr_prototypes": max_abs(rt["mu"], internals["mu"]),
        "group_centers": max_abs(rt["center"], internals["center"]),
        "text_prototypes": max_abs(rt["text_mu"], internals["text_mu"]),
        "matched_pairs_equal": all(torch.equal(torch.as_tensor(a).long().flatten(), b.long().flatten())
                                   for a, b in zip(rt["match"], (vl["match_stage1"], vl["match_stage2"],
                                                                 vl["match_text"]), strict=True)),
        "closs": max_abs(torch.stack(rt["closs"]), torch.stack([vl["npr_stage1"], vl["npr_stage2"],
                                                                vl["npr_text"]])),
        "npr_loss": max_abs(rt["loss_pg"], vl["npr"]),
        "contrastive_loss": max_abs(rt["loss"], vl["contrastive"]),
        "total_loss": max_abs(rt["total"], vl["loss"]),
        "nan_in_reference": {"closs": [bool(torch.isnan(x)) for x in rt["closs"]],
                             "total": bool(torch.isnan(rt["total"]))},
        "loss_values": {"closs": [float(x) for x in rt["closs"]], "npr": float(rt["loss_pg"]),
                        "contrastive": float(rt["loss"]), "total": float(rt["total"])},
    }
    rg, vg = rt["grads"], vt["train"]["grads"]
    train["grad_params_same"] = sorted(rg) == sorted(vg)
    train["grads"] = max(max_abs(rg[k], vg[k]) for k in rg if k in vg)
    train["grad_worst_param"] = max((k for k in rg if k in vg), key=lambda k: max_abs(rg[k], vg[k]))
    ra, va = rt["after_step"], vt["train"]["after_step"]
    train["after_adamw_step"] = max(max_abs(ra[k], va[k]) for k in ra)
    train["state_keys_same"] = sorted(ra) == sorted(va)
    zs_r, zs_v = ref["zero_shot"], vt["zero_shot"]
    equal = [float((a["labels"] == b["labels"]).double().mean()) for a, b in zip(zs_r["photos"], zs_v["photos"],
                                                                               strict=True)]
    pixels = sum(a["labels"].numel() for a in zs_r["photos"])
    same = sum(float((a["labels"] == b["labels"]).sum()) for a, b in zip(zs_r["photos"], zs_v["photos"],
                                                                        strict=True))
    zero = {"text_embedding": max_abs(zs_r["text_embedding"], zs_v["text_embedding"]),
            "logits": max(max_abs(a["logits"], b["logits"]) for a, b in zip(zs_r["photos"], zs_v["photos"],
                                                                             strict=True)),
            "labels_equal": same / pixels, "labels_equal_min_photo": min(equal),
            "classes_predicted": sorted({int(c) for a in zs_r["photos"] for c in a["labels"].unique()})}
    tokens_equal = bool(torch.equal(ref["tokens"], vt["tokens"]) and torch.equal(ref["class_tokens"],
                                                                                   vt["class_tokens"]))
    worst_eval = max(eval_d.values())
    worst_train = max(v for k, v in train.items() if k in ("npr_prototypes", "group_centers", "text_prototypes",
                                                           "closs", "npr_loss", "contrastive_loss", "total_loss",
                                                           "grads", "after_adamw_step"))
    return {"tokens_equal": tokens_equal, "eval": eval_d, "train": train, "zero_shot": zero,
            "bars": {"max_abs_diff": BAR, "labels_equal": LABEL_BAR},
            "bar_met": {"eval": worst_eval <= BAR, "train": worst_train <= BAR and train["matched_pairs_equal"]
                        and train["grad_params_same"] and train["state_keys_same"],
                        "zero_shot": zero["labels_equal"] >= LABEL_BAR, "tokens": tokens_equal}}


def self_reference(work: Path, inputs: dict) -> dict:
    """``--quick``: the reference's outputs made by vpltool itself (a tiny model saved in the releases' layout):
    the comparison's plumbing without the clone, every figure 0."""
    import torch

    from vpltool.models.text.pgseg import build_model, tiny_config, tokenizer

    model = build_model(tiny_config(), seed=0)
    ref = work / "ref"
    ref.mkdir(parents=True, exist_ok=True)
    ckpt = ref / "ref_checkpoint.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    tok = tokenizer(model.cfg)
    tokens = tok(inputs["captions"])
    class_tokens = torch.stack([tok([f"a photo of a {c}."]) for c in inputs["classes"]])
    vt = vpltool_side(ckpt, inputs, tokens, class_tokens)
    internals = vpltool_train_internals(ckpt, inputs["images"], tokens)
    losses = vt["train"]["losses"]
    return {"tokens": tokens, "class_tokens": class_tokens, "eval": vt["eval"], "zero_shot": vt["zero_shot"],
            "train": {"loss": losses["contrastive"], "loss_pg": losses["npr"], "total": losses["loss"],
                      "closs": [losses["npr_stage1"], losses["npr_stage2"], losses["npr_text"]],
                      "match": [losses["match_stage1"], losses["match_stage2"], losses["match_text"]],
                      **internals, "grads": vt["train"]["grads"], "after_step": vt["train"]["after_step"]}}


def groupvit_side(ckpt: Path, images, tokens) -> dict:
    """vpltool's ``npr=False`` model from GroupViT's own checkpoint: eval outputs, the contrastive loss, gradients
    and one AdamW step, as :func:`pgseg_ref_runner.run_groupvit`."""
    import torch

    from vpltool.models.text.pgseg import load_checkpoint, model_from_state

    cfg, state = load_checkpoint(ckpt)
    model = model_from_state(replace(cfg, fused_attention=FUSED_ATTENTION), state, str(ckpt)).eval()
    with torch.no_grad():
        feats = model.image_features(images)
        maps = [{k: s["maps"][k] for k in ("soft", "hard")} for s in feats["stages"] if s["maps"] is not None]
        eot = model.text_encoder(tokens)
        out = {"npr": cfg.npr, "eval": {"tokens": feats["tokens"], "maps": maps, "text_eot": eot,
                                        "image_x": feats["pooled"], "text_x": model.text_projector(eot),
                                        "group_x": feats["groups"]}}
    model.train()
    losses, grads, after_step = adamw_step(model, images, tokens)
    out["train"] = {"loss": losses["loss"], "grads": grads, "after_step": after_step}
    return out


def compare_groupvit(ref: dict, vt: dict) -> dict:
    eval_d = {k: max_abs(ref["eval"][k], vt["eval"][k]) for k in ref["eval"]}
    rt, vt_t = ref["train"], vt["train"]
    train = {"contrastive_loss": max_abs(rt["loss"], vt_t["loss"]),
             "grad_params_same": sorted(rt["grads"]) == sorted(vt_t["grads"]),
             "grads": max(max_abs(rt["grads"][k], vt_t["grads"][k]) for k in rt["grads"] if k in vt_t["grads"]),
             "state_keys_same": sorted(rt["after_step"]) == sorted(vt_t["after_step"]),
             "after_adamw_step": max(max_abs(v, vt_t["after_step"][k]) for k, v in rt["after_step"].items()),
             "loss_value": float(rt["loss"])}
    ok = (max(eval_d.values()) <= BAR and train["contrastive_loss"] <= BAR and train["grads"] <= BAR
          and train["after_adamw_step"] <= BAR and train["grad_params_same"] and train["state_keys_same"])
    return {"reference": "NVlabs/GroupViT@13b7861", "key_map_npr_inferred": vt["npr"], "eval": eval_d,
            "train": train, "bar_met": ok and vt["npr"] is False}


def multi_label_texts(captions: list[str], k: int) -> list[list[str]]:
    """``[caption, K noun prompts]`` per caption, drawn by vpltool's rule (:func:`vpltool.data.nouns.noun_prompts`)
    with VOC's names as the noun vocabulary and ``RandomState(0)``: the one fixed batch both sides tokenise (a
    one-object caption is padded with itself, as the reference pads)."""
    import numpy as np

    from vpltool.data.nouns import VocabularyNouns, noun_prompts

    nouns, rng = VocabularyNouns(frozenset(VOC)), np.random.RandomState(0)
    return [noun_prompts(c, nouns(c), k, rng) for c in captions]


def groupvit_multi_label_side(ckpt: Path, ref: dict, images) -> dict:
    """vpltool's ``npr=False`` model with ``multi_label`` = K from GroupViT's own checkpoint (its
    ``multi_label_logit_scale``, which the family's key map drops for inference, set from the file): the loss alone
    on the reference's features, then one ``forward_train`` + AdamW step on its tokens, as
    :func:`pgseg_ref_runner.run_groupvit_multi_label`."""
    from dataclasses import replace

    import torch

    from vpltool.models.text.pgseg import PGSeg, load_checkpoint

    tokens = ref["tokens"]
    cfg, state = load_checkpoint(ckpt)
    cfg = replace(cfg, multi_label=tokens.shape[1] - 1)
    model = PGSeg(cfg)
    raw = torch.load(ckpt, map_location="cpu")["model"]
    model.load_state_dict({**state, "multi_label_logit_scale": raw["multi_label_logit_scale"]}, strict=True)
    f = ref["features"]
    image_feat, text_feat = f["image_feat"].clone().requires_grad_(True), f["text_feat"].clone().requires_grad_(True)
    alone = model.multi_label_loss(image_feat, text_feat)
    alone.backward()
    out = {"features": {"loss": alone.detach(), "grad_image_feat": image_feat.grad.clone(),
                        "grad_text_feat": text_feat.grad.clone(),
                        "grad_multi_label_logit_scale": model.multi_label_logit_scale.grad.clone()}}
    model.zero_grad(set_to_none=True)
    model.train()
    losses, grads, after_step = adamw_step(model, images, tokens)
    out["train"] = {"contrastive": losses["contrastive"], "multi_label": losses["multi_label"],
                    "total": losses["loss"], "grads": grads, "after_step": after_step}
    return out


def compare_groupvit_multi_label(ref: dict, vt: dict) -> dict:
    rf, vf, rt, vtt = ref["features"], vt["features"], ref["train"], vt["train"]
    alone = {k: max_abs(rf[k], vf[k]) for k in ("loss", "grad_image_feat", "grad_text_feat",
                                                "grad_multi_label_logit_scale")}
    train = {"contrastive_loss": max_abs(rt["loss"], vtt["contrastive"]),
             "multi_label_loss": max_abs(rt["multi_label_loss"], vtt["multi_label"]),
             "total_loss": max_abs(rt["total"], vtt["total"]),
             "grad_params_same": sorted(rt["grads"]) == sorted(vtt["grads"]),
             "grads": max(max_abs(rt["grads"][k], vtt["grads"][k]) for k in rt["grads"] if k in vtt["grads"]),
             "state_keys_same": sorted(rt["after_step"]) == sorted(vtt["after_step"]),
             "after_adamw_step": max(max_abs(v, vtt["after_step"][k]) for k, v in rt["after_step"].items()),
             "multi_label_loss_value": float(rt["multi_label_loss"]), "total_value": float(rt["total"])}
    ok = (max(alone.values()) <= BAR and max(train[k] for k in ("contrastive_loss", "multi_label_loss",
                                                                  "total_loss", "grads", "after_adamw_step")) <= BAR
          and train["grad_params_same"] and train["state_keys_same"])
    tokens = ref["tokens"]
    return {"reference": "NVlabs/GroupViT@13b7861 (multi_label_loss identical in Ferenas/PGSeg@9f167cd)",
            "multi_label": int(tokens.shape[1] - 1), "texts_per_image": int(tokens.shape[1]),
            "padded_prompts": int(sum(int((row[1:] == row[0]).all(dim=-1).sum()) for row in tokens)),
            "loss_alone": alone, "train": train, "bar_met": ok}


def run_multi_label(args, work: Path, inputs: dict) -> dict:
    """GroupViT's multi-label loss against vpltool's: the runner's ``--groupvit --multi-label`` mode."""
    import torch

    inputs = {**inputs, "multi_label_texts": multi_label_texts(inputs["captions"], args.multi_label)}
    torch.save(inputs, work / "inputs_ml.pt")
    cmd = [sys.executable, str(Path(__file__).with_name("pgseg_ref_runner.py")), "--clone", str(args.groupvit),
           "--inputs", str(work / "inputs_ml.pt"), "--out", str(work / "groupvit"), "--threads", str(args.threads),
           "--groupvit", "--multi-label"] + (["--tiny"] if args.tiny else [])
    if not (args.reuse and (work / "groupvit" / "groupvit_ml.pt").is_file()):
        subprocess.run(cmd, check=True, stdout=sys.stderr,
                       env=ref_env(args.threads, args.timm))
    ref = torch.load(work / "groupvit" / "groupvit_ml.pt")
    vt = groupvit_multi_label_side(work / "groupvit" / "groupvit_ml_checkpoint.pth", ref, inputs["images"])
    return {**compare_groupvit_multi_label(ref, vt), "texts": inputs["multi_label_texts"],
            "noun_rule": "vpltool's --nouns rule with VOC's names as the vocabulary, RandomState(0)"}


def compare_slide(args, work: Path, inputs: dict) -> dict:
    """The reference's ``encode_decode`` through mmseg's slide inference (restated in the runner) against
    :func:`vpltool.models.text.pgseg.zero_shot_logits` with ``mode='slide'``."""
    import torch

    from vpltool.models.text.pgseg import (
        class_text_embeddings,
        load_checkpoint,
        model_from_state,
        tokenizer,
        zero_shot_logits,
    )
    from vpltool.models.text.pgseg.zeroshot import slide_windows

    out = work / "ref"
    cmd = [sys.executable, str(Path(__file__).with_name("pgseg_ref_runner.py")), "--clone", str(args.ref),
           "--inputs", str(work / "inputs.pt"), "--out", str(out), "--threads", str(args.threads),
           "--slide-only"] + (["--tiny"] if args.tiny else [])
    if not (args.reuse and (out / "slide.pt").is_file()):
        subprocess.run(cmd, check=True, stdout=sys.stderr,
                       env=ref_env(args.threads, args.timm))
    ref = torch.load(out / "slide.pt", mmap=True)
    cfg, state = load_checkpoint(out / "ref_checkpoint.pth")
    model = model_from_state(replace(cfg, fused_attention=FUSED_ATTENTION), state).eval()
    tok = tokenizer(cfg)
    emb = class_text_embeddings(model, torch.stack([tok([f"a photo of a {c}."]) for c in inputs["classes"]]))
    diffs, same, pixels, windows = [], 0.0, 0, 0
    for r, img in zip(ref["photos"], inputs["seg_images"], strict=True):
        logits = zero_shot_logits(model, img, emb, 0.95, mode="slide", crop=ref["crop"], stride=ref["stride"])[0]
        diffs.append(max_abs(r["logits"], logits))
        same += float((r["labels"] == logits.argmax(dim=0)).sum())
        pixels += r["labels"].numel()
        windows += len(slide_windows(*img.shape[-2:], ref["crop"], ref["stride"]))
    return {"crop": ref["crop"], "stride": ref["stride"], "windows": windows, "logits": max(diffs),
            "labels_equal": same / pixels}


def compare_files(args, work: Path, inputs: dict) -> dict:
    """`segment --pgseg` from the photo FILES (the command itself, in a process of its own; whole image and slide)
    against the reference's evaluation of the same files (the runner's ``--files``: its mmseg test pipeline
    restated with mmcv's cv2 calls, its model, mmseg's inference): the share of equal labels. Also the test images
    themselves (vpltool's :func:`~vpltool.models.text.pgseg.image_tensor` of the decoded file against the
    reference's pipeline) and T-NPR's text-prototype buffer after the class names were embedded (the reference
    moves it in evaluation too)."""
    import torch

    from vpltool import io
    from vpltool.models.registry import load_model
    from vpltool.models.text.pgseg import class_text_embeddings, class_tokens, image_tensor, tokenizer

    short = 64 if args.tiny else args.seg_short
    crop, stride = (32, 16) if args.tiny else (448, 224)
    voc = work / "voc"
    files = sorted((voc / "JPEGImages").glob("*.jpg"))
    torch.save({"classes": inputs["classes"], "files": [str(f) for f in files], "files_short": short,
                "files_slide": (crop, stride)}, work / "inputs_files.pt")
    out = work / "ref"
    cmd = [sys.executable, str(Path(__file__).with_name("pgseg_ref_runner.py")), "--clone", str(args.ref),
           "--inputs", str(work / "inputs_files.pt"), "--out", str(out), "--threads", str(args.threads),
           "--files"] + (["--tiny"] if args.tiny else [])
    if not (args.reuse and (out / "files.pt").is_file()):
        subprocess.run(cmd, check=True, stdout=sys.stderr, env=ref_env(args.threads, args.timm))
    ref = torch.load(out / "files.pt")
    ckpt = out / "ref_checkpoint.pth"
    env = {"OMP_NUM_THREADS": str(args.threads), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1"}
    modes = {}
    for mode, (c, st) in (("whole", (0, stride)), ("slide", (crop, stride))):
        seg = work / f"segment_{mode}"
        subprocess.run([sys.executable, "-m", "vpltool", "segment", str(voc), "--split", "train", "--pgseg",
                        str(ckpt), "--classes", ",".join(inputs["classes"]), "-o", str(seg), "--short-side",
                        str(short), "--slide-crop", str(c), "--slide-stride", str(st), "--device", "cpu",
                        "--overwrite"], check=True, stdout=sys.stderr, env=env, cwd=ROOT)
        photos, same, pixels = [], 0, 0
        for r, f in zip(ref["photos"], files, strict=True):
            mine = torch.from_numpy(io.read_mask(io.mask_path(seg, f.stem)).astype("uint8"))
            eq = int((mine == r[mode]).sum()) if mine.shape == r[mode].shape else 0
            same, pixels = same + eq, pixels + r[mode].numel()
            photos.append({"file": r["file"], "labels_equal": eq / r[mode].numel(),
                           "reference_classes": sorted(int(c) for c in r[mode].unique())})
        modes[mode] = {"crop": c, "stride": st, "labels_equal": same / pixels,
                       "labels_equal_min_photo": min(p["labels_equal"] for p in photos), "photos": photos}
    pixels_d = [max_abs(r["input"], image_tensor(io.load_image(f), short)) for r, f in zip(ref["photos"], files,
                                                                                            strict=True)]
    model = load_model("pgseg", ckpt, "cpu")
    before = model.text_encoder.Atten.mu.clone()
    class_text_embeddings(model, class_tokens(inputs["classes"], tokenizer(model.cfg)))
    return {"what": "vpltool segment --pgseg (the command, from the JPEG files) against the reference's mmseg "
                    "evaluation of the same files: LoadImageFromFile (cv2), Resize keep_ratio to "
                    f"(2048, {short}) by mmcv.imrescale (cv2 INTER_LINEAR on uint8), Normalize(to_rgb), "
                    "EncoderDecoder whole / slide inference, bilinear to the original size, softmax, argmax",
            "short_side": short, "photos": len(files), "modes": modes,
            "labels_equal_min": min(m["labels_equal"] for m in modes.values()),
            "test_image_max_abs_diff": max(pixels_d),
            "input_shapes_equal": all(list(r["input"].shape) == list(image_tensor(io.load_image(f), short).shape)
                                      for r, f in zip(ref["photos"], files, strict=True)),
            "text_prototype_buffer": {
                "before_max_abs_diff": max_abs(ref["text_mu_before"], before),
                "after_class_embeddings_max_abs_diff": max_abs(ref["text_mu_after_embedding"],
                                                               model.text_encoder.Atten.mu),
                "moved_by_evaluation": bool(not torch.equal(ref["text_mu_before"],
                                                            ref["text_mu_after_embedding"]))}}


def ref_env(threads: int, timm: Path | None) -> dict:
    """The reference process's environment: one thread count, and timm 0.4.12 (the version PGSeg and GroupViT pin:
    its drop path draws its masks with ``torch.rand``, timm 1.x with ``bernoulli_``) first on its path."""
    env = {"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"}
    return env if timm is None else {**env, "PYTHONPATH": str(timm)}


def run_reference(clone: Path, inputs_pt: Path, out: Path, tiny: bool, threads: int, reuse: bool = False,
                  timm: Path | None = None) -> dict:
    import torch

    cmd = [sys.executable, str(Path(__file__).with_name("pgseg_ref_runner.py")), "--clone", str(clone),
           "--inputs", str(inputs_pt), "--out", str(out), "--threads", str(threads)] + (["--tiny"] if tiny else [])
    if not (reuse and (out / "ref.pt").is_file()):
        subprocess.run(cmd, check=True, stdout=sys.stderr,
                       env=ref_env(threads, timm))
    return torch.load(out / "ref.pt", mmap=True)  # file-backed: the reference's ~0.8 GB need not sit in memory


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, help="a clone of Ferenas/PGSeg (commit 9f167cd)")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--seg-short", type=int, default=448)
    ap.add_argument("--tiny", action="store_true", help="a smaller config of the same code (not GroupViT-S)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--groupvit", type=Path, help="also a clone of NVlabs/GroupViT: plain GroupViT (npr=False) "
                    "against its own code, from its own checkpoint layout")
    ap.add_argument("--slide", action="store_true", help="also zero-shot in mmseg's slide mode (crop 448, "
                    "stride 224: the reference's VOC test_cfg)")
    ap.add_argument("--multi-label", type=int, default=0, help="with --groupvit: also GroupViT's multi-label "
                    "(noun) loss with K noun prompts per caption (its released config: 3)")
    ap.add_argument("--multi-label-only", action="store_true", help="run only the multi-label comparison and add "
                    "it to --out's JSON (its other keys kept as they are)")
    ap.add_argument("--files", action="store_true", help="also `segment --pgseg` from the photo files (the command, "
                    "whole and slide) against the reference's mmseg test pipeline on the same files")
    ap.add_argument("--files-only", action="store_true", help="run only the --files comparison and add it to "
                    "--out's JSON (its other keys kept as they are)")
    ap.add_argument("--fused-attention", action="store_true", help="vpltool's side with the family's "
                    "fused_attention=True (PyTorch's fused attention; not the default): what it moves")
    ap.add_argument("--reuse", action="store_true", help="reuse --work's reference outputs (same inputs) if there")
    ap.add_argument("--quick", action="store_true", help="no clone: vpltool against itself (tiny, 2 photos)")
    ap.add_argument("--timm", type=Path, help="a folder holding timm 0.4.12 for the reference (default: pip-installed "
                    "into --work once)")
    args = ap.parse_args(argv)
    import torch

    global FUSED_ATTENTION
    FUSED_ATTENTION = args.fused_attention
    torch.set_num_threads(args.threads)
    if args.quick:
        args.tiny, args.images = True, min(args.images, 2)
    elif args.ref is None:
        ap.error("--ref DIR (a clone of Ferenas/PGSeg) is required, or --quick")
    work = args.work or Path(tempfile.mkdtemp(prefix="pgseg_parity_"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.quick and args.timm is None:
        from pgseg_trainer_parity import timm_0412

        args.timm = timm_0412(work)
    t0 = time.time()
    size = 32 if args.tiny else 224
    inputs = make_inputs(work, args.images, size, 64 if args.tiny else args.seg_short)
    torch.save(inputs, work / "inputs.pt")
    if args.multi_label_only:
        if args.groupvit is None or args.out is None or args.multi_label < 1:
            ap.error("--multi-label-only needs --groupvit DIR, --multi-label K and --out FILE")
        result = json.loads(args.out.read_text()) if args.out.is_file() else {"bar_met": {}}
        result["groupvit_multi_label"] = {**run_multi_label(args, work, inputs), "images": args.images,
                                          "image_size": size, "config": "tiny (same code, smaller)" if args.tiny
                                          else "GroupViT-S (group_vit_gcc_yfcc_30e.yml)",
                                          "seconds": round(time.time() - t0, 1)}
        result["bar_met"]["groupvit_multi_label"] = result["groupvit_multi_label"]["bar_met"]
        text = json.dumps(result, indent=1)
        args.out.write_text(text + "\n")
        print(text)
        return
    if args.files_only:
        if args.ref is None or args.out is None or not (work / "ref" / "ref_checkpoint.pth").is_file():
            ap.error("--files-only needs --ref DIR, --out FILE and --work holding ref/ref_checkpoint.pth (a run "
                     "before)")
        result = json.loads(args.out.read_text()) if args.out.is_file() else {"bar_met": {}}
        result["zero_shot_files"] = {**compare_files(args, work, inputs), "seconds": round(time.time() - t0, 1)}
        result["bar_met"]["zero_shot_files"] = result["zero_shot_files"]["labels_equal_min"] >= LABEL_BAR
        text = json.dumps(result, indent=1)
        args.out.write_text(text + "\n")
        print(text)
        return
    if args.quick:
        ref = self_reference(work, inputs)
    else:
        ref = run_reference(args.ref, work / "inputs.pt", work / "ref", args.tiny, args.threads, args.reuse, args.timm)
    ckpt = work / "ref" / "ref_checkpoint.pth"
    vt = vpltool_side(ckpt, inputs, ref["tokens"], ref["class_tokens"])
    internals = vpltool_train_internals(ckpt, inputs["images"], ref["tokens"])
    result = {"benchmark": "pgseg-parity", "quick": args.quick,
              "reference": "vpltool itself (--quick)" if args.quick else f"Ferenas/PGSeg@{REF_COMMIT}",
              "commit": None if args.quick else (_commit(args.ref) or f"{REF_COMMIT_FULL} (checked out without "
                                                                     ".git; not verified here)"),
              "config": "tiny (same code, smaller)" if args.tiny else
              "GroupViT-S / PGSeg (configs/pgseg_specific.yml)", "model_config": vt["config"],
              "images": args.images, "image_size": size, "seg_short_side": 64 if args.tiny else args.seg_short,
              "device": "cpu", "dtype": "float32",
              "gumbel": "training-mode gumbel hard assignment on both sides, noise seeded identically "
                        "(torch.manual_seed(1) before forward_train; drop path 0.1 drawn from the same generator; the "
                        "reference under timm 0.4.12, the version it pins)",
              "weights": "the reference's own seed-0 init plus seeded noise, saved as its releases ({'model': "
                         "state_dict}) and read by vpltool's key map",
              "reused_reference": bool(args.reuse and not args.quick), "fused_attention": args.fused_attention,
              **compare(ref, vt, internals), "seconds": round(time.time() - t0, 1)}
    del vt, internals, ref  # before the next comparisons: the machine is small
    if args.slide and not args.quick:
        result["zero_shot_slide"] = compare_slide(args, work, inputs)
        result["bar_met"]["zero_shot_slide"] = result["zero_shot_slide"]["labels_equal"] >= LABEL_BAR
        result["seconds"] = round(time.time() - t0, 1)
    if args.files and not args.quick:
        result["zero_shot_files"] = compare_files(args, work, inputs)
        result["bar_met"]["zero_shot_files"] = result["zero_shot_files"]["labels_equal_min"] >= LABEL_BAR
        result["seconds"] = round(time.time() - t0, 1)
    if args.groupvit is not None:
        cmd = [sys.executable, str(Path(__file__).with_name("pgseg_ref_runner.py")), "--clone", str(args.groupvit),
               "--inputs", str(work / "inputs.pt"), "--out", str(work / "groupvit"), "--threads", str(args.threads),
               "--groupvit"] + (["--tiny"] if args.tiny else [])
        if not (args.reuse and (work / "groupvit" / "groupvit.pt").is_file()):
            subprocess.run(cmd, check=True, stdout=sys.stderr,
                           env=ref_env(args.threads, args.timm))
        gref = torch.load(work / "groupvit" / "groupvit.pt", mmap=True)
        gvt = groupvit_side(work / "groupvit" / "groupvit_checkpoint.pth", inputs["images"], gref["tokens"])
        result["groupvit"] = compare_groupvit(gref, gvt)
        result["bar_met"]["groupvit"] = result["groupvit"]["bar_met"]
        del gref, gvt
        if args.multi_label:
            result["groupvit_multi_label"] = run_multi_label(args, work, inputs)
            result["bar_met"]["groupvit_multi_label"] = result["groupvit_multi_label"]["bar_met"]
        result["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


def _commit(clone: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()
