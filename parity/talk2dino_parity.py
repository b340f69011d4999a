"""The ``talk2dino`` family (:mod:`vpltool.models.text.talk2dino`) against Talk2DINO's own code (lorebianchi98/Talk2DINO
at 4918c2d), fp32 on the CPU, on seeded random weights and real photos (scikit-image's, written as PNG files).

    python parity/talk2dino_parity.py --ref /path/to/Talk2DINO --dinov2 /path/to/dinov2 [--work DIR] \\
        > parity/results/talk2dino_parity.json

Both sides get the same weights: a DINOv2 with 4 registers (ViT-S/14's width and heads, 3 blocks, 518-px table:
the reference's ``dinov2_vits14_reg`` shape, made small; timm's ``vit_small_patch14_reg4_dinov2`` layout here, the
hub's ``DinoVisionTransformer`` there), seeded then perturbed by seeded noise so that no weight is special; the
projection vpltool initialises under seed 0; the toy CLIP's text tower (its tokenizer's ids handed to the reference
as a table). The reference runs in its own process (``talk2dino_ref_runner.py``, which says what it stubs and why).

Compared:

* **training** (bar max |Δ| <= 1e-5): the training features of the photos (``run_dinov2_extraction``'s
  ``disentangled_self_attn`` against :meth:`Talk2DINO.train_features` on vpltool's train view), the captions' text
  features, the projected text, the loss, the selected heads, every gradient and the weights after one Adam step
  (``src.train_util.train`` on one batch against vpltool's loss and optimiser);
* **zero-shot** (bar: labels >= 99.9 % equal; logits reported), at half the reference's scale (:data:`SEG`: short
  side 224, windows 224 / 112, the DINO at 224; the code is the same at any crop) on the first 3 photos: per photo,
  VOC21's setting (background channel,
  background cleaning, PAMR, ``bg_thresh`` 0.55) and Context60's (no cleaning), ``DINOTextSegInference.encode_decode``
  per window of mmseg's slide against :func:`vpltool.models.text.talk2dino.zero_shot_labels`, the class names the demo
  world's shapes (words the toy CLIP knows) in the reference's ``sub_imagenet`` template.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

PHOTOS = (("astronaut.png", (0, 64, 512, 448), (500, 375)), ("chelsea.png", None, (451, 300)),
          ("coffee.png", None, (500, 333)), ("rocket.jpg", (160, 0, 480, 427), (375, 500)),
          ("motorcycle_left.png", (0, 0, 667, 500), (500, 375)), ("camera.png", (0, 64, 512, 448), (500, 375)))
CAPTIONS = ("a red circle on grass", "a big blue star and a small green square", "a yellow triangle by a ring",
            "two crosses against a brick wall", "a hexagon and a diamond at the top", "a purple ring on water")
CLASSES = ("circle", "star", "square", "triangle", "ring", "cross", "hexagon", "diamond")
DINO = {"name": "dinov2_vits14_reg", "width": 384, "heads": 6, "timm": "vit_small_patch14_reg4_dinov2", "img_size": 518,
        "patch_size": 14, "depth": 3, "registers": 4, "antialias": True, "offset": 0.0}
# the reference's settings but bg_thresh: its 0.55 is above every class mask of random weights (sigmoid of cosines
# near 0: every pixel background, a comparison that proves nothing); at 0.5 classes and background compete
SETTINGS = {"voc21": {"bg_clean": True, "pamr": True, "bg_thresh": 0.5},
            "context60": {"bg_clean": False, "pamr": True, "bg_thresh": 0.5}}
# zero-shot at half the reference's scale (short side, window, stride and the DINO's square), on the first photos:
# the same code on smaller crops (the reference's PAMR, one [1, classes, 48, H, W] tensor a step, costs 18 CPU-s a
# 448-px window on this machine)
SEG = {"short_side": 224, "crop": 224, "stride": 112, "resize_dim": 224, "photos": 3}
TRAIN_BAR = 1e-5
LABEL_BAR = 0.999
LR = 1e-4


def photos(folder: Path) -> list[Path]:
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    src = Path(os.path.dirname(skimage.data.__file__))
    out = []
    for i, (name, box, size) in enumerate(PHOTOS):
        path = folder / f"photo_{i}.png"
        if not path.is_file():
            img = Image.open(src / name).convert("RGB")
            (img.crop(box) if box else img).resize(size, Image.BICUBIC).save(path)
        out.append(path)
    return out


def dino_weights(work: Path, dino: dict = DINO):
    """The seeded, perturbed DINOv2-reg4 ``dino`` (:data:`DINO`'s keys) in timm's layout (a file the dino family
    loads) and in the hub's."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(dino["timm"], pretrained=False, num_classes=0, img_size=dino["img_size"],
                              depth=dino["depth"], init_values=1.0)
    gen = torch.Generator().manual_seed(1)
    state = {}
    for k, v in model.state_dict().items():
        noise = torch.randn(v.shape, generator=gen) * (0.1 if v.ndim == 1 else 0.02)
        state[k] = (v + noise).contiguous()
    path = work / "dino.safetensors"
    save_file(state, str(path))
    hub = {k: v.clone() for k, v in state.items() if k not in ("reg_token", "pos_embed")}
    hub["register_tokens"] = state["reg_token"].clone()
    hub["pos_embed"] = torch.cat([torch.zeros(1, 1, state["pos_embed"].shape[-1]), state["pos_embed"]], dim=1)
    return path, hub


def train_view(path: Path, side: int):
    """The photo through vpltool's train view (:func:`vpltool.models.text.talk2dino.training.train_view`)."""
    from PIL import Image

    from vpltool.models.text.talk2dino.training import train_view as view

    return view(side)(Image.open(path).convert("RGB"))


def max_abs(a, b) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a clone of lorebianchi98/Talk2DINO at 4918c2d")
    ap.add_argument("--dinov2", type=Path, required=True, help="a clone of facebookresearch/dinov2 (b8931f7)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/talk2dino_parity"))
    args = ap.parse_args()
    import numpy as np
    import torch

    from vpltool import io
    from vpltool.models.backbones.dino import DinoSpec, load_dino
    from vpltool.models.backbones.loading import ModelSpec
    from vpltool.models.registry import load_model
    from vpltool.models.text.talk2dino import (
        TEMPLATES,
        build_model,
        class_text_embeddings,
        class_tokens,
        config_for,
        zero_shot_labels,
    )
    from vpltool.models.text.talk2dino.training import make_optimizer

    from benchlib import machine

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    files = photos(work / "photos")
    dino_file, hub_state = dino_weights(work)
    dino = load_dino(DinoSpec(DINO["timm"], str(dino_file), "bicubic-antialias"), img_size=DINO["img_size"],
                     depth=DINO["depth"], init_values=1.0)
    clip = load_model("clip", ModelSpec("vpltool-toy"), "cpu")
    model = build_model(config_for(dino, clip, resize_dim=448), seed=0, backbones=(dino, clip))
    tokenize = clip.tokenizer
    prompts = [*CAPTIONS, *(t.format(c) for c in CLASSES for t in TEMPLATES["sub_imagenet"])]
    table = {p: tokenize([p])[0] for p in prompts}
    proj_state = {k[len("proj."):]: v.detach().clone() for k, v in model.state_dict().items()}
    inputs = {"photos": [str(p) for p in files], "dino": {**DINO, "state": hub_state},
              "clip_folder": str(REPO / "vpltool" / "assets" / "toy-clip"), "token_table": table,
              "dinov2": str(args.dinov2.resolve()), "captions": list(CAPTIONS), "classes": list(CLASSES),
              "proj_config": {"act": "tanh", "hidden_layer": True, "dino_embed_dim": model.cfg.dino_dim,
                              "clip_embed_dim": model.cfg.text_dim},
              "proj_state": proj_state, "lr": LR, "resize_dim": 448, "zero_shot": SETTINGS, "seg": SEG}
    torch.save(inputs, work / "inputs.pt")
    done = subprocess.run([sys.executable, str(REPO / "parity" / "talk2dino_ref_runner.py"), "--clone",
                           str(args.ref.resolve()), "--inputs", str(work / "inputs.pt"), "--work",
                           str(work / "ref"), "--out", str(work / "ref.pt")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "XFORMERS_DISABLED": "1"})
    if done.returncode:
        sys.exit(f"the reference runner failed:\n{done.stderr[-6000:]}")
    ref = torch.load(work / "ref.pt", weights_only=False)

    # ---------------------------------------------------------------- training
    pixels = torch.stack([train_view(p, 448) for p in files])
    feats = model.train_features(pixels)
    ann = model.text_features(torch.stack([table[c] for c in CAPTIONS]))
    optimizer = make_optimizer(model, LR)
    model.train()
    out = model.forward_train(pixels, torch.stack([table[c] for c in CAPTIONS]))
    optimizer.zero_grad()
    out["loss"].backward()
    grads = {k[len("proj."):]: p.grad.detach().clone() for k, p in model.named_parameters()}
    optimizer.step()
    after = {k[len("proj."):]: v.detach() for k, v in model.state_dict().items()}
    projected = model.project_text(ann).detach()  # the runner's: after its step
    r = ref["train"]
    train = {
        "features_max_abs": max_abs(feats, ref["features"]["disentangled"]),
        "features_shape": list(feats.shape),
        "text_features_max_abs": max_abs(ann, r["ann_feats"]),
        "projected_text_after_step_max_abs": max_abs(projected, r["projected"]),
        "loss": float(out["loss"]), "loss_reference": float(r["loss"]),
        "loss_abs_diff": abs(float(out["loss"]) - float(r["loss"])),
        "train_loop_loss_reference": float(r["train_mean_loss"]),
        "heads_equal": bool(torch.equal(out["heads"], r["heads"])), "heads": out["heads"].tolist(),
        "grad_max_abs": {k: max_abs(grads[k], r["grads"][k]) for k in grads},
        "grad_max_abs_relative": max(max_abs(grads[k], r["grads"][k]) / max(float(r["grads"][k].abs().max()),
                                                                                1e-30) for k in grads),
        "after_step_max_abs": {k: max_abs(after[k], r["after"][k]) for k in after},
    }
    train_worst = max(train["features_max_abs"], train["text_features_max_abs"],
                      train["projected_text_after_step_max_abs"],
                      train["loss_abs_diff"], *train["grad_max_abs"].values(), *train["after_step_max_abs"].values())
    train["max_abs"] = train_worst

    # ---------------------------------------------------------------- zero-shot
    seg_cfg = replace(model.cfg, resize_dim=SEG["resize_dim"])
    model = build_model(seg_cfg, seed=0, backbones=(dino, clip)).frozen()  # the weights before the step
    zero = {}
    for name, setting in SETTINGS.items():
        text = class_text_embeddings(model, class_tokens(list(CLASSES), tokenize, TEMPLATES["sub_imagenet"]))
        rows = []
        for path, theirs in zip(files[:SEG["photos"]], ref["zero_shot"][name]["photos"]):
            image = io.load_image(path)
            logits, labels = zero_shot_labels(model, image, text, SEG["short_side"], with_bg=True,
                                              bg_thresh=setting["bg_thresh"], bg_clean=setting["bg_clean"],
                                              use_pamr=setting["pamr"], crop=SEG["crop"], stride=SEG["stride"])
            rows.append({"photo": path.name, "size": list(image.shape[:2]),
                         "logits_max_abs": max_abs(logits, theirs["logits"]),
                         "labels_equal": float((labels == theirs["labels"]).float().mean()),
                         "classes_present": int(np.unique(labels.numpy()).size)})
        zero[name] = {**setting, "text_max_abs": max_abs(text, ref["zero_shot"][name]["text"]), "photos": rows,
                      "labels_equal_min": min(r_["labels_equal"] for r_ in rows),
                      "logits_max_abs": max(r_["logits_max_abs"] for r_ in rows)}
    bars = {"training": train_worst <= TRAIN_BAR and train["heads_equal"],
            "zero_shot": all(z["labels_equal_min"] >= LABEL_BAR for z in zero.values())}
    result = {
        "what": "vpltool.models.text.talk2dino against Talk2DINO's own code: training features from image files, text "
                "features, loss, selected heads, every gradient, one Adam step; zero-shot labels of photo files "
                "(mmseg's slide restated, DINOTextSegInference.encode_decode per window)",
        "reference": "lorebianchi98/Talk2DINO", "commit": "4918c2d", "dinov2": "facebookresearch/dinov2 b8931f7",
        "command": " ".join(["python", "parity/talk2dino_parity.py", *sys.argv[1:]]),
        "device": "cpu", "dtype": "float32", "dino": {k: v for k, v in DINO.items()}, "zero_shot_scale": SEG,
        "clip": "the toy CLIP's text tower (vpltool-toy)", "projection_seed": 0, "lr": LR,
        "photos": [p.name for p in files], "captions": list(CAPTIONS), "classes": list(CLASSES),
        "train": train, "zero_shot": zero,
        "bars": {"training_max_abs": TRAIN_BAR, "labels_equal": LABEL_BAR}, "bar_met": bars,
        "hazards": [
            "mmseg 0.30.0's slide_inference / inference / simple_test read out_channels, which "
            "DINOTextSegInference never sets: the evaluation raises AttributeError as pinned (the slide loop is "
            "restated by the runner)",
            "dino_extraction_v2.py at 4918c2d runs the timm branch after the DINOv2 one for a dinov2 name ('if' "
            "where 'elif' was meant) and indexes DINOv2's forward_features dict as a tensor: TypeError as pinned "
            "(the runner hands that branch the same tokens)",
            "dino_extraction_v2.py tests torch.cuda.is_available without calling it: it always picks cuda",
        ],
        "seconds": round(time.perf_counter() - t0, 1), "machine": machine("cpu"),
    }
    print(json.dumps({**result, "page": page(result)}, indent=1))


def page(d: dict) -> dict:
    """Its section of docs/parity.md (docgen/parity_page.py): ``{"title", "command", "bar", "rows"}`` read from
    this runner's JSON ``d``."""
    out = {"title": "Talk2DINO (the `talk2dino` family)",
           "command": "`python parity/talk2dino_parity.py --ref DIR --dinov2 DIR` (`parity/talk2dino_ref_runner.py` "
                      f"runs the clone). Reference: {d['reference']}@{d['commit']} with {d['dinov2']}; a DINOv2 with "
                      f"{d['dino']['registers']} registers ({d['dino']['depth']} blocks, width {d['dino']['width']}), "
                      f"seeded random weights, the toy CLIP's text tower; {len(d['photos'])} photos (zero-shot on the "
                      f"first {d['zero_shot_scale']['photos']} at short side {d['zero_shot_scale']['short_side']}, "
                      f"windows {d['zero_shot_scale']['crop']} / {d['zero_shot_scale']['stride']}).",
           "bar": f"training max abs diff <= {d['bars']['training_max_abs']:g}, zero-shot labels equal >= "
                  f"{d['bars']['labels_equal']:.1%}. Found on the way: " + "; ".join(d["hazards"])}
    t = d["train"]
    rows = [[f"training: {k}", t[k]] for k in ("features_max_abs", "text_features_max_abs",
                                               "projected_text_after_step_max_abs", "loss_abs_diff", "heads_equal",
                                               "grad_max_abs_relative", "max_abs")]
    rows += [["training: gradients max abs diff", max(t["grad_max_abs"].values())],
             ["training: weights after one Adam step, max abs diff", max(t["after_step_max_abs"].values())]]
    for name, z in d["zero_shot"].items():
        rows += [[f"zero-shot {name} (cleaning {'yes' if z['bg_clean'] else 'no'}, PAMR "
                  f"{'yes' if z['pamr'] else 'no'}, bg_thresh {z['bg_thresh']}): labels equal, worst photo",
                  f"{z['labels_equal_min']:.4%}"],
                 [f"zero-shot {name}: logits max abs diff", z["logits_max_abs"]],
                 [f"zero-shot {name}: labels present per photo", ", ".join(str(p["classes_present"])
                                                                           for p in z["photos"])]]
    return {**out, "rows": rows}


if __name__ == "__main__":
    main()
